"""Settlement runs, their parallel batches, and payouts.

A run settles every delivered order past the dispute hold. Planning fixes the
run's cutoff and splits the eligible orders into batches (primary-key ranges
of SETTLEMENT_BATCH_SIZE orders), each a task on the ``settlement`` queue, so
any number of settlement workers settle them side by side. A batch settles its
orders in one transaction: one SALE entry per order moves the held gross out
of escrow into platform revenue (the fee) and the merchant's payable (the
rest), the orders become SETTLED with their certificates, and the entries form
one ledger block, appended to the chain as the transaction's last step
(DESIGN.md §5.5). The batch that completes the run queues the finish: one
payout per merchant and currency per run (unique), after netting what the
merchant owes back (a refund after an earlier payout) against what it is owed.

Every status move of a run, a batch or a payout goes through
``transitions.status_move`` (its transition table, the row lock the caller
holds, one history row each); their creation writes the first history row
(``"" -> initial``, ``transitions.history_start``).

Resumable and safe to repeat: a batch is locked and done at most once (a
worker killed mid-batch leaves it PENDING and its redelivered or re-queued task
does it), planning and finishing happen once per run under the run's row lock,
and ``settlement_runs_resume`` (beat, and ``manage.py settle --resume``)
queues again whatever a lost message left undone. Only one run is RUNNING at a
time (a partial unique index). ``manage.py settle --now`` does a whole run in
its process and queues nothing (``queue=False``): it needs no broker, sends the
payouts itself, and a failure marks the run FAILED instead of leaving it
RUNNING.

A batch leaves out an order whose refund is still pending, re-read after the
orders are locked (see ``_without_pending_refunds``): the refund is booked
from escrow and the next run settles what remains. A payout left PENDING (its
task gave up, or its message was lost) is sent again by ``payouts_sweep``
(beat, PAYOUT_SWEEP_SECONDS). One past its gateway's idempotency window is
never sent again with a key that may have expired: the gateway is asked
whether it made the transfer (``payout_lookup``) and the payout is booked
accordingly; when the gateway cannot tell, it is held for review and settled
by hand with ``payout_resolve`` (see ``payout_send``).
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from audit.services import audit_record
from exchange.choices import (
    AccountKind,
    JournalKind,
    OrderStatus,
    PayoutStatus,
    RefundStatus,
    SettlementBatchStatus,
    SettlementRunStatus,
)
from exchange.gateways import GatewayError, IdempotencyMismatch, gateway_class, get_gateway
from exchange.models import (
    JournalEntry,
    LedgerAccount,
    Order,
    Payout,
    Posting,
    Refund,
    SettlementBatch,
    SettlementRun,
)
from exchange.services.certificates import CERTIFIED_NAMES, certificates_issue_many
from exchange.services.fees import FeeSchedule, order_split, with_fee_category
from exchange.services.ledger import (
    EntrySpec,
    account_get,
    block_append,
    journal_entries_write,
    journal_post,
    journal_reverse,
    merchant_accounts,
)
from exchange.services.orders import orders_transition_locked
from exchange.services.transitions import history_start, status_move

log = logging.getLogger(__name__)


class SettlementInProgress(ValidationError):
    pass


# What a batch reads of its orders: settling, the fee schedule, the ledger entry and the certificate need no more.
BATCH_ORDER_FIELDS = (
    "public_id",
    "amount",
    "refunded_amount",
    "service_fee",
    "currency",
    "status",
    "merchant_id",
    "listing_id",
    "buyer_id",
    "created_at",
    "paid_at",
    "delivered_at",
    "settled_at",
    "settlement_run_id",
    "commission_bps",
)

# Delivered trades (a partial refund may have come first) are settled for what remains held.
SETTLEABLE = {OrderStatus.DELIVERED, OrderStatus.PARTIALLY_REFUNDED}


def settlement_run_start(*, actor=None, trigger: str = "manual", queue: bool = True) -> SettlementRun:
    """Start a run and schedule its planning; refuse (SettlementInProgress) while another run is running.

    With ``queue=False`` nothing is scheduled: the caller executes the run
    itself (``settlement_run_execute(queue=False)``, ``manage.py settle --now``),
    so starting it needs no broker.
    """
    from exchange.tasks import settlement_run_execute

    try:
        with transaction.atomic():
            run = SettlementRun.objects.create(requested_by=actor, trigger=trigger)
            history_start([run], reason=f"started ({trigger})", actor=actor)
            audit_record(action="settlement_run_started", actor=actor, obj=run, trigger=trigger)
            if queue:
                transaction.on_commit(lambda: settlement_run_execute.delay(run.pk))
    except IntegrityError:
        running = SettlementRun.objects.filter(status=SettlementRunStatus.RUNNING).first()
        raise SettlementInProgress(
            f"Settlement run {running.pk if running else '?'} is still running; wait for it to finish.",
            code="run_in_progress",
        ) from None
    return run


def _eligible(cutoff):
    return (
        Order.objects.filter(status__in=SETTLEABLE, settled_at__isnull=True, delivered_at__lte=cutoff)
        # settle once a refund in flight has its outcome
        .exclude(refunds__status=RefundStatus.PENDING)
    )


def _queue_batches(batch_pks: list[int]) -> None:
    from exchange.tasks import settlement_batch_execute

    for pk in batch_pks:
        settlement_batch_execute.delay(pk)


def _queue_finish(run_pk: int) -> None:
    from exchange.tasks import settlement_run_finish

    settlement_run_finish.delay(run_pk)


def settlement_run_plan(*, run_pk: int, queue: bool = True) -> SettlementRun:
    """Plan a running run once (cutoff, batches) and queue its unfinished batches; idempotent.

    Planned again (a redelivered task, the resume sweeper), it only queues
    the batches still PENDING, or the finish when none is left. With
    ``queue=False`` nothing is queued (the caller does the work itself).
    """
    with transaction.atomic():
        run = SettlementRun.objects.select_for_update().get(pk=run_pk)
        if run.status != SettlementRunStatus.RUNNING:
            return run
        if run.cutoff is None:
            run.cutoff = timezone.now() - timedelta(days=settings.DISPUTE_HOLD_DAYS)
            pks = list(_eligible(run.cutoff).order_by("pk").values_list("pk", flat=True))
            size = settings.SETTLEMENT_BATCH_SIZE
            batches = SettlementBatch.objects.bulk_create(
                SettlementBatch(
                    run=run, number=n // size + 1, first_order_pk=pks[n], last_order_pk=pks[min(n + size, len(pks)) - 1]
                )
                for n in range(0, len(pks), size)
            )
            history_start(batches, reason=f"planned: cutoff {run.cutoff.isoformat()}")
            run.orders_total, run.batches_total = len(pks), -(-len(pks) // size)
            run.save(update_fields=["cutoff", "orders_total", "batches_total"])
        pending = list(run.batches.filter(status=SettlementBatchStatus.PENDING).values_list("pk", flat=True))
        if not queue:
            pass
        elif pending:
            transaction.on_commit(lambda: _queue_batches(pending))
        elif not run.batches.exclude(status=SettlementBatchStatus.COMPLETED).exists():
            transaction.on_commit(lambda: _queue_finish(run.pk))
    return run


def _sale_spec(order: Order, *, run: SettlementRun, schedule: FeeSchedule, accounts: dict) -> EntrySpec | None:
    gross = order.amount - order.refunded_amount  # what is still held in escrow
    if not gross:
        return None  # free orders and fully refunded remainders move no money
    fee, proceeds = order_split(order, held=gross, schedule=schedule)  # service fee kept + commission, half up
    return EntrySpec(
        idempotency_key=f"sale:{order.pk}",
        kind=JournalKind.SALE,
        postings=[
            (accounts["escrow"], gross, order.currency),
            (accounts["revenue"], -fee, order.currency),
            (accounts["payable"][order.merchant_id], -proceeds, order.currency),
        ],
        order=order,
        memo=f"order {order.reference} settled in run {run.pk}",
    )


def settlement_batch_execute(*, batch_pk: int, queue_finish: bool = True) -> SettlementBatch:
    """Settle one batch's orders in one transaction, as one ledger block; at most once.

    The batch row lock makes a second delivery of the task wait and then
    return; a batch of a run that is no longer running is left alone. A
    failure other than a transient database error marks the batch and its
    run FAILED with the reason (the orders stay unsettled for the next run)
    and is re-raised.
    """
    try:
        with transaction.atomic():
            batch = SettlementBatch.objects.select_for_update(of=("self",)).select_related("run").get(pk=batch_pk)
            run = batch.run
            if batch.status != SettlementBatchStatus.PENDING or run.status != SettlementRunStatus.RUNNING:
                return batch
            orders = list(
                with_fee_category(
                    _eligible(run.cutoff)
                    .filter(pk__gte=batch.first_order_pk, pk__lte=batch.last_order_pk)
                    .only(*BATCH_ORDER_FIELDS)
                    .annotate(**CERTIFIED_NAMES)  # the names a certificate shows, without three related rows each
                    .select_for_update(of=("self",))
                    .order_by("pk")
                )
            )
            orders = _without_pending_refunds(orders)
            schedule = FeeSchedule.load()  # once per batch: the fee costs no query per order
            accounts = {
                "escrow": account_get(kind=AccountKind.ESCROW_HELD),
                "revenue": account_get(kind=AccountKind.PLATFORM_REVENUE),
                "payable": merchant_accounts(
                    kind=AccountKind.MERCHANT_PAYABLE, merchants={o.merchant_id: o.certified_merchant for o in orders}
                ),
            }
            specs = [_sale_spec(order, run=run, schedule=schedule, accounts=accounts) for order in orders]
            pending = journal_entries_write([spec for spec in specs if spec])
            sales = {entry.order_id: entry for entry, _ in pending.results}
            orders_transition_locked(
                orders=orders,
                to_status=OrderStatus.SETTLED,
                reasons={order.pk: f"settlement run {run.pk}" for order in orders},
                fields={order.pk: {"settlement_run": run} for order in orders},
            )
            # In the same transaction: a settled trade always has its certificate (a free one names no entry).
            certificates_issue_many(sales=[(order, sales.get(order.pk)) for order in orders])
            totals: dict[str, dict[str, int]] = defaultdict(lambda: {"gross": 0, "fee": 0})
            for spec in specs:
                if spec:
                    escrow, revenue, _ = spec.postings
                    totals[escrow[2]]["gross"] += escrow[1]
                    totals[escrow[2]]["fee"] -= revenue[1]
            batch.orders_settled, batch.ledger_rows, batch.totals = len(orders), pending.rows, dict(totals)
            batch.block_id, batch.attempts, batch.finished_at = pending.block_id, batch.attempts + 1, timezone.now()
            status_move(
                batch,
                SettlementBatchStatus.COMPLETED,
                reason=f"{len(orders)} orders settled",
                fields=("orders_settled", "ledger_rows", "totals", "block", "attempts", "finished_at"),
            )
            # The chain head is the only row batches share: locked last, for the append and the commit.
            block_append(pending)
    except Exception as exc:
        if not isinstance(exc, (OperationalError, ConnectionError, TimeoutError)):  # those are retried as they are
            _record_batch_failure(batch_pk=batch_pk, error=f"{type(exc).__name__}: {exc}")
        raise
    # Counted after the commit, so the batch that commits last always sees every batch done and queues the
    # finish (two may both see it: the finish runs once under the run's lock).
    if queue_finish and not run.batches.exclude(status=SettlementBatchStatus.COMPLETED).exists():
        _queue_finish(run.pk)
    return batch


def _without_pending_refunds(orders: list[Order]) -> list[Order]:
    """The locked ``orders`` less those with a refund still PENDING, read by a statement of its own.

    The batch's query excludes such orders, but it read the refunds in its
    snapshot: an order whose refund was being requested (order row locked,
    refunded_amount raised, the PENDING refund created, not yet committed)
    passed that test, and once the refund committed PostgreSQL re-checked
    only the order row (EvalPlanQual), not the refund subquery. Settled for
    what remained, the refund would then be booked out of the fee and the
    merchant's payable instead of escrow. Under READ COMMITTED this new
    statement sees the committed refund; the order stays unsettled for the
    next run, as the exclusion intends. The locked rows themselves are the
    latest committed versions, so status and refunded_amount are current.
    """
    if not orders:
        return orders
    waiting = set(
        Refund.objects.filter(order_id__in=[order.pk for order in orders], status=RefundStatus.PENDING).values_list(
            "order_id", flat=True
        )
    )
    return [order for order in orders if order.pk not in waiting] if waiting else orders


def _record_batch_failure(*, batch_pk: int, error: str) -> None:
    with transaction.atomic():
        batch = SettlementBatch.objects.select_for_update().get(pk=batch_pk)
        if batch.status != SettlementBatchStatus.PENDING:
            return
        batch.error, batch.attempts = error[:2000], batch.attempts + 1
        status_move(batch, SettlementBatchStatus.FAILED, reason=error, fields=("error", "attempts"))
        run = SettlementRun.objects.select_for_update().get(pk=batch.run_id)
        if run.status == SettlementRunStatus.RUNNING:
            run.error, run.finished_at = f"batch {batch.number}: {error}"[:2000], timezone.now()
            status_move(run, SettlementRunStatus.FAILED, reason=run.error, fields=("error", "finished_at"))


def _payout_specs(*, run: SettlementRun) -> tuple[list[Payout], list[EntrySpec]]:
    """The run's payouts (not saved) and ledger entries: per merchant and currency, owed less owed back.

    What a merchant owes back (MERCHANT_RECEIVABLE, booked by a refund after
    an earlier payout) is first netted against what it is owed (its payable
    credit); the rest of the payable is paid out.
    """
    gateway = get_gateway()
    # Locked in pk order: a refund booking a merchant's share waits, then sees the payable this run leaves.
    list(
        LedgerAccount.objects.select_for_update().filter(kind=AccountKind.MERCHANT_PAYABLE).order_by("pk").values("pk")
    )
    balances = (
        Posting.objects.filter(account__kind__in=[AccountKind.MERCHANT_PAYABLE, AccountKind.MERCHANT_RECEIVABLE])
        .values("account__merchant_id", "account__kind", "currency")
        .annotate(balance=Sum("amount"))
        .exclude(balance=0)
    )
    position: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    for row in balances:
        position[(row["account__merchant_id"], row["currency"])][row["account__kind"]] = row["balance"]
    if not position:
        return [], []
    from merchants.models import Merchant

    by_pk = Merchant.objects.in_bulk({merchant_pk for merchant_pk, _ in position})
    names = {pk: merchant.name for pk, merchant in by_pk.items()}
    payable = merchant_accounts(kind=AccountKind.MERCHANT_PAYABLE, merchants=names)
    receivable = merchant_accounts(kind=AccountKind.MERCHANT_RECEIVABLE, merchants=names)
    pending_account = account_get(kind=AccountKind.PAYOUTS_PENDING)
    payouts, netting = [], []
    for (merchant_pk, currency), legs in sorted(position.items()):
        owed = legs.get(AccountKind.MERCHANT_PAYABLE, 0)  # a credit (negative): the exchange owes the merchant
        owes = legs.get(AccountKind.MERCHANT_RECEIVABLE, 0)  # a debit (positive): the merchant owes back
        if owed + owes < 0:
            moved, pay = owes, -(owed + owes)  # all of the debt comes out of what is owed; the rest is paid
        elif owed < 0 < owes:
            moved, pay = -owed, 0  # the debt exceeds what is owed: it all goes towards the debt
        else:
            continue
        if moved:
            netting.append(
                EntrySpec(
                    idempotency_key=f"netting:{run.pk}:{merchant_pk}:{currency}",
                    kind=JournalKind.RECEIVABLE_NETTED,
                    postings=[(payable[merchant_pk], moved, currency), (receivable[merchant_pk], -moved, currency)],
                    memo=f"refunds owed by {by_pk[merchant_pk].name} netted in run {run.pk}",
                )
            )
        if pay:
            payouts.append(
                Payout(
                    run=run,
                    merchant=by_pk[merchant_pk],
                    currency=currency,
                    amount=pay,
                    idempotency_key=f"payout-{run.pk}-{merchant_pk}-{currency}",
                    gateway=gateway.name,
                )
            )
    Payout.objects.bulk_create(payouts)
    history_start(payouts, reason=f"created by settlement run {run.pk}")
    specs = netting + [
        EntrySpec(
            idempotency_key=f"payout_created:{payout.pk}",
            kind=JournalKind.PAYOUT_CREATED,
            postings=[
                (payable[payout.merchant_id], payout.amount, payout.currency),
                (pending_account, -payout.amount, payout.currency),
            ],
            payout=payout,
            memo=f"payout to {payout.merchant.name} in run {run.pk}",
        )
        for payout in payouts
    ]
    return payouts, specs


def settlement_run_finish(*, run_pk: int, queue: bool = True) -> SettlementRun:
    """Once every batch is done: create the run's payouts (one ledger block), complete the run, queue the sends.

    With ``queue=False`` the sends are not queued: the caller sends them
    (``settlement_run_execute(queue=False)``), or the payout sweep does.
    """
    from exchange.tasks import payout_send

    with transaction.atomic():
        run = SettlementRun.objects.select_for_update().get(pk=run_pk)
        if run.status != SettlementRunStatus.RUNNING or run.cutoff is None:
            return run
        if run.batches.exclude(status=SettlementBatchStatus.COMPLETED).exists():
            return run  # a batch is still to do: the last one to complete queues the finish again
        done = run.batches.aggregate(batches=Count("pk"), orders=Sum("orders_settled"))
        run.batches_done, run.orders_settled = done["batches"], done["orders"] or 0
        payouts, specs = _payout_specs(run=run)
        pending = journal_entries_write(specs)
        run.finished_at, run.payouts_created = timezone.now(), len(payouts)
        status_move(
            run,
            SettlementRunStatus.COMPLETED,
            reason=f"{run.orders_settled} orders settled, {len(payouts)} payouts created",
            fields=("finished_at", "payouts_created", "batches_done", "orders_settled"),
        )
        block_append(pending)
        pks = [payout.pk for payout in payouts]
        if queue:
            transaction.on_commit(lambda: [payout_send.delay(pk) for pk in pks])
    return run


def settlement_run_progress(run: SettlementRun) -> tuple[int, int]:
    """(batches done, orders settled) so far: counted from the batches while the run runs (one query)."""
    if run.status == SettlementRunStatus.COMPLETED:
        return run.batches_done, run.orders_settled
    done = run.batches.filter(status=SettlementBatchStatus.COMPLETED).aggregate(
        batches=Count("pk"), orders=Sum("orders_settled")
    )
    return done["batches"], done["orders"] or 0


def settlement_run_execute(*, run_pk: int, queue: bool = True) -> SettlementRun:
    """Do a whole run in this process: plan it, settle its batches one after another, finish it.

    The workers' way is the ``settlement_run_execute`` task (planning only)
    and one task per batch; this is for ``manage.py settle --now`` and for
    tests. Safe alongside workers: each batch is still done once.

    With ``queue=True`` the finish queues the payout sends as usual. With
    ``queue=False`` nothing at all goes through the broker: the run's
    payouts are sent here too (``payouts_send_here``), and should any step
    fail, the run is marked FAILED with the reason instead of being left
    RUNNING (which would refuse every later run): the batches it completed
    stay settled (their money is in the merchants' payables, which the next
    run pays out) and the orders it did not reach wait for the next run.
    The error is re-raised.
    """
    if queue:
        settlement_run_plan(run_pk=run_pk, queue=False)
        for batch_pk in _pending_batches(run_pk):
            settlement_batch_execute(batch_pk=batch_pk, queue_finish=False)
        return settlement_run_finish(run_pk=run_pk)
    try:
        settlement_run_plan(run_pk=run_pk, queue=False)
        for batch_pk in _pending_batches(run_pk):
            settlement_batch_execute(batch_pk=batch_pk, queue_finish=False)
        run = settlement_run_finish(run_pk=run_pk, queue=False)
    except Exception as exc:
        try:
            settlement_run_fail(run_pk=run_pk, error=f"{type(exc).__name__}: {exc}")
        except Exception:  # the database itself is gone: the run stays RUNNING; `settle --resume` continues it
            log.exception("settlement run %s could not be marked failed", run_pk)
        raise
    payouts_send_here(payout_pks=list(run.payouts.filter(status=PayoutStatus.PENDING).values_list("pk", flat=True)))
    return run


def _pending_batches(run_pk: int) -> list[int]:
    return list(
        SettlementBatch.objects.filter(run_id=run_pk, status=SettlementBatchStatus.PENDING)
        .order_by("number")
        .values_list("pk", flat=True)
    )


def settlement_run_fail(*, run_pk: int, error: str, actor=None) -> SettlementRun:
    """Mark a RUNNING run FAILED with ``error`` (its row locked); a run that already ended is left as it is.

    What it settled stays settled; its unfinished batches are left PENDING
    and their orders unsettled, so the next run settles them.
    """
    with transaction.atomic():
        run = SettlementRun.objects.select_for_update().get(pk=run_pk)
        if run.status == SettlementRunStatus.RUNNING:
            run.error, run.finished_at = error[:2000], timezone.now()
            status_move(run, SettlementRunStatus.FAILED, reason=run.error, fields=("error", "finished_at"), actor=actor)
    return run


def payouts_send_here(*, payout_pks: list[int]) -> dict[str, list[int]]:
    """Send payouts in this process, one after another; {status: payout pks}, ``"pending"`` for the transient.

    A transient gateway error leaves its payout PENDING (recorded by
    ``payout_send``) and the others are still sent; the payout sweep sends
    it again later.
    """
    outcome: dict[str, list[int]] = defaultdict(list)
    for pk in payout_pks:
        try:
            outcome[payout_send(payout_pk=pk).status].append(pk)
        except GatewayError:
            outcome[PayoutStatus.PENDING].append(pk)
    return dict(outcome)


def settlement_runs_resume(*, stalled_after_seconds: int = 0) -> list[int]:
    """Queue again the work of running runs that made no progress for ``stalled_after_seconds``; return their pks.

    A run whose planning was lost is planned; its PENDING batches (their task
    lost with a dead worker, or never delivered) are queued again; a run whose
    batches are all done but which never finished is finished. Everything
    queued twice is done once (row locks and status checks).
    """
    quiet_since = timezone.now() - timedelta(seconds=stalled_after_seconds)
    resumed = []
    for run in SettlementRun.objects.filter(status=SettlementRunStatus.RUNNING, started_at__lte=quiet_since):
        last = (
            run.batches.filter(finished_at__isnull=False)
            .order_by("-finished_at")
            .values_list("finished_at", flat=True)
            .first()
        )
        if last and last > quiet_since:
            continue  # still making progress
        settlement_run_plan(run_pk=run.pk)
        resumed.append(run.pk)
    return resumed


HELD_FOR_REVIEW = "Held for review: "


LAST_ERROR = " Last error before it was held: "


def payout_key_expired(payout: Payout, *, now=None) -> bool:
    """Whether ``payout``'s idempotency key may have expired at its gateway (its ``key_window``; the sandbox keeps
    its keys for good), so a re-send could pay it twice."""
    try:
        window = gateway_class(payout.gateway).key_window
    except LookupError:  # a gateway no longer configured: nothing will send it, so nothing can send it twice
        return False
    return window is not None and payout.created_at <= (now or timezone.now()) - window


def _payout_hold(payout: Payout, *, why: str) -> None:
    """Record why a PENDING payout is not sent again and the gateway could not say whether it made the transfer
    (the caller holds its row lock). Held again for another reason, the reason is brought up to date; the error
    the payout had before it was first held is kept."""
    before = payout.error
    if payout.error.startswith(HELD_FOR_REVIEW):  # held already, by this release or the one before (its marker)
        for marker in (LAST_ERROR, " Last error: "):
            if marker in payout.error:
                before = payout.error.split(marker, 1)[1]
                break
    error = (
        f"{HELD_FOR_REVIEW}pending since {payout.created_at:%Y-%m-%d %H:%M} UTC and not sent again, since a re-send "
        f"could pay it twice, and {payout.gateway} could not say whether it made the transfer ({why[:500]}). Look "
        f"for a transfer with metadata payout_id={payout.pk} at the gateway, then record it on this payout's admin "
        f"page (Record what the gateway shows), or with `manage.py settle --payout-sent {payout.pk} <transfer id>`, "
        f"or `--payout-not-sent {payout.pk}` (the money goes back to the merchant's payable and the next run pays "
        f"it).{LAST_ERROR}{before or 'none'}"
    )[:2000]
    if error != payout.error:
        payout.error = error
        payout.save(update_fields=["error"])
        log.error(
            "payout %s held for review: the gateway could not tell whether it made the transfer (%s)", payout.pk, why
        )


def _payout_settle_by_lookup(payout: Payout, *, because: str = "after its idempotency window", actor=None) -> str:
    """A PENDING payout past its key window (row locked): ask the gateway what it made, and book that.

    The transfer the gateway shows for the payout: SENT with it. None: no
    transfer was ever made (every attempt used the payout's key inside the
    window, and the gateway lists the transfers of that window), so it is
    FAILED and its money owed again. The gateway cannot tell (unreachable,
    or what it shows is ambiguous): held for review, asked again by the
    next sweep. Returns why it is still held ("" once booked).
    """
    try:
        reference = get_gateway(payout.gateway).payout_lookup(payout=payout)
    except GatewayError as exc:
        if payout_key_expired(payout):
            _payout_hold(payout, why=str(exc))
        else:  # inside the window (an idempotency mismatch): not held, the sweep sends it (and asks) again
            payout.error = f"the gateway could not say whether it made the transfer {because} ({exc})"[:2000]
            payout.save(update_fields=["error"])
        return str(exc)
    if reference:
        _payout_book_sent(payout, reference, reason=f"transfer {reference} found at the gateway {because}", actor=actor)
    else:
        _payout_book_returned(
            payout,
            f"the gateway shows no transfer for it (looked up {because}); paid again by the next run",
            reason="not sent: the gateway shows no transfer for it",
            actor=actor,
        )
    return ""


def _payout_book_sent(payout: Payout, reference: str, *, reason: str, actor=None) -> None:
    """A transfer was made: SENT, its ledger entry, its audit event (the caller holds the row lock)."""
    payout.gateway_reference, payout.sent_at, payout.error = reference, timezone.now(), ""
    status_move(
        payout,
        PayoutStatus.SENT,
        reason=reason,
        actor=actor,
        fields=("attempts", "gateway_reference", "sent_at", "error"),
    )
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
    audit_record(
        action="payout_sent",
        actor=actor,
        obj=payout,
        amount=payout.amount,
        currency=payout.currency,
        reference=reference,
    )


def _payout_book_returned(payout: Payout, error: str, *, reason: str, actor=None) -> None:
    """No transfer was made: FAILED, its money back to the merchant's payable (the caller holds the row lock)."""
    payout.error = error[:2000]
    status_move(payout, PayoutStatus.FAILED, reason=reason, actor=actor, fields=("attempts", "error"))
    # Refused, not lost: the money goes back to what the merchant is owed, and the next run pays it again. The entry
    # is the reverse of the one that created the payout, and names it (a payout always has one, unless it was made
    # outside a settlement run).
    created = JournalEntry.objects.filter(idempotency_key=f"payout_created:{payout.pk}").first()
    if created is not None:
        journal_reverse(
            entry=created,
            idempotency_key=f"payout_returned:{payout.pk}",
            kind=JournalKind.PAYOUT_RETURNED,
            payout=payout,
            memo=reason[:300],
        )
    else:
        journal_post(
            idempotency_key=f"payout_returned:{payout.pk}",
            kind=JournalKind.PAYOUT_RETURNED,
            postings=[
                (account_get(kind=AccountKind.PAYOUTS_PENDING), payout.amount, payout.currency),
                (
                    account_get(kind=AccountKind.MERCHANT_PAYABLE, merchant=payout.merchant),
                    -payout.amount,
                    payout.currency,
                ),
            ],
            payout=payout,
            memo=reason[:300],
        )
    audit_record(
        action="payout_failed",
        actor=actor,
        obj=payout,
        amount=payout.amount,
        currency=payout.currency,
        error=error[:300],
    )


