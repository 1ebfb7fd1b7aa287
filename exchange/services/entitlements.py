"""Entitlements: the buyer's right to a product, granted when an order is paid.

One-time purchases grant perpetual access (``valid_until`` is None);
subscriptions grant access to the end of the paid period, extended by each
paid invoice. A full refund or a dispute revokes access (the download view
re-checks it on every request); a dispute won restores it; a beat task expires
what has lapsed.
"""

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from exchange.choices import EntitlementStatus
from exchange.models import Entitlement, Order


def entitlement_grant(*, order: Order, valid_until=None, scenario: str = "") -> Entitlement:
    """Grant access for a paid order, once (one entitlement per order)."""
    plan = order.plan
    entitlement, _ = Entitlement.objects.get_or_create(
        order=order,
        defaults={
            "buyer_id": order.buyer_id,
            "listing_id": order.listing_id,
            "plan": plan,
            "valid_until": valid_until,
            "version_access": plan.version_access,
            "scenario": scenario or (order.access_request.use_scenario if order.access_request_id else ""),
        },
    )
    return entitlement


def entitlement_revoke(*, entitlement_pk: int, reason: str) -> Entitlement:
    with transaction.atomic():
        entitlement = Entitlement.objects.select_for_update().get(pk=entitlement_pk)
        if entitlement.status != EntitlementStatus.REVOKED:
            entitlement.status, entitlement.revoked_at = EntitlementStatus.REVOKED, timezone.now()
            entitlement.revoked_reason = reason[:300]
            entitlement.save(update_fields=["status", "revoked_at", "revoked_reason"])
    return entitlement


def entitlement_restore(*, entitlement_pk: int) -> Entitlement:
    """Give access back (a dispute won); lapsed subscriptions stay expired."""
    with transaction.atomic():
        entitlement = Entitlement.objects.select_for_update().get(pk=entitlement_pk)
        lapsed = entitlement.valid_until is not None and entitlement.valid_until <= timezone.now()
        entitlement.status = EntitlementStatus.EXPIRED if lapsed else EntitlementStatus.ACTIVE
        entitlement.revoked_at, entitlement.revoked_reason = None, ""
        entitlement.save(update_fields=["status", "revoked_at", "revoked_reason"])
    return entitlement


def entitlement_extend(*, entitlement_pk: int, valid_until) -> Entitlement:
    """Move the end of a subscription's access (renewal, cancellation, failed payment)."""
    with transaction.atomic():
        entitlement = Entitlement.objects.select_for_update().get(pk=entitlement_pk)
        entitlement.valid_until = valid_until
        fields = ["valid_until"]
        if entitlement.status == EntitlementStatus.EXPIRED and valid_until > timezone.now():
            entitlement.status = EntitlementStatus.ACTIVE
            fields.append("status")
        entitlement.save(update_fields=fields)
    return entitlement


def entitlements_expire(*, now=None) -> int:
    """Mark active entitlements whose period has ended as expired; return how many."""
    now = now or timezone.now()
    return Entitlement.objects.filter(status=EntitlementStatus.ACTIVE, valid_until__lte=now).update(
        status=EntitlementStatus.EXPIRED
    )


def usable_q(*, now=None) -> Q:
    """Entitlements that give access now (active and not past their period): the SQL form of entitlement_is_usable."""
    return Q(status=EntitlementStatus.ACTIVE) & (Q(valid_until__isnull=True) | Q(valid_until__gt=now or timezone.now()))


def entitlement_is_usable(entitlement: Entitlement, *, now=None) -> bool:
    now = now or timezone.now()
    if entitlement.status != EntitlementStatus.ACTIVE:
        return False
    return entitlement.valid_until is None or entitlement.valid_until > now
