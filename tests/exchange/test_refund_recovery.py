"""Refunds the gateway did not answer, and orders refunded in part before delivery: they all end booked and settled.

A refund whose gateway call timed out stays PENDING with its amount reserved
on the order (and the order out of settlement) until one of three things
resolves it: the pending-refund sweep sends it again, staff submit the same
form again, or the gateway's charge.refunded webhook reports the refund it did
make. Each way books it once. Everything goes through the sandbox gateway's
real paths (signed events, the webhook ingestion, tasks eager on commit).
"""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import OperationalError, connection, transaction
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from exchange import tasks
from exchange.choices import AccountKind, EntitlementStatus, JournalKind, OrderStatus, RefundStatus
from exchange.gateways import GatewayError
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import Entitlement, JournalEntry, Order, Posting, Refund, SandboxRefund
from exchange.services.ledger import ledger_verify
from exchange.services.orders import (
    OrderTransitionError,
    order_checkout_start,
    order_confirm_receipt,
    order_create,
    orders_auto_confirm,
)
from exchange.services.refunds import (
    RefundConflict,
    RefundNotHeld,
    order_refund,
    refund_resolve,
    refunds_retry_pending,
)
from exchange.services.settlement import settlement_run_execute, settlement_run_start
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PRICE = 1234  # make_listing's default one-time price; no buyer service fee in the tests' settings
KEY = "admin-refund-7f0c"
LATER = timedelta(minutes=6)  # past REFUND_RETRY_AFTER_SECONDS (300 by default)
# What the pending-refund sweep returns when it did nothing, by outcome.
SWEPT_NOTHING = {
    "succeeded": [],
    "failed": [],
    "still_pending": [],
    "too_old": [],
    "found_at_gateway": [],
    "not_at_gateway": [],
}


@pytest.fixture(autouse=True)
def _no_hold(settings):
    settings.DISPUTE_HOLD_DAYS = 0  # settle what was delivered a moment ago


def _paid(listing, capture):
    buyer = UserFactory()
    with capture(execute=True):
        order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
        order_checkout_start(order=order)
        order.refresh_from_db()
        SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    order = Order.objects.get(pk=order.pk)
    assert (order.status, order.amount) == (OrderStatus.PAID, PRICE)
    return order, buyer


def _delivered(listing, capture):
    order, buyer = _paid(listing, capture)
    with capture(execute=True):
        order_confirm_receipt(order=order, actor=buyer)
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED
    return order


def _balance(kind):
    return Posting.objects.filter(account__kind=kind).aggregate(total=Sum("amount"))["total"] or 0


def _moves(refund):
    return list(refund.history.order_by("pk").values_list("from_status", "to_status", "reason"))


def _sandbox_refund_id(key):
    """The refund the sandbox made under ``key`` (its record must exist)."""
    return SandboxRefund.objects.get(idempotency_key=key).id


def _sandbox_kept_refund_records_for_a_month(monkeypatch):
    """Refunds aged a day were made while the sandbox kept refund records (since a month ago, not this test
    database's migration a moment ago): no record means no refund."""
    monkeypatch.setattr(SandboxRefund, "records_since", staticmethod(lambda: timezone.now() - timedelta(days=30)))


def _timed_out_refund(order, staff, amount, monkeypatch, key=KEY):
    """Refund ``amount`` of ``order`` while the gateway times out; return the PENDING refund."""

    def timeout(self, **kwargs):
        raise GatewayError("Stripe: connection timed out", transient=True)

    with monkeypatch.context() as patched:
        patched.setattr(SandboxGateway, "refund_create", timeout)
        with pytest.raises(GatewayError) as raised:
            order_refund(order=order, amount=amount, reason="late file", actor=staff, idempotency_key=key)
    assert raised.value.transient
    refund = Refund.objects.get(order=order)
    assert "stays pending" in str(raised.value) and f"Refund {refund.pk}" in str(raised.value)
    order.refresh_from_db()
    assert (refund.status, refund.error, order.refunded_amount) == (
        RefundStatus.PENDING,
        "Stripe: connection timed out",
        amount,
    )
    return refund


