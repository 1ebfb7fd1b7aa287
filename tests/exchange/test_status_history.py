"""Refunds, disputes, subscriptions and access requests change status only through ``transitions.status_move``:
each move is allowed by the machine's table and leaves one history row (reason, actor); a refused move saves
nothing. Runs, batches and payouts are covered in test_settlement_batches."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from exchange.choices import (
    AccessRequestStatus,
    DisputeStatus,
    OrderStatus,
    PaymentEventStatus,
    RefundStatus,
    SubscriptionStatus,
)
from exchange.gateways import GatewayError
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import AccessRequest, Dispute, Entitlement, JournalEntry, PaymentEvent, Refund, Subscription
from exchange.services.access import access_request_create, access_request_decide, access_requests_expire
from exchange.services.payments import _event_status, _record_failure
from exchange.services.refunds import order_refund
from exchange.services.transitions import MACHINES, TransitionError, status_move, statuses_move
from tests.exchange.helpers import buy_plan
from tests.factories import UserFactory, make_listing

pytestmark = pytest.mark.django_db
SCENARIO = "Ridership forecasting for the metro line extension, internal research only."


def _moves(obj):
    return list(obj.history.order_by("pk").values_list("from_status", "to_status"))


@pytest.fixture
def listing(merchant, merchant_user, staff, categories):
    return make_listing(
        merchant=merchant,
        owner=merchant_user,
        reviewer=staff,
        extra_plans=({"kind": "subscription", "amount": 3000, "interval": "month"},),
    )


def _paid(client, buyer, listing, capture, kind="one_time"):
    order = buy_plan(client, buyer, listing, capture, kind)
    assert order.status == OrderStatus.PAID
    return order


def test_every_machine_kept_here_has_a_table_history_and_link():
    for model, machine in MACHINES.items():
        statuses = {value for value, _ in model._meta.get_field("status").choices}
        assert set(machine.table) <= statuses and set().union(*machine.table.values()) <= statuses, model
        assert machine.history._meta.get_field(machine.link).related_model is model


def test_a_refund_is_requested_then_succeeds_with_who_and_why(
    client, buyer, staff, listing, django_capture_on_commit_callbacks
):
    order = _paid(client, buyer, listing, django_capture_on_commit_callbacks)
    refund = order_refund(order=order, amount=234, reason="one file was late", actor=staff)
    assert refund.status == RefundStatus.SUCCEEDED
    history = list(refund.history.order_by("pk"))
    assert _moves(refund) == [("", "pending"), ("pending", "succeeded")]
    assert history[0].actor == staff and history[0].reason == "requested (admin): one file was late"
    assert history[1].reason == f"gateway refund {refund.gateway_refund_id}"


def test_a_refund_the_gateway_refuses_fails_once_and_frees_the_amount(
    client, buyer, staff, listing, django_capture_on_commit_callbacks, monkeypatch
):
    order = _paid(client, buyer, listing, django_capture_on_commit_callbacks)

    def refuse(self, **kwargs):
        raise GatewayError("The charge was already refunded in the dashboard.", transient=False)

    monkeypatch.setattr(SandboxGateway, "refund_create", refuse)
    refund = order_refund(order=order, amount=500, reason="wrong region", actor=staff)
    order.refresh_from_db()
    assert (refund.status, order.refunded_amount, order.status) == (RefundStatus.FAILED, 0, OrderStatus.PAID)
    assert _moves(refund) == [("", "pending"), ("pending", "failed")]
    assert refund.history.last().reason == "gateway refused: The charge was already refunded in the dashboard."
    assert not JournalEntry.objects.filter(idempotency_key=f"refund:{refund.pk}").exists()


def test_a_refund_reported_by_the_gateway_has_its_history(client, buyer, listing, django_capture_on_commit_callbacks):
    order = _paid(client, buyer, listing, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_refund(order=order, amount=300)
    refund = Refund.objects.get()
    assert (refund.source, refund.status) == ("gateway", RefundStatus.SUCCEEDED)
    assert _moves(refund) == [("", "pending"), ("pending", "succeeded")]
    assert refund.history.first().reason == "reported by the gateway: requested_by_customer"


@pytest.mark.parametrize("won", [True, False])
def test_a_dispute_opens_and_closes_with_its_history(client, buyer, listing, django_capture_on_commit_callbacks, won):
    order = _paid(client, buyer, listing, django_capture_on_commit_callbacks)
    gateway = SandboxGateway()
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(order=order)
    dispute = Dispute.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(
            order=order, status="won" if won else "lost", closed=True, dispute_id=dispute.gateway_dispute_id
        )
        # The same closing again (a redelivered event) moves nothing.
        gateway.emit_dispute(
            order=order, status="won" if won else "lost", closed=True, dispute_id=dispute.gateway_dispute_id
        )
    dispute.refresh_from_db()
    assert dispute.status == (DisputeStatus.WON if won else DisputeStatus.LOST)
    assert _moves(dispute) == [("", "open"), ("open", dispute.status)]
    assert dispute.history.last().reason == f"closed: {'won' if won else 'lost'}"


def test_a_subscription_lapses_recovers_and_is_cancelled_with_its_history(
    client, buyer, listing, django_capture_on_commit_callbacks
):
    _paid(client, buyer, listing, django_capture_on_commit_callbacks, kind="subscription")
    subscription = Subscription.objects.get()
    gateway = SandboxGateway()
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_renewal(subscription=subscription)  # active stays active: no move
        gateway.emit_renewal_failed(subscription=subscription)
        gateway.emit_renewal(subscription=subscription)  # paid in the grace period
        gateway.emit_subscription_cancelled(subscription=subscription)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELLED
    assert _moves(subscription) == [
        ("", "active"),
        ("active", "past_due"),
        ("past_due", "active"),
        ("active", "cancelled"),
    ]
    reasons = list(subscription.history.order_by("pk").values_list("reason", flat=True))
    assert reasons[0].startswith(f"subscribed: order {subscription.order.reference} paid (evt_sbx_")
    assert reasons[1].startswith("renewal failed (evt_sbx_")
    assert reasons[2].startswith("invoice in_sbx_") and reasons[2].endswith(" paid")
    assert reasons[3].startswith("cancelled at the gateway (evt_sbx_")


def test_a_failed_renewal_after_the_cancellation_changes_nothing(
    client, buyer, listing, django_capture_on_commit_callbacks
):
    _paid(client, buyer, listing, django_capture_on_commit_callbacks, kind="subscription")
    subscription = Subscription.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_subscription_cancelled(subscription=subscription)
    entitlement_end = Entitlement.objects.get().valid_until
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_renewal_failed(subscription=subscription)  # arrives late, out of order
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELLED
    assert _moves(subscription) == [("", "active"), ("active", "cancelled")]
    assert Entitlement.objects.get().valid_until == entitlement_end


def test_access_requests_record_who_decided_and_the_sweep_records_expiry(
    buyer, merchant_user, merchant, staff, categories, settings
):
    other_buyer = UserFactory(email="second-buyer@example.com")
    gated = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, requires_access_request=True)
    approved = access_request_create(listing=gated, buyer=buyer, organisation="Metro Lab", use_scenario=SCENARIO)
    access_request_decide(request=approved, actor=merchant_user, approve=True)
    rejected = access_request_create(listing=gated, buyer=other_buyer, organisation="Metro Lab", use_scenario=SCENARIO)
    access_request_decide(request=rejected, actor=merchant_user, approve=False, note="Resale is not allowed.")
    assert _moves(approved) == [("", "pending"), ("pending", "approved")]
    assert list(approved.history.values_list("actor", flat=True)) == [buyer.pk, merchant_user.pk]
    assert rejected.history.last().reason == "rejected: Resale is not allowed."

    late = access_request_create(listing=gated, buyer=staff, organisation="Ops", use_scenario=SCENARIO)
    assert access_requests_expire(now=timezone.now() + timedelta(days=settings.ACCESS_REQUEST_TTL_DAYS + 1)) == 1
    assert _moves(late) == [("", "pending"), ("pending", "expired")]
    assert late.history.last().reason == "no decision before it expired"
    assert access_requests_expire(now=timezone.now() + timedelta(days=settings.ACCESS_REQUEST_TTL_DAYS + 1)) == 0


def test_deciding_an_expired_request_records_the_expiry_and_refuses(
    buyer, merchant_user, merchant, staff, categories, settings
):
    gated = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, requires_access_request=True)
    request = access_request_create(listing=gated, buyer=buyer, organisation="Metro Lab", use_scenario=SCENARIO)
    AccessRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    with pytest.raises(ValidationError) as refused:
        access_request_decide(request=request, actor=merchant_user, approve=True)
    assert refused.value.code == "expired"
    request.refresh_from_db()
    assert (request.status, request.decided_by) == (AccessRequestStatus.EXPIRED, None)
    assert _moves(request) == [("", "pending"), ("pending", "expired")]


def test_a_move_the_table_does_not_allow_is_refused_and_saves_nothing(
    client, buyer, staff, listing, django_capture_on_commit_callbacks
):
    order = _paid(client, buyer, listing, django_capture_on_commit_callbacks)
    refund = order_refund(order=order, amount=100, reason="late file", actor=staff)
    with pytest.raises(TransitionError, match=f"Refund {refund.pk} is succeeded; it cannot become failed."):
        status_move(refund, RefundStatus.FAILED, reason="by hand")
    with pytest.raises(TransitionError, match="it cannot become pending"):
        statuses_move([Refund.objects.get(pk=refund.pk)], RefundStatus.PENDING, reason="by hand")
    refund.refresh_from_db()
    assert refund.status == RefundStatus.SUCCEEDED
    assert _moves(refund) == [("", "pending"), ("pending", "succeeded")]


def test_the_admin_pages_show_each_history(
    client, buyer, staff, listing, django_capture_on_commit_callbacks, merchant_user, merchant
):
    order = _paid(client, buyer, listing, django_capture_on_commit_callbacks)
    refund = order_refund(order=order, amount=100, reason="late file", actor=staff)
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_dispute(order=order)
    gated = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, requires_access_request=True)
    request = access_request_create(listing=gated, buyer=buyer, organisation="Metro Lab", use_scenario=SCENARIO)
    client.force_login(staff)
    for name, obj, reason in (
        ("refund", refund, "requested (admin): late file"),
        ("dispute", Dispute.objects.get(), "opened by the buyer&#x27;s bank"),
        ("accessrequest", request, "requested by the buyer"),
    ):
        page = client.get(reverse(f"admin:exchange_{name}_change", args=[obj.pk]))
        assert page.status_code == 200
        assert reason in page.content.decode(), name


def test_a_payment_event_moves_only_as_its_table_allows(client, buyer, listing, django_capture_on_commit_callbacks):
    _paid(client, buyer, listing, django_capture_on_commit_callbacks)
    event = PaymentEvent.objects.get(type="checkout.session.completed")
    assert (event.status, event.attempts) == (PaymentEventStatus.PROCESSED, 1)
    with pytest.raises(ValueError, match="cannot go from processed to failed"):
        _event_status(event, PaymentEventStatus.FAILED, fields=())
    event.refresh_from_db()
    assert event.status == PaymentEventStatus.PROCESSED


def test_a_failed_payment_event_failing_again_stays_failed_and_counts_the_attempt(
    client, buyer, listing, django_capture_on_commit_callbacks
):
    _paid(client, buyer, listing, django_capture_on_commit_callbacks)
    event = PaymentEvent.objects.get(type="checkout.session.completed")
    PaymentEvent.objects.filter(pk=event.pk).update(status=PaymentEventStatus.RECEIVED)  # as if never applied
    _record_failure(event.pk, "the order is gone", permanent=True)
    event.refresh_from_db()
    assert (event.status, event.attempts, event.error) == (PaymentEventStatus.FAILED, 2, "the order is gone")
    _record_failure(event.pk, "still gone", permanent=True)  # a redelivered task fails again
    event.refresh_from_db()
    assert (event.status, event.attempts, event.error) == (PaymentEventStatus.FAILED, 3, "still gone")
    with pytest.raises(ValueError, match="cannot go from failed to failed"):
        _event_status(event, PaymentEventStatus.FAILED, fields=())
