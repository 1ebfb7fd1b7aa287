"""The sandbox gateway's own books: the refunds it makes (asked for under a key, or made on its own and reported),
the disputes it opens and closes (``emit_dispute``), and what it answers when asked what it did under a payout's
or a refund's key (``payout_lookup``, ``refund_lookup``). Orders are bought and paid through the sandbox's real
checkout and webhook path."""

import hashlib
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.urls import reverse

from exchange.choices import DisputeStatus, JournalKind, OrderStatus, PayoutStatus, RefundStatus
from exchange.gateways import GatewayError
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import (
    Dispute,
    JournalEntry,
    Order,
    PaymentEvent,
    Payout,
    Refund,
    SandboxDispute,
    SandboxRefund,
    SandboxTransfer,
    Subscription,
)
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.refunds import order_refund
from exchange.services.settlement import settlement_run_start
from tests.exchange.helpers import buy_plan
from tests.factories import UserFactory, make_listing

pytestmark = pytest.mark.django_db

PRICE = 1234  # make_listing's default one-time price, in CNY


@pytest.fixture(autouse=True)
def _no_hold(settings):
    settings.DISPUTE_HOLD_DAYS = 0  # settle what was delivered a moment ago


@pytest.fixture
def order(published_listing, django_capture_on_commit_callbacks):
    """A sandbox order paid through the sandbox's checkout page and its signed event."""
    buyer = UserFactory()
    with django_capture_on_commit_callbacks(execute=True):
        order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key=str(uuid.uuid4()))
        order_checkout_start(order=order)
        order.refresh_from_db()
        SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    order = Order.objects.get(pk=order.pk)
    assert (order.status, order.amount, order.gateway_payment_id[:7]) == (OrderStatus.PAID, PRICE, "pi_sbx_")
    return order


def _derived(key: str) -> str:
    return "re_sbx_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _books():
    """Everything the sandbox and the exchange hold about refunds and payouts, to show nothing changed."""
    return (
        list(SandboxRefund.objects.order_by("pk").values_list()),
        list(SandboxTransfer.objects.order_by("pk").values_list()),
        list(Refund.objects.order_by("pk").values_list("pk", "status", "amount", "gateway_refund_id", "error")),
        list(Payout.objects.order_by("pk").values_list("pk", "status", "amount", "gateway_reference")),
        list(Order.objects.order_by("pk").values_list("pk", "status", "refunded_amount")),
    )


def _records_began_after(moment):
    """Pretend the sandbox began keeping refund records (its migration was applied) just after ``moment``."""
    MigrationRecorder(connection).migration_qs.filter(app="exchange", name="0023_sandbox_refunds").update(
        applied=moment + timedelta(seconds=1)
    )


# --- refund_create -------------------------------------------------------------------------------------------------


def test_refund_create_records_once_per_key_and_a_replay_returns_the_same_id(order):
    gateway = SandboxGateway()
    made = gateway.refund_create(payment_id=order.gateway_payment_id, amount=300, idempotency_key="key-1")
    # Deterministic from the key, as before the sandbox kept records.
    assert made == _derived("key-1")
    record = SandboxRefund.objects.get()
    assert (
        record.id,
        record.idempotency_key,
        record.payment_intent,
        record.order_public_id,
        record.amount,
        record.currency,
    ) == (made, "key-1", order.gateway_payment_id, order.public_id, 300, "CNY")
    before = _books()
    again = gateway.refund_create(payment_id=order.gateway_payment_id, amount=300, idempotency_key="key-1")
    assert again == made
    assert _books() == before  # no second record


@pytest.mark.parametrize(
    ("amount", "payment"),
    [(301, None), (300, "pi_sbx_another"), (300, "")],
    ids=["another amount", "another payment", "no payment"],
)
def test_a_key_reused_with_other_parameters_is_refused_and_writes_nothing(order, amount, payment):
    gateway = SandboxGateway()
    gateway.refund_create(payment_id=order.gateway_payment_id, amount=300, idempotency_key="key-1")
    before = _books()
    with pytest.raises(GatewayError) as raised:
        gateway.refund_create(
            payment_id=order.gateway_payment_id if payment is None else payment,
            amount=amount,
            idempotency_key="key-1",
        )
    assert str(raised.value) == "Idempotency key reused with different parameters."
    assert raised.value.transient is False
    assert _books() == before


