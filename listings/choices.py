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

# States in which the merchant may still change files and prices.
EDITABLE_STATUSES = {ListingStatus.DRAFT, ListingStatus.REJECTED}


class PlanKind(models.TextChoices):
    ONE_TIME = "one_time", "One-time purchase"


class FileFormat(models.TextChoices):
    CSV = "csv", "CSV"
