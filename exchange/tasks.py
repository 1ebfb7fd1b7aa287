"""Celery tasks for the trade. Each takes primary keys, is safe to run twice,
and retries only errors that may pass (database or broker hiccups)."""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from exchange.choices import DeliveryStatus, PaymentEventStatus
from exchange.gateways import GatewayError
from exchange.models import PaymentEvent
from exchange.services import delivery, payments, settlement

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 300, "max_retries": 8}


@shared_task(**RETRY)
def payment_event_process(event_pk: int) -> str:
    return payments.payment_event_process(event_pk=event_pk)


@shared_task(**RETRY)
def payment_events_drain(helper: bool = False) -> int:
    """Apply every stored, unprocessed gateway event (scheduled once per burst by webhook_ingest).

    ``helper``: a drain asked for by another one that found a backlog; it
    shares the backlog and asks for no further help.
    """
    return payments.payment_events_drain(helper=helper)


# A gateway hiccup while refunding a failed delivery is transient too.
@shared_task(**{**RETRY, "autoretry_for": (*TRANSIENT, GatewayError)})
def delivery_prepare(entitlement_pk: int) -> list[int]:
    """Prepare the entitlement's deliveries; a file problem is tried again later until the delivery fails.

    The attempt count lives on each Delivery row, not in the message, so a
    redelivered or restarted task continues where the last one stopped. The
    next attempt is a fresh message with a countdown (exponential backoff,
    DELIVERY_RETRY_BACKOFF_SECONDS doubling); when eager, it runs at once.
    """
    deliveries = delivery.delivery_prepare(entitlement_pk=entitlement_pk)
    pending = [d for d in deliveries if d.status == DeliveryStatus.PENDING]
    if pending:
        countdown = delivery.delivery_retry_countdown(max(d.attempts for d in pending))
        delivery_prepare.apply_async((entitlement_pk,), countdown=countdown)
    return [d.pk for d in deliveries]


@shared_task(**{**RETRY, "autoretry_for": (*TRANSIENT, GatewayError)})
def delivery_prepare_batch(entitlement_pks: list[int]) -> int:
    """``delivery_prepare`` for a batch of entitlements (one per drain batch of paid orders).

    An entitlement whose delivery is still PENDING (a failed file check) goes on
    alone: a fresh ``delivery_prepare`` message with the backoff countdown.
    """
    results = delivery.delivery_prepare_many(entitlement_pks=list(entitlement_pks))
    for entitlement_pk, deliveries in results.items():
        pending = [d for d in deliveries if d.status == DeliveryStatus.PENDING]
        if pending:
            countdown = delivery.delivery_retry_countdown(max(d.attempts for d in pending))
            delivery_prepare.apply_async((entitlement_pk,), countdown=countdown)
    return len(results)


@shared_task(**RETRY)
def delivery_version_published(version_pk: int) -> int:
    """A version was published (listings' VERSION_PUBLISHED_TASKS hook): deliver it to every buyer it is for."""
    entitlement_pks = delivery.delivery_version_published(version_pk=version_pk)
    for entitlement_pk in entitlement_pks:
        delivery_prepare.delay(entitlement_pk)
    return len(entitlement_pks)


@shared_task(**RETRY)
def settlement_run_execute(run_pk: int) -> str:
    """Plan a run: fix its cutoff, split its orders into batches and queue them."""
    run = settlement.settlement_run_plan(run_pk=run_pk)
    return f"run {run.pk}: {run.status}, {run.orders_total} orders in {run.batches_total} batches"


@shared_task(**RETRY)
def settlement_batch_execute(batch_pk: int) -> str:
    batch = settlement.settlement_batch_execute(batch_pk=batch_pk)
    return f"batch {batch.pk}: {batch.status}, {batch.orders_settled} orders"


@shared_task(**RETRY)
def settlement_run_finish(run_pk: int) -> str:
    run = settlement.settlement_run_finish(run_pk=run_pk)
    return f"run {run.pk}: {run.status}, {run.orders_settled} orders, {run.payouts_created} payouts"


@shared_task
def settlement_runs_resume() -> str:
    """Beat: queue again the lost work of runs that stalled (a dead worker, a lost message)."""
    resumed = settlement.settlement_runs_resume(stalled_after_seconds=settings.SETTLEMENT_STALLED_SECONDS)
    return f"resumed runs {resumed}" if resumed else "no stalled run"


@shared_task
def settlement_run_scheduled() -> str:
    """Beat's daily entry point; a run already in progress is left to finish."""
    try:
        run = settlement.settlement_run_start(trigger="schedule")
    except settlement.SettlementInProgress as exc:
        return exc.messages[0]
    return f"started run {run.pk}"


@shared_task(autoretry_for=(*TRANSIENT, GatewayError), retry_backoff=5, retry_backoff_max=600, max_retries=10)
def payout_send(payout_pk: int) -> str:
    payout = settlement.payout_send(payout_pk=payout_pk)
    return f"payout {payout.pk}: {payout.status}"


@shared_task
def payout_sweep() -> str:
    """Beat (settlement queue, as payout_*): queue again the sends of payouts PENDING too long; those past their
    gateway's idempotency window are booked as the gateway shows them, or held for review (logged)."""
    swept = settlement.payouts_sweep(older_than_seconds=settings.PAYOUT_SWEEP_AGE_SECONDS)
    return f"queued payouts {swept.queued}, booked as the gateway shows {swept.looked_up}, held for review {swept.held}"