def test_refund_create_through_order_refund_records_the_refund_the_exchange_books(order, staff):
    refund = order_refund(order=order, amount=200, reason="a late file", actor=staff, idempotency_key="staff-form-1")
    assert refund.status == RefundStatus.SUCCEEDED
    record = SandboxRefund.objects.get()
    assert (record.id, record.idempotency_key, record.amount, record.currency) == (
        refund.gateway_refund_id,
        refund.idempotency_key,
        200,
        "CNY",
    )


def test_a_renewal_refund_takes_its_currency_from_the_refund_request(
    client, merchant, merchant_user, staff, django_capture_on_commit_callbacks
):
    # A renewal is paid by an invoice the sandbox keeps no record of, and the exchange names no payment for it.
    listing = make_listing(
        merchant=merchant,
        owner=merchant_user,
        reviewer=staff,
        currency="USD",
        extra_plans=({"kind": "subscription", "amount": 3000, "interval": "month"},),
    )
    first = buy_plan(client, UserFactory(), listing, django_capture_on_commit_callbacks, kind="subscription")
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_renewal(subscription=Subscription.objects.get(order=first))
    renewal = Order.objects.exclude(pk=first.pk).get()
    assert (renewal.gateway_payment_id, renewal.gateway_session_id, renewal.currency) == ("", None, "USD")
    refund = order_refund(order=renewal, amount=500, reason="billed twice", actor=staff)
    assert refund.status == RefundStatus.SUCCEEDED
    record = SandboxRefund.objects.get()
    assert (record.id, record.payment_intent, record.order_public_id, record.amount, record.currency) == (
        refund.gateway_refund_id,
        "",
        renewal.public_id,
        500,
        "USD",
    )


def test_a_refund_of_a_payment_the_sandbox_cannot_place_is_recorded_without_a_currency(db):
    made = SandboxGateway().refund_create(payment_id="", amount=50, idempotency_key="nobody-asked")
    record = SandboxRefund.objects.get()
    assert (record.id, record.payment_intent, record.order_public_id, record.currency) == (made, "", None, "")


# --- emit_refund ---------------------------------------------------------------------------------------------------