def _gateway_must_not_be_called(monkeypatch):
    def called(self, **kwargs):
        raise AssertionError("the gateway was asked to refund again")

    monkeypatch.setattr(SandboxGateway, "refund_create", called)


def _settle():
    return settlement_run_execute(run_pk=settlement_run_start(trigger="test").pk)


def _refund_entries(order):
    return list(
        JournalEntry.objects.filter(order=order, kind=JournalKind.REFUND).values_list("idempotency_key", flat=True)
    )


# --- the sweep -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [300, PRICE])
def test_the_sweep_sends_a_timed_out_refund_again_and_books_it_once(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch, amount
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, amount, monkeypatch)
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED and _refund_entries(order) == []
    # The reservation keeps the order out of settlement while the refund is pending.
    _settle()
    order.refresh_from_db()
    assert order.settled_at is None and _balance(AccountKind.ESCROW_HELD) == -PRICE

    # Too young for the sweep: a gateway call may still be answering.
    assert refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600) == SWEPT_NOTHING
    refund.refresh_from_db()
    assert refund.status == RefundStatus.PENDING

    with django_capture_on_commit_callbacks(execute=True):
        swept = refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600, now=timezone.now() + LATER)
    assert swept == {**SWEPT_NOTHING, "succeeded": [refund.pk]}
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, refund.gateway_refund_id, refund.error) == (
        RefundStatus.SUCCEEDED,
        _sandbox_refund_id(KEY),  # the same key: the gateway returns the refund it made the first time
        "",
    )
    assert _moves(refund) == [
        ("", "pending", "requested (admin): late file"),
        ("pending", "succeeded", f"gateway refund {refund.gateway_refund_id} (sent again by the pending-refund sweep)"),
    ]
    full = amount == PRICE
    assert (order.refunded_amount, order.status) == (
        amount,
        OrderStatus.REFUNDED if full else OrderStatus.PARTIALLY_REFUNDED,
    )
    assert _refund_entries(order) == [f"refund:{refund.pk}"]
    assert Entitlement.objects.get(order=order).status == (
        EntitlementStatus.REVOKED if full else EntitlementStatus.ACTIVE
    )

    # A second sweep (or the same one delivered twice) finds nothing to do and asks the gateway nothing.
    _gateway_must_not_be_called(monkeypatch)
    entries = JournalEntry.objects.count()
    swept = refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600, now=timezone.now() + LATER)
    assert swept == SWEPT_NOTHING
    assert JournalEntry.objects.count() == entries and len(_moves(refund)) == 2

    # The rest of the trade settles; escrow ends empty and the clearing account holds what the buyer kept paid.
    _settle()
    order.refresh_from_db()
    assert order.settled_at is not None or full
    assert _balance(AccountKind.ESCROW_HELD) == 0
    assert _balance(AccountKind.GATEWAY_CLEARING) == PRICE - amount
    assert ledger_verify().ok and _balance(AccountKind.ESCROW_HELD) == 0


def test_the_sweep_leaves_a_refund_pending_while_the_gateway_is_still_down_and_fails_a_refused_one(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, 300, monkeypatch)

    def still_down(self, **kwargs):
        raise GatewayError("Stripe: 503 service unavailable", transient=True)

    monkeypatch.setattr(SandboxGateway, "refund_create", still_down)
    swept = refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600, now=timezone.now() + LATER)
    assert swept["still_pending"] == [refund.pk]
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, refund.error, order.refunded_amount) == (
        RefundStatus.PENDING,
        "Stripe: 503 service unavailable",
        300,
    )

    def refused(self, **kwargs):
        raise GatewayError("Stripe: charge already refunded", transient=False)

    monkeypatch.setattr(SandboxGateway, "refund_create", refused)
    swept = refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600, now=timezone.now() + LATER)
    assert swept["failed"] == [refund.pk]
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, order.status) == (RefundStatus.FAILED, 0, OrderStatus.DELIVERED)
    assert _moves(refund)[-1] == (
        "pending",
        "failed",
        "gateway refused: Stripe: charge already refunded (sent again by the pending-refund sweep)",
    )
    assert _refund_entries(order) == []


