"""The money invariants of the clearing house, under random sequences of trades (issue #6).

A hypothesis state machine drives the real services and the sandbox gateway's
signed events (Celery eager, transactions committed, so PostgreSQL's deferred
balance trigger runs at every commit): purchases, receipts, partial and full
refunds, disputes opened, won and lost, settlement runs and payouts. It also
tries what must be refused (refunding more than remains, refunding a closed
order, confirming twice, a second run while one is running, settling or paying
out again) and checks each refusal names its reason and changes nothing.

After every step the invariants hold: every entry and the whole ledger sum to
zero per currency, no merchant payable account is in debit, every sale's fee is
the fee schedule's output, no order gives back more than it took (in its
refunded amount and in the ledger), a settled order holds nothing in escrow,
and ``ledger_verify`` passes.

Each example starts from an empty exchange: the catalog (merchants, listings)
is built once per test, and the exchange's own tables are truncated before each
example (TRUNCATE is allowed on the append-only ledger; UPDATE and DELETE are
not).
"""

import itertools
import uuid
from collections import defaultdict

import pytest
from django.conf import settings as django_settings
from django.contrib.postgres.aggregates import ArrayAgg
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Sum
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from common.money import percentage_of
from exchange.choices import (
    AccountKind,
    DisputeStatus,
    JournalKind,
    OrderStatus,
    PayoutStatus,
    RefundStatus,
    SettlementRunStatus,
)
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import (
    Dispute,
    JournalEntry,
    LedgerChainHead,
    Order,
    Payout,
    Posting,
    Refund,
    SettlementRun,
    TransactionCertificate,
)
from exchange.services import settlement as settlement_module
from exchange.services.ledger import ledger_verify
from exchange.services.orders import OrderTransitionError, order_checkout_start, order_confirm_receipt, order_create
from exchange.services.refunds import RefundConflict, order_refund
from exchange.services.settlement import (
    SettlementInProgress,
    payout_send,
    settlement_run_execute,
    settlement_run_start,
)
from exchange.services.transitions import MACHINES, history_start
from tests.factories import UserFactory, make_listing, make_merchant

try:  # the fee schedule (issue #6) replaces the flat PLATFORM_FEE_BPS when it lands
    from exchange.services.fees import commission_bps_for, fee_rule_create
except ImportError:  # pragma: no cover - depends on what has landed
    commission_bps_for = fee_rule_create = None

# Per-merchant and per-category fee rules are only drawn once settlement prices sales with the schedule;
# before that a rule would (rightly) fail the fee invariant for a reason already known.
SETTLEMENT_USES_SCHEDULE = fee_rule_create is not None and any(
    hasattr(settlement_module, name) for name in ("order_fee", "commission_bps_for", "FeeSchedule")
)

# Bounded for CI (well under a minute); raise max_examples locally to search harder.
MACHINE_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,  # every step is several committed transactions
    database=None,  # no .hypothesis/ folder in the tree; a failure prints its reproduction blob instead
    print_blob=True,
    # Shrinking replays whole DB-backed sequences hundreds of times (minutes); a failure is reported as found.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Odd prices so that fee rounding (half up) and proportional refund shares are exercised.
PRICES = (1234, 1001, 7)
MONEY_OUT = (JournalKind.REFUND, JournalKind.DISPUTE, JournalKind.DISPUTE_WON)
REFUNDABLE = (OrderStatus.PAID, OrderStatus.DELIVERED, OrderStatus.SETTLED, OrderStatus.PARTIALLY_REFUNDED)
DISPUTABLE = REFUNDABLE
_buyer_numbers = itertools.count()


def expected_fee_bps(order: Order) -> int:
    """The commission in force for ``order``: the fee schedule's if it exists, else the flat setting."""
    if commission_bps_for is None:
        return django_settings.PLATFORM_FEE_BPS
    return commission_bps_for(order=order)


def truncate_exchange() -> None:
    """Empty every table of the exchange app (orders, ledger, runs, payouts, sandbox); the catalog stays."""
    with connection.cursor() as cursor:
        tables = [t for t in connection.introspection.table_names(cursor) if t.startswith("exchange_")]
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def snapshot(order: Order | None = None) -> tuple:
    """Everything a refused command must leave as it was."""
    head = LedgerChainHead.objects.filter(pk=1).values_list("sequence", "block_hash").first()
    counts = tuple(
        model.objects.count()
        for model in (JournalEntry, Posting, Refund, Dispute, Payout, SettlementRun, TransactionCertificate)
    )
    row = None
    if order is not None:
        row = Order.objects.filter(pk=order.pk).values_list("status", "refunded_amount", "settled_at").get()
    sent = tuple(Payout.objects.order_by("pk").values_list("status", "attempts", "gateway_reference"))
    return head, counts, row, sent


