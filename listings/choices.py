from django.db import models


class ListingStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted"
    IN_REVIEW = "in_review", "In review"
    APPROVED = "approved", "Approved"
    PUBLISHED = "published", "Published"
    SUSPENDED = "suspended", "Suspended"
    REJECTED = "rejected", "Rejected"


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
    ONCE = "once", "One-off"
    REALTIME = "realtime", "Real time"
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    QUARTERLY = "quarterly", "Quarterly"
    YEARLY = "yearly", "Yearly"
    IRREGULAR = "irregular", "Irregular"


class Sensitivity(models.TextChoices):
    NONE = "none", "No personal data"
    SENSITIVE = "sensitive", "Sensitive but not personal"
    DEIDENTIFIED = "deidentified", "De-identified personal data"
    PERSONAL = "personal", "Personal data"


class PlanKind(models.TextChoices):
    FREE = "free", "Free"
    ONE_TIME = "one_time", "One-time purchase"
    SUBSCRIPTION = "subscription", "Subscription"
    METERED = "metered", "Metered (pay per use)"


class BillingInterval(models.TextChoices):
    MONTH = "month", "Monthly"
    YEAR = "year", "Yearly"


class MeteredUnit(models.TextChoices):
    CALL = "call", "per API call"
    THOUSAND_ROWS = "thousand_rows", "per 1,000 rows"


class VersionAccess(models.TextChoices):
    ALL = "all", "All versions"
    WHILE_ENTITLED = "while_entitled", "Versions published while entitled"
    LATEST = "latest", "Latest version only"


class FileFormat(models.TextChoices):
    CSV = "csv", "CSV"
    TSV = "tsv", "TSV"
    JSONL = "jsonl", "JSON Lines"
    PARQUET = "parquet", "Parquet"


class ProfileStatus(models.TextChoices):
    PENDING = "pending", "Waiting for profiling"
    DONE = "done", "Profiled"
    FAILED = "failed", "Profiling failed"


class ReviewDecision(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


# The compliance checklist a reviewer completes before approving (the
# exchanges' "no compliance, no listing"): field name -> question.
REVIEW_CHECKLIST: dict[str, str] = {
    "check_lawful_source": "The data comes from a lawful source.",
    "check_authorisation_chain": "The merchant holds the authorisation chain to sell it.",
    "check_personal_info_as_declared": "Personal information is handled as declared.",
    "check_sensitivity_matches_pii": "The sensitivity declaration matches the PII flags found by profiling.",
    "check_licence_and_scenarios": "The licence and the allowed use scenarios are stated.",
}
