from django.db import models
from django.utils.translation import gettext_lazy as _


class ListingStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    SUBMITTED = "submitted", _("Submitted")
    IN_REVIEW = "in_review", _("In review")
    APPROVED = "approved", _("Approved")
    PUBLISHED = "published", _("Published")
    SUSPENDED = "suspended", _("Suspended")
    REJECTED = "rejected", _("Rejected")


# The one table of allowed moves (DESIGN.md §5.3).
LISTING_TRANSITIONS: dict[str, set[str]] = {
    ListingStatus.DRAFT: {ListingStatus.SUBMITTED},
    ListingStatus.SUBMITTED: {ListingStatus.IN_REVIEW, ListingStatus.DRAFT},
    ListingStatus.IN_REVIEW: {ListingStatus.APPROVED, ListingStatus.REJECTED},
    ListingStatus.APPROVED: {ListingStatus.PUBLISHED},
    ListingStatus.PUBLISHED: {ListingStatus.SUSPENDED},
    ListingStatus.SUSPENDED: {ListingStatus.PUBLISHED},
    ListingStatus.REJECTED: {ListingStatus.DRAFT},
}

# States in which the merchant may still change the product's description, files and prices.
EDITABLE_STATUSES = {ListingStatus.DRAFT, ListingStatus.REJECTED}


class Licence(models.TextChoices):
    # Not translated: licence names are proper names, and delivery receipts (hashed, kept as evidence) store them.
    CC_BY_4 = "CC-BY-4.0", "CC BY 4.0"
    CC_BY_SA_4 = "CC-BY-SA-4.0", "CC BY-SA 4.0"
    CC_BY_NC_4 = "CC-BY-NC-4.0", "CC BY-NC 4.0"
    CC_BY_ND_4 = "CC-BY-ND-4.0", "CC BY-ND 4.0"
    CC0 = "CC0-1.0", "CC0 1.0 (public domain)"
    ODBL = "ODbL-1.0", "Open Database License 1.0"
    ODC_BY = "ODC-By-1.0", "Open Data Commons Attribution 1.0"
    PDDL = "PDDL-1.0", "Public Domain Dedication and License 1.0"
    CUSTOM = "custom", "Custom terms"


class UpdateFrequency(models.TextChoices):
    ONCE = "once", _("One-off")
    REALTIME = "realtime", _("Real time")
    DAILY = "daily", _("Daily")
    WEEKLY = "weekly", _("Weekly")
    MONTHLY = "monthly", _("Monthly")
    QUARTERLY = "quarterly", _("Quarterly")
    YEARLY = "yearly", _("Yearly")
    IRREGULAR = "irregular", _("Irregular")


class Sensitivity(models.TextChoices):
    NONE = "none", _("No personal data")
    SENSITIVE = "sensitive", _("Sensitive but not personal")
    DEIDENTIFIED = "deidentified", _("De-identified personal data")
    PERSONAL = "personal", _("Personal data")


class PlanKind(models.TextChoices):
    FREE = "free", _("Free")
    ONE_TIME = "one_time", _("One-time purchase")
    SUBSCRIPTION = "subscription", _("Subscription")
    METERED = "metered", _("Metered (pay per use)")


class BillingInterval(models.TextChoices):
    MONTH = "month", _("Monthly")
    YEAR = "year", _("Yearly")


class MeteredUnit(models.TextChoices):
    CALL = "call", _("per API call")
    THOUSAND_ROWS = "thousand_rows", _("per 1,000 rows")


class VersionAccess(models.TextChoices):
    ALL = "all", _("All versions")
    WHILE_ENTITLED = "while_entitled", _("Versions published while entitled")
    LATEST = "latest", _("Latest version only")


class FileFormat(models.TextChoices):
    CSV = "csv", _("CSV")
    TSV = "tsv", _("TSV")
    JSONL = "jsonl", _("JSON Lines")
    PARQUET = "parquet", _("Parquet")


class ProfileStatus(models.TextChoices):
    PENDING = "pending", _("Waiting for profiling")
    DONE = "done", _("Profiled")
    FAILED = "failed", _("Profiling failed")


class ReviewDecision(models.TextChoices):
    PENDING = "pending", _("Pending")
    APPROVED = "approved", _("Approved")
    REJECTED = "rejected", _("Rejected")


# The compliance checklist a reviewer completes before approving (the
# exchanges' "no compliance, no listing"): field name -> question.
REVIEW_CHECKLIST: dict[str, str] = {
    "check_lawful_source": "The data comes from a lawful source.",
    "check_authorisation_chain": "The merchant holds the authorisation chain to sell it.",
    "check_personal_info_as_declared": "Personal information is handled as declared.",
    "check_sensitivity_matches_pii": "The sensitivity declaration matches the PII flags found by profiling.",
    "check_licence_and_scenarios": "The licence and the allowed use scenarios are stated.",
}