def payout_send(*, payout_pk: int) -> Payout:
    """Pay a payout through the gateway once.

    The row lock keeps two workers from sending the same payout; the gateway
    call carries the payout's idempotency key (stored when the payout was
    created), so a retry after a timed-out call that in fact succeeded gets
    the first transfer back instead of making a second one. A refusal is
    recorded on the payout (FAILED, with the reason) and its amount goes back
    to the merchant's payable (PAYOUT_RETURNED), so the next run pays it
    again; a transient error is recorded and re-raised so the task retries.

    A payout older than its gateway's idempotency window
    (its gateway's ``key_window``: Stripe's keys may expire 24 hours after first
    use) is not sent: an earlier attempt that timed out may have made the
    transfer, and the expired key would no longer return it, so a re-send
    could pay the merchant twice. The gateway is asked instead whether it
    made a transfer for the payout (the transfer's metadata names it; see
    ``_payout_settle_by_lookup``). When it cannot tell, the payout stays
    PENDING, held for review (its error says so and what to do); staff look
    the transfer up and record the outcome with ``payout_resolve``.
    """
    with transaction.atomic():
        # The payout's row only (of self): the merchant is read, not locked, so nothing that references the merchant
        # (its listings, orders, the next run's payouts) waits while the gateway answers.
        payout = Payout.objects.select_for_update(of=("self",)).select_related("merchant").get(pk=payout_pk)
        if payout.status != PayoutStatus.PENDING:
            return payout  # sent already, or refused and its money owed again (the next run pays it)
        if payout_key_expired(payout):
            _payout_settle_by_lookup(payout)
            return payout
        try:
            reference = get_gateway(payout.gateway).payout_create(payout=payout)
        except IdempotencyMismatch:
            # The key was first used with other parameters (an earlier release's metadata, or the merchant's
            # account changed since): that first request may have made the transfer, so it is looked up.
            payout.attempts += 1
            payout.save(update_fields=["attempts"])
            _payout_settle_by_lookup(payout, because="after it refused the payout's key with other parameters")
            return payout
        except GatewayError as exc:
            failure = exc
        else:
            payout.attempts += 1
            _payout_book_sent(payout, reference, reason=f"transfer {reference}")
            return payout
    if failure.transient:
        Payout.objects.filter(pk=payout_pk, status=PayoutStatus.PENDING).update(
            attempts=F("attempts") + 1, error=str(failure)[:2000]
        )
        raise failure
    with transaction.atomic():
        payout = Payout.objects.select_for_update(of=("self",)).select_related("merchant").get(pk=payout_pk)
        if payout.status != PayoutStatus.PENDING:
            return payout
        payout.attempts += 1
        _payout_book_returned(payout, str(failure), reason=f"refused by the gateway: {failure}")
    return payout


