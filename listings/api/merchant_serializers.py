"""Serializers of the merchant's product API: input ones parse a request, output ones render what a service returned.

Input serializers only parse and type-check; the rules (lengths after stripping, tag limits, licence terms,
plan kinds and amounts...) are the services' (listings.services), which answer field by field.
"""

from django.conf import settings
from rest_framework import serializers

from common.money import CURRENCY_CHOICES
from listings.choices import (
    REVIEW_CHECKLIST,
    BillingInterval,
    Licence,
    MeteredUnit,
    PlanKind,
    Sensitivity,
    UpdateFrequency,
    VersionAccess,
)
from listings.models import Category, DataFile, Listing, ListingReview, ListingVersion, PricingPlan
from listings.selectors import datafile_sample_table
from listings.services.products import MAX_DESCRIPTION_LENGTH, PRODUCT_FIELDS, listing_submission_problems

# The largest value a PositiveIntegerField column holds (PostgreSQL integer).
MAX_INT32 = 2**31 - 1


# --- products -------------------------------------------------------------------------------------------------------


class ProductRefSerializer(serializers.ModelSerializer):
    """A product named in another object (a sale, a usage row): its slug and title."""

    class Meta:
        model = Listing
        fields = ["slug", "title"]
        read_only_fields = fields


class ProductInputSerializer(serializers.Serializer):
    """A product's descriptive fields, as the web form has them (``listing_create`` / ``listing_update``).

    ``category`` is a category's slug; ``tags`` and ``use_scenarios`` are lists of strings.
    """

    title = serializers.CharField(max_length=200)
    summary = serializers.CharField(max_length=300, required=False, allow_blank=True)
    description = serializers.CharField(
        max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True, help_text="Markdown; HTML is removed."
    )
    category = serializers.SlugRelatedField(
        slug_field="slug", queryset=Category.objects.all(), required=False, allow_null=True
    )
    tags = serializers.ListField(
        child=serializers.CharField(allow_blank=True), required=False, help_text="Up to 10 keywords."
    )
    licence = serializers.ChoiceField(choices=Licence.choices, required=False)
    licence_terms = serializers.CharField(
        max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True, help_text="Required for a custom licence."
    )
    update_frequency = serializers.ChoiceField(choices=UpdateFrequency.choices, required=False)
    temporal_start = serializers.DateField(required=False, allow_null=True)
    temporal_end = serializers.DateField(required=False, allow_null=True)
    geographic_coverage = serializers.CharField(max_length=200, required=False, allow_blank=True)
    use_scenarios = serializers.ListField(
        child=serializers.CharField(allow_blank=True), required=False, help_text="The allowed use scenarios."
    )
    sensitivity = serializers.ChoiceField(choices=Sensitivity.choices, required=False)
    requires_access_request = serializers.BooleanField(required=False)


class ProductSerializer(serializers.ModelSerializer):
    merchant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    category = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    tags = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    use_scenarios = serializers.ListField(child=serializers.CharField(), source="scenario_list", read_only=True)

    class Meta:
        model = Listing
        fields = [
            "slug",
            "merchant",
            *PRODUCT_FIELDS,  # what the merchant edits, as listing_create / listing_update take it
            "status",
            "registration_number",
            "created_at",
            "updated_at",
            "published_at",
        ]
        read_only_fields = fields


class ProductDetailSerializer(ProductSerializer):
    data_dictionary = serializers.DictField(child=serializers.CharField(), read_only=True)
    submission_problems = serializers.SerializerMethodField(
        help_text="What the product still lacks before it can be submitted for review (empty when ready)."
    )

    class Meta(ProductSerializer.Meta):
        fields = [*ProductSerializer.Meta.fields, "data_dictionary", "submission_problems"]
        read_only_fields = fields

    def get_submission_problems(self, listing) -> list[str]:
        return listing_submission_problems(listing=listing)


# --- versions and their profiling -------------------------------------------------------------------------------------


class VersionUploadSerializer(serializers.Serializer):
    """A multipart upload: the data file and an optional changelog."""

    # Empty files are refused by the upload service, with its own code.
    file = serializers.FileField(
        allow_empty_file=True,
        help_text="CSV or TSV (UTF-8 or GB18030), JSON Lines, or Parquet. Profiled automatically after upload.",
    )
    changelog = serializers.CharField(required=False, allow_blank=True, default="")


class ColumnSerializer(serializers.Serializer):
    """One profiled column: its inferred type, share of nulls, range and personal-information flags."""

    name = serializers.CharField()
    type = serializers.CharField()
    # Defaults for columns a profiler recorded without these facts.
    null_ratio = serializers.FloatField(allow_null=True, default=None)
    min = serializers.CharField(allow_null=True, default=None)
    max = serializers.CharField(allow_null=True, default=None)
    pii = serializers.ListField(
        child=serializers.CharField(),
        default=list,
        help_text="Kinds of personal information found (email, phone...).",
    )


class SampleSerializer(serializers.Serializer):
    header = serializers.ListField(child=serializers.CharField())
    rows = serializers.ListField(child=serializers.ListField(child=serializers.JSONField()))


