"""Orders: creation with idempotency, checkout, and the order state machine."""

import hashlib
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from common.db import rows_copy
from exchange.choices import ORDER_TRANSITIONS, AccessRequestStatus, DeliveryStatus, OrderStatus
from exchange.gateways import get_gateway
from exchange.models import AccessRequest, Entitlement, Order, OrderStatusHistory
from exchange.services.entitlements import usable_q
from exchange.services.fees import orders_commission_fix
from listings.choices import Licence, PlanKind
from listings.models import Listing, PricingPlan
from listings.selectors import listing_active_plan
from merchants.selectors import merchant_is_member

_STAMPS = {
    OrderStatus.PAID: "paid_at",
    OrderStatus.DELIVERED: "delivered_at",
    OrderStatus.SETTLED: "settled_at",
}


class OrderTransitionError(ValidationError):
    pass


class IdempotencyConflict(ValidationError):
    """The idempotency key was already used for a different purchase."""


def order_transition(*, order_pk: int, to_status: str, reason: str = "", actor=None, **fields) -> Order:
    """Move an order to ``to_status`` if ORDER_TRANSITIONS allows it.

    Locks the row, then goes through ``orders_transition_locked``, the only
    code that assigns ``Order.status``: it stamps the matching timestamp,
    saves any extra ``fields`` and writes a history row.
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_pk)
        orders_transition_locked(
            orders=[order], to_status=to_status, reasons={order.pk: reason}, fields={order.pk: fields}, actor=actor
        )
    return order


def orders_transition_locked(
    *, orders: list[Order], to_status: str, reasons: dict[int, str], fields: dict[int, dict] | None = None, actor=None
) -> list[Order]:
    """Move several orders, whose rows the caller holds locked, to ``to_status``; all or none.

    Every move is checked against ORDER_TRANSITIONS before anything is
    written (OrderTransitionError names the first refused order). The same
    columns are written for every order, in one UPDATE, and the history rows
    in one COPY, so a batch of orders costs two statements.
    """
    fields = fields or {}
    for order in orders:
        if to_status not in ORDER_TRANSITIONS.get(order.status, set()):
            raise OrderTransitionError(
                f"Order {order.reference} cannot go from {order.get_status_display()} to "
                f"{OrderStatus(to_status).label}.",
                code="invalid_transition",
            )
    if not orders:
        return orders
    now = timezone.now()
    stamp = _STAMPS.get(to_status)
    update = {"status"} | {name for order in orders for name in fields.get(order.pk, {})}
    actor_pk = actor.pk if actor is not None else None
    history = []
    for order in orders:
        history.append((order.pk, order.status, to_status, reasons.get(order.pk, "")[:300], actor_pk, now))
        order.status = to_status
        for name, value in fields.get(order.pk, {}).items():
            setattr(order, name, value)
        if stamp and getattr(order, stamp) is None:
            setattr(order, stamp, now)
            update.add(stamp)
    if to_status == OrderStatus.PAID:
        orders_commission_fix(orders)  # the trade's price terms are fixed when it is paid, its commission with them
        update.add("commission_bps")
    columns = sorted(update)
    values = [tuple(getattr(order, name) for name in columns) for order in orders]
    if len(orders) == 1:
        orders[0].save(update_fields=columns)
    elif len(set(values)) == 1:  # the usual batch: every order gets the same values, in one plain UPDATE
        same = dict(zip(columns, values[0], strict=True))
        Order.objects.filter(pk__any_of=[order.pk for order in orders]).update(**same)
    else:
        Order.objects.bulk_update(orders, columns)
    rows_copy(OrderStatusHistory, ("order_id", "from_status", "to_status", "reason", "actor_id", "created_at"), history)
    return orders


def _check_can_buy(*, buyer, listing: Listing) -> None:
    if not listing.is_published:
        raise ValidationError("This data product is not available for purchase.", code="not_published")
    if merchant_is_member(merchant=listing.merchant, user=buyer):
        raise ValidationError("You cannot buy your own merchant's data product.", code="own_listing")
    if Entitlement.objects.filter(usable_q(), buyer=buyer, listing=listing).exists():
        raise ValidationError("You already have access to this data product.", code="already_entitled")


def _approved_access_request(*, buyer, listing: Listing) -> AccessRequest | None:
    if not listing.requires_access_request:
        return None
    request = (
        AccessRequest.objects.filter(buyer=buyer, listing=listing, status=AccessRequestStatus.APPROVED)
        .order_by("-decided_at")
        .first()
    )
    if request is None:
        raise ValidationError(
            "This data product needs the merchant's approval first: request access with your use scenario.",
            code="access_request_required",
        )
    return request


def order_create(
    *, buyer, listing: Listing, idempotency_key: str, plan: PricingPlan | None = None
) -> tuple[Order, bool]:
    """Create an order for one of the listing's active plans; return (order, created).

    Without ``plan`` the active one-time plan is bought. A repeat with the same
    ``idempotency_key`` (a double click, a retried API call) returns the first
    order, guaranteed by a unique constraint rather than a check-then-insert;
    reusing a key for another purchase is an error. Free plans complete at
    once (no gateway); metered plans grant access once the gateway has a
    payment method on file (usage is billed later).

    Placing the order is the buyer's acceptance of the listing's licence as it
    stands now: the order records its code, the sha256 of a custom licence's
    text and the time (the web checkout asks for the acceptance explicitly,
    the API documents it).
    """
    key = (idempotency_key or "").strip()
    if not key or len(key) > 100:
        raise ValidationError("A purchase needs an idempotency key of 1 to 100 characters.", code="bad_key")
    existing = Order.objects.filter(buyer=buyer, idempotency_key=key).first()
    if existing:
        return _same_purchase(existing, listing, plan), False
    _check_can_buy(buyer=buyer, listing=listing)
    if plan is None:
        plan = listing_active_plan(listing=listing)
        if plan is None:
            raise ValidationError("This data product has no one-time price.", code="no_plan")
    elif plan.listing_id != listing.pk or not plan.is_active:
        raise ValidationError("That pricing plan is not available for this data product.", code="bad_plan")
    access_request = _approved_access_request(buyer=buyer, listing=listing)
    open_checkout = _open_checkout(buyer=buyer, listing=listing, plan=plan)
    if open_checkout:
        return open_checkout, False
    # Metered plans charge nothing up front: the checkout only collects a payment method.
    amount = 0 if plan.kind in (PlanKind.FREE, PlanKind.METERED) else plan.amount
    service_fee = plan.buyer_service_fee  # one-time purchases: a flat fee on top (settings.BUYER_SERVICE_FEE)
    try:
        with transaction.atomic():
            order = Order.objects.create(
                buyer=buyer,
                listing=listing,
                plan=plan,
                plan_kind=plan.kind,
                merchant_id=listing.merchant_id,
                amount=amount + service_fee,
                service_fee=service_fee,
                currency=plan.currency,
                idempotency_key=key,
                gateway="none" if plan.kind == PlanKind.FREE else get_gateway().name,
                access_request=access_request,
                **licence_acceptance(listing),
            )
            OrderStatusHistory.objects.create(
                order=order, from_status="", to_status=OrderStatus.PENDING_PAYMENT, reason="order placed", actor=buyer
            )
            if plan.kind == PlanKind.FREE:
                _free_order_complete(order=order)
    except IntegrityError:
        # A concurrent request won the insert: the same key (a double click) or an open checkout (another tab).
        existing = Order.objects.filter(buyer=buyer, idempotency_key=key).first()
        if existing:
            return _same_purchase(existing, listing, plan), False
        return _open_checkout(buyer=buyer, listing=listing, plan=plan), False
    return order, True


def licence_acceptance(listing: Listing) -> dict:
    """The order fields that record the buyer accepting ``listing``'s licence now."""
    terms = listing.licence_terms if listing.licence == Licence.CUSTOM else ""
    return {
        "licence": listing.licence,
        "licence_terms_sha256": hashlib.sha256(terms.encode()).hexdigest() if terms else "",
        "licence_accepted_at": timezone.now(),
    }


