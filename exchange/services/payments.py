"""Gateway notifications: verify, insert once, process after commit.

The webhook endpoint and the sandbox gateway both call :func:`webhook_ingest`
with the raw body and signature header. Processing happens in a Celery task
(never in the web request) that locks the event row, dispatches on the event
type through a dict, and re-checks the order's state before acting, because
events arrive at least once and in any order.
"""

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from exchange.choices import (
    AccountKind,
    EntitlementStatus,
    JournalKind,
    OrderStatus,
    PaymentEventStatus,
    RefundStatus,
    SubscriptionStatus,
)
from exchange.gateways import SignatureError, get_gateway
from exchange.gateways.base import REFUND_MADE_STATES, REFUND_NOT_MADE_STATES
from exchange.models import Dispute, Entitlement, Order, OrderStatusHistory, PaymentEvent, Refund, Subscription
from exchange.services.entitlements import entitlement_extend, entitlement_grant, entitlements_grant_new
from exchange.services.ledger import EntrySpec, account_get, journal_post, journal_post_many
from exchange.services.notifications import order_paid_notify, orders_paid_notify_many
from exchange.services.orders import order_transition, orders_transition_locked
from exchange.services.refunds import (
    dispute_close,
    dispute_open,
    early_refunds_and_disputes_apply,
    refund_failed_at_gateway,
    refund_record_from_gateway,
)
from exchange.services.transitions import history_start, status_move
from listings.choices import BillingInterval, PlanKind

log = logging.getLogger(__name__)


# An event still unmatched after this many tries (about this many minutes of sweeps) is marked failed.
EVENT_MAX_ATTEMPTS = 60


class WebhookRejected(Exception):
    """The notification is not authentic or not well formed; nothing was written."""


class EventPermanentError(Exception):
    """The event cannot be applied (unknown order, amount mismatch); retrying will not help."""


