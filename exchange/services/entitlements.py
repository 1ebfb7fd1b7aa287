"""Entitlements: the buyer's right to a product, granted when an order is paid.

One-time purchases grant perpetual access (``valid_until`` is None);
subscriptions grant access to the end of the paid period, extended by each
paid invoice. A full refund or a dispute revokes access (the download view
re-checks it on every request); a dispute won restores it; a beat task expires
what has lapsed.
"""

from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from exchange.choices import ENTITLEMENT_TRANSITIONS, EntitlementStatus
from exchange.models import Entitlement, EntitlementStatusHistory, Notification, Order
from exchange.services.notifications import entitlement_expiring_dedupe_key, entitlement_expiring_notify


def entitlement_grant(*, order: Order, valid_until=None, scenario: str = "") -> Entitlement:
    """Grant access for a paid order, once (one entitlement per order)."""
    plan = order.plan
    entitlement, created = Entitlement.objects.get_or_create(
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
    if created:
        EntitlementStatusHistory.objects.create(
            entitlement=entitlement, from_status="", to_status=entitlement.status, reason=f"order {order.reference}"
        )
    return entitlement


def entitlements_grant_new(*, orders: list[Order]) -> list[Entitlement]:
    """Grant perpetual access for several paid orders that have no entitlement yet, in two statements.

    For the payment drain's batches: the caller holds the orders locked and
    has checked that none has an entitlement (one per order is also a unique
    constraint, so a mistake fails loudly instead of granting twice). Load
    ``plan`` and ``access_request`` with the orders.
    """
    if not orders:
        return []
    entitlements = Entitlement.objects.bulk_create(
        [
            Entitlement(
                order=order,
                buyer_id=order.buyer_id,
                listing_id=order.listing_id,
                plan=order.plan,
                valid_until=None,
                version_access=order.plan.version_access,
                scenario=order.access_request.use_scenario if order.access_request_id else "",
            )
            for order in orders
        ]
    )
    EntitlementStatusHistory.objects.bulk_create(
        [
            EntitlementStatusHistory(
                entitlement=entitlement, from_status="", to_status=entitlement.status, reason=f"order {order.reference}"
            )
            for entitlement, order in zip(entitlements, orders, strict=True)
        ]
    )
    return entitlements


def _transition(entitlement: Entitlement, to_status: str, *, reason: str, fields: dict | None = None) -> None:
    """The one place an entitlement's status changes: call with the row locked.

    Checks ENTITLEMENT_TRANSITIONS, saves ``fields`` with the status, writes a
    history row. Moving to the status it already has only saves ``fields``.
    """
    fields = dict(fields or {})
    if to_status != entitlement.status:
        if to_status not in ENTITLEMENT_TRANSITIONS[entitlement.status]:
            raise ValueError(f"An entitlement cannot go from {entitlement.status} to {to_status}.")
        EntitlementStatusHistory.objects.create(
            entitlement=entitlement, from_status=entitlement.status, to_status=to_status, reason=reason[:300]
        )
        fields["status"] = to_status
    for name, value in fields.items():
        setattr(entitlement, name, value)
    if fields:
        entitlement.save(update_fields=list(fields))


def _locked(entitlement_pk: int) -> Entitlement:
    return Entitlement.objects.select_for_update().get(pk=entitlement_pk)


def entitlement_revoke(*, entitlement_pk: int, reason: str) -> Entitlement:
    with transaction.atomic():
        entitlement = _locked(entitlement_pk)
        if entitlement.status != EntitlementStatus.REVOKED:
            _transition(
                entitlement,
                EntitlementStatus.REVOKED,
                reason=reason,
                fields={"revoked_at": timezone.now(), "revoked_reason": reason[:300]},
            )
    return entitlement


def entitlement_restore(*, entitlement_pk: int, reason: str = "access restored") -> Entitlement:
    """Give access back (a dispute won); lapsed subscriptions stay expired."""
    with transaction.atomic():
        entitlement = _locked(entitlement_pk)
        lapsed = entitlement.valid_until is not None and entitlement.valid_until <= timezone.now()
        target = EntitlementStatus.EXPIRED if lapsed else EntitlementStatus.ACTIVE
        _transition(entitlement, target, reason=reason, fields={"revoked_at": None, "revoked_reason": ""})
    return entitlement


def entitlement_extend(*, entitlement_pk: int, valid_until, reason: str = "period changed") -> Entitlement:
    """Move the end of a subscription's access (renewal, cancellation, failed payment)."""
    with transaction.atomic():
        entitlement = _locked(entitlement_pk)
        target = entitlement.status
        if entitlement.status == EntitlementStatus.EXPIRED and valid_until > timezone.now():
            target = EntitlementStatus.ACTIVE
        _transition(entitlement, target, reason=reason, fields={"valid_until": valid_until})
    return entitlement


def entitlements_expire(*, now=None, batch: int = 1000) -> int:
    """Expire active entitlements whose period has ended (up to ``batch`` a run); return how many."""
    now = now or timezone.now()
    lapsed = Entitlement.objects.filter(status=EntitlementStatus.ACTIVE, valid_until__lte=now)
    done = 0
    for pk in list(lapsed.values_list("pk", flat=True)[:batch]):
        with transaction.atomic():
            entitlement = _locked(pk)
            if (
                entitlement.status == EntitlementStatus.ACTIVE
                and entitlement.valid_until
                and entitlement.valid_until <= now
            ):
                _transition(entitlement, EntitlementStatus.EXPIRED, reason="paid period ended")
                done += 1
    return done


def entitlements_expiring_notify(*, within_days: int, now=None, chunk: int = 500) -> int:
    """Tell buyers whose usable access ends within ``within_days`` days; return how many new notices were sent.

    One notice per entitlement and period (the dedupe key includes
    ``valid_until``), so running it every hour notifies once, and a renewed
    subscription is told again near the end of its next period.
    """
    now = now or timezone.now()
    ending = Entitlement.objects.filter(usable_q(now=now), valid_until__lte=now + timedelta(days=within_days))
    pks = list(ending.order_by("valid_until", "pk").values_list("pk", flat=True))
    sent = 0
    for start in range(0, len(pks), chunk):
        batch = list(
            Entitlement.objects.filter(pk__in=pks[start : start + chunk]).select_related("buyer", "listing", "order")
        )
        # One query finds the entitlements already told this period, so an hourly run costs little.
        keys = {entitlement.pk: entitlement_expiring_dedupe_key(entitlement) for entitlement in batch}
        told = set(Notification.objects.filter(dedupe_key__in=keys.values()).values_list("dedupe_key", flat=True))
        sent += sum(entitlement_expiring_notify(entitlement=e) for e in batch if keys[e.pk] not in told)
    return sent


def usable_q(*, now=None) -> Q:
    """Entitlements that give access now (active and not past their period): the SQL form of entitlement_is_usable."""
    return Q(status=EntitlementStatus.ACTIVE) & (Q(valid_until__isnull=True) | Q(valid_until__gt=now or timezone.now()))


def entitlement_is_usable(entitlement: Entitlement, *, now=None) -> bool:
    now = now or timezone.now()
    if entitlement.status != EntitlementStatus.ACTIVE:
        return False
    return entitlement.valid_until is None or entitlement.valid_until > now
