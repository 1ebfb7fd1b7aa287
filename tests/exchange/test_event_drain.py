"""Gateway events are applied by a drain task scheduled once per burst, with the beat sweep as backstop."""

from datetime import timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.utils import timezone

from exchange import tasks
from exchange.choices import OrderStatus, PaymentEventStatus
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import Order, PaymentEvent
from exchange.services import payments
from exchange.services.orders import order_checkout_start, order_create
from tests.factories import UserFactory, make_listing

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending_orders(merchant, merchant_user, staff):
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff)
    orders = []
    for n in range(5):
        order, _ = order_create(buyer=UserFactory(), listing=listing, idempotency_key=f"k{n}")
        order_checkout_start(order=order)
        order.refresh_from_db()
        orders.append(order)
    return orders


def _completed(order):
    gateway = SandboxGateway()
    body, signature = gateway.session_resolve(session_id=order.gateway_session_id, approve=True)
    return body, signature


def test_a_burst_schedules_one_drain_that_applies_every_event(
    pending_orders, django_capture_on_commit_callbacks, monkeypatch
):
    scheduled = []
    # The broker holds the message until a worker is free: record it instead of running it inline.
    monkeypatch.setattr(tasks.payment_events_drain, "delay", lambda: scheduled.append(1))
    signed = [_completed(order) for order in pending_orders]
    with django_capture_on_commit_callbacks(execute=True):
        for body, signature in signed:
            with transaction.atomic():
                payments.webhook_ingest(gateway_name="sandbox", body=body, signature_header=signature)
    assert len(scheduled) == 1  # five events, one message
    assert PaymentEvent.objects.filter(status=PaymentEventStatus.RECEIVED).count() == 5
    assert payments.payment_events_drain() == 5
    assert PaymentEvent.objects.filter(status=PaymentEventStatus.PROCESSED).count() == 5
    assert Order.objects.filter(status=OrderStatus.PAID).count() == 5


def test_an_event_that_is_not_ready_waits_without_looping(pending_orders):
    subscription_invoice = {
        "id": "evt_early_invoice",
        "type": "invoice.paid",
        "data": {"object": {"id": "in_1", "object": "invoice", "subscription": "sub_unknown"}},
    }
    import json

    from exchange.gateways.signing import sign_payload

    body = json.dumps(subscription_invoice).encode()
    payments.webhook_ingest(
        gateway_name="sandbox", body=body, signature_header=sign_payload(body=body, secret=SandboxGateway().secret)
    )
    assert payments.payment_events_drain() == 0
    event = PaymentEvent.objects.get()
    assert (event.status, event.attempts) == (PaymentEventStatus.RECEIVED, 1)
    assert event.error.startswith("waiting: Subscription 'sub_unknown'")


def test_the_sweep_drains_events_left_behind(pending_orders, monkeypatch):
    body, signature = _completed(pending_orders[0])
    monkeypatch.setattr(payments, "payment_events_drain_schedule", lambda: None)  # the drain message was lost
    payments.webhook_ingest(gateway_name="sandbox", body=body, signature_header=signature)
    assert tasks.payment_events_sweep() == 0  # too recent to call stuck
    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        assert tasks.payment_events_sweep() == 1
    pending_orders[0].refresh_from_db()
    assert pending_orders[0].status == OrderStatus.PAID


def test_the_drain_tries_a_waiting_event_once_and_goes_on_to_the_next(pending_orders):
    import json

    from exchange.gateways.signing import sign_payload

    waiting = {"id": "evt_wait", "type": "invoice.paid", "data": {"object": {"object": "invoice", "subscription": "x"}}}
    body = json.dumps(waiting).encode()
    payments.webhook_ingest(
        gateway_name="sandbox", body=body, signature_header=sign_payload(body=body, secret=SandboxGateway().secret)
    )
    body, signature = _completed(pending_orders[0])
    payments.webhook_ingest(gateway_name="sandbox", body=body, signature_header=signature)
    assert payments.payment_events_drain() == 1
    assert PaymentEvent.objects.get(event_id="evt_wait").attempts == 1
    pending_orders[0].refresh_from_db()
    assert pending_orders[0].status == OrderStatus.PAID


def test_the_delayed_sandbox_answer_is_safe_to_run_twice(pending_orders, django_capture_on_commit_callbacks):
    session_id = pending_orders[0].gateway_session_id
    with django_capture_on_commit_callbacks(execute=True):
        first = tasks.sandbox_checkout_resolve(session_id, True)
        second = tasks.sandbox_checkout_resolve(session_id, True)
    assert first.endswith("approved")
    assert second == "This checkout session is already closed."
    assert PaymentEvent.objects.count() == 1
    pending_orders[0].refresh_from_db()
    assert pending_orders[0].status == OrderStatus.PAID


def test_a_backlog_asks_once_for_helper_drains_that_share_it(pending_orders, settings, monkeypatch):
    from django.core.cache import cache

    settings.PAYMENT_EVENT_DRAIN_HELPERS = 1
    monkeypatch.setattr(payments, "DRAIN_BATCH", 2)  # five events: a full first batch is a backlog
    helpers = []
    monkeypatch.setattr(tasks.payment_events_drain, "delay", lambda **kwargs: helpers.append(kwargs))
    monkeypatch.setattr(payments, "payment_events_drain_schedule", lambda: None)
    for order in pending_orders:
        body, signature = _completed(order)
        payments.webhook_ingest(gateway_name="sandbox", body=body, signature_header=signature)
    cache.delete(payments.DRAIN_HELPERS_KEY)
    assert payments.payment_events_drain() == 5
    assert helpers == [{"helper": True}]
    # While the helper is on its way, another drain finding a backlog does not ask again.
    import json

    from exchange.gateways.signing import sign_payload

    for n in range(2):
        body = json.dumps({"id": f"evt_other_{n}", "type": "customer.created", "data": {"object": {}}}).encode()
        payments.webhook_ingest(
            gateway_name="sandbox", body=body, signature_header=sign_payload(body=body, secret=SandboxGateway().secret)
        )
    assert payments.payment_events_drain() == 2  # two events of a type not handled: recorded as ignored
    assert (
        list(PaymentEvent.objects.filter(event_id__startswith="evt_other_").values_list("outcome", flat=True))
        == ["type customer.created not handled"] * 2
    )
    assert helpers == [{"helper": True}]
    # The helper shares the backlog without asking for help, then lets the next backlog ask.
    assert payments.payment_events_drain(helper=True) == 0
    assert helpers == [{"helper": True}]
    assert cache.get(payments.DRAIN_HELPERS_KEY) is None
    assert Order.objects.filter(status=OrderStatus.PAID).count() == 5


def test_an_event_stored_by_the_release_before_outcomes_were_kept_gets_an_empty_outcome():
    """Migration 0025 runs while the previous release still serves: its insert names no outcome column."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO exchange_paymentevent (gateway, event_id, type, payload, status, error, attempts, received_at)"
            " VALUES ('sandbox', 'evt_old_release', 'customer.created', '{}', 'received', '', 0, now())"
        )
    assert PaymentEvent.objects.get(event_id="evt_old_release").outcome == ""