def _sweep_a_day_later():
    return refunds_retry_pending(
        older_than_seconds=300, max_age_seconds=23 * 3600, now=timezone.now() + timedelta(hours=24)
    )


def test_a_refund_older_than_the_gateways_key_memory_is_not_sent_again_but_looked_up_and_failed_if_never_made(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, 300, monkeypatch)  # the call never reached the sandbox
    _gateway_must_not_be_called(monkeypatch)
    assert _sweep_a_day_later() == {**SWEPT_NOTHING, "not_at_gateway": [refund.pk]}
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, _refund_entries(order)) == (RefundStatus.FAILED, 0, [])
    assert _moves(refund)[-1] == (
        "pending",
        "failed",
        "not made: no refund found at the gateway (looked up after its idempotency key may have expired)",
    )
    event = AuditEvent.objects.get(action="refund_resolved")
    assert event.actor is None and event.details["outcome"] == "not made"
    assert event.details["resolved_by"] == "gateway lookup"
    assert _sweep_a_day_later() == SWEPT_NOTHING  # run twice: nothing more


def test_a_refund_older_than_the_gateways_key_memory_that_the_gateway_made_is_booked_once(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    made = SandboxGateway.refund_create

    def made_then_timed_out(self, **kwargs):
        made(self, **kwargs)  # the sandbox refunds, and the answer is lost
        raise GatewayError("Stripe: connection timed out", transient=True)

    monkeypatch.setattr(SandboxGateway, "refund_create", made_then_timed_out)
    with pytest.raises(GatewayError):
        order_refund(order=order, amount=300, reason="late file", actor=staff, idempotency_key=KEY)
    refund = Refund.objects.get(order=order)
    _gateway_must_not_be_called(monkeypatch)
    assert _sweep_a_day_later() == {**SWEPT_NOTHING, "found_at_gateway": [refund.pk]}
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, refund.gateway_refund_id) == (RefundStatus.SUCCEEDED, _sandbox_refund_id(KEY))
    assert (order.refunded_amount, order.status) == (300, OrderStatus.PARTIALLY_REFUNDED)
    assert _refund_entries(order) == [f"refund:{refund.pk}"]
    assert _sweep_a_day_later() == SWEPT_NOTHING
    assert _refund_entries(order) == [f"refund:{refund.pk}"]
    assert ledger_verify().ok


def _lookup_fails(monkeypatch, message="The sandbox did not answer."):
    def down(self, **kwargs):
        raise GatewayError(message, transient=True)

    monkeypatch.setattr(SandboxGateway, "refund_lookup", down)


def test_a_refund_the_gateway_cannot_tell_about_stays_held_with_the_reason(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, 300, monkeypatch)
    _gateway_must_not_be_called(monkeypatch)
    _lookup_fails(monkeypatch)
    assert _sweep_a_day_later() == {**SWEPT_NOTHING, "too_old": [refund.pk]}
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, _refund_entries(order)) == (RefundStatus.PENDING, 300, [])
    assert refund.error == (
        "Held for review: the gateway could not say whether it made this refund: The sandbox did not answer."
    )
    assert refund.history.count() == 1 and not AuditEvent.objects.filter(action="refund_resolved").exists()


def test_the_beat_task_runs_the_sweep(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch, settings
):
    assert django_settings.CELERY_BEAT_SCHEDULE["refunds-retry-pending"] == {
        "task": "exchange.tasks.refunds_retry_pending",
        "schedule": float(django_settings.REFUND_RETRY_SWEEP_SECONDS),
    }
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, 300, monkeypatch)
    settings.REFUND_RETRY_AFTER_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.refunds_retry_pending.apply().get()["succeeded"] == [refund.pk]
        assert tasks.refunds_retry_pending.apply().get()["succeeded"] == []
    refund.refresh_from_db()
    assert refund.status == RefundStatus.SUCCEEDED and _refund_entries(order) == [f"refund:{refund.pk}"]


# --- staff submitting the same form again ----------------------------------------------------------------------


