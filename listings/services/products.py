"""Products: creation, the status machine and submission for review."""

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from listings.choices import LISTING_TRANSITIONS, ListingStatus
from listings.models import DataFile, Listing, ListingStatusHistory
from merchants.selectors import merchant_is_member


class TransitionError(ValidationError):
    """A status move that the transition table does not allow."""


def require_member(listing: Listing, actor) -> None:
    if not merchant_is_member(merchant=listing.merchant, user=actor):
        raise PermissionDenied("Only members of the listing's merchant may change it.")


def require_staff(actor) -> None:
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


def listing_submit(*, listing: Listing, actor) -> Listing:
    """Submit a draft for compliance review; it needs a file and a price."""
    require_member(listing, actor)
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
