"""Output serializers of the catalog API (read-only; the catalog takes no input but its filters)."""

import functools
from datetime import datetime

from django.conf import settings
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from common.money import format_minor
from listings.choices import Licence, UpdateFrequency
from listings.dcat import listing_jsonld
from listings.models import Listing

_LICENCE_LABELS = dict(Licence.choices)
_FREQUENCY_LABELS = dict(UpdateFrequency.choices)


# The listing attributes a card shows as they are (the rest are derived).
_CARD_FIELDS = (
    "slug",
    "title",
    "summary",
    "registration_number",
    "licence",
    "update_frequency",
    "primary_format",
    "price_from",
    "price_currency",
    "published_at",
    "updated_at",
)


def detail_url_prefix() -> str:
    # One reverse() per URL configuration instead of one per listing; slugs are URL-safe by construction.
    return _detail_url_prefix(settings.SITE_URL, settings.ROOT_URLCONF, get_urlconf(), get_script_prefix())


@functools.lru_cache(maxsize=8)
def _detail_url_prefix(site_url: str, root_urlconf: str, urlconf: str | None, script_prefix: str) -> str:
    return site_url + reverse("listings:detail", args=["slug"], urlconf=urlconf).removesuffix("slug/")


class CardWriter:
    """Catalog entries from card dicts (``catalog_query(cards=True)``): what ListingCardSerializer outputs.

    The catalog's hot path, built directly rather than field by field (DRF's
    generic per-field dispatch costs more than the page's SQL). The declared
    fields of ListingCardSerializer document the schema; the tests check both
    give the same dict. Make one per page: it resolves the detail URL prefix
    and the current time zone once.
    """

    def __init__(self):
        self.url_prefix = detail_url_prefix()
        # DRF's own DateTimeField (same output), told the time zone once rather than per value.
        self._timezone = timezone.get_current_timezone() if settings.USE_TZ else None
        self._datetime = serializers.DateTimeField(default_timezone=self._timezone)
        self._iso_8601 = self._timezone is not None and (api_settings.DATETIME_FORMAT or "").lower() == ISO_8601

    def _iso(self, value) -> str | None:
        if not value:
            return None
        if self._iso_8601 and isinstance(value, datetime) and value.utcoffset() is not None:
            # DateTimeField.to_representation for an aware value, inlined: in the current zone, UTC as "Z".
            try:
                text = value.astimezone(self._timezone).isoformat()
            except OverflowError:
                return self._datetime.to_representation(value)  # DRF's own error
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        return self._datetime.to_representation(value)

    def __call__(self, card: dict) -> dict:
        url_prefix, _iso = self.url_prefix, self._iso
        published_at, updated_at = card["published_at"], card["updated_at"]
        slug, price_from, currency = card["slug"], card["price_from"], card["price_currency"]
        licence, frequency = card["licence"], card["update_frequency"]
        return {
            "slug": slug,
            "title": card["title"],
            "summary": card["summary"],
            "url": f"{url_prefix}{slug}/",
            "registration_number": card["registration_number"],
            "category": (
                {"slug": card["category_slug"], "name": card["category_name"]}
                if card["category_id"] is not None
                else None
            ),
            "merchant": {"slug": card["merchant_slug"], "name": card["merchant_name"]},
            "licence": licence,
            "licence_label": _LICENCE_LABELS.get(licence, licence),
            "update_frequency": frequency,
            "update_frequency_label": _FREQUENCY_LABELS.get(frequency, frequency),
            "primary_format": card["primary_format"],
            "price_from": price_from,
            "price_currency": currency,
            "price_display": None if price_from is None else format_minor(price_from, currency),
            "price_types": card["price_types"],
            "published_at": _iso(published_at) if published_at else None,
            "updated_at": _iso(updated_at) if updated_at else None,
        }


class NamedRefSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()


class ListingCardSerializer(serializers.ModelSerializer):
    """One catalog entry: what a buyer compares before opening a product."""

    url = serializers.SerializerMethodField()
    merchant = NamedRefSerializer()
    category = NamedRefSerializer(allow_null=True)
    licence_label = serializers.CharField(source="get_licence_display")
    update_frequency_label = serializers.CharField(source="get_update_frequency_display")
    price_display = serializers.SerializerMethodField()
    price_types = serializers.SerializerMethodField()

    class Meta:
        model = Listing
        fields = [
            "slug",
            "title",
            "summary",
            "url",
            "registration_number",
            "category",
            "merchant",
            "licence",
            "licence_label",
            "update_frequency",
            "update_frequency_label",
            "primary_format",
            "price_from",
            "price_currency",
            "price_display",
            "price_types",
            "published_at",
            "updated_at",
        ]
        read_only_fields = fields

    def to_representation(self, listing) -> dict:
        # Same keys and values as the declared fields (which document the schema), built directly.
        if self._writer is None:
            self._writer = CardWriter()
        merchant, category = listing.merchant, listing.category
        card = {
            **{name: getattr(listing, name) for name in _CARD_FIELDS},
            "category_id": category.pk if category else None,
            "category_slug": category.slug if category else None,
            "category_name": category.name if category else None,
            "merchant_slug": merchant.slug,
            "merchant_name": merchant.name,
            "price_types": self.get_price_types(listing),
        }
        return self._writer(card)

    _writer = None

    def get_url(self, listing) -> str:
        return settings.SITE_URL + reverse("listings:detail", args=[listing.slug])

    def get_price_display(self, listing) -> str | None:
        if listing.price_from is None:
            return None
        return format_minor(listing.price_from, listing.price_currency)

    def get_price_types(self, listing) -> list[str]:
        kinds = getattr(listing, "price_types", None)  # set by catalog_query
        if kinds is None:
            kinds = sorted({plan.kind for plan in listing.plans.all() if plan.is_active})
        return kinds


class ListingDetailSerializer(ListingCardSerializer):
    """A published product with its full description, coverage and schema.org JSON-LD."""

    def to_representation(self, listing) -> dict:
        # The detail is one object: the declared fields' generic path is fine here.
        return serializers.ModelSerializer.to_representation(self, listing)

    tags = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")
    jsonld = serializers.SerializerMethodField()

    class Meta(ListingCardSerializer.Meta):
        fields = [
            *ListingCardSerializer.Meta.fields,
            "description",
            "tags",
            "column_names",
            "temporal_start",
            "temporal_end",
            "geographic_coverage",
            "sensitivity",
            "jsonld",
        ]
        read_only_fields = fields

    def get_jsonld(self, listing) -> dict:
        return listing_jsonld(listing)
