"""Access requests: for listings that require it, the merchant approves each buyer's use first.

The buyer states their organisation and use scenario; the merchant approves
or rejects within ACCESS_REQUEST_TTL_DAYS, after which the request expires.
Only an approved buyer can check out, and the approved scenario is recorded
on the entitlement.
"""

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from exchange.choices import AccessRequestStatus
from exchange.models import AccessRequest
from exchange.services.transitions import history_start, status_move, statuses_move
from listings.models import Listing
from merchants.selectors import merchant_is_member


def access_request_create(*, listing: Listing, buyer, organisation: str, use_scenario: str) -> AccessRequest:
    organisation, use_scenario = (organisation or "").strip(), (use_scenario or "").strip()
    errors = {}
    if not organisation:
        errors["organisation"] = "Say which organisation will use the data."
    if len(use_scenario) < 20:
        errors["use_scenario"] = "Describe the use scenario in at least 20 characters."
    if errors:
        raise ValidationError(errors)
    if not listing.is_published or not listing.requires_access_request:
        raise ValidationError("This data product does not take access requests.", code="not_required")
    if merchant_is_member(merchant=listing.merchant, user=buyer):
        raise ValidationError("You cannot request access to your own merchant's product.", code="own_listing")
    if AccessRequest.objects.filter(listing=listing, buyer=buyer, status=AccessRequestStatus.APPROVED).exists():
        raise ValidationError("Your access request was already approved; you can buy now.", code="already_approved")
    try:
        with transaction.atomic():
            request = AccessRequest.objects.create(
                listing=listing,
                buyer=buyer,
                organisation=organisation[:200],
                use_scenario=use_scenario[:5000],
                expires_at=timezone.now() + timedelta(days=settings.ACCESS_REQUEST_TTL_DAYS),
            )
            history_start([request], reason="requested by the buyer", actor=buyer)
            return request
    except IntegrityError:
        raise ValidationError("You already have a request waiting for the merchant.", code="already_pending") from None


def access_request_decide(*, request: AccessRequest, actor, approve: bool, note: str = "") -> AccessRequest:
    """The merchant approves or rejects a pending request (a rejection needs a note)."""
    if not merchant_is_member(merchant=request.listing.merchant, user=actor):
        raise PermissionDenied("Only the listing's merchant decides its access requests.")
    note = (note or "").strip()
    if not approve and not note:
        raise ValidationError({"note": "Tell the buyer why the request is rejected."})
    with transaction.atomic():
        locked = AccessRequest.objects.select_for_update().get(pk=request.pk)
        if locked.status != AccessRequestStatus.PENDING:
            raise ValidationError(f"This request is already {locked.get_status_display().lower()}.", code="decided")
        expired = locked.expires_at <= timezone.now()
        if expired:  # recorded (this transaction commits), then refused below
            status_move(locked, AccessRequestStatus.EXPIRED, reason="no decision before it expired")
        else:
            locked.decided_at, locked.decided_by, locked.decision_note = timezone.now(), actor, note[:2000]
            status_move(
                locked,
                AccessRequestStatus.APPROVED if approve else AccessRequestStatus.REJECTED,
                reason=("approved" if approve else "rejected") + (f": {note}" if note else ""),
                actor=actor,
                fields=("decided_at", "decided_by", "decision_note"),
            )
    if expired:
        raise ValidationError("This request expired before a decision.", code="expired")
    return locked


def access_requests_expire(*, now=None) -> int:
    """Expire the pending requests past their time (one history row each); returns how many."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            AccessRequest.objects.select_for_update(skip_locked=True).filter(
                status=AccessRequestStatus.PENDING, expires_at__lte=now
            )
        )
        statuses_move(due, AccessRequestStatus.EXPIRED, reason="no decision before it expired")
    return len(due)
