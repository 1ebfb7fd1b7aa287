"""Output serializers of the catalog API (read-only; the catalog takes no input but its filters)."""

from django.conf import settings
from django.urls import reverse
from rest_framework import serializers

from common.money import format_minor
from listings.choices import Licence, UpdateFrequency
from listings.dcat import listing_jsonld
from listings.models import Listing

_LICENCE_LABELS = dict(Licence.choices)
_FREQUENCY_LABELS = dict(UpdateFrequency.choices)


_DATETIME = serializers.DateTimeField()


def _iso(value) -> str | None:
    # What the declared DateTimeField outputs (ISO 8601 in the current time zone, UTC as "Z").
    return _DATETIME.to_representation(value) if value else None


def _detail_url_prefix() -> str:
    # One reverse() per page instead of one per listing; slugs are URL-safe by construction.
    return settings.SITE_URL + reverse("listings:detail", args=["slug"]).removesuffix("slug/")


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
        # The catalog's hot path: built directly rather than field by field (DRF's generic
        # per-field dispatch costs more than the page's SQL). Same keys and values as the
        # declared fields, which document the schema.
        if self._url_prefix is None:
            self._url_prefix = _detail_url_prefix()
        merchant, category = listing.merchant, listing.category
        published_at, updated_at = listing.published_at, listing.updated_at
        return {
            "slug": listing.slug,
            "title": listing.title,
            "summary": listing.summary,
            "url": f"{self._url_prefix}{listing.slug}/",
            "registration_number": listing.registration_number,
            "category": {"slug": category.slug, "name": category.name} if category else None,
            "merchant": {"slug": merchant.slug, "name": merchant.name},
            "licence": listing.licence,
            "licence_label": _LICENCE_LABELS.get(listing.licence, listing.licence),
            "update_frequency": listing.update_frequency,
            "update_frequency_label": _FREQUENCY_LABELS.get(listing.update_frequency, listing.update_frequency),
            "primary_format": listing.primary_format,
            "price_from": listing.price_from,
            "price_currency": listing.price_currency,
            "price_display": self.get_price_display(listing),
            "price_types": self.get_price_types(listing),
            "published_at": _iso(published_at),
            "updated_at": _iso(updated_at),
        }

    _url_prefix = None

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
