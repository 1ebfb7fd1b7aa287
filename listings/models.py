from django.conf import settings
from django.contrib.postgres.search import SearchVectorField
from django.db import models

from common.money import CURRENCY_CHOICES, format_minor
from listings.choices import (
    REVIEW_CHECKLIST,
    BillingInterval,
    FileFormat,
    Licence,
    ListingStatus,
    MeteredUnit,
    PlanKind,
    ProfileStatus,
    ReviewDecision,
    Sensitivity,
    UpdateFrequency,
    VersionAccess,
)
from merchants.models import Merchant


class Category(models.Model):
    """An industry category (seeded with the Guiyang exchange's twelve; editable in the admin)."""

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=100)
    name_zh = models.CharField(max_length=100, blank=True)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "name"]
        verbose_name_plural = "categories"

    def __str__(self):
        return self.name


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Listing(models.Model):
    """A data product a merchant offers on the exchange."""

    merchant = models.ForeignKey(Merchant, on_delete=models.PROTECT, related_name="listings")
    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=120, unique=True)
    summary = models.CharField(max_length=300, blank=True)
    description = models.TextField(blank=True, help_text="Markdown; rendered and sanitised.")
    category = models.ForeignKey(Category, on_delete=models.PROTECT, null=True, blank=True, related_name="listings")
    tags = models.ManyToManyField(Tag, blank=True, related_name="listings")
    licence = models.CharField(max_length=20, choices=Licence.choices, default=Licence.CC_BY_4)
    licence_terms = models.TextField(blank=True, help_text="The licence text when the licence is custom.")
    update_frequency = models.CharField(max_length=20, choices=UpdateFrequency.choices, default=UpdateFrequency.ONCE)
    temporal_start = models.DateField(null=True, blank=True)
    temporal_end = models.DateField(null=True, blank=True)
    geographic_coverage = models.CharField(max_length=200, blank=True)
    use_scenarios = models.TextField(blank=True, help_text="The uses the merchant allows, one per line.")
    sensitivity = models.CharField(max_length=20, choices=Sensitivity.choices, default=Sensitivity.NONE)
    # Buyers must state a use scenario and be approved by the merchant before they can check out.
    requires_access_request = models.BooleanField(default=False)
    # Column name -> the merchant's description, layered over the inferred schema.
    data_dictionary = models.JSONField(default=dict, blank=True)
    # Assigned by status transitions only (listings.services.listing_transition).
    status = models.CharField(max_length=20, choices=ListingStatus.choices, default=ListingStatus.DRAFT, editable=False)
    registration_number = models.CharField(max_length=40, unique=True, null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    published_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Denormalised for the catalog (facets, sorting, search); kept current by the services.
    price_from = models.BigIntegerField(null=True, blank=True, editable=False)
    price_currency = models.CharField(max_length=3, blank=True, editable=False)
    # The kinds of the active plans, sorted and comma-delimited at both ends (",one_time,subscription,"),
    # so the catalog's price-type facet counts them without joining the plans.
    price_kinds = models.CharField(max_length=80, blank=True, editable=False)
    primary_format = models.CharField(max_length=20, choices=FileFormat.choices, blank=True, editable=False)
    column_names = models.TextField(blank=True, editable=False)
    search_vector = SearchVectorField(null=True, editable=False)

    class Meta:
        ordering = ["-published_at", "-created_at"]
        indexes = [models.Index(fields=["status", "-published_at"], name="listing_status_pub_idx")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(temporal_start__isnull=True)
                | models.Q(temporal_end__isnull=True)
                | models.Q(temporal_start__lte=models.F("temporal_end")),
                name="listing_temporal_range_ordered",
            )
        ]

    def __str__(self):
        return self.title

    @property
    def is_published(self) -> bool:
        return self.status == ListingStatus.PUBLISHED

    @property
    def scenario_list(self) -> list[str]:
        return [line.strip() for line in self.use_scenarios.splitlines() if line.strip()]


class ListingStatusHistory(models.Model):
    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="history")
    from_status = models.CharField(max_length=20, choices=ListingStatus.choices)
    to_status = models.CharField(max_length=20, choices=ListingStatus.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name_plural = "listing status history"

    def __str__(self):
        return f"{self.listing_id}: {self.from_status} → {self.to_status}"


class ListingVersion(models.Model):
    """A release of a data product; immutable once published."""

    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="versions")
    label = models.CharField(max_length=40)
    changelog = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    # Added / removed / retyped columns against the previous version (for the page and notifications).
    schema_diff = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["listing", "label"], name="listing_version_label_unique")]

    def __str__(self):
        return f"{self.listing} {self.label}"

    @property
    def is_published(self) -> bool:
        return self.published_at is not None


