"""Writes for listings: products, versions and files, prices, and review."""

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from common.money import CURRENCY_EXPONENT
from listings.choices import EDITABLE_STATUSES, LISTING_TRANSITIONS, ListingStatus, PlanKind
from listings.models import DataFile, Listing, ListingStatusHistory, ListingVersion, PricingPlan
from listings.uploads import inspect_upload, store_upload
from merchants.selectors import merchant_is_member


class TransitionError(ValidationError):
    """A status move that the transition table does not allow."""


def _require_member(listing: Listing, actor) -> None:
    if not merchant_is_member(merchant=listing.merchant, user=actor):
        raise PermissionDenied("Only members of the listing's merchant may change it.")


def _require_staff(actor) -> None:
    if not (actor and actor.is_authenticated and actor.is_staff):
        raise PermissionDenied("Only exchange staff may review listings.")


def _unique_slug(title: str) -> str:
    base = slugify(title)[:100] or "dataset"
    slug, n = base, 1
    while Listing.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def listing_transition(*, listing_pk: int, to_status: str, actor=None, reason: str = "") -> Listing:
    """Move a listing to ``to_status`` if the transition table allows it.

    The only function that assigns ``Listing.status``. Locks the row, records
    a history row, and stamps ``published_at`` on first publication.
    """
    with transaction.atomic():
        listing = Listing.objects.select_for_update().get(pk=listing_pk)
        allowed = LISTING_TRANSITIONS.get(listing.status, set())
        if to_status not in allowed:
            raise TransitionError(
                f"A listing cannot go from {listing.get_status_display()} to {ListingStatus(to_status).label}.",
                code="invalid_transition",
            )
        from_status = listing.status
        listing.status = to_status
        fields = ["status", "updated_at"]
        if to_status == ListingStatus.PUBLISHED and listing.published_at is None:
            listing.published_at = timezone.now()
            fields.append("published_at")
        if to_status == ListingStatus.APPROVED and not listing.registration_number:
            # A stable, human-readable product ID: DX-<year>-<zero-padded pk>.
            listing.registration_number = f"DX-{timezone.now():%Y}-{listing.pk:08d}"
            fields.append("registration_number")
        listing.save(update_fields=fields)
        ListingStatusHistory.objects.create(
            listing=listing, from_status=from_status, to_status=to_status, actor=actor, reason=reason
        )
    return listing


@transaction.atomic
def listing_create(*, merchant, actor, title: str, summary: str = "", description: str = "") -> Listing:
    """Create a draft data product for ``merchant``."""
    if not merchant_is_member(merchant=merchant, user=actor):
        raise PermissionDenied("Only members of a merchant may create its listings.")
    title = (title or "").strip()
    if not title:
        raise ValidationError({"title": "A data product needs a title."})
    return Listing.objects.create(
        merchant=merchant,
        title=title,
        slug=_unique_slug(title),
        summary=(summary or "").strip(),
        description=(description or "").strip(),
    )


def version_upload(*, listing: Listing, actor, uploaded_file, changelog: str = "") -> ListingVersion:
    """Validate ``uploaded_file`` and store it as the listing's next version.

    The whole file is checked before anything is written; if the database
    write fails after the bytes were stored, the stored file is removed, so a
    failed upload leaves nothing behind.
    """
    _require_member(listing, actor)
    if listing.status not in EDITABLE_STATUSES:
        raise ValidationError(
            "Files can only be changed while the product is a draft or was rejected.", code="not_editable"
        )
    facts = inspect_upload(uploaded_file)
    path = store_upload(
        uploaded_file, merchant_pk=listing.merchant_id, listing_pk=listing.pk, extension=facts["format"]
    )
    try:
        with transaction.atomic():
            locked = Listing.objects.select_for_update().get(pk=listing.pk)
            if locked.status not in EDITABLE_STATUSES:
                raise ValidationError("The product changed state during the upload.", code="not_editable")
            number = locked.versions.count() + 1
            version = ListingVersion.objects.create(listing=locked, label=f"v{number}", changelog=changelog.strip())
            DataFile.objects.create(
                version=version,
                original_name=facts["original_name"],
                file=path,
                size=facts["size"],
                sha256=facts["sha256"],
                content_type=facts["content_type"],
                format=facts["format"],
            )
    except BaseException:
        default_storage.delete(path)
        raise
    return version


@transaction.atomic
def pricing_plan_set(*, listing: Listing, actor, amount: int, currency: str) -> PricingPlan:
    """Set the one-time price (minor units). Replaces the active one-time plan.

    Earlier plans are deactivated, not deleted: orders keep pointing at the
    plan they were bought under.
    """
    _require_member(listing, actor)
    if listing.status not in EDITABLE_STATUSES:
        raise ValidationError("Prices can only be changed while the product is a draft.", code="not_editable")
    if currency not in CURRENCY_EXPONENT:
        raise ValidationError({"currency": f"Unsupported currency {currency!r}."})
    if not isinstance(amount, int) or amount <= 0:
        raise ValidationError({"amount": "A one-time price must be greater than zero."})
    PricingPlan.objects.filter(listing=listing, kind=PlanKind.ONE_TIME, is_active=True).update(is_active=False)
    return PricingPlan.objects.create(listing=listing, kind=PlanKind.ONE_TIME, amount=amount, currency=currency)


def listing_submit(*, listing: Listing, actor) -> Listing:
    """Submit a draft for compliance review; it needs a file and a price."""
    _require_member(listing, actor)
    problems = []
    if not DataFile.objects.filter(version__listing=listing).exists():
        problems.append("Upload at least one data file.")
    if not listing.plans.filter(is_active=True).exists():
        problems.append("Set a price.")
    if problems:
        raise ValidationError(problems, code="incomplete")
    listing.refresh_from_db(fields=["status"])
    if listing.status == ListingStatus.REJECTED:
        listing_transition(listing_pk=listing.pk, to_status=ListingStatus.DRAFT, actor=actor, reason="resubmitted")
    return listing_transition(listing_pk=listing.pk, to_status=ListingStatus.SUBMITTED, actor=actor)


def listing_approve(*, listing: Listing, reviewer, notes: str = "") -> Listing:
    """Approve a submitted listing and publish it with its latest version."""
    _require_staff(reviewer)
    with transaction.atomic():
        current = Listing.objects.select_for_update().get(pk=listing.pk)
        if current.status == ListingStatus.SUBMITTED:
            listing_transition(listing_pk=current.pk, to_status=ListingStatus.IN_REVIEW, actor=reviewer)
        listing_transition(listing_pk=current.pk, to_status=ListingStatus.APPROVED, actor=reviewer, reason=notes)
        ListingVersion.objects.filter(listing=current, published_at__isnull=True).update(published_at=timezone.now())
        return listing_transition(listing_pk=current.pk, to_status=ListingStatus.PUBLISHED, actor=reviewer)


def listing_reject(*, listing: Listing, reviewer, reason: str) -> Listing:
    """Reject a submitted listing; the merchant sees the reason and may resubmit."""
    _require_staff(reviewer)
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