class PayoutNotHeld(ValidationError):
    """Only a payout held for review (PENDING past its gateway's idempotency window) is resolved by hand."""


def _held_payout(payout_pk: int) -> Payout:
    """The payout, row locked, if it is held for review (PENDING past its gateway's idempotency window);
    PayoutNotHeld otherwise. Inside a transaction."""
    payout = Payout.objects.select_for_update(of=("self",)).select_related("merchant").get(pk=payout_pk)
    if payout.status != PayoutStatus.PENDING or not payout_key_expired(payout):
        raise PayoutNotHeld(
            f"Payout {payout.pk} is {payout.get_status_display()} and not held for review: "
            "it is sent (or refused) by the workers, not by hand.",
            code="payout_not_held",
        )
    return payout


def payout_resolve(*, payout_pk: int, transfer_reference: str = "", actor=None) -> Payout:
    """Record what staff found at the gateway for a payout held for review.

    ``transfer_reference`` (the transfer the gateway shows for this payout):
    it was paid, the payout becomes SENT with that reference. Empty: no
    transfer exists, so the payout is FAILED through the refusal path (its
    money back to the merchant's payable; the next run pays it with a fresh
    key). Any other payout is refused with PayoutNotHeld and nothing changes.
    """
    transfer_reference = transfer_reference.strip()
    with transaction.atomic():
        payout = _held_payout(payout_pk)
        other = Payout.objects.filter(gateway_reference=transfer_reference).first() if transfer_reference else None
        if other is not None:
            raise ValidationError(
                f"Transfer {transfer_reference} is already recorded for payout {other.pk}.", code="transfer_taken"
            )
        if transfer_reference:
            _payout_book_sent(
                payout, transfer_reference, reason=f"transfer {transfer_reference} found at the gateway", actor=actor
            )
        else:
            _payout_book_returned(
                payout,
                "no transfer found at the gateway; paid again by the next run",
                reason="not sent: no transfer found at the gateway",
                actor=actor,
            )
    return payout