def test_emit_refund_records_the_refund_it_reports(order, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_refund(order=order, amount=300)
    record = SandboxRefund.objects.get()
    booked = Refund.objects.get()
    assert (booked.source, booked.status, booked.gateway_refund_id) == ("gateway", RefundStatus.SUCCEEDED, record.id)
    # No key of ours names a refund the sandbox made on its own.
    assert (record.idempotency_key, record.payment_intent, record.order_public_id, record.amount, record.currency) == (
        None,
        order.gateway_payment_id,
        order.public_id,
        300,
        "CNY",
    )
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_refund(order=Order.objects.get(pk=order.pk), amount=100)
    assert SandboxRefund.objects.filter(idempotency_key=None).count() == 2


# --- payout_lookup ----------------------------------------------------------------------------------------------------


@pytest.fixture
def payout(order, django_capture_on_commit_callbacks):
    """``order`` delivered, settled and paid out to its merchant by a sandbox transfer."""
    with django_capture_on_commit_callbacks(execute=True):
        order_confirm_receipt(order=order, actor=order.buyer)
    with django_capture_on_commit_callbacks(execute=True):
        settlement_run_start(trigger="test")
    payout = Payout.objects.get()
    assert payout.status == PayoutStatus.SENT and payout.gateway_reference.startswith("tr_sbx_")
    return payout


def test_payout_lookup_names_the_transfer_made_under_the_payouts_key(payout):
    before = _books()
    assert SandboxGateway().payout_lookup(payout=payout) == payout.gateway_reference
    assert _books() == before


def test_payout_lookup_answers_none_for_a_payout_it_made_no_transfer_for(payout):
    unsent = Payout.objects.create(
        run=payout.run,
        merchant=payout.merchant,
        amount=500,
        currency="USD",
        idempotency_key="payout:never-sent",
        gateway="sandbox",
    )
    before = _books()
    assert SandboxGateway().payout_lookup(payout=unsent) is None
    assert _books() == before


@pytest.mark.parametrize("change", [{"amount": 1000}, {"currency": "USD"}], ids=["amount", "currency"])
def test_payout_lookup_refuses_a_transfer_that_differs_from_the_payout(payout, change):
    SandboxTransfer.objects.filter(idempotency_key=payout.idempotency_key).update(**change)
    before = _books()
    with pytest.raises(GatewayError) as raised:
        SandboxGateway().payout_lookup(payout=payout)
    assert raised.value.transient is False
    assert str(raised.value).startswith(f"Transfer {payout.gateway_reference} was made under payout {payout.pk}'s key")
    assert _books() == before


# --- refund_lookup ----------------------------------------------------------------------------------------------------


def _timed_out(order, staff, monkeypatch, amount=300):
    """A refund of ``order`` whose gateway call timed out before the sandbox made it: PENDING, no record."""

    def timeout(self, **kwargs):
        raise GatewayError("connection timed out", transient=True)

    with monkeypatch.context() as patched:
        patched.setattr(SandboxGateway, "refund_create", timeout)
        with pytest.raises(GatewayError):
            order_refund(order=order, amount=amount, reason="late file", actor=staff, idempotency_key="timed-out")
    refund = Refund.objects.get(idempotency_key="timed-out")
    assert refund.status == RefundStatus.PENDING
    return refund


def test_refund_lookup_names_the_refund_made_under_the_refunds_key(order, staff):
    refund = order_refund(order=order, amount=200, reason="a late file", actor=staff)
    before = _books()
    assert (
        SandboxGateway().refund_lookup(refund=refund, payment_id=order.gateway_payment_id) == refund.gateway_refund_id
    )
    assert _books() == before


def test_refund_lookup_answers_none_for_a_refund_it_never_made(order, staff, monkeypatch):
    refund = _timed_out(order, staff, monkeypatch)
    before = _books()
    assert SandboxGateway().refund_lookup(refund=refund, payment_id=order.gateway_payment_id) is None
    assert _books() == before


def test_refund_lookup_finds_a_refund_made_after_all(order, staff, monkeypatch):
    refund = _timed_out(order, staff, monkeypatch)
    # The answer was lost, but the sandbox had made it.
    made = SandboxGateway().refund_create(
        payment_id=order.gateway_payment_id, amount=300, idempotency_key=refund.idempotency_key
    )
    assert SandboxGateway().refund_lookup(refund=refund, payment_id=order.gateway_payment_id) == made


@pytest.mark.parametrize(
    ("change", "payment"),
    [({"amount": 250}, None), ({"currency": "USD"}, None), ({}, "pi_sbx_another")],
    ids=["amount", "currency", "payment"],
)
def test_refund_lookup_refuses_a_record_that_differs_from_the_refund(order, staff, change, payment):
    refund = order_refund(order=order, amount=200, reason="a late file", actor=staff)
    SandboxRefund.objects.filter(pk=refund.gateway_refund_id).update(**change)
    before = _books()
    with pytest.raises(GatewayError) as raised:
        SandboxGateway().refund_lookup(refund=refund, payment_id=payment or order.gateway_payment_id)
    assert raised.value.transient is False
    assert str(raised.value).startswith(f"Refund {refund.gateway_refund_id} was made under refund {refund.pk}'s key")
    assert _books() == before


def test_refund_lookup_cannot_tell_for_a_refund_created_before_the_sandbox_kept_records(order, staff, monkeypatch):
    refund = _timed_out(order, staff, monkeypatch)
    _records_began_after(refund.created_at)
    before = _books()
    with pytest.raises(GatewayError) as raised:
        SandboxGateway().refund_lookup(refund=refund, payment_id=order.gateway_payment_id)
    assert raised.value.transient is False
    assert "before the sandbox kept refund records" in str(raised.value)
    assert "cannot tell whether it made it" in str(raised.value)
    assert _books() == before


# --- emit_dispute -----------------------------------------------------------------------------------------------------


def _dispute_books():
    """Everything the sandbox and the exchange hold about disputes, and every event and entry, to show nothing
    changed."""
    return (
        list(SandboxDispute.objects.order_by("pk").values_list()),
        list(Dispute.objects.order_by("pk").values_list("pk", "gateway_dispute_id", "status", "amount")),
        list(Order.objects.order_by("pk").values_list("pk", "status", "refunded_amount")),
        PaymentEvent.objects.count(),
        JournalEntry.objects.count(),
    )


def _emit(order, capture, **kwargs):
    with capture(execute=True):
        SandboxGateway().emit_dispute(order=Order.objects.get(pk=order.pk), **kwargs)


def test_emit_dispute_records_the_dispute_once_per_id(order, django_capture_on_commit_callbacks):
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_one")
    record = SandboxDispute.objects.get()
    assert (
        record.id,
        record.payment_intent,
        record.order_public_id,
        record.amount,
        record.currency,
        record.status,
        record.closed_at,
    ) == ("dp_sbx_one", order.gateway_payment_id, order.public_id, PRICE, "CNY", "needs_response", None)
    dispute = Dispute.objects.get()
    assert (dispute.gateway_dispute_id, dispute.amount) == ("dp_sbx_one", PRICE)
    before = _dispute_books()
    # The same dispute emitted again: reported again (a replay the exchange knows), recorded once.
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_one")
    after = _dispute_books()
    assert after[:3] == before[:3] and after[4] == before[4]
    assert after[3] == before[3] + 1  # the event itself


def test_emit_dispute_without_an_id_records_the_one_it_made_up(order, django_capture_on_commit_callbacks):
    _emit(order, django_capture_on_commit_callbacks)
    record = SandboxDispute.objects.get()
    assert record.id.startswith("dp_sbx_") and record.id == Dispute.objects.get().gateway_dispute_id


@pytest.mark.parametrize("won", [True, False], ids=["won", "lost"])
def test_closing_a_dispute_updates_its_record_once(order, django_capture_on_commit_callbacks, won):
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_one")
    status = "won" if won else "lost"
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_one", closed=True, status=status)
    record = SandboxDispute.objects.get()
    assert (record.status, record.amount) == (status, PRICE)
    assert record.closed_at is not None and record.closed_at >= record.created_at
    assert Dispute.objects.get().status == (DisputeStatus.WON if won else DisputeStatus.LOST)
    assert JournalEntry.objects.filter(kind=JournalKind.DISPUTE_WON).count() == (1 if won else 0)
    before = _dispute_books()
    # Closed again the other way (a replayed or mistaken event): a closed dispute stays as it was closed.
    _emit(
        order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_one", closed=True, status="lost" if won else "won"
    )
    after = _dispute_books()
    assert after[:3] == before[:3] and after[4] == before[4]


def test_a_dispute_after_a_partial_refund_withdraws_what_is_left(order, staff, django_capture_on_commit_callbacks):
    order_refund(order=order, amount=300, reason="a late file", actor=staff)
    _emit(order, django_capture_on_commit_callbacks)
    # The event names the charge's amount; the sandbox cannot take back what it already returned, nor the exchange.
    assert SandboxDispute.objects.get().amount == PRICE - 300 == Dispute.objects.get().amount


def test_a_dispute_before_the_payment_is_recorded_without_one(published_listing, django_capture_on_commit_callbacks):
    buyer = UserFactory()
    with django_capture_on_commit_callbacks(execute=True):
        pending, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="early")
        order_checkout_start(order=pending)
    _emit(pending, django_capture_on_commit_callbacks, dispute_id="dp_sbx_early")
    record = SandboxDispute.objects.get()
    assert (record.payment_intent, record.order_public_id, record.amount) == ("", pending.public_id, PRICE)