def _open_checkout(*, buyer, listing: Listing, plan: PricingPlan) -> Order | None:
    """The buyer's unfinished checkout for this plan, which a new purchase resumes."""
    return Order.objects.filter(
        buyer=buyer, listing=listing, plan=plan, status=OrderStatus.PENDING_PAYMENT, subscription__isnull=True
    ).first()


def _free_order_complete(*, order: Order) -> None:
    from exchange.services.entitlements import entitlement_grant
    from exchange.services.notifications import order_paid_notify
    from exchange.tasks import delivery_prepare

    order_transition(order_pk=order.pk, to_status=OrderStatus.PAID, reason="free plan: nothing to pay")
    order.refresh_from_db()
    entitlement = entitlement_grant(order=order)
    order_paid_notify(order=order)
    transaction.on_commit(lambda: delivery_prepare.delay(entitlement.pk))


def _same_purchase(order: Order, listing: Listing, plan: PricingPlan | None = None) -> Order:
    if order.listing_id != listing.pk or (plan is not None and order.plan_id != plan.pk):
        raise IdempotencyConflict("This idempotency key was already used for another purchase.", code="key_reused")
    return order


def order_checkout_start(*, order: Order) -> str:
    """Open the gateway's checkout for a pending order (once) and return its URL."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order.pk)
        if order.gateway_session_id or order.gateway == "none":
            return order.checkout_url or reverse("exchange:order_detail", args=[order.public_id])
        if order.status != OrderStatus.PENDING_PAYMENT:
            raise ValidationError("This order is no longer waiting for payment.", code="not_pending")
        detail = reverse("exchange:order_detail", args=[order.public_id])
        session = get_gateway(order.gateway).checkout_create(order=order, success_url=detail, cancel_url=detail)
        order.gateway_session_id, order.checkout_url = session.id, session.url
        order.save(update_fields=["gateway_session_id", "checkout_url"])
    return order.checkout_url


def order_cancel(*, order: Order, actor, reason: str = "cancelled by the buyer") -> Order:
    """Cancel an order still waiting for payment (the buyer, or staff)."""
    if not (actor.is_staff or actor.pk == order.buyer_id):
        raise ValidationError("Only the buyer or staff can cancel this order.", code="forbidden")
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if locked.status != OrderStatus.PENDING_PAYMENT:
            raise OrderTransitionError(
                f"Only orders waiting for payment can be cancelled; this one is {locked.get_status_display()}.",
                code="not_cancellable",
            )
        return order_transition(order_pk=locked.pk, to_status=OrderStatus.CANCELLED, reason=reason, actor=actor)


def _receipt_confirm_locked(*, order: Order, reason: str, actor=None) -> Order:
    """Confirm delivery of ``order`` (row locked, status checked by the caller): escrow is released to settlement.

    A paid order becomes DELIVERED. A PARTIALLY_REFUNDED order that was never
    confirmed (refunded in part while its payment was still in escrow) keeps
    its status, which says what happened to the money (a self-move ORDER_TRANSITIONS
    allows, so the confirmation has its history row), and gets ``delivered_at``,
    the stamp settlement waits for, as ``delivery.delivery_confirm`` does.
    """
    if order.status == OrderStatus.PAID:
        return order_transition(order_pk=order.pk, to_status=OrderStatus.DELIVERED, reason=reason, actor=actor)
    return order_transition(
        order_pk=order.pk,
        to_status=OrderStatus.PARTIALLY_REFUNDED,
        reason=f"{reason} (after a partial refund)",
        actor=actor,
        delivered_at=timezone.now(),
    )


def _awaiting_receipt(order: Order) -> bool:
    """Paid money still in escrow, waiting for the buyer's receipt: paid, or partly refunded before delivery."""
    return order.delivered_at is None and order.status in (OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED)


