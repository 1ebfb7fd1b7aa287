"""Settlement under faults, with real Celery worker processes (prefork, ``-Q settlement``), PostgreSQL and Redis.

- a settlement worker SIGKILLed in the middle of a batch: the run completes and each merchant is paid once;
- a Stripe transfer that times out after succeeding: the worker's retry gets the first transfer back, so one
  transfer is made;
- two runs started at the same instant by two ``manage.py settle`` processes: one proceeds, the other is
  refused with a clear message;
- (no worker) a batch task delivered twice at once settles its orders once; a batch waiting for a locked order
  must not hold up the run's other batches.

The contract under test: every delivered order is SETTLED once (one SALE entry, one certificate, one history
row), every merchant gets one payout per run whose transfer is made once, the run ends COMPLETED and the ledger
verifies.
"""

import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum

from exchange.celery import app as celery_app
from exchange.choices import (
    JournalKind,
    OrderStatus,
    PayoutStatus,
    SettlementBatchStatus,
    SettlementRunStatus,
)
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import (
    JournalEntry,
    LedgerBlock,
    Order,
    OrderStatusHistory,
    Payout,
    Posting,
    SandboxTransfer,
    SettlementBatch,
    SettlementRun,
    TransactionCertificate,
)
from exchange.services.ledger import ledger_verify
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.settlement import settlement_run_plan, settlement_run_progress, settlement_run_start
from exchange.tasks import settlement_batch_execute
from tests.factories import UserFactory, make_listing, make_merchant
from tests.fakes.stripe_server import FakeStripe
from tests.system.conftest import _database_url, wait_for
from tests.system.faults import ROOT, VISIBILITY_TIMEOUT, blocked_backends, sigkill, start_worker, waiting_backends

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

# One listing per merchant at these prices. The fee is 10 % rounded half up (123, 50 and 100), so the merchant is
# owed 1111, 450 and 899 per order.
PRICES = (1234, 500, 999)
NET = {1234: 1111, 500: 450, 999: 899}
BATCH_SIZE = 3
# What the settlement workers read from the environment: small batches, no dispute hold, a 10 % fee, the sandbox.
SETTLEMENT_ENV = {
    "SETTLEMENT_BATCH_SIZE": str(BATCH_SIZE),
    "DISPUTE_HOLD_DAYS": "0",
    "PLATFORM_FEE_BPS": "1000",
    "PAYMENT_GATEWAY": "sandbox",
}
FAILURE_MARKERS = ("Traceback", "WorkerLostError", "ERROR/")
BATCH_SUCCEEDED = re.compile(r"Task exchange\.tasks\.settlement_batch_execute\[([0-9a-f-]+)\] succeeded in [^:]+: (.+)")
BATCH_RECEIVED = re.compile(r"Task exchange\.tasks\.settlement_batch_execute\[([0-9a-f-]+)\] received")


@pytest.fixture
def fake_stripe():
    server = FakeStripe().start()
    yield server
    server.stop()


# --- the market ----------------------------------------------------------------------------------------------------


def _market(*, merchants: int, orders_each: int) -> tuple[list, list[Order]]:
    """``merchants`` merchants, each with ``orders_each`` DELIVERED orders of its listing (merchant n's at PRICES[n]).

    The orders' primary keys interleave the merchants, so a batch of three holds one order of each. Each order
    is bought, paid through the sandbox's signed event and confirmed by its buyer here, with the tasks inline,
    so a worker started afterwards finds nothing but what the test sends it.
    """
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        sellers = [UserFactory(email=f"seller{n}@example.com") for n in range(merchants)]
        owners = [make_merchant(seller, name=f"Faults Data {n}") for n, seller in enumerate(sellers)]
        listings = [
            make_listing(merchant=merchant, owner=seller, price=PRICES[n], title=f"Set {n}")
            for n, (merchant, seller) in enumerate(zip(owners, sellers, strict=True))
        ]
        orders = []
        for round_number in range(orders_each):
            for n, listing in enumerate(listings):
                buyer = UserFactory(email=f"buyer{round_number}-{n}@example.com")
                order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=f"faults-{round_number}-{n}")
                order_checkout_start(order=order)
                order.refresh_from_db()
                SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
                orders.append(order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer))
    finally:
        celery_app.conf.task_always_eager = eager
    assert [Order.objects.get(pk=order.pk).status for order in orders] == [OrderStatus.DELIVERED] * len(orders)
    return owners, orders