@pytest.fixture
def other_order(published_listing, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        other, _ = order_create(buyer=UserFactory(), listing=published_listing, idempotency_key="other")
    return other


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"closed": True, "status": "won", "dispute_id": "dp_sbx_never"},
            "The sandbox opened no dispute dp_sbx_never: there is none to close.",
        ),
        (
            {"closed": True, "status": "lost", "dispute_id": ""},
            "Which dispute to close: a dispute id is needed.",
        ),
        (
            {"closed": True, "status": "needs_response", "dispute_id": "dp_sbx_one"},
            "A dispute closes won or lost, not 'needs_response'.",
        ),
        (
            {"status": "won", "dispute_id": "dp_sbx_new"},
            "A dispute opens as one of needs_response, under_review, warning_needs_response, warning_under_review, "
            "not 'won'.",
        ),
        ({"dispute_id": "dp_sbx_one", "on_other": True}, "Dispute dp_sbx_one was opened on another order"),
        (
            {"closed": True, "status": "won", "dispute_id": "dp_sbx_one", "on_other": True},
            "Dispute dp_sbx_one was opened on another order",
        ),
    ],
    ids=["close unknown id", "close without id", "close as open", "open as won", "reopen on other", "close on other"],
)
def test_bad_dispute_input_is_refused_and_records_and_sends_nothing(
    order, other_order, django_capture_on_commit_callbacks, kwargs, message
):
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_one")
    target = other_order if kwargs.pop("on_other", False) else order
    before = _dispute_books()
    with pytest.raises(GatewayError) as raised, django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_dispute(order=Order.objects.get(pk=target.pk), **kwargs)
    assert str(raised.value).startswith(message)
    assert raised.value.transient is False
    assert _dispute_books() == before


