"""Orders: creation with idempotency, checkout, and the order state machine."""

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from exchange.choices import ORDER_TRANSITIONS, EntitlementStatus, OrderStatus
from exchange.gateways import get_gateway
from exchange.models import Entitlement, Order, OrderStatusHistory
from listings.models import Listing
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

    The only function that assigns ``Order.status``: locks the row, stamps the
    matching timestamp, saves any extra ``fields`` and writes a history row.
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_pk)
        if to_status not in ORDER_TRANSITIONS.get(order.status, set()):
            raise OrderTransitionError(
                f"Order {order.reference} cannot go from {order.get_status_display()} to "
                f"{OrderStatus(to_status).label}.",
                code="invalid_transition",
            )
        from_status = order.status
        order.status = to_status
        update = ["status", *fields]
        for name, value in fields.items():
            setattr(order, name, value)
        stamp = _STAMPS.get(to_status)
        if stamp and getattr(order, stamp) is None:
            setattr(order, stamp, timezone.now())
            update.append(stamp)
        order.save(update_fields=update)
        OrderStatusHistory.objects.create(
            order=order, from_status=from_status, to_status=to_status, reason=reason[:300], actor=actor
        )
    return order


def _check_can_buy(*, buyer, listing: Listing) -> None:
    if not listing.is_published:
        raise ValidationError("This data product is not available for purchase.", code="not_published")
    if merchant_is_member(merchant=listing.merchant, user=buyer):
        raise ValidationError("You cannot buy your own merchant's data product.", code="own_listing")
    if Entitlement.objects.filter(buyer=buyer, listing=listing, status=EntitlementStatus.ACTIVE).exists():
        raise ValidationError("You already have access to this data product.", code="already_entitled")


def order_create(*, buyer, listing: Listing, idempotency_key: str) -> tuple[Order, bool]:
    """Create a pending order for the listing's active plan; return (order, created).

    A repeat with the same ``idempotency_key`` (a double click, a retried API
    call) returns the first order, guaranteed by a unique constraint rather
    than a check-then-insert. Reusing a key for another listing is an error.
    """
    key = (idempotency_key or "").strip()
    if not key or len(key) > 100:
        raise ValidationError("A purchase needs an idempotency key of 1 to 100 characters.", code="bad_key")
    existing = Order.objects.filter(buyer=buyer, idempotency_key=key).first()
    if existing:
        return _same_purchase(existing, listing), False
    _check_can_buy(buyer=buyer, listing=listing)
    plan = listing_active_plan(listing=listing)
    if plan is None:
        raise ValidationError("This data product has no price yet.", code="no_plan")
    try:
        with transaction.atomic():
            order = Order.objects.create(
                buyer=buyer,
                listing=listing,
                plan=plan,
                merchant_id=listing.merchant_id,
                amount=plan.amount,
                currency=plan.currency,
                idempotency_key=key,
                gateway=get_gateway().name,
            )
            OrderStatusHistory.objects.create(
                order=order, from_status="", to_status=OrderStatus.PENDING_PAYMENT, reason="order placed", actor=buyer
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        return _same_purchase(Order.objects.get(buyer=buyer, idempotency_key=key), listing), False
    return order, True


def _same_purchase(order: Order, listing: Listing) -> Order:
    if order.listing_id != listing.pk:
        raise IdempotencyConflict("This idempotency key was already used for another purchase.", code="key_reused")
    return order


def order_checkout_start(*, order: Order) -> str:
    """Open the gateway's checkout for a pending order (once) and return its URL."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order.pk)
        if order.gateway_session_id:
            return order.checkout_url
        if order.status != OrderStatus.PENDING_PAYMENT:
            raise ValidationError("This order is no longer waiting for payment.", code="not_pending")
        detail = reverse("exchange:order_detail", args=[order.public_id])
        session = get_gateway(order.gateway).checkout_create(order=order, success_url=detail, cancel_url=detail)
        order.gateway_session_id, order.checkout_url = session.id, session.url
        order.save(update_fields=["gateway_session_id", "checkout_url"])
    return order.checkout_url
