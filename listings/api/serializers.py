"""Output serializers of the catalog API (read-only; the catalog takes no input but its filters)."""

import functools
from datetime import datetime

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from common.money import format_minor
from listings.choices import BillingInterval, FileFormat, Licence, MeteredUnit, PlanKind, UpdateFrequency, VersionAccess
from listings.dcat import listing_jsonld
from listings.models import DataFile, Listing, ListingVersion, PricingPlan
from merchants.models import Merchant

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


# --- the catalog list's answer (documents the dict the list view builds) -------------------------------------------


class FacetValueSerializer(serializers.Serializer):
    value = serializers.CharField()
    label = serializers.CharField()
    count = serializers.IntegerField()


class CatalogMatchesSerializer(serializers.Serializer):
    counted = serializers.IntegerField(help_text="Matches counted for the facets (at most `cap`).")
    capped = serializers.BooleanField(help_text="True when the cap was reached: the counts are then lower bounds.")
    cap = serializers.IntegerField()


@extend_schema_serializer(many=False)
class CatalogPageSerializer(serializers.Serializer):
    """One page of the catalog with the facet counts of all its matches."""

    results = ListingCardSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="The cursor of the next page (`?cursor=`), or null.")
    next_url = serializers.URLField(allow_null=True, help_text="The next page's full URL, or null.")
    sort = serializers.CharField()
    facets = serializers.DictField(
        child=FacetValueSerializer(many=True), help_text="Per facet (category, merchant, licence...): its values."
    )
    matches = CatalogMatchesSerializer()


class PingSerializer(serializers.Serializer):
    ok = serializers.BooleanField()


# --- the product page's parts: versions, schema, sample, plans --------------------------------------------------------


class SchemaRetypeSerializer(serializers.Serializer):
    """A column whose type changed: ``{"name", "from", "to"}``."""

    name = serializers.CharField()
    to = serializers.CharField(allow_null=True)

    def get_fields(self):
        # "from" is a Python keyword, so it cannot be declared as a class attribute.
        fields = super().get_fields()
        return {"name": fields["name"], "from": serializers.CharField(allow_null=True), "to": fields["to"]}


class SchemaDiffSerializer(serializers.Serializer):
    """Columns added, removed and retyped against the version before."""

    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    retyped = SchemaRetypeSerializer(many=True)

    def to_representation(self, diff: dict) -> dict:
        return super().to_representation({"added": [], "removed": [], "retyped": [], **diff})


class VersionFileSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="original_name")
    format = serializers.ChoiceField(choices=FileFormat.choices)

    class Meta:
        model = DataFile
        fields = ["name", "format", "size", "row_count", "sha256"]
        read_only_fields = fields


class CatalogVersionSerializer(serializers.ModelSerializer):
    """A published version as the product page lists it."""

    schema_diff = serializers.SerializerMethodField()
    files = VersionFileSerializer(many=True, read_only=True)

    class Meta:
        model = ListingVersion
        fields = ["label", "changelog", "published_at", "schema_diff", "files"]
        read_only_fields = fields

    @extend_schema_field(SchemaDiffSerializer(allow_null=True))
    def get_schema_diff(self, version):
        # Empty for the first version (nothing to compare with) or while its files are being profiled.
        return SchemaDiffSerializer(version.schema_diff).data if version.schema_diff else None


class CatalogColumnSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField(allow_null=True, help_text="The profiled type (DuckDB's name for it).")
    description = serializers.CharField(allow_blank=True, help_text="The merchant's words from the data dictionary.")


class CatalogSchemaSerializer(serializers.Serializer):
    """The current (newest published) version's columns with the data dictionary."""

    version = serializers.CharField(allow_null=True, help_text="The version's label; null before any is published.")
    columns = CatalogColumnSerializer(many=True)


class CatalogSampleSerializer(serializers.Serializer):
    """The sample rows of the current version's first profiled file, aligned on ``columns``."""

    version = serializers.CharField(allow_null=True, help_text="The version's label; null before any is published.")
    columns = serializers.ListField(child=serializers.CharField())
    rows = serializers.ListField(child=serializers.ListField(child=serializers.JSONField(allow_null=True)))


class CatalogPlanSerializer(serializers.ModelSerializer):
    """An active pricing plan, with its price and terms as the product page words them."""

    kind = serializers.ChoiceField(choices=PlanKind.choices)
    kind_label = serializers.CharField(source="get_kind_display")
    name = serializers.CharField(source="display_name")
    price_display = serializers.CharField()
    interval = serializers.SerializerMethodField()
    metered_unit = serializers.SerializerMethodField()
    version_access = serializers.ChoiceField(choices=VersionAccess.choices)
    terms = serializers.SerializerMethodField()
    buyer_service_fee = serializers.IntegerField(
        help_text="Minor units the buyer pays on top of the price (one-time plans), in the plan's currency."
    )
    buyer_service_fee_display = serializers.CharField()

    class Meta:
        model = PricingPlan
        fields = [
            "id",
            "kind",
            "kind_label",
            "name",
            "amount",
            "currency",
            "price_display",
            "interval",
            "metered_unit",
            "free_units_per_month",
            "monthly_cap_units",
            "version_access",
            "terms",
            "buyer_service_fee",
            "buyer_service_fee_display",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=BillingInterval.choices, allow_null=True))
    def get_interval(self, plan):
        return plan.interval or None

    @extend_schema_field(serializers.ChoiceField(choices=MeteredUnit.choices, allow_null=True))
    def get_metered_unit(self, plan):
        return plan.metered_unit or None

    def get_terms(self, plan) -> str:
        # The product page's own wording (one template for both), as one line of plain text.
        return " ".join(render_to_string("listings/_plan_terms.html", {"plan": plan}).split())


# --- the merchant profile ---------------------------------------------------------------------------------------------


class ProductPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next page, or null.")
    previous = serializers.URLField(allow_null=True, help_text="The previous page, or null.")
    results = ListingCardSerializer(many=True)


class MerchantProfileSerializer(serializers.ModelSerializer):
    """A merchant's public profile and a page of its published products (``?cursor=``, ``?page_size=``)."""

    url = serializers.SerializerMethodField()
    products = serializers.SerializerMethodField()

    class Meta:
        model = Merchant
        fields = ["slug", "name", "description", "url", "products"]
        read_only_fields = fields

    def get_url(self, merchant) -> str:
        return settings.SITE_URL + reverse("listings:merchant_profile", args=[merchant.slug])

    @extend_schema_field(ProductPageSerializer)
    def get_products(self, merchant) -> dict:
        return self.context["products"]