def _expected_payouts(owners, orders_each: int) -> dict[int, int]:
    return {merchant.pk: NET[PRICES[n]] * orders_each for n, merchant in enumerate(owners)}


# --- waiting and checking ------------------------------------------------------------------------------------------


def _state() -> str:
    runs = list(SettlementRun.objects.values("pk", "status", "batches_done", "batches_total", "error"))
    batches = list(SettlementBatch.objects.values("pk", "number", "status", "attempts", "error"))
    payouts = list(Payout.objects.values("pk", "merchant_id", "status", "attempts", "error"))
    return f"runs {runs}\nbatches {batches}\npayouts {payouts}"


def wait_paid(run_pk: int, merchants: int, running: list, *, timeout: float) -> None:
    """Wait until the run is over and ``merchants`` payouts are SENT; fail with the state and the workers' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        over = SettlementRun.objects.filter(pk=run_pk).exclude(status=SettlementRunStatus.RUNNING).exists()
        if over and Payout.objects.filter(run_id=run_pk, status=PayoutStatus.SENT).count() == merchants:
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {worker.log_path.name}\n{worker.log()[-4000:]}" for worker in running)
    pytest.fail(f"timed out after {timeout}s waiting for run {run_pk} to pay {merchants} merchants\n{_state()}\n{logs}")


def assert_settled_once(run_pk: int, orders: list[Order], expected: dict[int, int], *, gateway: str = "sandbox"):
    """The run COMPLETED; every order settled once by it, as one block per batch; each merchant paid once."""
    run = SettlementRun.objects.get(pk=run_pk)
    pks = sorted(order.pk for order in orders)
    batches_total = -(-len(pks) // BATCH_SIZE)
    assert (run.status, run.error) == (SettlementRunStatus.COMPLETED, "")
    assert (run.orders_total, run.orders_settled, run.batches_total, run.batches_done, run.payouts_created) == (
        len(pks),
        len(pks),
        batches_total,
        batches_total,
        len(expected),
    )
    settled = Order.objects.filter(pk__in=pks)
    assert set(settled.values_list("status", "settlement_run_id")) == {(OrderStatus.SETTLED, run_pk)}
    history = OrderStatusHistory.objects.filter(to_status=OrderStatus.SETTLED).order_by("order_id")
    assert list(history.values_list("order_id", flat=True)) == pks
    sales = JournalEntry.objects.filter(kind=JournalKind.SALE).order_by("order_id")
    assert list(sales.values_list("order_id", flat=True)) == pks  # one SALE entry per order
    certificates = TransactionCertificate.objects.order_by("order_id")
    assert list(certificates.values_list("order_id", flat=True)) == pks
    assert set(certificates.values_list("journal_entry__kind", flat=True)) == {JournalKind.SALE}

    # Each batch wrote its orders' SALE entries once, as one ledger block of its own.
    batches = list(SettlementBatch.objects.filter(run_id=run_pk).order_by("number"))
    assert [(b.number, b.first_order_pk, b.last_order_pk, b.status, b.attempts) for b in batches] == [
        (n + 1, pks[n * BATCH_SIZE], pks[min((n + 1) * BATCH_SIZE, len(pks)) - 1], SettlementBatchStatus.COMPLETED, 1)
        for n in range(batches_total)
    ]
    for batch in batches:
        in_batch = pks[(batch.number - 1) * BATCH_SIZE : batch.number * BATCH_SIZE]
        assert batch.orders_settled == len(in_batch)
        entries = JournalEntry.objects.filter(block_id=batch.block_id).order_by("order_id")
        assert list(entries.values_list("kind", "order_id")) == [(JournalKind.SALE, pk) for pk in in_batch]
        assert LedgerBlock.objects.get(pk=batch.block_id).entry_count == len(in_batch)

    # One payout per merchant, its transfer made once, and its two ledger entries.
    payouts = Payout.objects.filter(run_id=run_pk)
    assert {p.merchant_id: (p.amount, p.currency, p.status, p.gateway) for p in payouts} == {
        merchant_pk: (amount, "CNY", PayoutStatus.SENT, gateway) for merchant_pk, amount in expected.items()
    }
    assert Payout.objects.count() == len(expected)
    for kind in (JournalKind.PAYOUT_CREATED, JournalKind.PAYOUT_SENT):
        entries = JournalEntry.objects.filter(kind=kind).order_by("payout_id")
        assert list(entries.values_list("payout_id", flat=True)) == sorted(p.pk for p in payouts)
    if gateway == "sandbox":
        transfers = {t.idempotency_key: (t.pk, t.merchant_id, t.amount) for t in SandboxTransfer.objects.all()}
        assert transfers == {p.idempotency_key: (p.gateway_reference, p.merchant_id, p.amount) for p in payouts}
    verified = ledger_verify()
    assert verified.ok, verified.message
    assert Posting.objects.aggregate(total=Sum("amount"))["total"] == 0


def _succeeded_batches(log: str) -> dict[str, str]:
    """The settlement_batch_execute tasks a worker log shows succeeded: {task id: the task's return value}."""
    return dict(BATCH_SUCCEEDED.findall(log))


# --- a. kill -9 in the middle of a batch ---------------------------------------------------------------------------


def test_worker_killed_mid_batch_the_run_completes_and_pays_each_merchant_once(
    transactional_db, broker, _private_storage, tmp_path, workers
):
    owners, orders = _market(merchants=3, orders_each=4)
    pks = sorted(order.pk for order in orders)
    run = settlement_run_start(trigger="test")  # its planning task waits in Redis: no worker yet
    assert broker.llen("settlement") == 1

    # Hold one order of batch 2 (of 4) from a connection of our own. One worker process plans the run, settles
    # batch 1, then blocks inside batch 2's transaction, on the statement that locks the batch's orders.
    with psycopg.connect(_database_url(), autocommit=False) as locker:
        locker_pid = locker.execute("SELECT pg_backend_pid()").fetchone()[0]
        locker.execute("SELECT id FROM exchange_order WHERE id = %s FOR UPDATE", [pks[4]])
        first = start_worker(
            tmp_path,
            _private_storage,
            redis_url=settings.REDIS_URL,
            label="first",
            concurrency=1,
            queues="settlement",
            env=SETTLEMENT_ENV,
        )
        workers.append(first)
        (blocked,) = wait_for(
            lambda: blocked_backends(locker_pid), timeout=30, message="the worker's batch to wait for the order's lock"
        )
        # The batch's select of its orders with their fee category (pg_stat_activity keeps the first 1 kB of it).
        query = waiting_backends()[blocked]
        assert query.startswith('SELECT "exchange_order"."id"') and '"fee_category_id"' in query, query
        batches = list(SettlementBatch.objects.filter(run=run).order_by("number"))
        assert [(b.number, b.first_order_pk, b.last_order_pk, b.status) for b in batches] == [
            (1, pks[0], pks[2], SettlementBatchStatus.COMPLETED),
            (2, pks[3], pks[5], SettlementBatchStatus.PENDING),
            (3, pks[6], pks[8], SettlementBatchStatus.PENDING),
            (4, pks[9], pks[11], SettlementBatchStatus.PENDING),
        ]
        sigkill(first)
        # The server learns of a dead client only when it next writes to it; end the orphaned session now, as a
        # server with client_connection_check_interval would, so nothing of the killed task lands afterwards.
        for pid in waiting_backends():
            locker.execute("SELECT pg_terminate_backend(%s)", [pid])
        locker.rollback()

    # Batch 1 is settled, batch 2's transaction died with its worker: nothing of it is written.
    (killed_task,) = set(BATCH_RECEIVED.findall(first.log())) - set(_succeeded_batches(first.log()))
    run.refresh_from_db()
    # Progress while running is counted from the batches (the run's own counters are written when it finishes).
    assert (run.status, *settlement_run_progress(run)) == (SettlementRunStatus.RUNNING, 1, 3)
    assert list(Order.objects.filter(status=OrderStatus.SETTLED).order_by("pk").values_list("pk", flat=True)) == pks[:3]
    assert JournalEntry.objects.filter(kind=JournalKind.SALE).count() == 3
    assert TransactionCertificate.objects.count() == 3
    assert not Payout.objects.exists() and not SandboxTransfer.objects.exists()
    # The killed task was never acknowledged: Redis holds it aside until the visibility timeout runs out.
    # Batches 3 and 4 were never fetched (one worker process, prefetch 1).
    assert (broker.hlen("unacked"), broker.llen("settlement")) == (1, 2)

    # The operator resumes the run as well: batches 2 to 4 are queued again, so each of them arrives twice.
    out = io.StringIO()
    call_command("settle", "--resume", stdout=out)
    assert out.getvalue() == f"Queued the unfinished work of settlement run(s) {run.pk}.\n"
    assert broker.llen("settlement") == 5

    second = start_worker(
        tmp_path,
        _private_storage,
        redis_url=settings.REDIS_URL,
        label="second",
        queues="settlement",
        env=SETTLEMENT_ENV,
    )
    workers.append(second)
    wait_paid(run.pk, len(owners), [second], timeout=40)
    # The killed task itself comes back after the visibility timeout, finds its batch done and returns.
    wait_for(
        lambda: killed_task in _succeeded_batches(second.log()),
        timeout=VISIBILITY_TIMEOUT + 20,
        message=f"the killed task {killed_task} to be redelivered",
    )
    wait_for(lambda: broker.hlen("unacked") == 0, timeout=10, message="every task to be acknowledged")

    assert_settled_once(run.pk, orders, _expected_payouts(owners, 4))
    # Batches 2, 3 and 4 each ran twice in the second worker (queued twice), and settled once.
    done = {b.number: f"'batch {b.pk}: completed, 3 orders'" for b in SettlementBatch.objects.filter(run=run)}
    results = list(_succeeded_batches(second.log()).values())
    assert sorted(results) == sorted([done[2], done[2], done[3], done[3], done[4], done[4]])
    assert broker.llen("settlement") == 0
    log = second.log()
    # The batch that completes last queues the finish; a duplicate delivery completing at the same moment may
    # queue it again. Each one queued succeeds, and the run is finished once under its lock: the payouts above
    # were made once, and the run's counters match them.
    finishes = re.findall(r"Task exchange\.tasks\.settlement_run_finish\[[^\]]+\] (received|succeeded)", log)
    assert finishes.count("received") == finishes.count("succeeded") >= 1, finishes
    run.refresh_from_db()
    assert (run.status, run.payouts_created) == (SettlementRunStatus.COMPLETED, len(owners))
    assert not any(marker in log for marker in FAILURE_MARKERS), log[-5000:]


# --- b. a transfer that times out after succeeding -----------------------------------------------------------------


def test_transfer_that_times_out_after_succeeding_is_made_once_by_the_worker(
    transactional_db, broker, _private_storage, tmp_path, workers, fake_stripe
):
    owners, orders = _market(merchants=1, orders_each=2)
    merchant = owners[0]
    merchant.stripe_account_id = "acct_test_faults"
    merchant.save(update_fields=["stripe_account_id"])
    # Stripe makes the first transfer at once but answers only after the worker's client gave up (1 s).
    fake_stripe.delay_next["/v1/transfers"] = 3.0
    worker = start_worker(
        tmp_path,
        _private_storage,
        redis_url=settings.REDIS_URL,
        label="stripe",
        concurrency=1,
        queues="settlement",
        # The retry waits in the worker for its countdown: with a visibility timeout of seconds, Redis would
        # hand it out a second time meanwhile. The settings' hour keeps this test about the gateway alone.
        short_visibility=False,
        env={
            **SETTLEMENT_ENV,
            "PAYMENT_GATEWAY": "stripe",
            "STRIPE_SECRET_KEY": "sk_test_faults",
            "STRIPE_WEBHOOK_SECRET": "whsec_test_faults",
            "STRIPE_API_BASE": fake_stripe.url,
            "STRIPE_TIMEOUT_SECONDS": "1",
            "STRIPE_MAX_NETWORK_RETRIES": "0",
        },
    )
    workers.append(worker)
    run = settlement_run_start(trigger="test")
    # payout_send retries a transient GatewayError with retry_backoff=5: the first countdown is 0 to 5 s (jitter).
    wait_paid(run.pk, 1, [worker], timeout=40)

    assert_settled_once(run.pk, orders, _expected_payouts(owners, 2), gateway="stripe")
    payout = Payout.objects.get()
    calls = [(params, key) for method, path, params, key in fake_stripe.requests if path == "/v1/transfers"]
    sent = {
        "amount": "2222",
        "currency": "cny",
        "destination": "acct_test_faults",
        "metadata": {
            "payout_id": str(payout.pk),
            "run_id": str(run.pk),
            "idempotency_key": f"payout-{run.pk}-{merchant.pk}-CNY",
        },
    }
    # Two calls with the payout's stored key: the timed-out one and the retry. Stripe made one transfer.
    assert calls == [(sent, f"payout-{run.pk}-{merchant.pk}-CNY")] * 2
    assert payout.idempotency_key == f"payout-{run.pk}-{merchant.pk}-CNY"
    (transfer_id,) = fake_stripe.objects["/v1/transfers"]
    assert (payout.status, payout.gateway_reference, payout.attempts, payout.error) == (
        PayoutStatus.SENT,
        transfer_id,
        2,
        "",
    )
    (entry,) = JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT)
    assert (entry.payout_id, entry.memo) == (payout.pk, f"transfer {transfer_id}")
    assert not SandboxTransfer.objects.exists()
    log = worker.log()
    retries = re.findall(r"Task exchange\.tasks\.payout_send\[[^\]]+\] retry: Retry in (\d+)s: GatewayError", log)
    assert len(retries) == 1 and 0 <= int(retries[0]) <= 5, log[-5000:]
    succeeded = rf"Task exchange\.tasks\.payout_send\[[^\]]+\] succeeded in [^:]+: 'payout {payout.pk}: sent'"
    assert len(re.findall(succeeded, log)) == 1, log[-5000:]


