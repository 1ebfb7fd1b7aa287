"""The sandbox gateway's own books: the refunds it makes (asked for under a key, or made on its own and reported),
and what it answers when asked what it did under a payout's or a refund's key (``payout_lookup``,
``refund_lookup``). Orders are bought and paid through the sandbox's real checkout and webhook path."""

import hashlib
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from exchange.choices import OrderStatus, PayoutStatus, RefundStatus
from exchange.gateways import GatewayError
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import Order, Payout, Refund, SandboxRefund, SandboxTransfer, Subscription
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
