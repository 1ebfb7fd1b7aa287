"""Compliance review ("no compliance, no listing").

Every submission opens one ListingReview (at most one pending per listing,
enforced by a partial unique constraint). The reviewer completes the
checklist with the profiling results and PII flags in front of them, then
approves — which issues the registration number, records the sha256 manifest
of the approved version and publishes it — or rejects with a reason the
merchant can act on. Either way the merchant's members are emailed and see
the outcome on their product page.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from listings.choices import REVIEW_CHECKLIST, ListingStatus, ProfileStatus, ReviewDecision
from listings.models import DataFile, Listing, ListingReview, ListingVersion
from listings.search import listing_refresh_catalog_fields
from listings.services.products import listing_transition, require_staff
from listings.services.versions import version_published_hooks_schedule


def review_open(*, listing: Listing, submitted_by) -> ListingReview:
    """Open the review of a submission (called by listing_submit in its transaction)."""
    version = listing.versions.filter(published_at__isnull=True).order_by("-created_at", "-pk").first()
    try:
        with transaction.atomic():
            return ListingReview.objects.create(listing=listing, version=version, submitted_by=submitted_by)
    except IntegrityError:
        # Already pending (a resubmission racing itself): keep the open review.
        return ListingReview.objects.get(listing=listing, decision=ReviewDecision.PENDING)


def _pending_review(listing: Listing) -> ListingReview:
    review = ListingReview.objects.select_for_update().filter(listing=listing, decision=ReviewDecision.PENDING).first()
    if review is None:
        raise ValidationError("This listing has no submission waiting for review.", code="no_pending_review")
    return review


def _clean_checklist(checklist: dict | None) -> dict[str, bool]:
    checklist = checklist or {}
    unknown = set(checklist) - set(REVIEW_CHECKLIST)
    if unknown:
        raise ValidationError(f"Unknown checklist items: {', '.join(sorted(unknown))}.", code="bad_checklist")
    return {field: bool(checklist.get(field)) for field in REVIEW_CHECKLIST}


def version_manifest(*, version: ListingVersion) -> list[dict]:
    """The sha256 manifest of a version: what exactly was approved and is delivered."""
    return [
        {"name": f.original_name, "size": f.size, "sha256": f.sha256, "format": f.format}
        for f in DataFile.objects.filter(version=version).order_by("pk")
    ]


def _notify(review: ListingReview) -> None:
    listing = review.listing
    recipients = sorted(
        {m.user.email for m in listing.merchant.members.select_related("user")}
        | {listing.merchant.contact_email} - {""}
    )
    if not recipients:
        return
    context = {"review": review, "listing": listing, "site_url": settings.SITE_URL}
    subject = f"[Data Exchange] {listing.title}: {review.get_decision_display().lower()}"
    body = render_to_string("listings/email/review_outcome.txt", context)
    transaction.on_commit(lambda: send_mail(subject, body, None, recipients))


def listing_approve(*, listing: Listing, reviewer, checklist: dict | None = None, notes: str = "") -> Listing:
    """Approve the pending submission and publish its version.

    Every checklist item must be confirmed and every file of the version
    profiled; otherwise a ValidationError says what is missing and nothing
    changes.
    """
    require_staff(reviewer)
    answers = _clean_checklist(checklist)
    missing = [REVIEW_CHECKLIST[field] for field, ok in answers.items() if not ok]
    if missing:
        raise ValidationError(["Confirm every checklist item before approving:", *missing], code="checklist_incomplete")
    with transaction.atomic():
        current = Listing.objects.select_for_update().get(pk=listing.pk)
        review = _pending_review(current)
        version = review.version
        if version is None:
            raise ValidationError("The submission has no version to approve.", code="no_version")
        files = list(DataFile.objects.filter(version=version))
        if not files or any(f.profile_status != ProfileStatus.DONE for f in files):
            raise ValidationError(
                "Profiling of the submitted files has not finished successfully; review the results first.",
                code="not_profiled",
            )
        if current.status == ListingStatus.SUBMITTED:
            listing_transition(listing_pk=current.pk, to_status=ListingStatus.IN_REVIEW, actor=reviewer)
        listing_transition(listing_pk=current.pk, to_status=ListingStatus.APPROVED, actor=reviewer, reason=notes)
        now = timezone.now()
        if ListingVersion.objects.filter(pk=version.pk, published_at__isnull=True).update(published_at=now):
            version_published_hooks_schedule(version_pk=version.pk)
        for field, value in answers.items():
            setattr(review, field, value)
        review.reviewer, review.decision, review.decided_at = reviewer, ReviewDecision.APPROVED, now
        review.notes, review.manifest = notes.strip(), version_manifest(version=version)
        review.save()
        published = listing_transition(listing_pk=current.pk, to_status=ListingStatus.PUBLISHED, actor=reviewer)
        listing_refresh_catalog_fields(listing_pk=current.pk)
        _notify(review)
        return published


def listing_reject(*, listing: Listing, reviewer, reason: str, checklist: dict | None = None) -> Listing:
    """Reject the pending submission; the merchant sees the reason and may resubmit."""
    require_staff(reviewer)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "A rejection needs a reason the merchant can act on."})
    answers = _clean_checklist(checklist)
    with transaction.atomic():
        current = Listing.objects.select_for_update().get(pk=listing.pk)
        review = _pending_review(current)
        if current.status == ListingStatus.SUBMITTED:
            listing_transition(listing_pk=current.pk, to_status=ListingStatus.IN_REVIEW, actor=reviewer)
        rejected = listing_transition(
            listing_pk=current.pk, to_status=ListingStatus.REJECTED, actor=reviewer, reason=reason
        )
        for field, value in answers.items():
            setattr(review, field, value)
        review.reviewer, review.decision, review.decided_at = reviewer, ReviewDecision.REJECTED, timezone.now()
        review.notes = reason
        review.save()
        _notify(review)
        return rejected


def listing_suspend(*, listing: Listing, reviewer, reason: str) -> Listing:
    """Take a published listing out of the catalog (existing buyers keep their entitlements)."""
    require_staff(reviewer)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "A suspension needs a reason."})
    return listing_transition(listing_pk=listing.pk, to_status=ListingStatus.SUSPENDED, actor=reviewer, reason=reason)


def listing_reinstate(*, listing: Listing, reviewer, reason: str = "") -> Listing:
    require_staff(reviewer)
    return listing_transition(
        listing_pk=listing.pk, to_status=ListingStatus.PUBLISHED, actor=reviewer, reason=reason or "reinstated"
    )
