"""Settlement runs and payouts.

A run settles every delivered order past the dispute hold: one SALE entry per
order moves the held gross out of escrow into platform revenue (the fee) and
the merchant's payable (the rest). Then each merchant with a payable balance
gets one payout per run and currency (unique), paid by a task.

Each order settles in its own transaction and skips orders already settled,
so a run that crashed half-way resumes where it stopped when re-executed.
"""

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from exchange.choices import AccountKind, JournalKind, OrderStatus, PayoutStatus, RefundStatus, SettlementRunStatus
from exchange.gateways import GatewayError, get_gateway
from exchange.models import LedgerAccount, Order, Payout, Posting, SettlementRun
from exchange.services.certificates import certificate_issue
from exchange.services.fees import FeeSchedule, order_fee, with_fee_category
from exchange.services.ledger import account_get, journal_post
from exchange.services.orders import order_transition


class SettlementInProgress(ValidationError):
    pass


# Delivered trades (a partial refund may have come first) are settled for what remains held.
SETTLEABLE = {OrderStatus.DELIVERED, OrderStatus.PARTIALLY_REFUNDED}


def settlement_run_start(*, actor=None, trigger: str = "manual") -> SettlementRun:
    """Start a run and schedule its execution; refuse while another run is running."""
    from exchange.tasks import settlement_run_execute

    try:
        with transaction.atomic():
            run = SettlementRun.objects.create(requested_by=actor, trigger=trigger)
            transaction.on_commit(lambda: settlement_run_execute.delay(run.pk))
    except IntegrityError:
        running = SettlementRun.objects.filter(status=SettlementRunStatus.RUNNING).first()
        raise SettlementInProgress(
            f"Settlement run {running.pk if running else '?'} is still running; wait for it to finish.",
            code="run_in_progress",
        ) from None
    return run


def _settle_order(*, order_pk: int, run: SettlementRun, schedule: FeeSchedule | None = None) -> bool:
    """Settle one order; ``schedule`` (the fee schedule loaded once for the run) saves a query per order."""
    with transaction.atomic():
        order = with_fee_category(Order.objects.select_for_update().select_related("merchant")).get(pk=order_pk)
        if order.status not in SETTLEABLE or order.settled_at is not None or order.delivered_at is None:
            return False
        if order.refunds.filter(status=RefundStatus.PENDING).exists():
            return False  # settle once the refund in flight has its outcome
        gross = order.amount - order.refunded_amount  # what is still held in escrow
        fee = order_fee(order, gross=gross, schedule=schedule)  # the fee schedule's rate, rounded half up
        sale = None
        if gross:  # free orders and fully refunded remainders move no money
            sale, _ = journal_post(
                idempotency_key=f"sale:{order.pk}",
                kind=JournalKind.SALE,
                postings=[
                    (account_get(kind=AccountKind.ESCROW_HELD), gross, order.currency),
                    (account_get(kind=AccountKind.PLATFORM_REVENUE), -fee, order.currency),
                    (
                        account_get(kind=AccountKind.MERCHANT_PAYABLE, merchant=order.merchant),
                        -(gross - fee),
                        order.currency,
                    ),
                ],
                order=order,
                memo=f"order {order.reference} settled in run {run.pk}",
            )
        settled = order_transition(
            order_pk=order.pk, to_status=OrderStatus.SETTLED, reason=f"settlement run {run.pk}", settlement_run=run
        )
        # In the same transaction: a settled trade always has its certificate (a free one names no ledger entry).
        certificate_issue(order=settled, journal_entry=sale)
    return True


