"""Settlement runs split into batches: one transaction and one ledger block per batch, resumable, netting debts.

The worker-process behaviour (kill -9 mid-batch, concurrent runs, a transfer
timing out) is in tests/system/test_settlement_faults.py; here the tasks run
eagerly in this process.
"""

import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Sum
from django.urls import reverse

from exchange.choices import (
    AccountKind,
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
    PayoutStatusHistory,
    Posting,
    SettlementBatch,
    SettlementBatchStatusHistory,
    SettlementRun,
    SettlementRunStatusHistory,
    TransactionCertificate,
)
from exchange.services import settlement as settlement_module
from exchange.services.certificates import certificate_verify
from exchange.services.ledger import ledger_verify
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.refunds import order_refund
from exchange.services.settlement import (
    SettlementInProgress,
    payout_send,
    settlement_batch_execute,
    settlement_run_execute,
    settlement_run_plan,
    settlement_run_start,
    settlement_runs_resume,
)
from exchange.services.transitions import TransitionError, status_move
from tests.exchange.helpers import rows_being_referenced
from tests.factories import UserFactory, make_listing, make_merchant

pytestmark = pytest.mark.django_db


@pytest.fixture
def market(settings, staff):
    """Three merchants, each with a listing at a different price; 10 % commission, no dispute hold."""
    settings.PLATFORM_FEE_BPS = 1000
    settings.DISPUTE_HOLD_DAYS = 0
    settings.SETTLEMENT_BATCH_SIZE = 4
    listings = []
    for n, price in enumerate((1234, 500, 999)):
        owner = UserFactory(email=f"batch-merchant-{n}@example.com")
        merchant = make_merchant(owner, name=f"Batch Data {n}")
        listings.append(make_listing(merchant=merchant, owner=owner, reviewer=staff, price=price, title=f"Set {n}"))
    return listings


def _delivered(listing, capture) -> Order:
    """A buyer pays through the sandbox and confirms receipt: the order is DELIVERED and settleable."""
    buyer = UserFactory()
    with capture(execute=True):
        order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
        order_checkout_start(order=order)
        order.refresh_from_db()
        SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    with capture(execute=True):
        order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer)
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED
    return order


def _nine_orders(market, capture) -> list[Order]:
    """Three orders per merchant, interleaved, so every batch of four mixes merchants."""
    return [_delivered(listing, capture) for _ in range(3) for listing in market]


def _run_by_workers(capture) -> SettlementRun:
    """Start a run as the admin or beat does; the (eager) tasks plan it, settle each batch, finish it."""
    with capture(execute=True):
        run = settlement_run_start(trigger="test")
    run.refresh_from_db()
    return run


def _balance(kind, merchant) -> int:
    postings = Posting.objects.filter(account__kind=kind, account__merchant=merchant)
    return postings.aggregate(s=Sum("amount"))["s"] or 0


