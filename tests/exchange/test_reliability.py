"""Reliability of the trade under real concurrency: real PostgreSQL, real threads, no mocks of the database.

Each test commits for real (``transaction=True``) so that threads, each on its
own database connection, see each other's rows and contend for the same row
locks and unique indexes the services rely on. Celery runs eagerly here and
``on_commit`` callbacks fire on the real commit, so an event POSTed to the
webhook is also processed inside the request thread that stored it.
"""

import json
import threading
import uuid
from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client

from exchange.choices import JournalKind, OrderStatus, PaymentEventStatus
from exchange.gateways.signing import sign_payload
from exchange.models import (
    Delivery,
    Entitlement,
    JournalEntry,
    LedgerBlock,
    Order,
    OrderStatusHistory,
    PaymentEvent,
    SandboxCheckoutSession,
)
from exchange.services import payments
from exchange.services.ledger import ledger_verify
from exchange.services.orders import order_checkout_start, order_create
from tests.exchange.helpers import buy, checkout_completed_event, post_webhook
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 5
JOIN_TIMEOUT = 60


def run_concurrently(target: Callable[[int], object], count: int = THREADS) -> tuple[list, list[BaseException]]:
    """Call ``target(i)`` in ``count`` threads released together by a barrier.

    Returns (results by thread index, exceptions raised). Every thread closes
    its own database connection, so the test database can be flushed after.
    """
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = target(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,), name=f"reliability-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck (deadlock or lock wait?)"
    return results, errors


def _pending_order(buyer, listing) -> Order:
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
    order_checkout_start(order=order)  # opens the sandbox session the events refer to
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING_PAYMENT and order.gateway_session_id
    return order


@pytest.fixture
def pending_order(buyer, published_listing) -> Order:
    return _pending_order(buyer, published_listing)


def _store_event(event: dict) -> PaymentEvent:
    """Store an event as the webhook would, without scheduling its processing."""
    return PaymentEvent.objects.create(gateway="sandbox", event_id=event["id"], type=event["type"], payload=event)


def _failed_event(order: Order) -> dict:
    event = checkout_completed_event(order)
    event["type"] = "checkout.session.async_payment_failed"
    event["data"]["object"]["payment_status"] = "unpaid"
    return event


def _assert_paid_once(order: Order) -> None:
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID and order.paid_at is not None
    assert OrderStatusHistory.objects.filter(order=order, to_status=OrderStatus.PAID).count() == 1
    assert Entitlement.objects.filter(order=order).count() == 1
    assert JournalEntry.objects.filter(order=order, kind=JournalKind.PAYMENT).count() == 1
    assert Delivery.objects.filter(entitlement__order=order).count() == 1
    assert ledger_verify().ok


# 1 -------------------------------------------------------------------------


def test_same_event_posted_five_times_concurrently_is_stored_and_applied_once(pending_order, settings):
    event = checkout_completed_event(pending_order)
    raw = json.dumps(event).encode()
    header = sign_payload(body=raw, secret=settings.SANDBOX_WEBHOOK_SECRET)
    clients = [Client() for _ in range(THREADS)]

    responses, errors = run_concurrently(lambda i: post_webhook(clients[i], {}, secret="", body=raw, header=header))

    assert errors == []
    assert [r.status_code for r in responses] == [200] * THREADS
    assert {r.json()["id"] for r in responses} == {event["id"]}
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * (THREADS - 1)
    stored = PaymentEvent.objects.get()
    assert (stored.event_id, stored.status, stored.attempts) == (event["id"], PaymentEventStatus.PROCESSED, 1)
    assert Order.objects.get().status == OrderStatus.PAID
    assert Entitlement.objects.count() == 1
    assert JournalEntry.objects.filter(kind=JournalKind.PAYMENT).count() == 1
    _assert_paid_once(pending_order)


# 2 -------------------------------------------------------------------------


def test_same_event_processed_by_five_threads_is_applied_once(pending_order):
    stored = _store_event(checkout_completed_event(pending_order))

    outcomes, errors = run_concurrently(lambda i: payments.payment_event_process(event_pk=stored.pk))

    assert errors == []
    assert sorted(outcomes) == ["already processed"] * (THREADS - 1) + ["order paid, entitlement granted"]
    stored.refresh_from_db()
    assert (stored.status, stored.attempts, stored.error) == (PaymentEventStatus.PROCESSED, 1, "")
    _assert_paid_once(pending_order)


def test_distinct_paid_events_for_one_order_processed_concurrently_pay_once(pending_order):
    """Stripe may send completed and async_payment_succeeded (distinct ids) at once; the order lock decides."""
    events = []
    for index in range(THREADS):
        event = checkout_completed_event(pending_order)
        if index % 2:
            event["type"] = "checkout.session.async_payment_succeeded"
        events.append(_store_event(event))

    outcomes, errors = run_concurrently(lambda i: payments.payment_event_process(event_pk=events[i].pk))

    assert errors == []
    assert sorted(outcomes) == ["order already paid"] * (THREADS - 1) + ["order paid, entitlement granted"]
    assert set(PaymentEvent.objects.values_list("status", flat=True)) == {PaymentEventStatus.PROCESSED}
    _assert_paid_once(pending_order)