def _create_payouts(*, run: SettlementRun) -> list[Payout]:
    from exchange.tasks import payout_send

    gateway = get_gateway()
    balances = (
        Posting.objects.filter(account__kind=AccountKind.MERCHANT_PAYABLE)
        .values("account_id", "currency")
        .annotate(balance=Sum("amount"))
        .filter(balance__lt=0)
    )
    payouts = []
    for row in balances:
        account = LedgerAccount.objects.select_related("merchant").get(pk=row["account_id"])
        with transaction.atomic():
            payout, created = Payout.objects.get_or_create(
                run=run,
                merchant=account.merchant,
                currency=row["currency"],
                defaults={
                    "amount": -row["balance"],
                    "idempotency_key": f"payout-{run.pk}-{account.merchant_id}-{row['currency']}",
                    "gateway": gateway.name,
                },
            )
            if created:
                journal_post(
                    idempotency_key=f"payout_created:{payout.pk}",
                    kind=JournalKind.PAYOUT_CREATED,
                    postings=[
                        (account, payout.amount, payout.currency),
                        (account_get(kind=AccountKind.PAYOUTS_PENDING), -payout.amount, payout.currency),
                    ],
                    payout=payout,
                    memo=f"payout to {account.merchant.name} in run {run.pk}",
                )
                transaction.on_commit(lambda pk=payout.pk: payout_send.delay(pk))
        payouts.append(payout)
    return payouts


def settlement_run_execute(*, run_pk: int) -> SettlementRun:
    """Settle eligible orders and create payouts; idempotent and resumable."""
    run = SettlementRun.objects.get(pk=run_pk)
    if run.status != SettlementRunStatus.RUNNING:
        return run
    try:
        cutoff = timezone.now() - timedelta(days=settings.DISPUTE_HOLD_DAYS)
        eligible = Order.objects.filter(
            status__in=SETTLEABLE, settled_at__isnull=True, delivered_at__lte=cutoff
        ).order_by("pk")
        schedule = FeeSchedule.load()  # once per run: the fee costs no query per order
        for order_pk in eligible.values_list("pk", flat=True).iterator():
            _settle_order(order_pk=order_pk, run=run, schedule=schedule)
        _create_payouts(run=run)
    except Exception as exc:
        SettlementRun.objects.filter(pk=run.pk).update(
            status=SettlementRunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now()
        )
        raise
    SettlementRun.objects.filter(pk=run.pk).update(
        status=SettlementRunStatus.COMPLETED,
        finished_at=timezone.now(),
        orders_settled=Order.objects.filter(settlement_run=run).count(),
        payouts_created=Payout.objects.filter(run=run).count(),
    )
    run.refresh_from_db()
    return run


def payout_send(*, payout_pk: int) -> Payout:
    """Pay a payout through the gateway once.

    The row lock keeps two workers from sending the same payout; the gateway
    call carries the payout's idempotency key (stored when the payout was
    created), so a retry after a timed-out call that in fact succeeded gets
    the first transfer back instead of making a second one. A refusal is
    recorded on the payout (FAILED, with the reason); a transient error is
    recorded and re-raised so the task retries.
    """
    with transaction.atomic():
        payout = Payout.objects.select_for_update().select_related("merchant").get(pk=payout_pk)
        if payout.status == PayoutStatus.SENT:
            return payout
        try:
            reference = get_gateway(payout.gateway).payout_create(payout=payout)
        except GatewayError as exc:
            failure = exc
        else:
            payout.attempts += 1
            payout.status, payout.gateway_reference, payout.sent_at, payout.error = (
                PayoutStatus.SENT,
                reference,
                timezone.now(),
                "",
            )
            payout.save(update_fields=["attempts", "status", "gateway_reference", "sent_at", "error"])
            journal_post(
                idempotency_key=f"payout_sent:{payout.pk}",
                kind=JournalKind.PAYOUT_SENT,
                postings=[
                    (account_get(kind=AccountKind.PAYOUTS_PENDING), payout.amount, payout.currency),
                    (account_get(kind=AccountKind.GATEWAY_CLEARING), -payout.amount, payout.currency),
                ],
                payout=payout,
                memo=f"transfer {reference}",
            )
            return payout
    Payout.objects.filter(pk=payout_pk).exclude(status=PayoutStatus.SENT).update(
        attempts=F("attempts") + 1,
        error=str(failure)[:2000],
        status=PayoutStatus.PENDING if failure.transient else PayoutStatus.FAILED,
    )
    if failure.transient:
        raise failure
    payout.refresh_from_db()
    return payout