class MoneyMachine(RuleBasedStateMachine):
    """Random trades against the real services; the invariants below are checked after every step."""

    catalog: dict = {}  # set by the test before the machine runs: staff and published listings

    def __init__(self):
        super().__init__()
        truncate_exchange()
        self.staff = self.catalog["staff"]
        self.listings = self.catalog["listings"]
        self.gateway = SandboxGateway()

    def teardown(self):
        truncate_exchange()

    # --- helpers -----------------------------------------------------------------------------------

    def _pick(self, data, statuses) -> Order:
        pks = list(Order.objects.filter(status__in=statuses).order_by("pk").values_list("pk", flat=True))
        return Order.objects.get(pk=data.draw(st.sampled_from(pks), label="order"))

    @staticmethod
    def _exists(*statuses) -> bool:
        return Order.objects.filter(status__in=statuses).exists()

    def _refundable_with_rest(self) -> bool:
        return any(o.amount > o.refunded_amount for o in Order.objects.filter(status__in=REFUNDABLE))

    # --- trades ------------------------------------------------------------------------------------

    @rule(listing=st.integers(min_value=0, max_value=len(PRICES) - 1), approve=st.booleans())
    def purchase(self, listing, approve):
        buyer = UserFactory(email=f"hy-buyer-{next(_buyer_numbers)}@example.com")
        order, created = order_create(buyer=buyer, listing=self.listings[listing], idempotency_key=str(uuid.uuid4()))
        assert created
        order_checkout_start(order=order)
        order.refresh_from_db()
        self.gateway.session_resolve_and_notify(session_id=order.gateway_session_id, approve=approve)
        order.refresh_from_db()
        if approve:
            price = PRICES[listing] + django_settings.BUYER_SERVICE_FEE.get(order.currency, 0)
            assert (order.status, order.amount, order.refunded_amount) == (OrderStatus.PAID, price, 0)
            payment = JournalEntry.objects.get(idempotency_key=f"payment:{order.pk}")
            legs = sorted(payment.postings.values_list("account__code", "amount"))
            assert legs == [("escrow_held", -order.amount), ("gateway_clearing", order.amount)]
        else:
            assert order.status == OrderStatus.DECLINED
            assert not JournalEntry.objects.filter(order=order).exists()

    @precondition(lambda self: self._exists(OrderStatus.PAID))
    @rule(data=st.data())
    def confirm_receipt(self, data):
        order = self._pick(data, [OrderStatus.PAID])
        order_confirm_receipt(order=order, actor=order.buyer)
        order.refresh_from_db()
        assert order.status == OrderStatus.DELIVERED and order.delivered_at is not None

    @precondition(lambda self: self._exists(OrderStatus.DELIVERED, OrderStatus.SETTLED, OrderStatus.REFUNDED))
    @rule(data=st.data())
    def confirm_receipt_again_is_refused(self, data):
        order = self._pick(data, [OrderStatus.DELIVERED, OrderStatus.SETTLED, OrderStatus.REFUNDED])
        before = snapshot(order)
        with pytest.raises(OrderTransitionError) as refused:
            order_confirm_receipt(order=order, actor=order.buyer)
        assert refused.value.code == "not_paid"
        assert snapshot(order) == before

    @precondition(lambda self: self._refundable_with_rest())
    @rule(data=st.data(), full=st.booleans())
    def refund(self, data, full):
        candidates = [
            o.pk for o in Order.objects.filter(status__in=REFUNDABLE).order_by("pk") if o.amount > o.refunded_amount
        ]
        order = Order.objects.get(pk=data.draw(st.sampled_from(candidates), label="order"))
        remaining = order.amount - order.refunded_amount
        amount = remaining if full else data.draw(st.integers(min_value=1, max_value=remaining), label="amount")
        entries_before = JournalEntry.objects.count()
        refund = order_refund(order=order, amount=amount, reason="hypothesis refund", actor=self.staff)
        order.refresh_from_db()
        assert refund.status == RefundStatus.SUCCEEDED and refund.amount == amount
        assert order.refunded_amount == order.amount - remaining + amount
        expected = OrderStatus.REFUNDED if amount == remaining else OrderStatus.PARTIALLY_REFUNDED
        assert order.status == expected
        assert JournalEntry.objects.count() == entries_before + 1
        clearing = Posting.objects.get(entry__idempotency_key=f"refund:{refund.pk}", account__code="gateway_clearing")
        assert clearing.amount == -amount

    @precondition(lambda self: self._exists(*REFUNDABLE))
    @rule(data=st.data(), extra=st.integers(min_value=1, max_value=5000))
    def refund_more_than_remains_is_refused(self, data, extra):
        order = self._pick(data, REFUNDABLE)
        before = snapshot(order)
        with pytest.raises(RefundConflict) as refused:
            order_refund(
                order=order, amount=order.amount - order.refunded_amount + extra, reason="too much", actor=self.staff
            )
        assert refused.value.code == "refund_exceeds_paid"
        assert "would exceed what was paid" in refused.value.message
        assert snapshot(order) == before

    @precondition(lambda self: self._exists(OrderStatus.REFUNDED, OrderStatus.DISPUTED, OrderStatus.DECLINED))
    @rule(data=st.data())
    def refund_of_a_closed_order_is_refused(self, data):
        order = self._pick(data, [OrderStatus.REFUNDED, OrderStatus.DISPUTED, OrderStatus.DECLINED])
        before = snapshot(order)
        with pytest.raises(RefundConflict) as refused:
            order_refund(order=order, amount=1, reason="once more", actor=self.staff)
        assert refused.value.code == "not_refundable"
        assert snapshot(order) == before

    @precondition(lambda self: self._exists(*REFUNDABLE))
    @rule(data=st.data(), bad=st.sampled_from([0, -1, "5"]))
    def refund_of_a_bad_amount_is_refused(self, data, bad):
        order = self._pick(data, REFUNDABLE)
        before = snapshot(order)
        with pytest.raises(ValidationError) as refused:
            order_refund(order=order, amount=bad, reason="bad amount", actor=self.staff)
        assert "positive number of minor units" in str(refused.value)
        assert snapshot(order) == before

    # --- disputes (the sandbox's signed gateway events, through the webhook pipeline) ---------------

    @precondition(lambda self: Order.objects.filter(status__in=DISPUTABLE).exists())
    @rule(data=st.data())
    def dispute_opened(self, data):
        pks = Order.objects.filter(status__in=DISPUTABLE).order_by("pk").values_list("pk", flat=True)
        order = Order.objects.get(pk=data.draw(st.sampled_from(list(pks)), label="order"))
        self.gateway.emit_dispute(order=order)
        order.refresh_from_db()
        assert order.status == OrderStatus.DISPUTED
        assert order.disputes.filter(status=DisputeStatus.OPEN).count() == 1

    @precondition(lambda self: Dispute.objects.filter(status=DisputeStatus.OPEN).exists())
    @rule(data=st.data(), won=st.booleans())
    def dispute_closed(self, data, won):
        pks = list(Dispute.objects.filter(status=DisputeStatus.OPEN).order_by("pk").values_list("pk", flat=True))
        dispute = Dispute.objects.select_related("order").get(pk=data.draw(st.sampled_from(pks), label="dispute"))
        order = dispute.order
        self.gateway.emit_dispute(
            order=order, status="won" if won else "lost", closed=True, dispute_id=dispute.gateway_dispute_id
        )
        dispute.refresh_from_db()
        order.refresh_from_db()
        assert dispute.status == (DisputeStatus.WON if won else DisputeStatus.LOST)
        if won:
            back = (
                OrderStatus.SETTLED
                if order.settled_at
                else OrderStatus.DELIVERED
                if order.delivered_at
                else OrderStatus.PAID
            )
            assert order.status == back
        else:
            assert (order.status, order.refunded_amount) == (OrderStatus.REFUNDED, order.amount)

    @precondition(lambda self: Dispute.objects.exclude(status=DisputeStatus.OPEN).exists())
    @rule(data=st.data())
    def closed_dispute_replayed_changes_nothing(self, data):
        pks = list(Dispute.objects.exclude(status=DisputeStatus.OPEN).order_by("pk").values_list("pk", flat=True))
        dispute = Dispute.objects.select_related("order").get(pk=data.draw(st.sampled_from(pks), label="dispute"))
        before = snapshot(dispute.order)
        self.gateway.emit_dispute(
            order=dispute.order, status="lost", closed=True, dispute_id=dispute.gateway_dispute_id
        )
        assert snapshot(dispute.order) == before
        assert Dispute.objects.get(pk=dispute.pk).status == dispute.status

    # --- the fee schedule ---------------------------------------------------------------------------

    @precondition(lambda self: SETTLEMENT_USES_SCHEDULE)
    @rule(
        listing=st.integers(min_value=0, max_value=len(PRICES) - 1),
        by=st.sampled_from(["merchant", "category"]),
        bps=st.integers(min_value=0, max_value=10000),
    )
    def fee_rule_added(self, listing, by, bps):
        target = self.listings[listing]
        scope = {"merchant": target.merchant} if by == "merchant" else {"category": target.category}
        fee_rule_create(actor=self.staff, commission_bps=bps, note="hypothesis", **scope)

    # --- settlement and payouts ---------------------------------------------------------------------

    @rule()
    def settle(self):
        due = set(
            Order.objects.filter(
                status__in=[OrderStatus.DELIVERED, OrderStatus.PARTIALLY_REFUNDED], delivered_at__isnull=False
            ).values_list("pk", flat=True)
        )
        run = settlement_run_start(actor=self.staff, trigger="test")  # executes on commit (Celery eager)
        run.refresh_from_db()
        assert run.status == SettlementRunStatus.COMPLETED, run.error
        assert set(Order.objects.filter(settlement_run=run).values_list("pk", flat=True)) == due
        assert not Order.objects.filter(pk__in=due).exclude(status=OrderStatus.SETTLED).exists()
        assert TransactionCertificate.objects.filter(order_id__in=due).count() == len(due)
        # One payout per merchant and currency in the run, each sent once.
        payouts = list(Payout.objects.filter(run=run))
        assert len({(p.merchant_id, p.currency) for p in payouts}) == len(payouts)
        assert all(p.status == PayoutStatus.SENT and p.attempts == 1 for p in payouts)

    @precondition(lambda self: SettlementRun.objects.exists())
    @rule(data=st.data())
    def settle_again_changes_nothing(self, data):
        pks = list(SettlementRun.objects.order_by("pk").values_list("pk", flat=True))
        run_pk = data.draw(st.sampled_from(pks), label="run")
        before = snapshot()
        run = settlement_run_execute(run_pk=run_pk)
        assert run.status == SettlementRunStatus.COMPLETED
        assert snapshot() == before

    @rule()
    def second_run_while_one_runs_is_refused_then_the_first_resumes(self):
        # A run whose worker died before it began: the row (and its first history row) as settlement_run_start
        # writes them, and nothing settled yet.
        stuck = SettlementRun.objects.create(trigger="test")
        history_start([stuck], reason="started (test)")
        before = snapshot()
        with pytest.raises(SettlementInProgress) as refused:
            settlement_run_start(actor=self.staff, trigger="test")
        assert refused.value.code == "run_in_progress"
        assert f"Settlement run {stuck.pk} is still running" in refused.value.message
        assert snapshot() == before
        resumed = settlement_run_execute(run_pk=stuck.pk)
        assert resumed.status == SettlementRunStatus.COMPLETED

    @precondition(lambda self: Payout.objects.exists())
    @rule(data=st.data())
    def payout_sent_again_changes_nothing(self, data):
        pks = list(Payout.objects.order_by("pk").values_list("pk", flat=True))
        payout_pk = data.draw(st.sampled_from(pks), label="payout")
        before = snapshot()
        payout = payout_send(payout_pk=payout_pk)
        assert payout.status == PayoutStatus.SENT
        assert snapshot() == before

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def every_entry_balances(self):
        off = (
            Posting.objects.values("entry_id", "currency")
            .annotate(total=Sum("amount"))
            .exclude(total=0)
            .values_list("entry_id", "currency", "total")
        )
        assert list(off) == []
        short = [e.pk for e in JournalEntry.objects.all() if e.postings.count() < 2]
        assert short == []

    @invariant()
    def all_accounts_sum_to_zero_per_currency(self):
        off = Posting.objects.values("currency").annotate(total=Sum("amount")).exclude(total=0)
        assert list(off) == []

    @invariant()
    def no_merchant_payable_in_debit(self):
        # Credit (negative) is what the exchange owes the merchant. What the merchant owes back (a refund or
        # dispute after a payout) is booked to its receivable account, never as a debit on the payable.
        debit = (
            Posting.objects.filter(account__kind=AccountKind.MERCHANT_PAYABLE)
            .values("account__merchant_id", "currency")
            .annotate(balance=Sum("amount"))
            .filter(balance__gt=0)
        )
        assert list(debit) == []

    @invariant()
    def fees_are_the_fee_schedules_output(self):
        for sale in JournalEntry.objects.filter(kind=JournalKind.SALE).select_related("order"):
            legs = defaultdict(int)
            for kind, amount in sale.postings.values_list("account__kind", "amount"):
                legs[kind] += amount
            held = legs[AccountKind.ESCROW_HELD]
            order = sale.order
            # The buyer service fee's share of what was held (half up), then the commission on the rest.
            service = (2 * order.service_fee * held + order.amount) // (2 * order.amount)
            fee = service + percentage_of(held - service, expected_fee_bps(order))
            assert (-legs[AccountKind.PLATFORM_REVENUE], -legs[AccountKind.MERCHANT_PAYABLE]) == (fee, held - fee)

    @invariant()
    def no_order_gives_back_more_than_it_took(self):
        for order in Order.objects.all():
            assert 0 <= order.refunded_amount <= order.amount, order.reference
            per_kind = defaultdict(int)
            rows = Posting.objects.filter(entry__order=order).values_list("entry__kind", "account__kind", "amount")
            for entry_kind, account_kind, amount in rows:
                per_kind[(entry_kind, account_kind)] += amount
            returned = -sum(per_kind[(kind, AccountKind.GATEWAY_CLEARING)] for kind in MONEY_OUT)
            assert 0 <= returned <= order.amount, (order.reference, returned)
            escrow = sum(
                amount for (_, account_kind), amount in per_kind.items() if account_kind == AccountKind.ESCROW_HELD
            )
            revenue = -sum(
                a for (_, account_kind), a in per_kind.items() if account_kind == AccountKind.PLATFORM_REVENUE
            )
            sale_fee = -per_kind[(JournalKind.SALE, AccountKind.PLATFORM_REVENUE)]
            # Escrow holds the order's money until settlement, never more, and nothing afterwards.
            assert -order.amount <= escrow <= 0, (order.reference, escrow)
            if order.settled_at is not None:
                assert escrow == 0, (order.reference, escrow)
            # Refunds give back at most the fee taken, and a trade whose money all went back keeps no fee.
            assert 0 <= revenue <= sale_fee, (order.reference, revenue, sale_fee)
            if returned == order.amount:
                assert revenue == 0, (order.reference, revenue)

    @invariant()
    def every_status_is_proven_by_its_history(self):
        # Runs, batches, payouts, refunds, disputes (and subscriptions, access requests): a history from creation
        # ("" -> first status) through allowed moves only, ending at the status the row has now.
        for model, machine in MACHINES.items():
            # One query per machine: each row with its moves in order.
            rows = model.objects.annotate(
                froms=ArrayAgg("history__from_status", order_by="history__pk"),
                tos=ArrayAgg("history__to_status", order_by="history__pk"),
            ).values_list("pk", "status", "froms", "tos")
            for pk, status, froms, tos in rows:
                moves = [move for move in zip(froms, tos, strict=True) if move != (None, None)]
                assert moves and moves[0][0] == "", (model, pk, moves)
                for (_, reached), (left, to) in itertools.pairwise(moves):
                    assert left == reached and to in machine.table.get(left, ()), (model, pk, moves)
                assert moves[-1][1] == status, (model, pk, moves)

    @invariant()
    def the_chain_verifies(self):
        result = ledger_verify()
        assert result.ok, result.message
        assert result.entries_checked == JournalEntry.objects.count()


