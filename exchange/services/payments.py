"""Gateway notifications: verify, insert once, process after commit.

The webhook endpoint and the sandbox gateway both call :func:`webhook_ingest`
with the raw body and signature header. Processing happens in a Celery task
(never in the web request) that locks the event row, dispatches on the event
type through a dict, and re-checks the order's state before acting, because
events arrive at least once and in any order.
"""

import logging
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from exchange.choices import AccountKind, JournalKind, OrderStatus, PaymentEventStatus
from exchange.gateways import SignatureError, get_gateway
from exchange.models import Order, PaymentEvent
from exchange.services.delivery import entitlement_grant
from exchange.services.ledger import account_get, journal_post
from exchange.services.orders import order_transition

log = logging.getLogger(__name__)


class WebhookRejected(Exception):
    """The notification is not authentic or not well formed; nothing was written."""


class EventPermanentError(Exception):
    """The event cannot be applied (unknown order, amount mismatch); retrying will not help."""


def webhook_ingest(*, gateway_name: str, body: bytes, signature_header: str | None) -> tuple[PaymentEvent, bool]:
    """Verify and store a notification; return (event, created).

    Raises WebhookRejected for a bad signature or payload. A repeated event id
    returns the stored event without scheduling anything again.
    """
    try:
        gateway = get_gateway(gateway_name)
    except LookupError:
        raise WebhookRejected("Unknown gateway.") from None
    try:
        event = gateway.webhook_verify(body=body, signature_header=signature_header)
    except SignatureError as exc:
        raise WebhookRejected(str(exc)) from None
    except ValueError:
        raise WebhookRejected("The payload is not valid JSON.") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise WebhookRejected("The payload is not an event.")

    from exchange.tasks import payment_event_process

    try:
        with transaction.atomic():
            stored = PaymentEvent.objects.create(
                gateway=gateway.name, event_id=event["id"][:120], type=event["type"][:80], payload=event
            )
            transaction.on_commit(lambda: payment_event_process.delay(stored.pk))
    except IntegrityError:
        return PaymentEvent.objects.get(gateway=gateway.name, event_id=event["id"][:120]), False
    return stored, True


def _order_for(event: PaymentEvent) -> Order:
    obj = event.payload.get("data", {}).get("object", {})
    order_id = (obj.get("metadata") or {}).get("order_id")
    order = Order.objects.select_for_update().filter(public_id=order_id).first() if order_id else None
    if order is None:
        raise EventPermanentError(f"No order for checkout session {obj.get('id')!r}.")
    if obj.get("id") and order.gateway_session_id and obj["id"] != order.gateway_session_id:
        raise EventPermanentError("The checkout session does not belong to this order.")
    return order


def _on_checkout_completed(event: PaymentEvent) -> str:
    obj = event.payload["data"]["object"]
    order = _order_for(event)
    if order.status != OrderStatus.PENDING_PAYMENT:
        return f"order already {order.status}"
    if obj.get("payment_status") != "paid":
        return "session completed without payment; waiting for async confirmation"
    if obj.get("amount_total") != order.amount or str(obj.get("currency", "")).upper() != order.currency:
        raise EventPermanentError(
            f"Paid {obj.get('amount_total')} {obj.get('currency')} but the order is {order.amount} {order.currency}."
        )
    order_transition(
        order_pk=order.pk,
        to_status=OrderStatus.PAID,
        reason=f"payment confirmed ({event.event_id})",
        gateway_payment_id=str(obj.get("payment_intent") or "")[:120],
    )
    entitlement = entitlement_grant(order=order)
    journal_post(
        idempotency_key=f"payment:{order.pk}",
        kind=JournalKind.PAYMENT,
        postings=[
            (account_get(kind=AccountKind.GATEWAY_CLEARING), order.amount, order.currency),
            (account_get(kind=AccountKind.ESCROW_HELD), -order.amount, order.currency),
        ],
        order=order,
        memo=f"payment for order {order.reference} held until delivery",
    )
    from exchange.tasks import delivery_prepare

    transaction.on_commit(lambda: delivery_prepare.delay(entitlement.pk))
    return "order paid, entitlement granted"


def _on_checkout_failed(event: PaymentEvent) -> str:
    order = _order_for(event)
    if order.status != OrderStatus.PENDING_PAYMENT:
        return f"order already {order.status}"
    order_transition(order_pk=order.pk, to_status=OrderStatus.DECLINED, reason=f"payment failed ({event.event_id})")
    return "order declined"


def _on_checkout_expired(event: PaymentEvent) -> str:
    order = _order_for(event)
    if order.status != OrderStatus.PENDING_PAYMENT:
        return f"order already {order.status}"
    order_transition(order_pk=order.pk, to_status=OrderStatus.EXPIRED, reason=f"checkout expired ({event.event_id})")
    return "order expired"


HANDLERS: dict[str, Callable[[PaymentEvent], str]] = {
    "checkout.session.completed": _on_checkout_completed,
    "checkout.session.async_payment_succeeded": _on_checkout_completed,
    "checkout.session.async_payment_failed": _on_checkout_failed,
    "checkout.session.expired": _on_checkout_expired,
}


def payment_event_process(*, event_pk: int) -> str:
    """Apply a stored event once. Returns what happened, for logs.

    The event row lock serialises duplicates; a processed event is skipped.
    Everything the event changes commits together with its "processed"
    status. A permanent error is recorded on the event and not retried; other
    errors roll back, are recorded, and propagate so the task can retry.
    """
    try:
        with transaction.atomic():
            event = PaymentEvent.objects.select_for_update().get(pk=event_pk)
            if event.status in (PaymentEventStatus.PROCESSED, PaymentEventStatus.IGNORED):
                return "already processed"
            handler = HANDLERS.get(event.type)
            if handler is None:
                outcome, status = f"type {event.type} not handled", PaymentEventStatus.IGNORED
            else:
                outcome, status = handler(event), PaymentEventStatus.PROCESSED
            event.status, event.error, event.processed_at = status, "", timezone.now()
            event.attempts += 1
            event.save(update_fields=["status", "error", "processed_at", "attempts"])
            return outcome
    except EventPermanentError as exc:
        _record_failure(event_pk, str(exc), permanent=True)
        log.warning("payment event %s failed permanently: %s", event_pk, exc)
        return f"failed: {exc}"
    except Exception as exc:
        _record_failure(event_pk, f"{type(exc).__name__}: {exc}", permanent=False)
        raise


def _record_failure(event_pk: int, message: str, *, permanent: bool) -> None:
    with transaction.atomic():
        event = PaymentEvent.objects.select_for_update().get(pk=event_pk)
        if event.status == PaymentEventStatus.PROCESSED:
            return
        event.error = message[:2000]
        event.attempts += 1
        if permanent:
            event.status = PaymentEventStatus.FAILED
        event.save(update_fields=["error", "attempts", "status"])