def order_confirm_receipt(*, order: Order, actor) -> Order:
    """The buyer confirms they received the data: the payment (what is left of it) leaves escrow.

    Accepts a paid order and a partly refunded one not confirmed before;
    anything else raises OrderTransitionError (code ``not_paid``) and changes
    nothing.
    """
    if actor.pk != order.buyer_id:
        raise ValidationError("Only the buyer can confirm receipt.", code="forbidden")
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if not _awaiting_receipt(locked):
            raise OrderTransitionError(
                f"Receipt can only be confirmed for a paid order; this one is {locked.get_status_display()}.",
                code="not_paid",
            )
        return _receipt_confirm_locked(order=locked, reason="buyer confirmed receipt", actor=actor)


def orders_auto_confirm(*, now=None) -> int:
    """Release escrow for paid orders whose data was handed over long enough ago without complaint.

    Partly refunded orders never confirmed count as paid here (the rest of
    their payment is still in escrow). Safe to run twice: each order is
    re-checked under its row lock.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.ESCROW_AUTO_CONFIRM_DAYS)
    pks = (
        Order.objects.filter(
            status__in=[OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED],
            delivered_at__isnull=True,
            paid_at__lte=cutoff,
            entitlement__deliveries__status__in=[DeliveryStatus.READY, DeliveryStatus.CONFIRMED],
        )
        .values_list("pk", flat=True)
        .distinct()
    )
    done = 0
    for pk in list(pks[:1000]):
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=pk)
            if _awaiting_receipt(locked):
                _receipt_confirm_locked(
                    order=locked, reason=f"auto-confirmed {settings.ESCROW_AUTO_CONFIRM_DAYS} days after delivery"
                )
                done += 1
    return done


def orders_expire_pending(*, now=None) -> int:
    """Expire checkouts nobody finished (the gateway's sessions expire too)."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.CHECKOUT_EXPIRY_HOURS)
    done = 0
    for pk in list(
        Order.objects.filter(status=OrderStatus.PENDING_PAYMENT, created_at__lte=cutoff).values_list("pk", flat=True)[
            :1000
        ]
    ):
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=pk)
            if locked.status == OrderStatus.PENDING_PAYMENT:
                order_transition(order_pk=pk, to_status=OrderStatus.EXPIRED, reason="checkout not completed in time")
                done += 1
    return done
