"""Delivery under faults, with real Celery worker processes, real Redis and real PostgreSQL (issue 5).

- a worker SIGKILLed in the middle of a delivery: after a restart the delivery completes exactly once;
- Redis restarted (its data lost) with 1,000 deliveries queued: the sweeper finds every paid-but-undelivered
  entitlement from the database and each is delivered once;
- a task enqueued in a transaction that rolls back never runs; one whose transaction commits slowly only
  starts after the commit, so it never looks for rows that are not there yet.

The contract under test is the stable one: after payment every usable entitlement ends with exactly one
Delivery of its product's version, READY with ``ready_at`` set, and one "delivery ready" notification.
"""

import json
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from bench._servers import free_port
from exchange.celery import app as celery_app
from exchange.choices import (
    DeliveryStatus,
    EntitlementStatus,
    NotificationKind,
    OrderStatus,
    PaymentEventStatus,
)
from exchange.gateways.signing import sign_payload
from exchange.models import (
    Delivery,
    Entitlement,
    EntitlementStatusHistory,
    JournalEntry,
    Notification,
    Order,
    OrderStatusHistory,
    PaymentEvent,
    Posting,
)
from exchange.services.delivery_sweep import undelivered_entitlements
from exchange.services.payments import payment_events_drain, webhook_ingest
from listings.selectors import listing_active_plan
from tests.exchange.helpers import buy, checkout_completed_event
from tests.factories import UserFactory, make_listing, make_merchant
from tests.system.conftest import _database_url, wait_for
from tests.system.faults import VISIBILITY_TIMEOUT, sigkill, start_worker
from tests.system.faults import blocked_backends as _blocked_backends

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(150),
    # Test b sends tasks by name to its own Redis while this process runs the rest of its tasks inline.
    pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored"),
]

CONTENT = "station,date,passengers\n贵阳北站,2025-01-01,51234\n上海虹桥,2025-01-01,301234\n".encode()
# The worker's log line for a delivery task it received (its banner lists the task's name too).
# A paid order's deliveries are prepared by the batch task its drain batch schedules.
RECEIVED = "Task exchange.tasks.delivery_prepare_batch["
FAILURE_MARKERS = ("DoesNotExist", "Traceback", "Retry in", "WorkerLostError")


# --- processes ---------------------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own on a free port, keeping nothing on disk: a restart loses every key."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--dir", str(self.folder)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, timeout=10, message=f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            return self.client().ping()
        except redis.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """SIGKILL the server and start a new one on the same port: the queues and the cache are gone."""
        self.kill()
        self.start()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    yield server
    server.kill()


# --- the trade ---------------------------------------------------------------------------------------------------


def _listing():
    """A published listing, its upload profiled and its publication handled in this process (tasks inline).

    So the worker under test starts with an empty queue: only the trade's own tasks reach it.
    """
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        seller = UserFactory(email="seller@example.com")
        merchant = make_merchant(seller, name="Rail Data")
        return make_listing(merchant=merchant, owner=seller, content=CONTENT, price=5000)
    finally:
        celery_app.conf.task_always_eager = eager


def _paid_in_process(
    client, listing, buyer, *, hold_commit_seconds: float = 0.0, before_commit=None, roll_back: bool = False
) -> Order:
    """Buy ``listing`` as ``buyer`` and apply the signed paid event in this process, in one transaction.

    The tasks the payment schedules (the event drain, ``delivery_prepare_batch``) are
    sent to the broker when that transaction commits. ``hold_commit_seconds``
    keeps it open that long after the entitlement's rows are written, then
    ``before_commit()`` is called; ``roll_back`` ends it with a rollback
    instead of a commit.
    """
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get(buyer=buyer, listing=listing)
    body = json.dumps(checkout_completed_event(order)).encode()
    signature = sign_payload(body=body, secret=settings.SANDBOX_WEBHOOK_SECRET)

    class RolledBack(Exception):
        pass

    try:
        with transaction.atomic():
            webhook_ingest(gateway_name="sandbox", body=body, signature_header=signature)
            assert payment_events_drain() == 1
            assert Entitlement.objects.filter(order=order).exists()
            time.sleep(hold_commit_seconds)
            if before_commit is not None:
                before_commit()
            if roll_back:
                raise RolledBack
    except RolledBack:
        pass
    order.refresh_from_db()
    return order


def _ledger_state(order: Order) -> dict:
    return {
        "order_status": Order.objects.get(pk=order.pk).status,
        "order_history": list(OrderStatusHistory.objects.filter(order=order).values_list("to_status", flat=True)),
        "entitlement_history": list(
            EntitlementStatusHistory.objects.filter(entitlement__order=order).values_list("to_status", flat=True)
        ),
        "journal_entries": list(JournalEntry.objects.filter(order=order).values_list("kind", flat=True)),
        "postings_sum": sum(Posting.objects.values_list("amount", flat=True)),
        "postings": Posting.objects.count(),
    }


def _ready(entitlement: Entitlement) -> bool:
    return Delivery.objects.filter(
        entitlement=entitlement, status__in=[DeliveryStatus.READY, DeliveryStatus.CONFIRMED], ready_at__isnull=False
    ).exists()


