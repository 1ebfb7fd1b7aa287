"""A refund and a settlement batch racing for one order, on two real database connections (two threads).

The batch locks its orders with SELECT ... FOR UPDATE and leaves out those with a refund still pending. When the
refund got the order's row lock first (refunded_amount raised, the PENDING refund created, not yet committed), the
batch waits for that lock; once the refund commits, PostgreSQL re-checks only the order row, not the refund
subquery. The batch must still leave the order out: the refund is booked from escrow, and the next run settles
what remains. The other way round (the batch first), the order is settled in full and the refund is booked from
the fee and the merchant's payable. Either way escrow ends at zero and the merchant is paid exactly its share.
"""

import threading
import time
import uuid

import pytest
from django.db import connection, connections
from django.db.models import Sum

from exchange.choices import (
    AccountKind,
    JournalKind,
    OrderStatus,
    PayoutStatus,
    RefundStatus,
    SettlementBatchStatus,
    SettlementRunStatus,
)
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import JournalEntry, Order, Payout, Posting, Refund, SettlementBatch, SettlementRun
from exchange.services import refunds as refunds_module
from exchange.services import settlement as settlement_module
from exchange.services.ledger import ledger_verify
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.refunds import order_refund
from exchange.services.settlement import (
    settlement_batch_execute,
    settlement_run_execute,
    settlement_run_finish,
    settlement_run_plan,
    settlement_run_start,
)
from exchange.services.transitions import history_start
from tests.factories import UserFactory, make_listing, make_merchant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

PRICE = 1000  # 10 % fee: 100 on the whole price, 70 on the 700 left after a refund of 300


@pytest.fixture
def delivered_order(settings, categories, staff):
    settings.PLATFORM_FEE_BPS = 1000
    settings.DISPUTE_HOLD_DAYS = 0
    settings.BUYER_SERVICE_FEE = {}
    owner = UserFactory(email="race-merchant@example.com")
    merchant = make_merchant(owner, name="Race Data")
    listing = make_listing(merchant=merchant, owner=owner, reviewer=staff, price=PRICE)
    buyer = UserFactory(email="race-buyer@example.com")
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
    order_checkout_start(order=order)
    order.refresh_from_db()
    SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    order = order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer)
    assert (order.status, order.amount) == (OrderStatus.DELIVERED, PRICE)
    return order


def _balance(kind, merchant=None) -> int:
    postings = Posting.objects.filter(account__kind=kind)
    if merchant is not None:
        postings = postings.filter(account__merchant=merchant)
    return postings.aggregate(total=Sum("amount"))["total"] or 0


def _legs(entry: JournalEntry) -> dict[str, int]:
    return {posting.account.kind: posting.amount for posting in entry.postings.select_related("account")}


def _planned_run():
    run = SettlementRun.objects.create(trigger="test")  # started without its planning task: the test drives it
    history_start([run], reason="started (test)")
    settlement_run_plan(run_pk=run.pk, queue=False)
    return run, SettlementBatch.objects.get(run=run)