@shared_task
def payment_events_sweep(older_than_seconds: int = 60) -> int:
    """Beat: drain events stored but never processed (a lost broker message, a dead worker, out-of-order)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    stuck = PaymentEvent.objects.filter(status=PaymentEventStatus.RECEIVED, received_at__lt=cutoff).count()
    if stuck:
        log.info("%d payment events waiting; draining", stuck)
        payment_events_drain.delay()
    return stuck


@shared_task
def entitlements_expire() -> int:
    """Beat: end access whose paid period is over."""
    from exchange.services.entitlements import entitlements_expire as expire

    return expire()


@shared_task
def escrow_auto_confirm() -> int:
    """Beat: release escrow for delivered orders nobody complained about in time."""
    from exchange.services.orders import orders_auto_confirm

    return orders_auto_confirm()


@shared_task
def trade_housekeeping() -> dict:
    """Beat: expire unfinished checkouts and unanswered access requests."""
    from exchange.services.access import access_requests_expire
    from exchange.services.orders import orders_expire_pending

    return {"orders_expired": orders_expire_pending(), "access_requests_expired": access_requests_expire()}


@shared_task(**RETRY)
def refund_execute(refund_pk: int) -> str:
    from exchange.services.refunds import refund_execute as execute

    refund = execute(refund_pk=refund_pk)
    return f"refund {refund.pk}: {refund.status}"


@shared_task
def refunds_retry_pending() -> dict:
    """Beat: send again refunds a gateway that did not answer left PENDING (same key: the buyer is refunded once)."""
    from exchange.services.refunds import refunds_retry_pending as retry

    return retry(
        older_than_seconds=settings.REFUND_RETRY_AFTER_SECONDS, max_age_seconds=settings.REFUND_RETRY_MAX_AGE_SECONDS
    )


@shared_task(**RETRY)
def sandbox_checkout_resolve(session_id: str, approve: bool) -> str:
    """The sandbox's "approve after a delay": the provider answers later, through the webhook path."""
    from exchange.gateways.sandbox import SandboxGateway

    try:
        SandboxGateway().session_resolve_and_notify(session_id=session_id, approve=approve)
    except GatewayError as exc:  # already resolved (a redelivered task, or the buyer clicked again)
        return str(exc)
    return f"sandbox session {session_id} {'approved' if approve else 'declined'}"


@shared_task
def delivery_sweep(older_than_seconds: int | None = None, batch: int = 500) -> int:
    """Beat (delivery queue): enqueue delivery_prepare again for paid entitlements the broker lost; return how many."""
    from exchange.services.delivery_sweep import deliveries_sweep

    return len(deliveries_sweep(older_than_seconds=older_than_seconds, batch=batch))


@shared_task(**RETRY)
def notification_email_send(notification_pk: int) -> bool:
    """Email one notification (once: a re-run finds it emailed)."""
    from exchange.services.notifications import notification_email_send as send

    return send(notification_pk=notification_pk)


@shared_task(**RETRY)
def notification_emails_send(notification_pks: list[int]) -> int:
    """Email a batch of notifications over one connection (each once: a re-run skips those emailed); how many sent."""
    from exchange.services.notifications import notification_emails_send as send

    return send(notification_pks=list(notification_pks))


@shared_task(**RETRY)
def outbound_event_send(event_pk: int) -> str:
    """POST one outbound webhook event; failures are attempts retried by the service's own backoff, not Celery's."""
    from exchange.services.outbound import outbound_event_send as send

    return send(event_pk=event_pk)


@shared_task
def outbound_events_sweep(older_than_seconds: int = 300) -> int:
    """Beat: queue again outbound events whose send is long overdue (a lost broker message, a dead worker)."""
    from exchange.services.outbound import outbound_events_sweep as sweep

    return sweep(older_than_seconds=older_than_seconds)


@shared_task
def entitlements_expiring_notify() -> int:
    """Beat: tell buyers whose access ends within ENTITLEMENT_EXPIRY_NOTICE_DAYS (once per period)."""
    from django.conf import settings

    from exchange.services.entitlements import entitlements_expiring_notify as notify

    return notify(within_days=settings.ENTITLEMENT_EXPIRY_NOTICE_DAYS)


@shared_task(**RETRY)
def usage_aggregate() -> dict:
    """Beat (hourly): rebuild this month's UsageMonthly from the usage records (and last month's on the 1st)."""
    from exchange.services.usage import usage_aggregate as aggregate

    return aggregate()


@shared_task
def ledger_verify_scheduled() -> dict:
    """Beat (daily): verify the ledger and store a LedgerVerification (trigger "schedule"); return its summary.

    Read-only apart from its own row, so a second run only adds a second row.
    """
    from exchange.services.ledger import ledger_verify_record

    record = ledger_verify_record(trigger="schedule")
    return {
        "verification": record.pk,
        "ok": record.ok,
        "entries_checked": record.entries_checked,
        "first_break_sequence": record.first_break_sequence,
        "first_break_block": record.first_break_block,
    }