class DataFile(models.Model):
    version = models.ForeignKey(ListingVersion, on_delete=models.CASCADE, related_name="files")
    original_name = models.CharField(max_length=255)
    # Server-generated path inside private storage; never derived from user input.
    file = models.FileField(max_length=300)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=100)
    format = models.CharField(max_length=20, choices=FileFormat.choices)
    encoding = models.CharField(max_length=20, blank=True, help_text="Text encoding detected at upload.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Profiling results (filled by the profiling task).
    profile_status = models.CharField(max_length=20, choices=ProfileStatus.choices, default=ProfileStatus.PENDING)
    profile_error = models.TextField(blank=True)
    profiled_at = models.DateTimeField(null=True, blank=True)
    row_count = models.BigIntegerField(null=True, blank=True)
    # [{"name", "type", "null_ratio", "min", "max", "pii": ["email", ...]}, ...]
    columns = models.JSONField(default=list, blank=True)
    sample_rows = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return self.original_name

    @property
    def pii_columns(self) -> dict[str, list[str]]:
        return {c["name"]: c["pii"] for c in self.columns if c.get("pii")}


class PricingPlan(models.Model):
    """A way to buy a product. Several may be active at once."""

    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="plans")
    kind = models.CharField(max_length=20, choices=PlanKind.choices, default=PlanKind.ONE_TIME)
    name = models.CharField(max_length=80, blank=True)
    # One-time: the price. Subscription: the price per interval. Metered: the price per unit. Free: 0.
    amount = models.PositiveBigIntegerField(help_text="Price in minor units (fen, cents).")
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    interval = models.CharField(max_length=10, choices=BillingInterval.choices, blank=True)
    metered_unit = models.CharField(max_length=20, choices=MeteredUnit.choices, blank=True)
    free_units_per_month = models.PositiveIntegerField(default=0)
    monthly_cap_units = models.PositiveIntegerField(null=True, blank=True, help_text="No use beyond this per month.")
    version_access = models.CharField(max_length=20, choices=VersionAccess.choices, default=VersionAccess.ALL)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["amount", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(kind="free", amount=0) | (~models.Q(kind="free") & models.Q(amount__gt=0))),
                name="pricing_plan_amount_matches_kind",
            ),
            models.CheckConstraint(
                condition=~models.Q(kind="subscription") | ~models.Q(interval=""),
                name="pricing_plan_subscription_has_interval",
            ),
            models.CheckConstraint(
                condition=~models.Q(kind="metered") | ~models.Q(metered_unit=""),
                name="pricing_plan_metered_has_unit",
            ),
        ]

    def __str__(self):
        return f"{self.display_name} {self.price_display}"

    @property
    def display_name(self) -> str:
        return self.name or self.get_kind_display()

    @property
    def buyer_service_fee(self) -> int:
        """The flat fee (minor units) a buyer pays on top of this plan: one-time purchases only (settings)."""
        if self.kind != PlanKind.ONE_TIME or not self.amount:
            return 0
        return settings.BUYER_SERVICE_FEE.get(self.currency, 0)

    @property
    def buyer_service_fee_display(self) -> str:
        return format_minor(self.buyer_service_fee, self.currency)

    @property
    def price_display(self) -> str:
        if self.kind == PlanKind.FREE:
            return "Free"
        price = format_minor(self.amount, self.currency)
        if self.kind == PlanKind.SUBSCRIPTION:
            return f"{price} / {self.get_interval_display().lower().removesuffix('ly')}"
        if self.kind == PlanKind.METERED:
            return f"{price} {self.get_metered_unit_display()}"
        return price


class ListingReview(models.Model):
    """One compliance review per submission, with the reviewer's checklist and decision."""

    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="reviews")
    version = models.ForeignKey(ListingVersion, on_delete=models.PROTECT, null=True, related_name="reviews")
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    submitted_at = models.DateTimeField(auto_now_add=True)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decision = models.CharField(max_length=20, choices=ReviewDecision.choices, default=ReviewDecision.PENDING)
    notes = models.TextField(blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    # sha256 manifest of the approved version: [{"name", "size", "sha256"}, ...]
    manifest = models.JSONField(default=list, blank=True)
    check_lawful_source = models.BooleanField(default=False, verbose_name=REVIEW_CHECKLIST["check_lawful_source"])
    check_authorisation_chain = models.BooleanField(
        default=False, verbose_name=REVIEW_CHECKLIST["check_authorisation_chain"]
    )
    check_personal_info_as_declared = models.BooleanField(
        default=False, verbose_name=REVIEW_CHECKLIST["check_personal_info_as_declared"]
    )
    check_sensitivity_matches_pii = models.BooleanField(
        default=False, verbose_name=REVIEW_CHECKLIST["check_sensitivity_matches_pii"]
    )
    check_licence_and_scenarios = models.BooleanField(
        default=False, verbose_name=REVIEW_CHECKLIST["check_licence_and_scenarios"]
    )

    class Meta:
        ordering = ["-submitted_at", "-pk"]
        constraints = [
            # At most one open review per listing.
            models.UniqueConstraint(
                fields=["listing"], condition=models.Q(decision="pending"), name="listing_review_one_pending"
            )
        ]

    def __str__(self):
        return f"Review {self.pk} of {self.listing} ({self.decision})"

    @property
    def checklist(self) -> list[tuple[str, str, bool]]:
        return [(field, question, getattr(self, field)) for field, question in REVIEW_CHECKLIST.items()]