def test_submitting_the_same_refund_again_sends_it_again(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, 300, monkeypatch)

    def still_down(self, **kwargs):
        raise GatewayError("Stripe: connection timed out", transient=True)

    # Still down: the same answer, nothing changed.
    with monkeypatch.context() as patched:
        patched.setattr(SandboxGateway, "refund_create", still_down)
        with pytest.raises(GatewayError, match="stays pending"):
            order_refund(order=order, amount=300, reason="late file", actor=staff, idempotency_key=KEY)
    refund.refresh_from_db()
    assert refund.status == RefundStatus.PENDING and Refund.objects.count() == 1

    # Back up: the same refund is sent with the same key and booked, once.
    with django_capture_on_commit_callbacks(execute=True):
        again = order_refund(order=order, amount=300, reason="late file", actor=staff, idempotency_key=KEY)
    assert again.pk == refund.pk and again.status == RefundStatus.SUCCEEDED
    assert again.gateway_refund_id == _sandbox_refund_id(KEY)
    assert _moves(again)[-1] == (
        "pending",
        "succeeded",
        f"gateway refund {again.gateway_refund_id} (sent again: the same refund was submitted again)",
    )
    order.refresh_from_db()
    assert (order.status, order.refunded_amount) == (OrderStatus.PARTIALLY_REFUNDED, 300)
    assert Refund.objects.count() == 1 and _refund_entries(order) == [f"refund:{refund.pk}"]
    # And once more: the succeeded refund is returned, the gateway not asked.
    _gateway_must_not_be_called(monkeypatch)
    assert order_refund(order=order, amount=300, reason="late file", actor=staff, idempotency_key=KEY).pk == refund.pk
    assert _refund_entries(order) == [f"refund:{refund.pk}"]


def test_the_admin_form_explains_a_timeout_and_retries_when_sent_again(
    client, published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    client.force_login(staff)
    url = reverse("admin:exchange_order_refund", args=[order.pk])
    data = {"amount": "3.00", "reason": "late file", "token": str(uuid.uuid4())}

    def timeout(self, **kwargs):
        raise GatewayError("Stripe: connection timed out", transient=True)

    with monkeypatch.context() as patched:
        patched.setattr(SandboxGateway, "refund_create", timeout)
        first = client.post(url, data)
    assert first.status_code == 400
    page = first.content.decode()
    assert "did not answer" in page and "stays pending" in page and "Submitting the same form again" in page
    refund = Refund.objects.get()
    assert refund.status == RefundStatus.PENDING

    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(url, data, follow=True)
    assert "Refund of ¥3.00 CNY for order" in again.content.decode() and "Succeeded" in again.content.decode()
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, Refund.objects.count()) == (RefundStatus.SUCCEEDED, 300, 1)


# --- the gateway's webhook reports the refund it made -------------------------------------------------------------


@pytest.mark.parametrize("amount", [300, PRICE])
def test_the_gateways_report_books_the_pending_refund_instead_of_a_second_one(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch, amount
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, amount, monkeypatch)
    # The gateway had refunded after all; its charge.refunded event arrives through the webhook path.
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_refund(order=Order.objects.get(pk=order.pk), amount=amount)
    (booked,) = Refund.objects.filter(order=order)
    assert booked.pk == refund.pk
    assert (booked.status, booked.source, booked.gateway_refund_id[:7]) == (RefundStatus.SUCCEEDED, "admin", "re_sbx_")
    assert _moves(booked)[-1] == (
        "pending",
        "succeeded",
        f"gateway refund {booked.gateway_refund_id}, reported by the gateway (matched by order and amount)",
    )
    order.refresh_from_db()
    full = amount == PRICE
    assert (order.refunded_amount, order.status) == (
        amount,  # reserved once, not twice
        OrderStatus.REFUNDED if full else OrderStatus.PARTIALLY_REFUNDED,
    )
    assert _refund_entries(order) == [f"refund:{refund.pk}"]
    assert Entitlement.objects.get(order=order).status == (
        EntitlementStatus.REVOKED if full else EntitlementStatus.ACTIVE
    )
    # The same event again, and the sweep after it: nothing more.
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().notify(
            "charge.refunded",
            {
                "id": f"ch_sbx_{order.public_id.hex[:16]}",
                "object": "charge",
                "amount": order.amount,
                "amount_refunded": amount,
                "refunds": {"data": [{"id": booked.gateway_refund_id, "amount": amount, "reason": "x"}]},
                "payment_intent": order.gateway_payment_id or None,
                "metadata": {"order_id": str(order.public_id)},
            },
        )
    _gateway_must_not_be_called(monkeypatch)
    assert refunds_retry_pending(older_than_seconds=0, max_age_seconds=23 * 3600)["succeeded"] == []
    order.refresh_from_db()
    assert order.refunded_amount == amount and Refund.objects.count() == 1
    assert _refund_entries(order) == [f"refund:{refund.pk}"]

    _settle()
    order.refresh_from_db()
    assert (order.settled_at is not None) == (not full)
    assert _balance(AccountKind.ESCROW_HELD) == 0
    assert _balance(AccountKind.GATEWAY_CLEARING) == PRICE - amount
    assert ledger_verify().ok