@pytest.fixture
def catalog(db, settings):
    settings.DISPUTE_HOLD_DAYS = 0  # delivered orders are settleable at once
    settings.PLATFORM_FEE_BPS = 1250
    staff = UserFactory(is_staff=True, is_superuser=True, email="hy-staff@example.com")
    listings = []
    for n, price in enumerate(PRICES):
        owner = UserFactory(email=f"hy-merchant-{n}@example.com")
        merchant = make_merchant(owner, name=f"HY Data {n}")
        listings.append(make_listing(merchant=merchant, owner=owner, reviewer=staff, price=price, title=f"Data {n}"))
    return {"staff": staff, "listings": listings}


@pytest.mark.django_db(transaction=True)
def test_money_invariants_hold_after_every_step(catalog, monkeypatch, settings):
    settings.BUYER_SERVICE_FEE = {"CNY": 37}  # odd, so its proportional share is rounded too
    monkeypatch.setattr(MoneyMachine, "catalog", catalog)
    run_state_machine_as_test(MoneyMachine, settings=MACHINE_SETTINGS)


# --- regressions found by the machine (all three fixed) ---


def _settled_order(*, buyer_email: str, listing, settle: bool) -> Order:
    buyer = UserFactory(email=buyer_email)
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
    order_checkout_start(order=order)
    order.refresh_from_db()
    SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    order.refresh_from_db()
    order_confirm_receipt(order=order, actor=buyer)
    if settle:
        settlement_run_start(trigger="test")
    order.refresh_from_db()
    return order