def test_different_orders_paid_concurrently_keep_the_ledger_chain_intact(published_listing):
    """Ledger writers from parallel payments append their blocks one after another, even with no chain head yet."""
    orders = [_pending_order(UserFactory(), published_listing) for _ in range(THREADS)]
    events = [_store_event(checkout_completed_event(order)) for order in orders]

    outcomes, errors = run_concurrently(lambda i: payments.payment_event_process(event_pk=events[i].pk))

    assert errors == []
    assert outcomes == ["order paid, entitlement granted"] * THREADS
    sequences = list(JournalEntry.objects.values_list("sequence", flat=True))
    assert len(set(sequences)) == THREADS  # unique (a PostgreSQL sequence: increasing, not gap-free)
    assert sorted(LedgerBlock.objects.values_list("sequence", flat=True)) == list(range(1, THREADS + 1))
    assert Entitlement.objects.count() == THREADS
    result = ledger_verify()
    assert result.ok and result.entries_checked == THREADS, result.message


# 3 -------------------------------------------------------------------------


def test_failure_between_entitlement_and_ledger_rolls_back_everything_then_retry_applies_once(
    pending_order, monkeypatch
):
    real_journal_post = payments.journal_post
    calls = []

    def journal_post_failing_once(**kwargs):
        calls.append(kwargs["idempotency_key"])
        if len(calls) == 1:
            raise RuntimeError("ledger database went away")
        return real_journal_post(**kwargs)

    monkeypatch.setattr(payments, "journal_post", journal_post_failing_once)
    stored = _store_event(checkout_completed_event(pending_order))

    with pytest.raises(RuntimeError, match="ledger database went away"):
        payments.payment_event_process(event_pk=stored.pk)

    # Nothing of the half-applied event survived: not the status, not the entitlement granted before the failure.
    pending_order.refresh_from_db()
    assert pending_order.status == OrderStatus.PENDING_PAYMENT and pending_order.paid_at is None
    assert pending_order.gateway_payment_id == ""
    assert list(OrderStatusHistory.objects.filter(order=pending_order).values_list("to_status", flat=True)) == [
        OrderStatus.PENDING_PAYMENT
    ]
    assert Entitlement.objects.count() == 0
    assert JournalEntry.objects.count() == 0
    assert Delivery.objects.count() == 0
    stored.refresh_from_db()
    assert (stored.status, stored.attempts, stored.processed_at) == (PaymentEventStatus.RECEIVED, 1, None)
    assert stored.error == "RuntimeError: ledger database went away"

    assert payments.payment_event_process(event_pk=stored.pk) == "order paid, entitlement granted"
    assert payments.payment_event_process(event_pk=stored.pk) == "already processed"

    assert calls == [f"payment:{pending_order.pk}"] * 2
    stored.refresh_from_db()
    assert (stored.status, stored.attempts, stored.error) == (PaymentEventStatus.PROCESSED, 2, "")
    _assert_paid_once(pending_order)


# 4 -------------------------------------------------------------------------


def test_failed_event_after_payment_changes_nothing(client, pending_order, settings):
    secret = settings.SANDBOX_WEBHOOK_SECRET
    assert post_webhook(client, checkout_completed_event(pending_order), secret=secret).status_code == 200
    _assert_paid_once(pending_order)

    late = _failed_event(pending_order)
    response = post_webhook(client, late, secret=secret)

    assert response.status_code == 200 and response.json()["duplicate"] is False
    assert PaymentEvent.objects.get(event_id=late["id"]).status == PaymentEventStatus.PROCESSED
    assert not OrderStatusHistory.objects.filter(to_status=OrderStatus.DECLINED).exists()
    _assert_paid_once(pending_order)


def test_second_completed_event_with_another_id_for_a_paid_order_changes_nothing(client, pending_order, settings):
    secret = settings.SANDBOX_WEBHOOK_SECRET
    first, second = checkout_completed_event(pending_order), checkout_completed_event(pending_order)
    assert first["id"] != second["id"]
    assert post_webhook(client, first, secret=secret).status_code == 200

    response = post_webhook(client, second, secret=secret)

    assert response.status_code == 200 and response.json()["duplicate"] is False
    assert PaymentEvent.objects.count() == 2
    assert set(PaymentEvent.objects.values_list("status", flat=True)) == {PaymentEventStatus.PROCESSED}
    assert payments.payment_event_process(event_pk=PaymentEvent.objects.get(event_id=second["id"]).pk) == (
        "already processed"
    )
    assert Entitlement.objects.count() == 1
    assert JournalEntry.objects.filter(kind=JournalKind.PAYMENT).count() == 1
    _assert_paid_once(pending_order)


# 5 -------------------------------------------------------------------------


def test_same_checkout_form_submitted_twice_concurrently_makes_one_order_and_one_session(buyer, published_listing):
    token = str(uuid.uuid4())
    clients = [Client(), Client()]
    for each in clients:
        each.force_login(buyer)  # two browser tabs of the same buyer

    responses, errors = run_concurrently(lambda i: buy(clients[i], published_listing, token=token), count=2)

    assert errors == []
    order = Order.objects.get()
    assert (order.idempotency_key, order.buyer_id, order.status) == (token, buyer.pk, OrderStatus.PENDING_PAYMENT)
    assert SandboxCheckoutSession.objects.count() == 1
    assert SandboxCheckoutSession.objects.get().pk == order.gateway_session_id
    assert OrderStatusHistory.objects.count() == 1
    assert [r.status_code for r in responses] == [302, 302]
    assert responses[0].url == responses[1].url == order.checkout_url
