"""Compliance review: approve (registration number, publication) or reject with a reason."""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from listings.choices import ListingStatus
from listings.models import Listing, ListingVersion
from listings.search import listing_refresh_catalog_fields
from listings.services.products import listing_transition, require_staff


def listing_approve(*, listing: Listing, reviewer, notes: str = "") -> Listing:
    """Approve a submitted listing and publish it with its latest version."""
    require_staff(reviewer)
    with transaction.atomic():
        current = Listing.objects.select_for_update().get(pk=listing.pk)
        if current.status == ListingStatus.SUBMITTED:
            listing_transition(listing_pk=current.pk, to_status=ListingStatus.IN_REVIEW, actor=reviewer)
        listing_transition(listing_pk=current.pk, to_status=ListingStatus.APPROVED, actor=reviewer, reason=notes)
        ListingVersion.objects.filter(listing=current, published_at__isnull=True).update(published_at=timezone.now())
        published = listing_transition(listing_pk=current.pk, to_status=ListingStatus.PUBLISHED, actor=reviewer)
        listing_refresh_catalog_fields(listing_pk=current.pk)
        return published


def listing_reject(*, listing: Listing, reviewer, reason: str) -> Listing:
    """Reject a submitted listing; the merchant sees the reason and may resubmit."""
    require_staff(reviewer)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "A rejection needs a reason the merchant can act on."})
    with transaction.atomic():
        current = Listing.objects.select_for_update().get(pk=listing.pk)
        if current.status == ListingStatus.SUBMITTED:
            listing_transition(listing_pk=current.pk, to_status=ListingStatus.IN_REVIEW, actor=reviewer)
        return listing_transition(
            listing_pk=current.pk, to_status=ListingStatus.REJECTED, actor=reviewer, reason=reason
        )