# --- c. two runs started at the same instant -----------------------------------------------------------------------


def _command_env(storage_root: Path) -> dict[str, str]:
    """The environment of a management command on this test's database and Redis, its tasks sent to Redis."""
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("CELERY_")},
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PRIVATE_STORAGE_ROOT": str(storage_root),
        **SETTLEMENT_ENV,
    }


def test_two_runs_started_together_one_proceeds_and_the_other_is_refused_clearly(
    transactional_db, broker, _private_storage, tmp_path, workers
):
    owners, orders = _market(merchants=3, orders_each=2)
    env = _command_env(_private_storage)
    # The barrier: while this session holds the table in SHARE mode, both commands' INSERT of their run waits.
    # Released, both inserts go ahead at the same instant and race for the one-running-run unique index.
    with psycopg.connect(_database_url(), autocommit=False) as gate:
        gate_pid = gate.execute("SELECT pg_backend_pid()").fetchone()[0]
        gate.execute("LOCK TABLE exchange_settlementrun IN SHARE MODE")
        argv = [sys.executable, "manage.py", "settle"]
        commands = [
            subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and len(blocked_backends(gate_pid)) < 2
                and all(command.poll() is None for command in commands)
            ):
                time.sleep(0.1)
            waiting = list(waiting_backends().values())
        finally:
            gate.rollback()
            outcomes = sorted((c.wait(timeout=60), *c.communicate(timeout=30)) for c in commands)
    assert len(waiting) == 2, f"both settle commands should have waited at the barrier: {waiting} {outcomes}"
    assert all(query.startswith('INSERT INTO "exchange_settlementrun"') for query in waiting), waiting

    run = SettlementRun.objects.get()  # exactly one run
    assert run.status == SettlementRunStatus.RUNNING and run.trigger == "command"
    assert outcomes == [
        (0, f"Settlement run {run.pk} started; the settlement workers will execute it.\n", ""),
        (1, "", f"CommandError: Settlement run {run.pk} is still running; wait for it to finish.\n"),
    ]
    assert broker.llen("settlement") == 1  # one planning task

    worker = start_worker(
        tmp_path, _private_storage, redis_url=settings.REDIS_URL, label="race", queues="settlement", env=SETTLEMENT_ENV
    )
    workers.append(worker)
    wait_paid(run.pk, len(owners), [worker], timeout=40)
    assert_settled_once(run.pk, orders, _expected_payouts(owners, 2))
    assert SettlementRun.objects.count() == 1
    assert not any(marker in worker.log() for marker in FAILURE_MARKERS), worker.log()[-5000:]


