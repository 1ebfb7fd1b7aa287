from django.conf import settings
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _

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

    slug = models.SlugField(verbose_name=_("slug"), max_length=60, unique=True)
    name = models.CharField(verbose_name=_("name"), max_length=100)
    name_zh = models.CharField(verbose_name=_("name zh"), max_length=100, blank=True)
    position = models.PositiveSmallIntegerField(verbose_name=_("position"), default=0)

    class Meta:
        verbose_name = _("category")
        ordering = ["position", "name"]
        verbose_name_plural = _("categories")

    def __str__(self):
        return self.name


class Tag(models.Model):
    name = models.CharField(verbose_name=_("name"), max_length=50, unique=True)

    class Meta:
        verbose_name = _("tag")
        verbose_name_plural = _("tags")
        ordering = ["name"]

    def __str__(self):
        return self.name


class Listing(models.Model):
    """A data product a merchant offers on the exchange."""

    merchant = models.ForeignKey(
        Merchant, verbose_name=_("merchant"), on_delete=models.PROTECT, related_name="listings"
    )
    title = models.CharField(verbose_name=_("title"), max_length=200)
    slug = models.SlugField(verbose_name=_("slug"), max_length=120, unique=True)
    summary = models.CharField(verbose_name=_("summary"), max_length=300, blank=True)
    description = models.TextField(
        verbose_name=_("description"), blank=True, help_text=_("Markdown; rendered and sanitised.")
    )
    category = models.ForeignKey(
        Category, verbose_name=_("category"), on_delete=models.PROTECT, null=True, blank=True, related_name="listings"
    )
    tags = models.ManyToManyField(Tag, verbose_name=_("tags"), blank=True, related_name="listings")
    licence = models.CharField(
        verbose_name=_("licence"), max_length=20, choices=Licence.choices, default=Licence.CC_BY_4
    )
    licence_terms = models.TextField(
        verbose_name=_("licence terms"), blank=True, help_text=_("The licence text when the licence is custom.")
    )
    update_frequency = models.CharField(
        verbose_name=_("update frequency"), max_length=20, choices=UpdateFrequency.choices, default=UpdateFrequency.ONCE
    )
    temporal_start = models.DateField(verbose_name=_("temporal start"), null=True, blank=True)
    temporal_end = models.DateField(verbose_name=_("temporal end"), null=True, blank=True)
    geographic_coverage = models.CharField(verbose_name=_("geographic coverage"), max_length=200, blank=True)
    use_scenarios = models.TextField(
        verbose_name=_("use scenarios"), blank=True, help_text=_("The uses the merchant allows, one per line.")
    )
    sensitivity = models.CharField(
        verbose_name=_("sensitivity"), max_length=20, choices=Sensitivity.choices, default=Sensitivity.NONE
    )
    # Buyers must state a use scenario and be approved by the merchant before they can check out.
    requires_access_request = models.BooleanField(verbose_name=_("requires access request"), default=False)
    # Column name -> the merchant's description, layered over the inferred schema.
    data_dictionary = models.JSONField(verbose_name=_("data dictionary"), default=dict, blank=True)
    # Assigned by status transitions only (listings.services.listing_transition).
    status = models.CharField(
        verbose_name=_("status"),
        max_length=20,
        choices=ListingStatus.choices,
        default=ListingStatus.DRAFT,
        editable=False,
    )
    registration_number = models.CharField(
        verbose_name=_("registration number"), max_length=40, unique=True, null=True, blank=True, editable=False
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)
    published_at = models.DateTimeField(verbose_name=_("published at"), null=True, blank=True, editable=False)
    # Denormalised for the catalog (facets, sorting, search); kept current by the services.
    price_from = models.BigIntegerField(verbose_name=_("price from"), null=True, blank=True, editable=False)
    price_currency = models.CharField(verbose_name=_("price currency"), max_length=3, blank=True, editable=False)
    # The kinds of the active plans, sorted and comma-delimited at both ends (",one_time,subscription,"),
    # so the catalog's price-type facet counts them without joining the plans.
    price_kinds = models.CharField(verbose_name=_("price kinds"), max_length=80, blank=True, editable=False)
    primary_format = models.CharField(
        verbose_name=_("primary format"), max_length=20, choices=FileFormat.choices, blank=True, editable=False
    )
    column_names = models.TextField(verbose_name=_("column names"), blank=True, editable=False)
    search_vector = SearchVectorField(null=True, editable=False)

    class Meta:
        verbose_name = _("listing")
        verbose_name_plural = _("listings")
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
    listing = models.ForeignKey(Listing, verbose_name=_("listing"), on_delete=models.CASCADE, related_name="history")
    from_status = models.CharField(verbose_name=_("from status"), max_length=20, choices=ListingStatus.choices)
    to_status = models.CharField(verbose_name=_("to status"), max_length=20, choices=ListingStatus.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("actor"), on_delete=models.SET_NULL, null=True, blank=True
    )
    reason = models.TextField(verbose_name=_("reason"), blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("listing status history")
        ordering = ["created_at", "pk"]
        verbose_name_plural = _("listing status history")

    def __str__(self):
        return f"{self.listing_id}: {self.from_status} → {self.to_status}"


class ListingVersion(models.Model):
    """A release of a data product; immutable once published."""

    listing = models.ForeignKey(Listing, verbose_name=_("listing"), on_delete=models.CASCADE, related_name="versions")
    label = models.CharField(verbose_name=_("label"), max_length=40)
    changelog = models.TextField(verbose_name=_("changelog"), blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    published_at = models.DateTimeField(verbose_name=_("published at"), null=True, blank=True)
    # Added / removed / retyped columns against the previous version (for the page and notifications).
    schema_diff = models.JSONField(verbose_name=_("schema diff"), default=dict, blank=True)

    class Meta:
        verbose_name = _("listing version")
        verbose_name_plural = _("listing versions")
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["listing", "label"], name="listing_version_label_unique")]

    def __str__(self):
        return f"{self.listing} {self.label}"

    @property
    def is_published(self) -> bool:
        return self.published_at is not None