def payout_lookup_now(*, payout_pk: int, actor=None) -> tuple[Payout, str]:
    """Staff ask the gateway now, rather than at the next sweep, what it made for a payout held for review.

    Booked as ``payout_send`` books what the gateway shows; returns the payout
    and why it is still held ("" once booked). Any other payout is refused
    with PayoutNotHeld and nothing changes.
    """
    with transaction.atomic():
        payout = _held_payout(payout_pk)
        why = _payout_settle_by_lookup(payout, actor=actor)
    return payout, why


@dataclass(frozen=True)
class PayoutSweep:
    queued: list[int]  # PENDING payouts whose send was queued again
    held: list[int]  # past their gateway's idempotency window, and the gateway could not tell: held for review
    looked_up: list[int] = field(default_factory=list)  # past the window, booked by what the gateway shows


def payouts_sweep(*, older_than_seconds: int) -> PayoutSweep:
    """Queue the send again of every payout PENDING for longer than ``older_than_seconds``; safe to run twice.

    A payout stays PENDING when its task gave up (transient gateway errors
    outlasting its retries) or its message was lost (the broker was down
    when the run finished): nothing else would ever send it, and its money
    would sit in payouts in transit. A send queued twice is made once
    (``payout_send`` locks the row, returns early once it is SENT or
    FAILED, and calls the gateway with the payout's stored idempotency key).
    Payouts past their gateway's idempotency window are not queued: the
    gateway is asked, here, what it made for them (see ``payout_send``);
    those it cannot tell about are held for review.
    """
    from exchange.tasks import payout_send as payout_send_task

    now = timezone.now()
    stuck = Payout.objects.filter(
        status=PayoutStatus.PENDING, created_at__lte=now - timedelta(seconds=older_than_seconds)
    ).order_by("pk")
    queued, expired, held, looked_up = [], [], [], []
    for payout in stuck.only("pk", "gateway", "created_at"):
        (expired if payout_key_expired(payout, now=now) else queued).append(payout.pk)
    for pk in expired:
        try:
            with transaction.atomic():
                payout = Payout.objects.select_for_update(of=("self",)).select_related("merchant").get(pk=pk)
                if payout.status != PayoutStatus.PENDING:
                    continue
                _payout_settle_by_lookup(payout)
        except Exception:  # one payout's failure (a bug, a lost connection) must not stop the others' sweep
            log.exception("payout %s: looking it up at the gateway failed", pk)
            held.append(pk)
            continue
        (held if payout.status == PayoutStatus.PENDING else looked_up).append(pk)
    for pk in queued:
        payout_send_task.delay(pk)
    if queued:
        log.info("payouts %s pending too long: their sends are queued again", queued)
    if looked_up:
        log.info("payouts %s past their idempotency window: booked as the gateway shows them", looked_up)
    return PayoutSweep(queued=queued, held=held, looked_up=looked_up)


def payouts_stuck(*, older_than_seconds: int = 0):
    """PENDING payouts older than ``older_than_seconds``, oldest first (for ``manage.py settle --payouts``)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return (
        Payout.objects.filter(status=PayoutStatus.PENDING, created_at__lte=cutoff)
        .select_related("merchant")
        .order_by("created_at", "pk")
    )