# --- d. no worker: a batch task delivered twice at once; a stuck batch and the others -------------------------------


def _run_in_threads(targets: dict[str, Callable[[], object]]) -> tuple[dict[str, threading.Thread], dict[str, object]]:
    """Start one thread per target, each with its own database connection; their results (or errors) by name."""
    results: dict[str, object] = {}

    def call(name, target):
        try:
            results[name] = target()
        except Exception as exc:  # reported by the test's assertion on the results
            results[name] = exc
        finally:
            connection.close()

    threads = {
        name: threading.Thread(target=call, args=(name, target), daemon=True) for name, target in targets.items()
    }
    for thread in threads.values():
        thread.start()
    return threads, results


def _planned_run(settings_fixture) -> SettlementRun:
    settings_fixture.SETTLEMENT_BATCH_SIZE = BATCH_SIZE
    settings_fixture.DISPUTE_HOLD_DAYS = 0
    settings_fixture.PLATFORM_FEE_BPS = 1000
    run = SettlementRun.objects.create(trigger="test")
    return settlement_run_plan(run_pk=run.pk, queue=False)


def test_a_batch_task_delivered_twice_at_once_settles_once(transactional_db, settings):
    owners, orders = _market(merchants=3, orders_each=1)
    run = _planned_run(settings)
    batch = SettlementBatch.objects.get(run=run)
    barrier = threading.Barrier(2)

    def deliver():
        barrier.wait(timeout=10)
        return settlement_batch_execute(batch.pk)  # the task's body, as a worker runs it (the finish runs inline)

    # Both copies enter the task while this session holds one of the batch's orders: one waits for the order
    # inside the batch's transaction, the other for the batch's row lock. Then both go on.
    with psycopg.connect(_database_url(), autocommit=False) as locker:
        locker.execute("SELECT id FROM exchange_order WHERE id = %s FOR UPDATE", [orders[1].pk])
        threads, results = _run_in_threads({"first": deliver, "second": deliver})
        wait_for(lambda: len(waiting_backends()) == 2, timeout=20, message="both copies of the task to be waiting")
        locker.rollback()
    for thread in threads.values():
        thread.join(timeout=30)
        assert not thread.is_alive(), f"a copy of the task is still running: {_state()}"
    assert results == {name: f"batch {batch.pk}: completed, 3 orders" for name in ("first", "second")}
    assert_settled_once(run.pk, orders, _expected_payouts(owners, 1))