def _order_legs(order: Order, account_kind: str) -> int:
    return Posting.objects.filter(entry__order=order, account__kind=account_kind).aggregate(s=Sum("amount"))["s"] or 0


@pytest.mark.django_db(transaction=True)
def test_dispute_after_partial_refund_returns_at_most_the_rest(catalog):
    order = _settled_order(buyer_email="hy-regress-1@example.com", listing=catalog["listings"][1], settle=False)
    order_refund(order=order, amount=2, reason="one row missing", actor=catalog["staff"])
    SandboxGateway().emit_dispute(order=order)  # the sandbox, like Stripe's charge, names the charge's amount
    order.refresh_from_db()
    assert order.status == OrderStatus.DISPUTED
    # Paid 1001, refunded 2: the buyer can get at most 999 more, and escrow cannot go below empty.
    assert _order_legs(order, AccountKind.GATEWAY_CLEARING) == 0  # 1001 in, then 2 + 999 back out
    assert _order_legs(order, AccountKind.ESCROW_HELD) == 0


@pytest.mark.django_db(transaction=True)
def test_partial_refunds_after_settlement_return_the_fee_once(catalog, settings):
    settings.PLATFORM_FEE_BPS = 1000
    order = _settled_order(buyer_email="hy-regress-2@example.com", listing=catalog["listings"][0], settle=True)
    assert order.status == OrderStatus.SETTLED
    assert _order_legs(order, AccountKind.PLATFORM_REVENUE) == -123  # 10 % of 1234, half up
    order_refund(order=order, amount=617, reason="first half", actor=catalog["staff"])
    order_refund(order=order, amount=617, reason="second half", actor=catalog["staff"])
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    # Fully refunded: the platform keeps no fee and the merchant keeps nothing, exactly.
    assert _order_legs(order, AccountKind.PLATFORM_REVENUE) == 0
    # (paid out before the refunds, so what it gave back is owed through its receivable)
    assert _order_legs(order, AccountKind.MERCHANT_PAYABLE) + _order_legs(order, AccountKind.MERCHANT_RECEIVABLE) == 0