def webhook_ingest(
    *, gateway_name: str, body: bytes, signature_header: str | None, schedule_in_background: bool = False
) -> tuple[PaymentEvent, bool]:
    """Verify and store a notification; return (event, created).

    Raises WebhookRejected for a bad signature or payload. A repeated event id
    returns the stored event without scheduling anything again.

    ``schedule_in_background`` (the webhook endpoint) leaves asking for a
    drain to this process's scheduler thread, so the acknowledgement waits
    for the event's insert only, not for a round trip to the cache as well.
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
    if b"\\u0000" in body:
        raise WebhookRejected("The payload contains a NUL character, which cannot be stored.")

    stored, created = _event_insert(gateway=gateway.name, event=event, body=body)
    if created:
        if schedule_in_background and not settings.CELERY_TASK_ALWAYS_EAGER:
            transaction.on_commit(_background_scheduler.request)
        else:
            transaction.on_commit(payment_events_drain_schedule)
    return stored, created


def _event_insert(*, gateway: str, event: dict, body: bytes) -> tuple[PaymentEvent, bool]:
    """Insert the event once under its unique (gateway, event id): one statement, no savepoint.

    On PostgreSQL the verified body is stored as it came (it parsed as JSON,
    so it is valid jsonb input) rather than serialised again.
    """
    event_id, event_type = event["id"][:120], event["type"][:80]
    if connection.vendor == "postgresql":
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:  # JSON in UTF-16 or UTF-32 (json.loads accepts them)
            payload = json.dumps(event)
        table = PaymentEvent._meta.db_table
        row = _fetchone_prepared(
            f"INSERT INTO {table} (gateway, event_id, type, payload, status, error, outcome, attempts, received_at)"
            " VALUES (%s, %s, %s, %s, %s, '', '', 0, %s) ON CONFLICT (gateway, event_id) DO NOTHING RETURNING id",
            [gateway, event_id, event_type, payload, PaymentEventStatus.RECEIVED, timezone.now()],
        )
        if row:
            stored = PaymentEvent(
                pk=row[0],
                gateway=gateway,
                event_id=event_id,
                type=event_type,
                payload=event,
                status=PaymentEventStatus.RECEIVED,
            )
            return stored, True
        return PaymentEvent.objects.get(gateway=gateway, event_id=event_id), False
    try:
        with transaction.atomic():
            return PaymentEvent.objects.create(gateway=gateway, event_id=event_id, type=event_type, payload=event), True
    except IntegrityError:
        return PaymentEvent.objects.get(gateway=gateway, event_id=event_id), False


def _fetchone_prepared(sql: str, params: list):
    """Run one statement as a server-side prepared statement and return its first row (PostgreSQL only).

    The webhook insert runs once per event, thousands of times per burst:
    prepared once per connection, PostgreSQL skips parsing and planning it,
    and the parameters travel apart from the text instead of being quoted into
    it. Django leaves its own statements unprepared (they suit connection
    poolers; PgBouncer >= 1.21 also handles protocol-level prepared statements
    like this one). Database errors are translated and recorded like any
    Django query's.
    """
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    with connection.wrap_database_errors, ServerBindingCursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchone()


DRAIN_KEY = "exchange:payment-events:drain-scheduled"
DRAIN_BATCH = 100
# Set while helper drains are on their way or running (a backlog asks for them once).
DRAIN_HELPERS_KEY = "exchange:payment-events:drain-helpers"


def payment_events_drain_schedule() -> None:
    """Make sure one drain task is on its way; a burst of events shares it instead of one message each.

    The key is deleted by the drain before it looks for events, so an event
    stored after that point schedules the next drain: none is left behind.
    The key's timeout (and the beat sweep) cover a drain message that is lost.
    """
    from exchange.tasks import payment_events_drain

    if cache.add(DRAIN_KEY, 1, timeout=30):
        payment_events_drain.delay()


class BackgroundDrainScheduler:
    """One thread per process that calls ``payment_events_drain_schedule`` on behalf of request threads.

    ``request()`` only sets a flag (it runs after the event's commit). The
    thread clears the flag and then schedules, so an event committed while it
    was scheduling sets the flag again and gets a schedule that starts after
    its commit, exactly as if its own request thread had scheduled: the
    guarantee of ``payment_events_drain_schedule`` is unchanged; a burst just
    shares fewer cache round trips (see ``COALESCE_SECONDS``), off the
    acknowledgement's path. A process that dies with the flag set leaves its
    events to the beat sweep, like a process that dies between an insert and
    its on-commit hook. The thread is started lazily and again after a fork
    (gunicorn forks its workers).
    """

    COALESCE_SECONDS = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._wanted = threading.Event()
        atexit.register(self.flush)

    def request(self) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._wanted = threading.Event()
                    threading.Thread(target=self._run, name="payment-drain-scheduler", daemon=True).start()
                    self._pid = os.getpid()
        self._wanted.set()

    def flush(self) -> None:
        """Schedule now if a request is pending (at exit: the thread may not get to it)."""
        if self._pid == os.getpid() and self._wanted.is_set():
            self._wanted.clear()
            payment_events_drain_schedule()

    def _run(self) -> None:
        wanted = self._wanted
        while True:
            wanted.wait()
            wanted.clear()
            try:
                payment_events_drain_schedule()
            except Exception:  # the cache or broker is down: retry; the beat sweep drains what is left meanwhile
                log.exception("could not schedule a payment event drain")
                wanted.set()
                time.sleep(1)
            else:
                # Requests in the next moment share one schedule: a burst costs a few cache round trips a
                # second per process instead of one per event, and a drain starts at most this much later.
                time.sleep(self.COALESCE_SECONDS)


_background_scheduler = BackgroundDrainScheduler()


def payment_events_drain(*, max_events: int = 10_000, helper: bool = False) -> int:
    """Process every received event, oldest first; return how many were applied or ignored.

    Each event is attempted at most once per drain (one that is waiting for
    something, or failed transiently, is left for the next drain or the sweep).
    Drains running side by side skip each other's events (SKIP LOCKED), so a
    drain that finds a full batch waiting asks for ``PAYMENT_EVENT_DRAIN_HELPERS``
    helper drains: the other worker processes share the backlog instead of
    idling while one process works through it.
    """
    from exchange.tasks import payment_events_drain as drain_task

    if not helper:
        cache.delete(DRAIN_KEY)
    # A cursor over primary keys: each event is tried once per drain. One that commits behind the
    # cursor scheduled its own drain when it was stored (the key above was already gone).
    after, attempted, done = 0, 0, 0
    while attempted < max_events:
        pks = list(
            PaymentEvent.objects.filter(status=PaymentEventStatus.RECEIVED, pk__gt=after)
            .order_by("pk")
            .values_list("pk", flat=True)[:DRAIN_BATCH]
        )
        if not pks:
            break
        if (
            not helper
            and after == 0
            and len(pks) == DRAIN_BATCH
            and settings.PAYMENT_EVENT_DRAIN_HELPERS
            and cache.add(DRAIN_HELPERS_KEY, 1, timeout=60)
        ):
            for _ in range(settings.PAYMENT_EVENT_DRAIN_HELPERS):
                drain_task.delay(helper=True)
        try:
            applied, passed_over = payment_events_apply_batch(event_pks=pks)
        except Exception:  # the batch rolled back as a whole; each event gets its own try below
            log.exception("batch of %d payment events failed; applying them one by one", len(pks))
            applied, passed_over = set(), set()
        done += len(applied)
        for pk in pks:
            after, attempted = pk, attempted + 1
            if pk in applied or pk in passed_over:
                continue
            try:
                outcome = payment_event_process(event_pk=pk, skip_locked=True)
            except Exception:  # recorded on the event by payment_event_process; the sweep retries it
                log.exception("payment event %s failed; left for a retry", pk)
                continue
            if not outcome.startswith(("waiting", "busy", "failed", "already")):
                done += 1
    if helper:
        cache.delete(DRAIN_HELPERS_KEY)  # the next backlog may ask for help again
    return done


def payment_events_apply_batch(*, event_pks: list[int]) -> tuple[set[int], set[int]]:
    """Apply the plain paid checkouts among ``event_pks`` together, in one transaction.

    Returns (applied, passed over): the pks applied here, and those another
    drain holds locked or that are no longer waiting, which the caller skips.

    The common case of a busy exchange: a ``checkout.session.completed`` that
    pays a pending one-time order in full. For those, the per-event handler's
    work is done for the whole batch at once (orders moved to paid, their
    entitlements, the escrow entries, the notices), in a fixed number of
    statements, with the same row locks (events SKIP LOCKED, then their
    orders) and the same result as applying them one by one. Everything
    unusual (another event type, a session not yet paid, an amount that does
    not match, an order already moved on, a subscription, a refund or dispute
    that arrived first, two events for one order) is left untouched for
    ``payment_event_process``. The ledger's chain head is locked last, so
    batches of two drains overlap until their escrow entries.
    """
    if not event_pks:
        return set(), set()
    with transaction.atomic():
        events = list(
            PaymentEvent.objects.select_for_update(skip_locked=True)
            .filter(pk__in=event_pks, status=PaymentEventStatus.RECEIVED)
            .order_by("pk")
        )
        passed_over = set(event_pks) - {event.pk for event in events}
        by_order: dict[str, PaymentEvent] = {}
        for event in events:
            if event.type != "checkout.session.completed":
                continue
            obj = _object(event)
            order_id = str((obj.get("metadata") or {}).get("order_id") or "")
            if obj.get("payment_status") == "paid" and order_id and order_id not in by_order:
                by_order[order_id] = event
        if not by_order:
            return set(), passed_over
        early = Exists(Refund.objects.filter(order=OuterRef("pk"))) | Exists(
            Dispute.objects.filter(order=OuterRef("pk"))
        )
        orders = list(
            Order.objects.select_for_update(of=("self",))
            .select_related("listing", "plan", "access_request")
            .filter(public_id__in=list(by_order), status=OrderStatus.PENDING_PAYMENT, plan_kind=PlanKind.ONE_TIME)
            .exclude(Exists(Entitlement.objects.filter(order=OuterRef("pk"))))
            .annotate(arrived_early=early)
            .order_by("pk")
        )
        paid: list[tuple[Order, PaymentEvent, dict]] = []
        for order in orders:
            event = by_order[str(order.public_id)]
            obj = _object(event)
            if (
                order.arrived_early
                or order.amount == 0
                or (obj.get("id") and order.gateway_session_id and obj["id"] != order.gateway_session_id)
                or obj.get("amount_total") != order.amount
                or str(obj.get("currency", "")).upper() != order.currency
            ):
                continue  # the per-event handler gives each of these its exact outcome
            paid.append((order, event, obj))
        if not paid:
            return set(), passed_over
        batch = [order for order, _, _ in paid]
        orders_transition_locked(
            orders=batch,
            to_status=OrderStatus.PAID,
            reasons={order.pk: f"payment confirmed ({event.event_id})" for order, event, _ in paid},
            fields={
                order.pk: {"gateway_payment_id": str(obj.get("payment_intent") or "")[:120]} for order, _, obj in paid
            },
        )
        entitlements = entitlements_grant_new(orders=batch)
        orders_paid_notify_many(orders=batch)
        clearing, held = account_get(kind=AccountKind.GATEWAY_CLEARING), account_get(kind=AccountKind.ESCROW_HELD)
        journal_post_many(
            [
                EntrySpec(
                    idempotency_key=f"payment:{order.pk}",
                    kind=JournalKind.PAYMENT,
                    postings=[(clearing, order.amount, order.currency), (held, -order.amount, order.currency)],
                    order=order,
                    memo=f"payment for order {order.reference} held until delivery",
                )
                for order in batch
            ]
        )
        applied = [event.pk for _, event, _ in paid]
        # The set form of _event_status: these rows were locked as RECEIVED, and received -> processed is allowed.
        PaymentEvent.objects.filter(pk__in=applied).update(
            status=PaymentEventStatus.PROCESSED,
            error="",
            outcome=PAID_OUTCOME,
            processed_at=timezone.now(),
            attempts=F("attempts") + 1,
        )
        from exchange.tasks import delivery_prepare_batch

        entitlement_pks = [entitlement.pk for entitlement in entitlements]
        transaction.on_commit(lambda: delivery_prepare_batch.delay(entitlement_pks))
    return set(applied), passed_over


class EventNotReady(Exception):
    """The event refers to something not recorded yet (events arrive out of order); retry later."""


def _object(event: PaymentEvent) -> dict:
    return event.payload.get("data", {}).get("object", {}) or {}


def _order_for(event: PaymentEvent) -> Order:
    obj = _object(event)
    order_id = (obj.get("metadata") or {}).get("order_id")
    order = Order.objects.select_for_update().filter(public_id=order_id).first() if order_id else None
    if order is None:
        raise EventPermanentError(f"No order for checkout session {obj.get('id')!r}.")
    if obj.get("id") and order.gateway_session_id and obj["id"] != order.gateway_session_id:
        raise EventPermanentError("The checkout session does not belong to this order.")
    return order


def _order_for_charge(event: PaymentEvent) -> Order:
    """The order a charge, refund or dispute belongs to: by our metadata, else by the payment id."""
    obj = _object(event)
    order_id = (obj.get("metadata") or {}).get("order_id")
    query = Order.objects.select_for_update()
    order = query.filter(public_id=order_id).first() if order_id else None
    if order is None and obj.get("payment_intent"):
        order = query.filter(gateway_payment_id=obj["payment_intent"]).first()
    if order is None:
        raise EventNotReady(f"No order known yet for payment {obj.get('payment_intent')!r}.")
    return order


def _period_end(obj: dict, plan) -> datetime:
    lines = (obj.get("lines") or {}).get("data") or []
    end = (lines[0].get("period") or {}).get("end") if lines else None
    if end:
        return datetime.fromtimestamp(int(end), tz=UTC)
    days = 365 if plan.interval == BillingInterval.YEAR else 31
    return timezone.now() + timedelta(days=days)


def _post_payment_held(*, order: Order, memo: str) -> None:
    """The money arrived at the gateway and is held in escrow until delivery (nothing to book when free)."""
    if order.amount:
        journal_post(
            idempotency_key=f"payment:{order.pk}",
            kind=JournalKind.PAYMENT,
            postings=[
                (account_get(kind=AccountKind.GATEWAY_CLEARING), order.amount, order.currency),
                (account_get(kind=AccountKind.ESCROW_HELD), -order.amount, order.currency),
            ],
            order=order,
            memo=memo,
        )


PAID_OUTCOME = "order paid, entitlement granted"


def _on_checkout_completed(event: PaymentEvent) -> str:
    obj = _object(event)
    order = _order_for(event)
    if order.status != OrderStatus.PENDING_PAYMENT:
        return f"order already {order.status}"
    settled = obj.get("payment_status") == "paid" or (
        order.amount == 0 and obj.get("payment_status") == "no_payment_required"
    )
    if not settled:
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
    order.refresh_from_db()
    valid_until = None
    if order.plan_kind == PlanKind.SUBSCRIPTION:
        valid_until = _period_end(obj, order.plan)
        subscription, created = Subscription.objects.get_or_create(
            order=order,
            defaults={
                "buyer_id": order.buyer_id,
                "listing_id": order.listing_id,
                "plan_id": order.plan_id,
                "gateway": order.gateway,
                "gateway_subscription_id": obj.get("subscription") or None,
                "current_period_end": valid_until,
            },
        )
        if created:
            history_start([subscription], reason=f"subscribed: order {order.reference} paid ({event.event_id})")
    entitlement = entitlement_grant(order=order, valid_until=valid_until)
    _post_payment_held(order=order, memo=f"payment for order {order.reference} held until delivery")
    order_paid_notify(order=order)
    early_refunds_and_disputes_apply(order=order)
    entitlement.refresh_from_db()
    if entitlement.status == EntitlementStatus.ACTIVE:
        from exchange.tasks import delivery_prepare

        transaction.on_commit(lambda: delivery_prepare.delay(entitlement.pk))
    return PAID_OUTCOME


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


def _record_reported_refund(order: Order, item: dict) -> Refund | None:
    return refund_record_from_gateway(
        order=order,
        gateway_refund_id=str(item.get("id")),
        amount=int(item.get("amount") or 0),
        reason=str(item.get("reason") or "refunded at the gateway"),
        idempotency_key=str((item.get("metadata") or {}).get("idempotency_key") or ""),
    )


def _on_charge_refunded(event: PaymentEvent) -> str:
    """The charge with its refunds listed (the sandbox; Stripe before API version 2022-11-15, or with the refunds
    expanded). Newer Stripe versions list none here and report each refund as ``refund.created`` instead."""
    obj = _object(event)
    order = _order_for_charge(event)
    refunds = (obj.get("refunds") or {}).get("data") or []
    booked = sum(1 for item in refunds if _record_reported_refund(order, item))
    return f"{booked} new refund(s) booked"


def _on_refund_created(event: PaymentEvent) -> str:
    """Stripe's report of one refund (``refund.created``, ``refund.updated``, ``refund.failed``): ours echoed back,
    one whose answer was lost, or one made in the dashboard. Booked once, whichever report comes first. A refund
    that did not go through fails the pending refund its key names; one that failed after it was booked fails
    the event, for staff to review."""
    obj = _object(event)
    order = _order_for_charge(event)
    status, gateway_refund_id = str(obj.get("status") or ""), str(obj.get("id"))
    if status not in REFUND_MADE_STATES | REFUND_NOT_MADE_STATES:
        return f"refund {gateway_refund_id} is {status or 'of no status'}: nothing booked yet"
    if status in REFUND_NOT_MADE_STATES:
        known = Refund.objects.filter(gateway_refund_id=gateway_refund_id).first()
        if known is not None and known.status == RefundStatus.FAILED:
            return f"refund {gateway_refund_id} is {status}: refund {known.pk} is failed already"
        if known is not None and known.status == RefundStatus.SUCCEEDED:
            # failed at the buyer's bank after it was made: the event fails, for staff to see and review
            raise EventPermanentError(
                f"Refund {gateway_refund_id} of order {order.reference} is {status} at the gateway after it was "
                "booked as made: the money did not go back to the buyer. The exchange does not reverse a booked "
                "refund by itself; review it."
            )
        failed = refund_failed_at_gateway(
            order=order,
            gateway_refund_id=gateway_refund_id,
            idempotency_key=str((obj.get("metadata") or {}).get("idempotency_key") or ""),
            status=status,
        )
        if failed is not None:
            return f"refund {failed.pk} is {status} at the gateway: failed, its amount free again"
        return f"refund {gateway_refund_id} is {status}: nothing booked"
    refund = _record_reported_refund(order, obj)
    return f"refund {refund.pk} booked" if refund else "refund already booked"


def _on_dispute_created(event: PaymentEvent) -> str:
    obj = _object(event)
    order = _order_for_charge(event)
    dispute = dispute_open(
        order=order,
        gateway_dispute_id=str(obj.get("id")),
        amount=int(obj.get("amount") or 0),
        reason=str(obj.get("reason") or ""),
    )
    return "dispute opened" if dispute else "dispute already known"


def _on_dispute_closed(event: PaymentEvent) -> str:
    obj = _object(event)
    order = _order_for_charge(event)
    if not Dispute.objects.filter(gateway_dispute_id=str(obj.get("id"))).exists():
        raise EventNotReady("The dispute's opening has not been recorded yet.")
    dispute = dispute_close(order=order, gateway_dispute_id=str(obj.get("id")), won=obj.get("status") == "won")
    return f"dispute {obj.get('status')}" if dispute else "dispute already closed"


def _subscription_for(event: PaymentEvent) -> Subscription:
    obj = _object(event)
    sub_id = obj.get("subscription") if obj.get("object") == "invoice" else obj.get("id")
    subscription = Subscription.objects.select_for_update().filter(gateway_subscription_id=sub_id).first()
    if subscription is None:
        raise EventNotReady(f"Subscription {sub_id!r} is not recorded yet.")
    return subscription


def _on_invoice_paid(event: PaymentEvent) -> str:
    obj = _object(event)
    subscription = _subscription_for(event)
    period_end = _period_end(obj, subscription.plan)
    entitlement = subscription.order.entitlement
    subscription.current_period_end = period_end
    if subscription.status == SubscriptionStatus.PAST_DUE:
        status_move(
            subscription,
            SubscriptionStatus.ACTIVE,
            reason=f"invoice {obj.get('id')} paid",
            fields=("current_period_end",),
        )
    else:  # active stays active; a cancelled one stays cancelled (the invoice paid for a period before the end)
        subscription.save(update_fields=["current_period_end"])
    if obj.get("billing_reason") == "subscription_create":
        entitlement_extend(entitlement_pk=entitlement.pk, valid_until=period_end, reason="first invoice paid")
        return "first invoice: period recorded"
    first = subscription.order
    renewal, created = Order.objects.get_or_create(
        buyer_id=first.buyer_id,
        idempotency_key=f"invoice:{obj.get('id')}"[:100],
        defaults={
            "listing_id": first.listing_id,
            "plan_id": first.plan_id,
            "plan_kind": first.plan_kind,
            "merchant_id": first.merchant_id,
            "amount": int(obj.get("amount_paid") or 0),
            "currency": str(obj.get("currency") or first.currency).upper(),
            "gateway": first.gateway,
            "subscription": subscription,
        },
    )
    if created:
        OrderStatusHistory.objects.create(
            order=renewal, from_status="", to_status=OrderStatus.PENDING_PAYMENT, reason="subscription renewal"
        )
        order_transition(order_pk=renewal.pk, to_status=OrderStatus.PAID, reason=f"invoice {obj.get('id')} paid")
        _post_payment_held(order=renewal, memo=f"subscription renewal {renewal.reference}")
        order_paid_notify(order=renewal)
        # Access simply continues: the renewal is delivered the moment it is paid.
        order_transition(order_pk=renewal.pk, to_status=OrderStatus.DELIVERED, reason="access renewed")
    entitlement_extend(entitlement_pk=entitlement.pk, valid_until=period_end, reason=f"invoice {obj.get('id')} paid")
    return "subscription renewed"


def _on_invoice_failed(event: PaymentEvent) -> str:
    subscription = _subscription_for(event)
    if subscription.status == SubscriptionStatus.CANCELLED:
        return "renewal failed on a cancelled subscription: nothing to change"
    if subscription.status == SubscriptionStatus.ACTIVE:
        status_move(subscription, SubscriptionStatus.PAST_DUE, reason=f"renewal failed ({event.event_id})")
    entitlement = subscription.order.entitlement
    grace_end = timezone.now() + timedelta(days=settings.SUBSCRIPTION_GRACE_DAYS)
    if entitlement.valid_until is None or entitlement.valid_until > grace_end:
        entitlement_extend(entitlement_pk=entitlement.pk, valid_until=grace_end, reason="renewal failed: grace period")
    return "renewal failed; access ends after the grace period"


def _on_subscription_deleted(event: PaymentEvent) -> str:
    subscription = _subscription_for(event)
    if subscription.status == SubscriptionStatus.CANCELLED:
        return "already cancelled"
    subscription.cancelled_at = timezone.now()
    status_move(
        subscription,
        SubscriptionStatus.CANCELLED,
        reason=f"cancelled at the gateway ({event.event_id})",
        fields=("cancelled_at",),
    )
    entitlement = subscription.order.entitlement
    end = min(subscription.current_period_end, entitlement.valid_until or subscription.current_period_end)
    entitlement_extend(entitlement_pk=entitlement.pk, valid_until=end, reason="subscription cancelled")
    return "subscription cancelled; access runs to the end of the paid period"


HANDLERS: dict[str, Callable[[PaymentEvent], str]] = {
    "checkout.session.completed": _on_checkout_completed,
    "checkout.session.async_payment_succeeded": _on_checkout_completed,
    "checkout.session.async_payment_failed": _on_checkout_failed,
    "checkout.session.expired": _on_checkout_expired,
    "charge.refunded": _on_charge_refunded,
    "refund.created": _on_refund_created,
    "refund.updated": _on_refund_created,
    "refund.failed": _on_refund_created,
    "charge.dispute.created": _on_dispute_created,
    "charge.dispute.closed": _on_dispute_closed,
    "invoice.paid": _on_invoice_paid,
    "invoice.payment_failed": _on_invoice_failed,
    "customer.subscription.deleted": _on_subscription_deleted,
}


# A received event is applied (processed), has no handler (ignored) or fails; a failed one is still applied if its
# task runs again (a redelivered message). The row's attempts, error and processed_at are its record.
PAYMENT_EVENT_TRANSITIONS: dict[str, set[str]] = {
    PaymentEventStatus.RECEIVED: {PaymentEventStatus.PROCESSED, PaymentEventStatus.IGNORED, PaymentEventStatus.FAILED},
    PaymentEventStatus.FAILED: {PaymentEventStatus.PROCESSED, PaymentEventStatus.IGNORED},
}


def _event_status(event: PaymentEvent, to_status: str, *, fields: tuple) -> None:
    """The one place a payment event's status changes (row locked by the caller); ``fields`` set already."""
    if to_status not in PAYMENT_EVENT_TRANSITIONS.get(event.status, ()):
        raise ValueError(f"A payment event cannot go from {event.status} to {to_status}.")
    event.status = to_status
    event.save(update_fields=["status", *fields])


def payment_event_process(*, event_pk: int, skip_locked: bool = False) -> str:
    """Apply a stored event once. Returns what happened, for logs.

    The event row lock serialises duplicates; a processed event is skipped.
    Everything the event changes commits together with its "processed"
    status. A permanent error is recorded on the event and not retried; other
    errors roll back, are recorded, and propagate so the task can retry.
    """
    try:
        with transaction.atomic():
            event = PaymentEvent.objects.select_for_update(skip_locked=skip_locked).filter(pk=event_pk).first()
            if event is None:
                return "busy: another worker holds this event"
            if event.status in (PaymentEventStatus.PROCESSED, PaymentEventStatus.IGNORED):
                return "already processed"
            handler = HANDLERS.get(event.type)
            if handler is None:
                outcome, status = f"type {event.type} not handled", PaymentEventStatus.IGNORED
            else:
                outcome, status = handler(event), PaymentEventStatus.PROCESSED
            event.error, event.outcome, event.processed_at = "", outcome[:500], timezone.now()
            event.attempts += 1
            _event_status(event, status, fields=("error", "outcome", "processed_at", "attempts"))
            return outcome
    except EventPermanentError as exc:
        _record_failure(event_pk, str(exc), permanent=True)
        log.warning("payment event %s failed permanently: %s", event_pk, exc)
        return f"failed: {exc}"
    except EventNotReady as exc:
        # Left "received": the beat sweeper offers it again until what it refers to exists.
        _record_failure(event_pk, f"waiting: {exc}", permanent=False, give_up_after=EVENT_MAX_ATTEMPTS)
        return f"waiting: {exc}"
    except Exception as exc:
        _record_failure(event_pk, f"{type(exc).__name__}: {exc}", permanent=False)
        raise


def _record_failure(event_pk: int, message: str, *, permanent: bool, give_up_after: int | None = None) -> None:
    with transaction.atomic():
        event = PaymentEvent.objects.select_for_update().get(pk=event_pk)
        if event.status == PaymentEventStatus.PROCESSED:
            return
        event.error = message[:2000]
        event.attempts += 1
        gives_up = permanent or (give_up_after is not None and event.attempts >= give_up_after)
        if gives_up and event.status == PaymentEventStatus.RECEIVED:  # a failed one failing again stays failed
            _event_status(event, PaymentEventStatus.FAILED, fields=("error", "attempts"))
        else:
            event.save(update_fields=["error", "attempts"])