def test_a_reported_refund_of_another_amount_is_a_refund_of_its_own(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    pending = _timed_out_refund(order, staff, 300, monkeypatch)
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_refund(order=Order.objects.get(pk=order.pk), amount=200)  # made in the dashboard
    pending.refresh_from_db()
    assert pending.status == RefundStatus.PENDING
    dashboard = Refund.objects.get(source="gateway")
    assert (dashboard.amount, dashboard.status) == (200, RefundStatus.SUCCEEDED)
    order.refresh_from_db()
    assert (order.refunded_amount, order.status) == (500, OrderStatus.PARTIALLY_REFUNDED)


# --- a partial refund before delivery was confirmed ----------------------------------------------------------------


def test_a_partly_refunded_order_confirmed_by_the_buyer_settles_the_rest(
    published_listing, staff, django_capture_on_commit_callbacks
):
    order, buyer = _paid(published_listing, django_capture_on_commit_callbacks)
    order_refund(order=order, amount=100, reason="one file was late", actor=staff)
    order.refresh_from_db()
    assert (order.status, order.delivered_at) == (OrderStatus.PARTIALLY_REFUNDED, None)

    with django_capture_on_commit_callbacks(execute=True):
        order_confirm_receipt(order=order, actor=buyer)
    order.refresh_from_db()
    assert order.status == OrderStatus.PARTIALLY_REFUNDED and order.delivered_at is not None
    last = order.history.order_by("pk").last()
    assert (last.from_status, last.to_status, last.reason, last.actor) == (
        OrderStatus.PARTIALLY_REFUNDED,
        OrderStatus.PARTIALLY_REFUNDED,
        "buyer confirmed receipt (after a partial refund)",
        buyer,
    )
    with pytest.raises(OrderTransitionError) as again:
        order_confirm_receipt(order=order, actor=buyer)
    assert again.value.code == "not_paid"

    _settle()
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED
    sale = JournalEntry.objects.get(idempotency_key=f"sale:{order.pk}")
    assert sum(p.amount for p in sale.postings.all() if p.account.kind == AccountKind.ESCROW_HELD) == PRICE - 100
    assert _balance(AccountKind.ESCROW_HELD) == 0
    assert _balance(AccountKind.GATEWAY_CLEARING) == PRICE - 100
    assert ledger_verify().ok


def test_a_partly_refunded_order_is_auto_confirmed_and_settles_the_rest(
    published_listing, staff, django_capture_on_commit_callbacks, settings
):
    order, _ = _paid(published_listing, django_capture_on_commit_callbacks)
    order_refund(order=order, amount=100, reason="one file was late", actor=staff)
    assert orders_auto_confirm() == 0  # not yet: the buyer still has time to complain
    later = timezone.now() + timedelta(days=settings.ESCROW_AUTO_CONFIRM_DAYS, minutes=1)
    assert orders_auto_confirm(now=later) == 1
    assert orders_auto_confirm(now=later) == 0  # run twice: once
    order.refresh_from_db()
    assert order.status == OrderStatus.PARTIALLY_REFUNDED and order.delivered_at is not None
    assert order.history.order_by("pk").last().reason == (
        f"auto-confirmed {settings.ESCROW_AUTO_CONFIRM_DAYS} days after delivery (after a partial refund)"
    )
    _settle()
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED
    assert _balance(AccountKind.ESCROW_HELD) == 0


def test_a_partly_refunded_order_already_delivered_is_not_confirmed_again(
    published_listing, staff, django_capture_on_commit_callbacks
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    order_refund(order=order, amount=100, reason="one file was late", actor=staff)
    order.refresh_from_db()
    delivered_at = order.delivered_at
    with pytest.raises(OrderTransitionError):
        order_confirm_receipt(order=order, actor=order.buyer)
    assert orders_auto_confirm(now=timezone.now() + timedelta(days=365)) == 0
    order.refresh_from_db()
    assert (order.status, order.delivered_at) == (OrderStatus.PARTIALLY_REFUNDED, delivered_at)


def test_the_order_page_offers_the_confirmation_until_a_partly_refunded_order_is_confirmed(
    client, published_listing, staff, django_capture_on_commit_callbacks
):
    order, buyer = _paid(published_listing, django_capture_on_commit_callbacks)
    order_refund(order=order, amount=100, reason="one file was late", actor=staff)
    client.force_login(buyer)
    page = reverse("exchange:order_detail", args=[order.public_id])
    confirm = reverse("exchange:order_action", args=[order.public_id, "confirm"])
    assert f'action="{confirm}"' in client.get(page).content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        client.post(confirm)
    order.refresh_from_db()
    assert order.status == OrderStatus.PARTIALLY_REFUNDED and order.delivered_at is not None
    assert f'action="{confirm}"' not in client.get(page).content.decode()


# --- a refund pending past the gateway's memory of its key is held for a person ---------------------------------


def _age(refund, hours=24):
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=hours))
    refund.refresh_from_db()
    return refund