def test_a_run_settles_in_batches_each_one_ledger_block(market, django_capture_on_commit_callbacks):
    orders = _nine_orders(market, django_capture_on_commit_callbacks)
    blocks_before = LedgerBlock.objects.count()
    run = _run_by_workers(django_capture_on_commit_callbacks)
    assert (run.status, run.orders_total, run.batches_total, run.batches_done, run.orders_settled) == (
        SettlementRunStatus.COMPLETED,
        9,
        3,
        3,
        9,
    )
    batches = list(run.batches.order_by("number"))
    pks = sorted(order.pk for order in orders)
    assert [(b.number, b.first_order_pk, b.last_order_pk, b.orders_settled) for b in batches] == [
        (1, pks[0], pks[3], 4),
        (2, pks[4], pks[7], 4),
        (3, pks[8], pks[8], 1),
    ]
    by_pk = {order.pk: order for order in orders}
    for batch in batches:
        assert batch.status == SettlementBatchStatus.COMPLETED and batch.attempts == 1
        mine = [by_pk[pk] for pk in pks if batch.first_order_pk <= pk <= batch.last_order_pk]
        gross = sum(order.amount for order in mine)
        fee = sum((order.amount + 5) // 10 for order in mine)  # 10 %, half up (1234 -> 123, 999 -> 100, 500 -> 50)
        assert batch.totals == {"CNY": {"gross": gross, "fee": fee}}
        # One block per batch: the batch's SALE entries, four ledger rows per order.
        assert batch.block.entry_count == len(mine) and batch.ledger_rows == 4 * len(mine)
        assert set(batch.block.entries.values_list("kind", flat=True)) == {JournalKind.SALE}
        assert sorted(batch.block.entries.values_list("order_id", flat=True)) == [order.pk for order in mine]
    # Three batch blocks, one block for the payouts, then one per payout sent.
    assert LedgerBlock.objects.count() - blocks_before == 3 + 1 + 3
    payouts = {p.merchant_id: (p.amount, p.status) for p in Payout.objects.filter(run=run)}
    assert payouts == {
        market[0].merchant_id: (3 * (1234 - 123), PayoutStatus.SENT),
        market[1].merchant_id: (3 * (500 - 50), PayoutStatus.SENT),
        market[2].merchant_id: (3 * (999 - 100), PayoutStatus.SENT),
    }
    assert set(Order.objects.filter(pk__in=pks).values_list("status", "settlement_run")) == {
        (OrderStatus.SETTLED, run.pk)
    }
    assert OrderStatusHistory.objects.filter(order__in=pks, to_status=OrderStatus.SETTLED).count() == 9
    certificates = TransactionCertificate.objects.filter(order__in=pks)
    assert certificates.count() == 9
    for certificate in certificates:
        assert certificate_verify(document=certificate.document, signature=certificate.signature).valid
    assert ledger_verify().ok


def test_a_batch_done_again_writes_nothing(market, django_capture_on_commit_callbacks):
    _nine_orders(market, django_capture_on_commit_callbacks)
    run = _run_by_workers(django_capture_on_commit_callbacks)
    counts = (JournalEntry.objects.count(), OrderStatusHistory.objects.count(), TransactionCertificate.objects.count())
    for batch in run.batches.all():
        again = settlement_batch_execute(batch_pk=batch.pk)  # a redelivered task
        assert (again.status, again.attempts) == (SettlementBatchStatus.COMPLETED, 1)
    assert settlement_run_plan(run_pk=run.pk).status == SettlementRunStatus.COMPLETED
    after = (JournalEntry.objects.count(), OrderStatusHistory.objects.count(), TransactionCertificate.objects.count())
    assert after == counts
    assert SettlementBatch.objects.filter(run=run).count() == 3


def test_planning_twice_plans_once(market, django_capture_on_commit_callbacks):
    _nine_orders(market, django_capture_on_commit_callbacks)
    run = settlement_run_start(trigger="test")  # its planning task is never delivered (no on_commit here)
    first = settlement_run_plan(run_pk=run.pk, queue=False)
    second = settlement_run_plan(run_pk=run.pk, queue=False)
    assert (first.cutoff, first.batches_total) == (second.cutoff, 3)
    assert SettlementBatch.objects.filter(run=run, status=SettlementBatchStatus.PENDING).count() == 3


def test_a_failing_batch_fails_the_run_and_its_orders_wait_for_the_next(
    market, django_capture_on_commit_callbacks, monkeypatch
):
    orders = _nine_orders(market, django_capture_on_commit_callbacks)
    real = settlement_module.certificates_issue_many
    calls = []

    def second_batch_breaks(*, sales):
        calls.append(len(sales))
        if len(calls) == 2:
            raise RuntimeError("signing key unavailable")
        return real(sales=sales)

    monkeypatch.setattr(settlement_module, "certificates_issue_many", second_batch_breaks)
    run = settlement_run_start(trigger="test")
    with pytest.raises(RuntimeError, match="signing key unavailable"):
        settlement_run_execute(run_pk=run.pk)
    run.refresh_from_db()
    assert run.status == SettlementRunStatus.FAILED
    assert run.error == "batch 2: RuntimeError: signing key unavailable"
    statuses = list(run.batches.order_by("number").values_list("status", "orders_settled", "error"))
    assert statuses == [
        (SettlementBatchStatus.COMPLETED, 4, ""),
        (SettlementBatchStatus.FAILED, 0, "RuntimeError: signing key unavailable"),
        (SettlementBatchStatus.PENDING, 0, ""),
    ]
    # Nothing of the failed batch was written: its orders are still delivered, with no SALE entry.
    second = run.batches.get(number=2)
    waiting = Order.objects.filter(pk__gte=second.first_order_pk, pk__lte=second.last_order_pk)
    assert set(waiting.values_list("status", flat=True)) == {OrderStatus.DELIVERED}
    assert not JournalEntry.objects.filter(kind=JournalKind.SALE, order__in=waiting).exists()
    # A completed batch of a failed run is left alone; the next run settles the rest, each order once.
    assert settlement_batch_execute(batch_pk=run.batches.get(number=3).pk).status == SettlementBatchStatus.PENDING
    monkeypatch.setattr(settlement_module, "certificates_issue_many", real)
    following = _run_by_workers(django_capture_on_commit_callbacks)
    assert (following.status, following.orders_settled) == (SettlementRunStatus.COMPLETED, 5)
    sales = JournalEntry.objects.filter(kind=JournalKind.SALE)
    assert sorted(sales.values_list("order_id", flat=True)) == sorted(order.pk for order in orders)
    assert ledger_verify().ok


def _moves(history, **link) -> list[tuple[str, str]]:
    return list(history.objects.filter(**link).order_by("pk").values_list("from_status", "to_status"))


def test_every_status_move_of_a_run_its_batches_and_payouts_has_a_history_row(
    market, django_capture_on_commit_callbacks, staff
):
    _nine_orders(market, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        run = settlement_run_start(actor=staff, trigger="admin")
    run.refresh_from_db()
    started, completed = SettlementRunStatusHistory.objects.filter(run=run).order_by("pk")
    assert (started.from_status, started.to_status, started.reason, started.actor) == (
        "",
        SettlementRunStatus.RUNNING,
        "started (admin)",
        staff,
    )
    assert (completed.from_status, completed.to_status, completed.reason) == (
        SettlementRunStatus.RUNNING,
        SettlementRunStatus.COMPLETED,
        "9 orders settled, 3 payouts created",
    )
    for batch in run.batches.all():
        assert _moves(SettlementBatchStatusHistory, batch=batch) == [
            ("", SettlementBatchStatus.PENDING),
            (SettlementBatchStatus.PENDING, SettlementBatchStatus.COMPLETED),
        ]
    for payout in run.payouts.all():
        assert _moves(PayoutStatusHistory, payout=payout) == [
            ("", PayoutStatus.PENDING),
            (PayoutStatus.PENDING, PayoutStatus.SENT),
        ]
        assert payout.history.last().reason == f"transfer {payout.gateway_reference}"


@pytest.mark.parametrize(
    ("model", "to_status"),
    [
        (SettlementRun, SettlementRunStatus.RUNNING),
        (SettlementRun, SettlementRunStatus.FAILED),
        (SettlementBatch, SettlementBatchStatus.PENDING),
        (Payout, PayoutStatus.PENDING),
        (Payout, PayoutStatus.FAILED),
    ],
)
def test_a_move_the_table_does_not_allow_is_refused_and_changes_nothing(
    market, django_capture_on_commit_callbacks, model, to_status
):
    _nine_orders(market, django_capture_on_commit_callbacks)
    run = _run_by_workers(django_capture_on_commit_callbacks)
    obj = {SettlementRun: run, SettlementBatch: run.batches.first(), Payout: run.payouts.first()}[model]
    before = (obj.status, obj.history.count())
    with pytest.raises(TransitionError, match=f"it cannot become {to_status}"):
        status_move(obj, to_status, reason="by hand")
    obj.refresh_from_db()
    assert (obj.status, obj.history.count()) == before


def test_a_failed_batch_and_its_run_record_why_in_their_history(
    market, django_capture_on_commit_callbacks, monkeypatch
):
    _nine_orders(market, django_capture_on_commit_callbacks)

    def breaks(*, sales):
        raise RuntimeError("disk full")

    monkeypatch.setattr(settlement_module, "certificates_issue_many", breaks)
    run = settlement_run_start(trigger="test")
    with pytest.raises(RuntimeError, match="disk full"):
        settlement_run_execute(run_pk=run.pk)
    first = run.batches.get(number=1)
    assert list(first.history.order_by("pk").values_list("to_status", "reason"))[-1] == (
        SettlementBatchStatus.FAILED,
        "RuntimeError: disk full",
    )
    assert list(run.history.order_by("pk").values_list("from_status", "to_status", "reason")) == [
        ("", SettlementRunStatus.RUNNING, "started (test)"),
        (SettlementRunStatus.RUNNING, SettlementRunStatus.FAILED, "batch 1: RuntimeError: disk full"),
    ]


def test_resume_queues_the_lost_work_of_a_stalled_run(market, django_capture_on_commit_callbacks):
    _nine_orders(market, django_capture_on_commit_callbacks)
    run = settlement_run_start(trigger="test")  # the planning message is lost
    assert settlement_runs_resume(stalled_after_seconds=3600) == []  # started just now: not stalled yet
    settlement_run_plan(run_pk=run.pk, queue=False)  # planned, but the batch messages are lost
    settlement_batch_execute(batch_pk=run.batches.get(number=1).pk, queue_finish=False)
    # A batch finished moments ago: the run is making progress and is left alone.
    assert settlement_runs_resume(stalled_after_seconds=3600) == []
    with django_capture_on_commit_callbacks(execute=True):
        assert settlement_runs_resume(stalled_after_seconds=0) == [run.pk]
    run.refresh_from_db()
    assert (run.status, run.batches_done, run.orders_settled, run.payouts_created) == (
        SettlementRunStatus.COMPLETED,
        3,
        9,
        3,
    )
    assert settlement_runs_resume(stalled_after_seconds=0) == []  # nothing is running any more


def test_a_second_run_is_refused_while_one_runs(market):
    run = settlement_run_start(trigger="test")
    with pytest.raises(SettlementInProgress, match=f"Settlement run {run.pk} is still running; wait for it"):
        settlement_run_start(trigger="test")
    assert list(SettlementRun.objects.values_list("pk", flat=True)) == [run.pk]


def test_a_debt_larger_than_the_next_sales_is_netted_over_two_runs(
    market, staff, merchant, django_capture_on_commit_callbacks
):
    expensive, cheap = (
        market[0],
        make_listing(
            merchant=market[0].merchant, owner=market[0].merchant.members.first().user, reviewer=staff, price=500
        ),
    )
    seller = expensive.merchant
    first = _delivered(expensive, django_capture_on_commit_callbacks)
    _run_by_workers(django_capture_on_commit_callbacks)  # paid out 1111
    order_refund(order=first, amount=1234, reason="withdrawn licence", actor=staff)
    assert (_balance(AccountKind.MERCHANT_PAYABLE, seller), _balance(AccountKind.MERCHANT_RECEIVABLE, seller)) == (
        0,
        1111,
    )
    _delivered(cheap, django_capture_on_commit_callbacks)  # owed 450: all of it goes towards the debt
    second = _run_by_workers(django_capture_on_commit_callbacks)
    assert (second.payouts_created, second.orders_settled) == (0, 1)
    assert (_balance(AccountKind.MERCHANT_PAYABLE, seller), _balance(AccountKind.MERCHANT_RECEIVABLE, seller)) == (
        0,
        661,
    )
    _delivered(expensive, django_capture_on_commit_callbacks)  # owed 1111: 661 of it pays the rest of the debt
    third = _run_by_workers(django_capture_on_commit_callbacks)
    (payout,) = Payout.objects.filter(run=third)
    assert (payout.merchant_id, payout.amount, payout.status) == (seller.pk, 450, PayoutStatus.SENT)
    assert (_balance(AccountKind.MERCHANT_PAYABLE, seller), _balance(AccountKind.MERCHANT_RECEIVABLE, seller)) == (
        0,
        0,
    )
    netted = JournalEntry.objects.filter(kind=JournalKind.RECEIVABLE_NETTED).order_by("sequence")
    amounts = [entry.postings.get(account__kind=AccountKind.MERCHANT_RECEIVABLE).amount for entry in netted.all()]
    assert amounts == [-450, -661]
    assert ledger_verify().ok


def test_settle_command_refuses_bad_input_and_changes_nothing(market):
    with pytest.raises(CommandError, match=r"--timeout must be at least 1 second\."):
        call_command("settle", "--wait", "--timeout", "0")
    with pytest.raises(CommandError, match=r"No settlement run is running: nothing to resume\."):
        call_command("settle", "--resume")
    with pytest.raises(CommandError, match="not allowed with argument"):
        call_command("settle", "--now", "--resume")
    assert not SettlementRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_settle_command_waits_and_prints_progress(market, capsys):
    for _ in range(5):
        order = _delivered_committed(market[1])
        assert order.status == OrderStatus.DELIVERED
    call_command("settle", "--wait", "--timeout", "60")
    out = capsys.readouterr().out.splitlines()
    run = SettlementRun.objects.get()
    assert out == [
        f"Settlement run {run.pk} started.",
        "  batches 2/2, orders 5/5",
        f"Settlement run {run.pk}: completed, 5 orders settled, 1 payouts created.",
    ]


def _delivered_committed(listing) -> Order:
    buyer = UserFactory()
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
    order_checkout_start(order=order)
    order.refresh_from_db()
    SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer)
    return Order.objects.get(pk=order.pk)


def test_admin_shows_a_runs_progress_totals_and_blocks(market, client, staff, django_capture_on_commit_callbacks):
    _nine_orders(market, django_capture_on_commit_callbacks)
    run = _run_by_workers(django_capture_on_commit_callbacks)
    client.force_login(staff)
    page = client.get(reverse("admin:exchange_settlementrun_change", args=[run.pk])).content.decode()
    assert "3/3 batches (100 %), 9/9 orders" in page
    # gross 3 x (1234 + 500 + 999) = 8199, fees 3 x (123 + 50 + 100) = 819
    assert "gross ¥81.99 CNY, fees ¥8.19 CNY, merchants ¥73.80 CNY" in page
    # Its status history, and each payout's, on their pages.
    assert "started (test)" in page and "9 orders settled, 3 payouts created" in page
    payout = run.payouts.first()
    payout_page = client.get(reverse("admin:exchange_payout_change", args=[payout.pk])).content.decode()
    assert f"created by settlement run {run.pk}" in payout_page
    assert f"transfer {payout.gateway_reference}" in payout_page
    blocks = client.get(reverse("admin:exchange_ledgerblock_changelist"))
    assert blocks.status_code == 200
    # Resuming a completed run is refused with a clear message and queues nothing.
    response = client.post(
        reverse("admin:exchange_settlementrun_changelist"),
        {"action": "resume_settlement_runs", "_selected_action": [run.pk]},
        follow=True,
    )
    assert "None of the selected runs is running: nothing to resume." in response.content.decode()
    run.refresh_from_db()
    assert run.status == SettlementRunStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_sending_a_payout_does_not_wait_for_rows_being_added_for_its_merchant(merchant):
    """A payout is sent with its own row locked while the gateway answers; the merchant's row is only read, so
    another session inserting rows that reference the merchant (a listing, an order, a payout) is not held up,
    and neither is the payout (before, the join locked the merchant FOR UPDATE, which such inserts wait for)."""
    run = SettlementRun.objects.create(status="completed")
    payout = Payout.objects.create(
        run=run, merchant=merchant, amount=4500, currency="CNY", idempotency_key="payout-lock-1", gateway="sandbox"
    )
    with rows_being_referenced(("merchants_merchant", merchant.pk)):
        payout_send(payout_pk=payout.pk)
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.SENT and payout.gateway_reference.startswith("tr_sbx_")