@pytest.mark.django_db(transaction=True)
def test_refund_after_payout_books_a_merchant_receivable(catalog):
    order = _settled_order(buyer_email="hy-regress-3@example.com", listing=catalog["listings"][0], settle=True)
    assert Payout.objects.get(merchant=order.merchant).status == PayoutStatus.SENT
    order_refund(order=order, amount=order.amount, reason="licence withdrawn", actor=catalog["staff"])

    def balance(kind):
        postings = Posting.objects.filter(account__kind=kind, account__merchant=order.merchant)
        return postings.aggregate(s=Sum("amount"))["s"] or 0

    share = order.amount - percentage_of(order.amount, 1250)  # what the merchant was paid for it
    assert (balance(AccountKind.MERCHANT_PAYABLE), balance(AccountKind.MERCHANT_RECEIVABLE)) == (0, share)
    # The merchant's next sale (same price) is netted against the debt: nothing left to pay, nothing owed.
    _settled_order(buyer_email="hy-regress-3b@example.com", listing=catalog["listings"][0], settle=True)
    assert (balance(AccountKind.MERCHANT_PAYABLE), balance(AccountKind.MERCHANT_RECEIVABLE)) == (0, 0)
    assert Payout.objects.filter(merchant=order.merchant).count() == 1
    assert JournalEntry.objects.filter(kind=JournalKind.RECEIVABLE_NETTED).count() == 1