def test_a_refund_held_for_review_is_not_sent_again_by_anyone(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _age(_timed_out_refund(order, staff, 300, monkeypatch))
    _gateway_must_not_be_called(monkeypatch)
    with pytest.raises(RefundConflict) as held:  # staff submitting the same refund again
        order_refund(order=order, amount=300, reason="late file", actor=staff, idempotency_key=KEY)
    assert held.value.code == "refund_held"
    assert "longer than the gateway keeps its idempotency key" in held.value.messages[0]
    # A sweep allowed an older age than the setting still does not send it: it reports it (the gateway can't tell).
    _lookup_fails(monkeypatch)
    swept = refunds_retry_pending(older_than_seconds=0, max_age_seconds=48 * 3600)
    assert swept["too_old"] == [refund.pk] and swept["succeeded"] == swept["failed"] == []
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, _refund_entries(order)) == (RefundStatus.PENDING, 300, [])


@pytest.mark.parametrize("found", ["re_found_1", ""], ids=["made", "not made"])
def test_staff_record_what_the_gateway_shows_for_a_held_refund(
    client, published_listing, staff, django_capture_on_commit_callbacks, monkeypatch, found
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _age(_timed_out_refund(order, staff, 300, monkeypatch))
    _gateway_must_not_be_called(monkeypatch)
    client.force_login(staff)
    url = reverse("admin:exchange_refund_changelist")
    form = client.post(url, {"action": "resolve_held_refunds", "_selected_action": [refund.pk]})
    assert "Refund found at the gateway" in form.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(
            url,
            {
                "action": "resolve_held_refunds",
                "_selected_action": [refund.pk],
                "apply": "1",
                "gateway_refund_id": found,
            },
            follow=True,
        )
    refund.refresh_from_db()
    order.refresh_from_db()
    if found:
        assert f"Refund {refund.pk} recorded as Succeeded." in page.content.decode()
        assert (refund.status, refund.gateway_refund_id, order.refunded_amount) == (RefundStatus.SUCCEEDED, found, 300)
        assert _refund_entries(order) == [f"refund:{refund.pk}"]
        assert order.status == OrderStatus.PARTIALLY_REFUNDED
    else:
        assert f"Refund {refund.pk} recorded as Failed." in page.content.decode()
        assert (refund.status, order.refunded_amount, _refund_entries(order)) == (RefundStatus.FAILED, 0, [])
    last = refund.history.order_by("pk").last()
    assert last.actor == staff and last.reason == (
        f"refund {found} found at the gateway" if found else "not made: no refund found at the gateway"
    )
    assert ledger_verify().ok


def test_staff_ask_the_gateway_now_about_held_refunds_from_the_admin(
    client, published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _age(_timed_out_refund(order, staff, 300, monkeypatch))  # the call never reached the sandbox
    _gateway_must_not_be_called(monkeypatch)
    _sandbox_kept_refund_records_for_a_month(monkeypatch)
    client.force_login(staff)
    url = reverse("admin:exchange_refund_changelist")
    with monkeypatch.context() as patched:
        _lookup_fails(patched)
        page = client.post(url, {"action": "look_up_held_refunds", "_selected_action": [refund.pk]}, follow=True)
    assert (
        f"Refund {refund.pk} is still held for review: the gateway could not tell (Held for review: the gateway "
        "could not say whether it made this refund: The sandbox did not answer.)." in page.content.decode()
    )
    refund.refresh_from_db()
    assert refund.status == RefundStatus.PENDING and refund.history.count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(url, {"action": "look_up_held_refunds", "_selected_action": [refund.pk]}, follow=True)
    assert f"Refund {refund.pk}: the gateway was asked and it is recorded as Failed." in page.content.decode()
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, _refund_entries(order)) == (RefundStatus.FAILED, 0, [])
    assert refund.history.order_by("pk").last().actor == staff
    event = AuditEvent.objects.get(action="refund_resolved")
    assert (event.actor, event.details["resolved_by"], event.details["outcome"]) == (
        staff,
        "gateway lookup",
        "not made",
    )
    page = client.post(url, {"action": "look_up_held_refunds", "_selected_action": [refund.pk]}, follow=True)
    assert f"Refund {refund.pk}: Refund {refund.pk} is Failed and not held for review" in page.content.decode()
    assert AuditEvent.objects.filter(action="refund_resolved").count() == 1


def test_the_refunds_admin_lists_the_held_ones(
    client, published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    held = _age(_timed_out_refund(order, staff, 300, monkeypatch))
    other = _delivered(published_listing, django_capture_on_commit_callbacks)
    fresh = _timed_out_refund(other, staff, 100, monkeypatch, key="other-key")  # recent: the sweep sends it again
    client.force_login(staff)
    page = client.get(reverse("admin:exchange_refund_changelist"), {"held": "yes"})
    assert page.status_code == 200
    assert [row.pk for row in page.context["cl"].result_list] == [held.pk]
    assert fresh.status == RefundStatus.PENDING


def test_staff_cannot_record_a_refund_just_past_its_window_or_with_a_gateway_refund_already_booked(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _age(_timed_out_refund(order, staff, 300, monkeypatch), hours=23)
    Refund.objects.filter(pk=refund.pk).update(created_at=refund.created_at - timedelta(seconds=30))
    with pytest.raises(RefundConflict, match="may have been sent to the gateway moments ago"):
        refund_resolve(refund_pk=refund.pk, gateway_refund_id="", actor=staff)  # a call may still be under way
    _age(refund)
    booked = order_refund(
        order=_delivered(published_listing, django_capture_on_commit_callbacks), amount=100, reason="x"
    )
    with pytest.raises(RefundConflict, match=f"already booked as refund {booked.pk}"):
        refund_resolve(refund_pk=refund.pk, gateway_refund_id=booked.gateway_refund_id, actor=staff)
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, refund.history.count()) == (RefundStatus.PENDING, 300, 1)
    assert not AuditEvent.objects.filter(action="refund_resolved").exists()


def test_a_refund_not_held_cannot_be_recorded_by_hand_and_changes_nothing(
    client, published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _timed_out_refund(order, staff, 300, monkeypatch)  # pending, but recent: the sweep sends it
    with pytest.raises(RefundNotHeld):
        refund_resolve(refund_pk=refund.pk, gateway_refund_id="re_x", actor=staff)
    client.force_login(staff)
    page = client.post(
        reverse("admin:exchange_refund_changelist"),
        {"action": "resolve_held_refunds", "_selected_action": [refund.pk], "apply": "1", "gateway_refund_id": ""},
        follow=True,
    )
    assert f"Refund {refund.pk}: Refund {refund.pk} is Pending and not held for review" in page.content.decode()
    refund.refresh_from_db()
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, refund.history.count()) == (RefundStatus.PENDING, 300, 1)


# --- looking a held refund up: only once any call under way has ended; never dropping what the gateway made -------


def test_a_held_refund_is_looked_up_only_once_a_call_started_inside_the_window_has_ended(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _age(_timed_out_refund(order, staff, 300, monkeypatch), hours=23)
    Refund.objects.filter(pk=refund.pk).update(created_at=refund.created_at - timedelta(seconds=30))
    _gateway_must_not_be_called(monkeypatch)
    _sandbox_kept_refund_records_for_a_month(monkeypatch)
    # Just past the window: a retry that started inside it may still be waiting for the gateway's answer.
    assert refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600) == {
        **SWEPT_NOTHING,
        "too_old": [refund.pk],
    }
    refund.refresh_from_db()
    assert (refund.status, refund.error) == (RefundStatus.PENDING, "Stripe: connection timed out")
    # Past the longest call (every network retry timing out): looked up, and none was made.
    later = timezone.now() + timedelta(minutes=5)
    assert refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600, now=later) == {
        **SWEPT_NOTHING,
        "not_at_gateway": [refund.pk],
    }


def test_a_refund_the_gateway_made_is_booked_though_staff_recorded_it_as_not_made_meanwhile(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    made = SandboxGateway.refund_create

    def made_then_timed_out(self, **kwargs):
        made(self, **kwargs)
        raise GatewayError("Stripe: connection timed out", transient=True)

    monkeypatch.setattr(SandboxGateway, "refund_create", made_then_timed_out)
    with pytest.raises(GatewayError):
        order_refund(order=order, amount=300, reason="late file", actor=staff, idempotency_key=KEY)
    refund = _age(Refund.objects.get(order=order))
    looked_up = SandboxGateway.refund_lookup

    def staff_record_not_made_meanwhile(self, **kwargs):
        found = looked_up(self, **kwargs)
        refund_resolve(refund_pk=refund.pk, gateway_refund_id="", actor=staff)  # while the sweep asked
        return found

    monkeypatch.setattr(SandboxGateway, "refund_lookup", staff_record_not_made_meanwhile)
    with django_capture_on_commit_callbacks(execute=True):
        swept = refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600)
    refund.refresh_from_db()
    order.refresh_from_db()
    assert swept["not_at_gateway"] == [refund.pk] and refund.status == RefundStatus.FAILED
    # The money did go back: the gateway's refund is booked as its own, once, and the order refunded by it.
    booked = Refund.objects.get(source="gateway")
    assert (booked.status, booked.gateway_refund_id, booked.amount) == (
        RefundStatus.SUCCEEDED,
        _sandbox_refund_id(KEY),
        300,
    )
    assert (order.refunded_amount, _refund_entries(order)) == (300, [f"refund:{booked.pk}"])
    assert ledger_verify().ok


@pytest.mark.django_db(transaction=True)
def test_staff_recording_a_held_refund_waits_for_the_sweeps_booking_instead_of_deadlocking(
    published_listing, staff, django_capture_on_commit_callbacks, monkeypatch
):
    order = _delivered(published_listing, django_capture_on_commit_callbacks)
    refund = _age(_timed_out_refund(order, staff, 300, monkeypatch))
    sweep_holds_the_order, errors = threading.Event(), []

    def sweep_booking():  # as _refund_book_by_lookup books: the order's row, then the refund's
        try:
            with transaction.atomic():
                Order.objects.select_for_update().get(pk=order.pk)
                sweep_holds_the_order.set()
                time.sleep(0.5)  # staff's request arrives and waits
                Refund.objects.select_for_update().get(pk=refund.pk)
        except OperationalError as exc:
            errors.append(("sweep", str(exc)))
        finally:
            connection.close()

    def staff_records_not_made():
        sweep_holds_the_order.wait(5)
        try:
            refund_resolve(refund_pk=refund.pk, gateway_refund_id="", actor=staff)
        except OperationalError as exc:
            errors.append(("staff", str(exc)))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep_booking), threading.Thread(target=staff_records_not_made)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    refund.refresh_from_db()
    assert refund.status == RefundStatus.FAILED