class DataFile(models.Model):
    version = models.ForeignKey(
        ListingVersion, verbose_name=_("version"), on_delete=models.CASCADE, related_name="files"
    )
    original_name = models.CharField(verbose_name=_("original name"), max_length=255)
    # Server-generated path inside private storage; never derived from user input.
    file = models.FileField(verbose_name=_("file"), max_length=300)
    size = models.BigIntegerField(verbose_name=_("size"))
    sha256 = models.CharField(verbose_name=_("sha256"), max_length=64)
    content_type = models.CharField(verbose_name=_("content type"), max_length=100)
    format = models.CharField(verbose_name=_("format"), max_length=20, choices=FileFormat.choices)
    encoding = models.CharField(
        verbose_name=_("encoding"), max_length=20, blank=True, help_text=_("Text encoding detected at upload.")
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    # Profiling results (filled by the profiling task).
    profile_status = models.CharField(
        verbose_name=_("profile status"), max_length=20, choices=ProfileStatus.choices, default=ProfileStatus.PENDING
    )
    profile_error = models.TextField(verbose_name=_("profile error"), blank=True)
    profiled_at = models.DateTimeField(verbose_name=_("profiled at"), null=True, blank=True)
    row_count = models.BigIntegerField(verbose_name=_("row count"), null=True, blank=True)
    # [{"name", "type", "null_ratio", "min", "max", "pii": ["email", ...]}, ...]
    columns = models.JSONField(verbose_name=_("columns"), default=list, blank=True)
    sample_rows = models.JSONField(verbose_name=_("sample rows"), default=list, blank=True)

    class Meta:
        verbose_name = _("data file")
        verbose_name_plural = _("data files")
        ordering = ["pk"]

    def __str__(self):
        return self.original_name

    @property
    def pii_columns(self) -> dict[str, list[str]]:
        return {c["name"]: c["pii"] for c in self.columns if c.get("pii")}


class PricingPlan(models.Model):
    """A way to buy a product. Several may be active at once."""

    listing = models.ForeignKey(Listing, verbose_name=_("listing"), on_delete=models.CASCADE, related_name="plans")
    kind = models.CharField(verbose_name=_("kind"), max_length=20, choices=PlanKind.choices, default=PlanKind.ONE_TIME)
    name = models.CharField(verbose_name=_("name"), max_length=80, blank=True)
    # One-time: the price. Subscription: the price per interval. Metered: the price per unit. Free: 0.
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"), help_text=_("Price in minor units (fen, cents)."))
    currency = models.CharField(verbose_name=_("currency"), max_length=3, choices=CURRENCY_CHOICES)
    interval = models.CharField(verbose_name=_("interval"), max_length=10, choices=BillingInterval.choices, blank=True)
    metered_unit = models.CharField(
        verbose_name=_("metered unit"), max_length=20, choices=MeteredUnit.choices, blank=True
    )
    free_units_per_month = models.PositiveIntegerField(verbose_name=_("free units per month"), default=0)
    monthly_cap_units = models.PositiveIntegerField(
        verbose_name=_("monthly cap units"), null=True, blank=True, help_text=_("No use beyond this per month.")
    )
    version_access = models.CharField(
        verbose_name=_("version access"), max_length=20, choices=VersionAccess.choices, default=VersionAccess.ALL
    )
    is_active = models.BooleanField(verbose_name=_("is active"), default=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("pricing plan")
        verbose_name_plural = _("pricing plans")
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
        """The price for people, in the active language: "Free", "¥12.00 CNY", "¥30.00 CNY / month"."""
        if self.kind == PlanKind.FREE:
            return gettext("Free")
        price = format_minor(self.amount, self.currency)
        if self.kind == PlanKind.SUBSCRIPTION:
            if self.interval == BillingInterval.YEAR:
                return gettext("%(price)s / year") % {"price": price}
            return gettext("%(price)s / month") % {"price": price}
        if self.kind == PlanKind.METERED:
            return f"{price} {self.get_metered_unit_display()}"
        return price


# The checklist questions stay plain strings in listings.choices (the review services compare and store them);
# these markers put them in the catalog, so the fields below (gettext_lazy of the question) show translated.
_CHECKLIST_MESSAGES = (
    gettext_noop("The data comes from a lawful source."),
    gettext_noop("The merchant holds the authorisation chain to sell it."),
    gettext_noop("Personal information is handled as declared."),
    gettext_noop("The sensitivity declaration matches the PII flags found by profiling."),
    gettext_noop("The licence and the allowed use scenarios are stated."),
)


class ListingReview(models.Model):
    """One compliance review per submission, with the reviewer's checklist and decision."""

    listing = models.ForeignKey(Listing, verbose_name=_("listing"), on_delete=models.CASCADE, related_name="reviews")
    version = models.ForeignKey(
        ListingVersion, verbose_name=_("version"), on_delete=models.PROTECT, null=True, related_name="reviews"
    )
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("submitted by"), on_delete=models.SET_NULL, null=True, related_name="+"
    )
    submitted_at = models.DateTimeField(verbose_name=_("submitted at"), auto_now_add=True)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("reviewer"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    decision = models.CharField(
        verbose_name=_("decision"), max_length=20, choices=ReviewDecision.choices, default=ReviewDecision.PENDING
    )
    notes = models.TextField(verbose_name=_("notes"), blank=True)
    decided_at = models.DateTimeField(verbose_name=_("decided at"), null=True, blank=True)
    # sha256 manifest of the approved version: [{"name", "size", "sha256"}, ...]
    manifest = models.JSONField(verbose_name=_("manifest"), default=list, blank=True)
    check_lawful_source = models.BooleanField(default=False, verbose_name=_(REVIEW_CHECKLIST["check_lawful_source"]))
    check_authorisation_chain = models.BooleanField(
        default=False, verbose_name=_(REVIEW_CHECKLIST["check_authorisation_chain"])
    )
    check_personal_info_as_declared = models.BooleanField(
        default=False, verbose_name=_(REVIEW_CHECKLIST["check_personal_info_as_declared"])
    )
    check_sensitivity_matches_pii = models.BooleanField(
        default=False, verbose_name=_(REVIEW_CHECKLIST["check_sensitivity_matches_pii"])
    )
    check_licence_and_scenarios = models.BooleanField(
        default=False, verbose_name=_(REVIEW_CHECKLIST["check_licence_and_scenarios"])
    )

    class Meta:
        verbose_name = _("listing review")
        verbose_name_plural = _("listing reviews")
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