def wait_delivered(entitlement: Entitlement, worker_log, *, timeout: float, message: str) -> None:
    """Wait for the entitlement's delivery to be READY; on a timeout, fail showing the deliveries and the worker log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready(entitlement):
            return
        time.sleep(0.1)
    rows = list(Delivery.objects.values("pk", "entitlement_id", "status", "attempts", "last_error", "ready_at"))
    pytest.fail(f"timed out after {timeout}s waiting for {message}; deliveries {rows}\n{worker_log()[-6000:]}")


# --- a. kill -9 in the middle of a delivery ------------------------------------------------------------------------


def test_worker_killed_mid_delivery_is_redelivered_and_completes_exactly_once(
    transactional_db, broker, client, _private_storage, tmp_path, workers
):
    listing = _listing()
    buyer = UserFactory(email="buyer@example.com")
    # The payment is applied here; its delivery_prepare_batch waits in Redis, with no worker running yet.
    order = _paid_in_process(client, listing, buyer)
    entitlement = Entitlement.objects.get(order=order)
    assert order.status == OrderStatus.PAID and entitlement.status == EntitlementStatus.ACTIVE
    assert broker.llen("delivery") == 1
    before = _ledger_state(order)

    # Hold the entitlement's row lock from a connection of our own: the worker's delivery blocks inside the
    # task (a Delivery row references the entitlement, so even its insert waits for the lock).
    with psycopg.connect(_database_url(), autocommit=False) as locker:
        locker_pid = locker.execute("SELECT pg_backend_pid()").fetchone()[0]
        locker.execute("SELECT id FROM exchange_entitlement WHERE id = %s FOR UPDATE", [entitlement.pk])
        first = start_worker(tmp_path, _private_storage, redis_url=settings.REDIS_URL, label="first", concurrency=1)
        workers.append(first)
        blocked = wait_for(
            lambda: _blocked_backends(locker_pid), timeout=30, message="the worker's delivery to wait for the lock"
        )
        assert RECEIVED in first.log()
        sigkill(first)
        killed_at = time.monotonic()
        # The server learns of a dead client only when it next writes to it; end the orphaned sessions now, as
        # a server with client_connection_check_interval would, so nothing of the killed task lands afterwards.
        for pid in blocked:
            locker.execute("SELECT pg_terminate_backend(%s)", [pid])
        locker.rollback()

    assert not re.search(r"delivery_prepare_batch\[[^\]]+\] succeeded", first.log())  # killed before it finished
    assert not _ready(entitlement)
    assert not Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).exists()
    # The task was never acknowledged: Redis holds it aside until the visibility timeout runs out.
    assert broker.llen("delivery") == 0
    assert broker.hlen("unacked") == 1
    time.sleep(max(0.0, VISIBILITY_TIMEOUT + 0.5 - (time.monotonic() - killed_at)))

    second = start_worker(tmp_path, _private_storage, redis_url=settings.REDIS_URL, label="second")
    workers.append(second)
    wait_delivered(entitlement, second.log, timeout=40, message="the redelivered task to complete the delivery")
    # The task is acknowledged once it has returned, a moment after its commit.
    wait_for(lambda: broker.hlen("unacked") == 0, timeout=10, message="the redelivered task to be acknowledged")
    assert re.search(r"Task exchange\.tasks\.delivery_prepare_batch\[[^\]]+\] succeeded", second.log()), second.log()

    delivery = Delivery.objects.get(entitlement=entitlement)  # exactly one
    assert delivery.version == listing.versions.get()
    assert delivery.status == DeliveryStatus.READY and delivery.ready_at is not None
    notes = Notification.objects.filter(kind=NotificationKind.DELIVERY_READY)
    assert list(notes.values_list("user_id", flat=True)) == [buyer.pk]
    assert _ledger_state(order) == before  # the payment, the entitlement and the escrow are as they were
    assert Entitlement.objects.get(pk=entitlement.pk).status == EntitlementStatus.ACTIVE
    assert broker.hlen("unacked") == 0 and broker.llen("delivery") == 0
    assert not any(marker in second.log() for marker in FAILURE_MARKERS), second.log()


# --- b. Redis restarted with 1,000 deliveries queued ---------------------------------------------------------------

SWEEP_COUNT = 1000


def _paid_entitlements_in_bulk(listing, count: int) -> list[Entitlement]:
    """``count`` paid orders with their entitlements, inserted in bulk (the state a paid event leaves behind)."""
    plan = listing_active_plan(listing=listing)
    buyers = [UserFactory(email=f"bulk-buyer{index}@example.com") for index in range(10)]
    paid_at = timezone.now() - timedelta(seconds=5)
    orders = Order.objects.bulk_create(
        [
            Order(
                buyer=buyers[index % len(buyers)],
                listing=listing,
                plan=plan,
                merchant_id=listing.merchant_id,
                amount=plan.amount,
                currency=plan.currency,
                idempotency_key=f"bulk-{index}",
                gateway="sandbox",
                status=OrderStatus.PAID,
                paid_at=paid_at,
            )
            for index in range(count)
        ],
        batch_size=500,
    )
    return Entitlement.objects.bulk_create(
        [
            Entitlement(
                order=order, buyer_id=order.buyer_id, listing=listing, plan=plan, version_access=plan.version_access
            )
            for order in orders
        ],
        batch_size=500,
    )


def test_redis_restart_loses_the_queue_and_the_sweeper_delivers_every_paid_order_once(
    transactional_db, _private_storage, tmp_path, private_redis, workers
):
    listing = _listing()
    entitlements = _paid_entitlements_in_bulk(listing, SWEEP_COUNT)
    with celery_app.connection_for_write(private_redis.url) as broker:
        for entitlement in entitlements:
            celery_app.send_task("exchange.tasks.delivery_prepare", args=[entitlement.pk], connection=broker)
    assert private_redis.client().llen("delivery") == SWEEP_COUNT

    private_redis.restart()
    assert private_redis.client().dbsize() == 0  # the 1,000 queued deliveries are gone
    assert len(undelivered_entitlements(older_than_seconds=0, limit=5000)) == SWEEP_COUNT

    worker = start_worker(tmp_path, _private_storage, redis_url=private_redis.url, label="sweep")
    workers.append(worker)
    started = time.monotonic()
    # What beat does every DELIVERY_SWEEP_SECONDS, with no age threshold (the grants are seconds old).
    with celery_app.connection_for_write(private_redis.url) as broker:
        celery_app.send_task(
            "exchange.tasks.delivery_sweep", kwargs={"older_than_seconds": 0, "batch": 5000}, connection=broker
        )
    ready = Delivery.objects.filter(status=DeliveryStatus.READY, ready_at__isnull=False)
    wait_for(lambda: ready.count() == SWEEP_COUNT, timeout=100, interval=0.5, message="every sweep delivery")
    elapsed = time.monotonic() - started

    assert Delivery.objects.count() == SWEEP_COUNT
    twice = Delivery.objects.values("entitlement_id").annotate(n=Count("pk")).filter(n__gt=1)
    assert list(twice) == []
    assert set(Delivery.objects.values_list("entitlement_id", flat=True)) == {e.pk for e in entitlements}
    assert set(Delivery.objects.values_list("version_id", flat=True)) == {listing.versions.get().pk}
    notes = Notification.objects.filter(kind=NotificationKind.DELIVERY_READY)
    assert notes.count() == SWEEP_COUNT
    assert undelivered_entitlements(older_than_seconds=0, limit=5000) == []
    log = worker.log()
    assert "delivery_sweep" in log and f": {SWEEP_COUNT}" in log, log[-3000:]
    assert not any(marker in log for marker in FAILURE_MARKERS), log[-5000:]
    print(f"{SWEEP_COUNT} swept deliveries ready {elapsed:.1f}s after the sweep was sent")


# --- c. on_commit: a rolled-back transaction enqueues nothing; a slow commit is waited for -------------------------


def test_rolled_back_payment_never_runs_its_delivery_and_a_slow_commit_is_never_read_early(
    celery_worker_process, broker, client
):
    listing = _listing()
    rolled_back_buyer = UserFactory(email="rolled-back@example.com")
    rolled_back = _paid_in_process(client, listing, rolled_back_buyer, roll_back=True)

    assert rolled_back.status == OrderStatus.PENDING_PAYMENT
    assert not Entitlement.objects.exists() and not PaymentEvent.objects.exists()
    assert broker.llen("delivery") == 0  # nothing was ever sent

    buyer = UserFactory(email="buyer@example.com")
    hold = 2.0
    seen_before_commit = []
    started = time.monotonic()
    order = _paid_in_process(
        client,
        listing,
        buyer,
        hold_commit_seconds=hold,
        before_commit=lambda: seen_before_commit.append(
            (broker.llen("delivery"), RECEIVED in celery_worker_process.log())
        ),
    )
    assert time.monotonic() - started >= hold
    # Two seconds after the entitlement was written, still uncommitted: no task sent, none received.
    assert seen_before_commit == [(0, False)]
    entitlement = Entitlement.objects.get(order=order)
    wait_delivered(entitlement, celery_worker_process.log, timeout=30, message="the delivery of the committed payment")

    assert Delivery.objects.count() == 1 and Delivery.objects.get().entitlement == entitlement
    assert Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).count() == 1
    assert PaymentEvent.objects.get().status == PaymentEventStatus.PROCESSED
    rolled_back.refresh_from_db()
    assert rolled_back.status == OrderStatus.PENDING_PAYMENT
    succeeded = re.compile(r"Task exchange\.tasks\.delivery_prepare_batch\[[^\]]+\] succeeded")
    # The READY row is committed a moment before the task returns and its success is logged.
    wait_for(lambda: succeeded.search(celery_worker_process.log()), timeout=10, message="the task's success line")
    log = celery_worker_process.log()
    assert log.count(RECEIVED) == 2, log  # received and succeeded, once
    assert not any(marker in log for marker in FAILURE_MARKERS), log