def _dispute_records_began_after(moment):
    """Pretend the sandbox began keeping dispute records (its migration was applied) just after ``moment``."""
    MigrationRecorder(connection).migration_qs.filter(app="exchange", name="0024_sandbox_disputes").update(
        applied=moment + timedelta(seconds=1)
    )


def test_a_dispute_opened_before_the_sandbox_kept_records_can_still_be_closed(
    order, django_capture_on_commit_callbacks
):
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_old")
    # Opened by the sandbox of before its dispute records: it remembers nothing of it.
    SandboxDispute.objects.all().delete()
    _dispute_records_began_after(Dispute.objects.get().created_at)
    # Nor is one made up by opening it again: that is refused, and changes nothing.
    before = _dispute_books()
    with pytest.raises(GatewayError) as raised, django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_dispute(order=order, dispute_id="dp_sbx_old")
    assert str(raised.value) == (
        "Dispute dp_sbx_old was opened before the sandbox kept dispute records: it has none to reopen."
    )
    assert _dispute_books() == before
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_old", closed=True, status="won")
    assert Dispute.objects.get().status == DisputeStatus.WON
    assert JournalEntry.objects.filter(kind=JournalKind.DISPUTE_WON).count() == 1
    assert not SandboxDispute.objects.exists()  # no record made up for it


@pytest.mark.parametrize("won", [True, False], ids=["won", "lost"])
def test_the_order_admins_dispute_actions_keep_the_sandboxs_record(
    order, client, staff, django_capture_on_commit_callbacks, won
):
    client.force_login(staff)
    changelist = reverse("admin:exchange_order_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(changelist, {"action": "sandbox_dispute", "_selected_action": [order.pk]})
    dispute = Dispute.objects.get()
    record = SandboxDispute.objects.get()
    assert (record.id, record.status, record.amount) == (dispute.gateway_dispute_id, "needs_response", PRICE)
    action = "sandbox_dispute_won" if won else "sandbox_dispute_lost"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(changelist, {"action": action, "_selected_action": [order.pk]}, follow=True)
    assert response.status_code == 200
    record.refresh_from_db()
    dispute.refresh_from_db()
    assert (record.status, dispute.status) == (("won", DisputeStatus.WON) if won else ("lost", DisputeStatus.LOST))
    assert record.closed_at is not None


def test_the_order_admin_shows_a_refused_dispute_closing_and_changes_nothing(
    order, client, staff, django_capture_on_commit_callbacks
):
    _emit(order, django_capture_on_commit_callbacks, dispute_id="dp_sbx_lost_record")
    SandboxDispute.objects.all().delete()  # the sandbox has no record of it (its books were wiped)
    before = _dispute_books()
    client.force_login(staff)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:exchange_order_changelist"),
            {"action": "sandbox_dispute_won", "_selected_action": [order.pk]},
            follow=True,
        )
    assert response.status_code == 200
    assert (
        f"Order {order.reference}: The sandbox opened no dispute dp_sbx_lost_record: there is none to close."
        in response.content.decode()
    )
    assert _dispute_books() == before
    assert Dispute.objects.get().status == DisputeStatus.OPEN