class DataFileSerializer(serializers.ModelSerializer):
    """A file of a version with its profiling status (``pending``, ``done``, ``failed``) and row count."""

    class Meta:
        model = DataFile
        fields = [
            "id",
            "original_name",
            "size",
            "sha256",
            "format",
            "encoding",
            "content_type",
            "profile_status",
            "profile_error",
            "profiled_at",
            "row_count",
        ]
        read_only_fields = fields


class DataFileProfileSerializer(DataFileSerializer):
    """A file with its profiling results: the schema, PII flags per column and sample rows."""

    columns = ColumnSerializer(many=True, read_only=True)
    pii_columns = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        read_only=True,
        help_text="Column name -> the kinds of personal information found in it (flagged columns only).",
    )
    sample = serializers.SerializerMethodField()

    class Meta(DataFileSerializer.Meta):
        fields = [*DataFileSerializer.Meta.fields, "columns", "pii_columns", "sample"]
        read_only_fields = fields

    def get_sample(self, data_file) -> SampleSerializer:
        header, rows = datafile_sample_table(data_file=data_file)
        return {"header": header, "rows": rows}


class VersionSerializer(serializers.ModelSerializer):
    files = DataFileSerializer(many=True, read_only=True)

    class Meta:
        model = ListingVersion
        fields = ["id", "label", "changelog", "created_at", "published_at", "schema_diff", "files"]
        read_only_fields = fields


class VersionDetailSerializer(VersionSerializer):
    files = DataFileProfileSerializer(many=True, read_only=True)


# --- review ---------------------------------------------------------------------------------------------------------


# The reviewer's compliance checklist: one boolean per item of REVIEW_CHECKLIST (built from it, so they never differ).
ChecklistSerializer = type(
    "ChecklistSerializer",
    (serializers.Serializer,),
    {
        "__doc__": "The reviewer's compliance checklist: each item confirmed or not.",
        **{field: serializers.BooleanField(help_text=question) for field, question in REVIEW_CHECKLIST.items()},
    },
)


class ReviewSerializer(serializers.ModelSerializer):
    """The outcome of one submission: decision (pending, approved, rejected), the reviewer's notes and checklist."""

    version = serializers.SlugRelatedField(slug_field="label", read_only=True, allow_null=True)
    checklist = serializers.SerializerMethodField()

    class Meta:
        model = ListingReview
        fields = ["id", "version", "decision", "notes", "checklist", "submitted_at", "decided_at"]
        read_only_fields = fields

    def get_checklist(self, review) -> ChecklistSerializer:
        return {field: getattr(review, field) for field in REVIEW_CHECKLIST}


# --- pricing plans --------------------------------------------------------------------------------------------------


class _PlanFieldsSerializer(serializers.Serializer):
    amount = serializers.IntegerField(
        min_value=0,
        required=False,
        help_text="In minor units (fen, cents): the price, the price per interval or per unit; 0 for a free plan.",
    )
    currency = serializers.ChoiceField(choices=CURRENCY_CHOICES, required=False)
    name = serializers.CharField(max_length=80, required=False, allow_blank=True)
    interval = serializers.ChoiceField(
        choices=BillingInterval.choices, required=False, allow_blank=True, help_text="Subscriptions only."
    )
    metered_unit = serializers.ChoiceField(
        choices=MeteredUnit.choices, required=False, allow_blank=True, help_text="Metered plans only."
    )
    free_units_per_month = serializers.IntegerField(
        min_value=0, max_value=MAX_INT32, required=False, help_text="Metered plans only."
    )
    monthly_cap_units = serializers.IntegerField(
        min_value=1, max_value=MAX_INT32, required=False, allow_null=True, help_text="Metered plans only."
    )
    version_access = serializers.ChoiceField(choices=VersionAccess.choices, required=False)


class PlanInputSerializer(_PlanFieldsSerializer):
    """A new plan (``pricing_plan_create``); ``amount`` and ``currency`` are required unless the plan is free."""

    kind = serializers.ChoiceField(choices=PlanKind.choices)

    def validate(self, data):
        if data["kind"] == PlanKind.FREE:
            data.setdefault("amount", 0)
            data.setdefault("currency", settings.DEFAULT_CURRENCY)
        else:
            missing = {name: ["This field is required."] for name in ("amount", "currency") if name not in data}
            if missing:
                raise serializers.ValidationError(missing, code="required")
        return data


class PlanPatchSerializer(_PlanFieldsSerializer):
    """Change a plan's terms (the plan is replaced by a new one), or withdraw it with ``is_active: false``."""

    is_active = serializers.BooleanField(required=False)


class PlanSerializer(serializers.ModelSerializer):
    # Blank for the kinds they do not apply to (the model's choices leave the blank out of the enum).
    interval = serializers.ChoiceField(choices=BillingInterval.choices, allow_blank=True, read_only=True)
    metered_unit = serializers.ChoiceField(choices=MeteredUnit.choices, allow_blank=True, read_only=True)
    price_display = serializers.CharField(read_only=True)

    class Meta:
        model = PricingPlan
        fields = [
            "id",
            "kind",
            "name",
            "amount",
            "currency",
            "interval",
            "metered_unit",
            "free_units_per_month",
            "monthly_cap_units",
            "version_access",
            "is_active",
            "price_display",
            "created_at",
        ]
        read_only_fields = fields