def _waiting_for_lock() -> list[str]:
    """The queries of this database's sessions waiting for a lock another session holds (maybe truncated)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT query FROM pg_stat_activity"
            " WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        return [query for (query,) in cursor.fetchall()]


def _order_read_waits() -> bool:
    return any(query.startswith('SELECT "exchange_order"') for query in _waiting_for_lock())


def _wait_until(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _in_thread(target, errors: list) -> threading.Thread:
    def run():
        try:
            target()
        except Exception as exc:  # reported by the test's assertion on errors
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _pay_out_everything() -> None:
    """A further run settles what is left and pays the merchant (the tasks run inline)."""
    run = settlement_run_execute(run_pk=settlement_run_start(trigger="test").pk)
    assert run.status == SettlementRunStatus.COMPLETED


def test_a_refund_committed_while_the_batch_waits_for_the_order_leaves_it_for_the_next_run(
    delivered_order, staff, monkeypatch
):
    order = delivered_order
    run, batch = _planned_run()
    requested, release = threading.Event(), threading.Event()
    audit_record = refunds_module.audit_record

    def audit_then_pause(**details):
        audit_record(**details)
        if details.get("action") == "refund_requested":  # order locked, amount reserved, refund PENDING: not committed
            requested.set()
            release.wait(30)

    monkeypatch.setattr(refunds_module, "audit_record", audit_then_pause)
    errors: list = []
    refunding = _in_thread(
        lambda: order_refund(order=Order.objects.get(pk=order.pk), amount=300, reason="partly unusable", actor=staff),
        errors,
    )
    assert requested.wait(20)
    settling = _in_thread(lambda: settlement_batch_execute(batch_pk=batch.pk, queue_finish=False), errors)
    # The batch has read its orders and waits for the refund's row lock on the order.
    try:
        _wait_until(lambda: _order_read_waits(), "the batch to wait for the order")
    finally:
        release.set()
        refunding.join(30)
        settling.join(30)
    assert not refunding.is_alive() and not settling.is_alive()
    assert errors == []

    batch.refresh_from_db()
    assert (batch.status, batch.orders_settled, batch.ledger_rows) == (SettlementBatchStatus.COMPLETED, 0, 0)
    order.refresh_from_db()
    assert (order.status, order.refunded_amount, order.settled_at) == (OrderStatus.PARTIALLY_REFUNDED, 300, None)
    refund = Refund.objects.get(order=order)
    assert refund.status == RefundStatus.SUCCEEDED
    assert not JournalEntry.objects.filter(idempotency_key=f"sale:{order.pk}").exists()
    # Booked from escrow, where the money still was.
    assert _legs(JournalEntry.objects.get(idempotency_key=f"refund:{refund.pk}")) == {
        AccountKind.ESCROW_HELD: 300,
        AccountKind.GATEWAY_CLEARING: -300,
    }
    assert settlement_run_finish(run_pk=run.pk).payouts_created == 0

    _pay_out_everything()
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED
    assert _legs(JournalEntry.objects.get(idempotency_key=f"sale:{order.pk}")) == {
        AccountKind.ESCROW_HELD: 700,
        AccountKind.PLATFORM_REVENUE: -70,
        AccountKind.MERCHANT_PAYABLE: -630,
    }
    assert _balance(AccountKind.ESCROW_HELD) == 0
    assert _balance(AccountKind.PLATFORM_REVENUE) == -70
    assert _balance(AccountKind.MERCHANT_PAYABLE, order.merchant) == 0
    assert _balance(AccountKind.PAYOUTS_PENDING) == 0
    (payout,) = Payout.objects.filter(merchant=order.merchant)
    assert (payout.amount, payout.status) == (630, PayoutStatus.SENT)
    assert ledger_verify().ok


def test_a_refund_waiting_for_the_batch_is_booked_from_the_fee_and_the_merchant(delivered_order, staff, monkeypatch):
    order = delivered_order
    run, batch = _planned_run()
    locked, release = threading.Event(), threading.Event()
    issue = settlement_module.certificates_issue_many

    def issue_then_pause(**kwargs):
        result = issue(**kwargs)
        locked.set()  # the batch holds the order's row lock and has settled it, not yet committed
        release.wait(30)
        return result

    monkeypatch.setattr(settlement_module, "certificates_issue_many", issue_then_pause)
    errors: list = []
    settling = _in_thread(lambda: settlement_batch_execute(batch_pk=batch.pk, queue_finish=False), errors)
    assert locked.wait(20)
    refunding = _in_thread(
        lambda: order_refund(order=Order.objects.get(pk=order.pk), amount=300, reason="partly unusable", actor=staff),
        errors,
    )
    try:
        _wait_until(lambda: _order_read_waits(), "the refund to wait for the order")
    finally:
        release.set()
        settling.join(30)
        refunding.join(30)
    assert errors == []

    batch.refresh_from_db()
    assert (batch.status, batch.orders_settled) == (SettlementBatchStatus.COMPLETED, 1)
    order.refresh_from_db()
    assert (order.status, order.refunded_amount) == (OrderStatus.PARTIALLY_REFUNDED, 300)
    assert order.settled_at is not None
    refund = Refund.objects.get(order=order)
    assert refund.status == RefundStatus.SUCCEEDED
    # Settled in full first, so the fee gives back its share (30) and the merchant the rest (270).
    assert _legs(JournalEntry.objects.get(idempotency_key=f"refund:{refund.pk}")) == {
        AccountKind.PLATFORM_REVENUE: 30,
        AccountKind.MERCHANT_PAYABLE: 270,
        AccountKind.GATEWAY_CLEARING: -300,
    }
    assert JournalEntry.objects.get(idempotency_key=f"sale:{order.pk}").kind == JournalKind.SALE
    settlement_run_finish(run_pk=run.pk)  # its payout is sent on commit, inline
    assert _balance(AccountKind.ESCROW_HELD) == 0
    assert _balance(AccountKind.PLATFORM_REVENUE) == -70
    assert _balance(AccountKind.MERCHANT_PAYABLE, order.merchant) == 0
    (payout,) = Payout.objects.filter(merchant=order.merchant)
    assert (payout.amount, payout.status) == (630, PayoutStatus.SENT)
    assert ledger_verify().ok