def test_a_batch_waiting_for_a_locked_order_does_not_hold_up_the_other_batches(transactional_db, settings):
    owners, orders = _market(merchants=3, orders_each=2)
    run = _planned_run(settings)
    first, second = SettlementBatch.objects.filter(run=run).order_by("number")
    with psycopg.connect(_database_url(), autocommit=False) as locker:
        locker_pid = locker.execute("SELECT pg_backend_pid()").fetchone()[0]
        locker.execute("SELECT id FROM exchange_order WHERE id = %s FOR UPDATE", [first.first_order_pk])
        stuck, stuck_results = _run_in_threads({"first": lambda: settlement_batch_execute(first.pk)})
        wait_for(lambda: blocked_backends(locker_pid), timeout=20, message="batch 1 to wait for the order's lock")
        other, other_results = _run_in_threads({"second": lambda: settlement_batch_execute(second.pk)})
        other["second"].join(timeout=5)
        second_done_meanwhile = not other["second"].is_alive()
        locker.rollback()
    for thread in (stuck["first"], other["second"]):
        thread.join(timeout=30)
        assert not thread.is_alive(), f"a batch is still running: {_state()}"
    assert stuck_results == {"first": f"batch {first.pk}: completed, 3 orders"}
    assert other_results == {"second": f"batch {second.pk}: completed, 3 orders"}
    assert_settled_once(run.pk, orders, _expected_payouts(owners, 2))
    # Batches of one run settle side by side: the second needs nothing the first one holds.
    assert second_done_meanwhile, "batch 2 waited for batch 1's transaction"
