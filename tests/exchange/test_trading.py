"""Checkout for every plan kind, subscriptions, refunds, disputes and escrow — through the sandbox's
signed events and the same processing pipeline a real gateway uses (tasks eager, on commit)."""

import re
import threading
import time
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from exchange.choices import (
    EntitlementStatus,
    JournalKind,
    OrderStatus,
    RefundStatus,
    SubscriptionStatus,
)
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import Delivery, Dispute, Entitlement, JournalEntry, Order, Posting, Refund, Subscription
from exchange.services.downloads import download_link_make
from exchange.services.entitlements import entitlements_expire
from exchange.services.ledger import ledger_verify
from exchange.services.orders import order_checkout_start, order_create, orders_auto_confirm
from exchange.services.refunds import RefundConflict, order_refund
from exchange.services.settlement import settlement_run_execute, settlement_run_start
from tests.exchange.helpers import approve_in_sandbox, buy, library_links, read_stream
from tests.factories import make_listing

pytestmark = pytest.mark.django_db

PLANS = (
    {"kind": "free", "amount": 0, "name": "Sample"},
    {"kind": "subscription", "amount": 3000, "interval": "month"},
    {"kind": "metered", "amount": 5, "metered_unit": "call", "free_units_per_month": 100},
)


@pytest.fixture
def listing(merchant, merchant_user, staff, categories):
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, extra_plans=PLANS)


def _plan(listing, kind):
    return listing.plans.get(kind=kind, is_active=True)


def _ledger_ok():
    assert ledger_verify().ok
    assert sum(Posting.objects.values_list("amount", flat=True)) == 0


def _pay(client, buyer, listing, capture, kind="one_time"):
    client.force_login(buyer)
    plan = _plan(listing, kind)
    with capture(execute=True):
        response = client.post(
            reverse("exchange:order_buy", args=[listing.slug]),
            {"accept_licence": "1", "token": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "plan": plan.pk},
        )
        order = Order.objects.get(plan=plan)
        if order.status == OrderStatus.PENDING_PAYMENT:
            approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    return order, response


def test_free_plan_grants_access_without_a_gateway(client, buyer, listing, django_capture_on_commit_callbacks):
    order, response = _pay(client, buyer, listing, django_capture_on_commit_callbacks, kind="free")
    assert response.url == reverse("exchange:order_detail", args=[order.public_id])
    assert (order.status, order.amount, order.gateway) == (OrderStatus.PAID, 0, "none")
    assert Entitlement.objects.get(order=order).valid_until is None
    assert Delivery.objects.filter(entitlement__order=order).count() == 1
    assert JournalEntry.objects.count() == 0
    link = library_links(client.get(reverse("exchange:library")).content.decode())[0]
    assert read_stream(client.get(link))
    run = settlement_run_start(trigger="test")
    settlement_run_execute(run_pk=run.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED
    assert JournalEntry.objects.count() == 0  # nothing moved, nothing booked


def test_metered_plan_collects_a_payment_method_then_grants_access(
    client, buyer, listing, django_capture_on_commit_callbacks
):
    order, _ = _pay(client, buyer, listing, django_capture_on_commit_callbacks, kind="metered")
    assert (order.status, order.amount) == (OrderStatus.PAID, 0)
    assert Entitlement.objects.get(order=order).status == EntitlementStatus.ACTIVE
    assert JournalEntry.objects.count() == 0


def test_subscription_renews_fails_and_lapses(client, buyer, listing, django_capture_on_commit_callbacks, settings):
    settings.SUBSCRIPTION_GRACE_DAYS = 3
    order, _ = _pay(client, buyer, listing, django_capture_on_commit_callbacks, kind="subscription")
    assert order.status == OrderStatus.PAID and order.amount == 3000
    subscription = Subscription.objects.get()
    assert subscription.gateway_subscription_id.startswith("sub_sbx_")
    entitlement = Entitlement.objects.get(order=order)
    first_end = entitlement.valid_until
    assert timedelta(days=29) < first_end - timezone.now() < timedelta(days=32)

    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_renewal(subscription=subscription)
    renewal = Order.objects.get(subscription=subscription)
    assert (renewal.status, renewal.amount) == (OrderStatus.DELIVERED, 3000)
    entitlement.refresh_from_db()
    assert entitlement.valid_until > first_end
    assert JournalEntry.objects.filter(kind=JournalKind.PAYMENT).count() == 2

    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_renewal_failed(subscription=Subscription.objects.get())
    subscription.refresh_from_db()
    entitlement.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    assert timedelta(days=2) < entitlement.valid_until - timezone.now() <= timedelta(days=3)

    with time_machine.travel(timezone.now() + timedelta(days=4)):
        assert entitlements_expire() == 1
        entitlement.refresh_from_db()
        assert entitlement.status == EntitlementStatus.EXPIRED
        assert library_links(client.get(reverse("exchange:library")).content.decode()) == []
        delivery = Delivery.objects.get(entitlement=entitlement)
        fresh = download_link_make(delivery=delivery, file=delivery.version.files.get(), user=buyer)
        refused = client.get(fresh)
        assert refused.status_code == 403 and b"has ended" in refused.content
    _ledger_ok()


def test_subscription_cancelled_keeps_access_to_period_end(client, buyer, listing, django_capture_on_commit_callbacks):
    _pay(client, buyer, listing, django_capture_on_commit_callbacks, kind="subscription")
    subscription = Subscription.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_subscription_cancelled(subscription=subscription)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELLED
    entitlement = Entitlement.objects.get()
    assert entitlement.valid_until == subscription.current_period_end
    assert entitlement.status == EntitlementStatus.ACTIVE


def _paid_order(client, buyer, listing, capture):
    order, _ = _pay(client, buyer, listing, capture)
    assert order.status == OrderStatus.PAID
    return order


def test_partial_then_full_refund_before_settlement(client, buyer, staff, listing, django_capture_on_commit_callbacks):
    order = _paid_order(client, buyer, listing, django_capture_on_commit_callbacks)
    first = order_refund(order=order, amount=234, reason="one file was late", actor=staff)
    order.refresh_from_db()
    assert (first.status, order.status, order.refunded_amount) == (RefundStatus.SUCCEEDED, "partially_refunded", 234)
    assert first.gateway_refund_id.startswith("re_sbx_")
    assert Entitlement.objects.get(order=order).status == EntitlementStatus.ACTIVE
    with pytest.raises(RefundConflict) as exc:
        order_refund(order=order, amount=1001, reason="too much", actor=staff)
    assert exc.value.code == "refund_exceeds_paid"
    order_refund(order=order, amount=1000, reason="the rest", actor=staff)
    order.refresh_from_db()
    assert (order.status, order.refunded_amount) == (OrderStatus.REFUNDED, 1234)
    assert Entitlement.objects.get(order=order).status == EntitlementStatus.REVOKED
    link = library_links(client.get(reverse("exchange:library")).content.decode())
    assert link == []  # revoked entitlements show no download links
    refund_legs = sorted(Posting.objects.filter(entry__kind=JournalKind.REFUND).values_list("account__code", "amount"))
    assert refund_legs == [
        ("escrow_held", 234),
        ("escrow_held", 1000),
        ("gateway_clearing", -1000),
        ("gateway_clearing", -234),
    ]
    _ledger_ok()


def test_refund_after_settlement_comes_back_from_fee_and_merchant(
    client, buyer, staff, listing, django_capture_on_commit_callbacks, settings
):
    settings.PLATFORM_FEE_BPS = 1000
    order = _paid_order(client, buyer, listing, django_capture_on_commit_callbacks)
    link = library_links(client.get(reverse("exchange:library")).content.decode())[0]
    read_stream(client.get(link))
    with django_capture_on_commit_callbacks(execute=True):
        run = settlement_run_start(trigger="test")
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED and run.pk
    order_refund(order=order, amount=1234, reason="licence dispute settled amicably", actor=staff)
    legs = dict(Posting.objects.filter(entry__kind=JournalKind.REFUND).values_list("account__code", "amount"))
    # Already paid out: the merchant's share is booked as owed back (receivable), netted by its next payout.
    receivable = f"merchant_receivable:{order.merchant_id}"
    assert legs == {"platform_revenue": 123, receivable: 1111, "gateway_clearing": -1234}

    def balance(code):
        return sum(Posting.objects.filter(account__code=code).values_list("amount", flat=True))

    assert (balance(f"merchant_payable:{order.merchant_id}"), balance(receivable)) == (0, 1111)
    _ledger_ok()


def test_refund_or_dispute_before_the_paid_event_never_activates_access(
    client, buyer, listing, django_capture_on_commit_callbacks
):
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get()
    gateway = SandboxGateway()
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_refund(order=order, amount=order.amount)
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING_PAYMENT and order.refunded_amount == 1234
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    entitlement = Entitlement.objects.get(order=order)
    assert entitlement.status == EntitlementStatus.REVOKED
    assert Delivery.objects.count() == 0
    kinds = list(JournalEntry.objects.order_by("sequence").values_list("kind", flat=True))
    assert kinds == [JournalKind.PAYMENT, JournalKind.REFUND]
    _ledger_ok()


def test_dispute_before_paid_event_ends_disputed(client, buyer, listing, django_capture_on_commit_callbacks):
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_dispute(order=order)
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    assert order.status == OrderStatus.DISPUTED
    assert Entitlement.objects.get(order=order).status == EntitlementStatus.REVOKED
    assert Delivery.objects.count() == 0
    _ledger_ok()


@pytest.mark.parametrize(("won", "final"), [(True, OrderStatus.PAID), (False, OrderStatus.REFUNDED)])
def test_dispute_revokes_then_won_restores_or_lost_refunds(
    client, buyer, listing, django_capture_on_commit_callbacks, won, final
):
    order = _paid_order(client, buyer, listing, django_capture_on_commit_callbacks)
    gateway = SandboxGateway()
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(order=order)
    order.refresh_from_db()
    assert order.status == OrderStatus.DISPUTED
    assert Entitlement.objects.get(order=order).status == EntitlementStatus.REVOKED
    dispute = Dispute.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(
            order=order, status="won" if won else "lost", closed=True, dispute_id=dispute.gateway_dispute_id
        )
    order.refresh_from_db()
    assert order.status == final
    expected = EntitlementStatus.ACTIVE if won else EntitlementStatus.REVOKED
    assert Entitlement.objects.get(order=order).status == expected
    # A won dispute is the correcting entry of the withdrawal: it names it and negates it leg for leg.
    withdrawal = JournalEntry.objects.get(order=order, kind=JournalKind.DISPUTE)
    returned = JournalEntry.objects.filter(order=order, kind=JournalKind.DISPUTE_WON).first()
    assert (returned.reverses if won else returned) == (withdrawal if won else None)
    if won:
        legs = sorted(withdrawal.postings.values_list("account_id", "amount"))
        assert sorted(returned.postings.values_list("account_id", "amount")) == sorted((a, -n) for a, n in legs)
    _ledger_ok()


def test_admin_refund_action_with_amount(client, staff, buyer, listing, django_capture_on_commit_callbacks):
    order = _paid_order(client, buyer, listing, django_capture_on_commit_callbacks)
    client.force_login(staff)
    url = reverse("admin:exchange_order_changelist")
    bad = client.post(
        url,
        {
            "action": "refund_orders",
            "_selected_action": [order.pk],
            "apply": "1",
            "token": "0b6c1f1e-3d43-4a4f-9d51-6a0e1e6f7a01",
            "amount": "99.99",
            "reason": "too much",
        },
        follow=True,
    )
    assert "would exceed what was paid" in bad.content.decode()
    assert Refund.objects.count() == 0
    client.post(
        url,
        {
            "action": "refund_orders",
            "_selected_action": [order.pk],
            "apply": "1",
            "token": "0b6c1f1e-3d43-4a4f-9d51-6a0e1e6f7a01",
            "amount": "2.34",
            "reason": "late delivery",
        },
    )
    order.refresh_from_db()
    assert order.refunded_amount == 234 and order.status == OrderStatus.PARTIALLY_REFUNDED


def test_admin_refund_action_submitted_twice_refunds_once_and_needs_its_form_token(
    client, staff, buyer, listing, django_capture_on_commit_callbacks
):
    order = _paid_order(client, buyer, listing, django_capture_on_commit_callbacks)
    client.force_login(staff)
    url = reverse("admin:exchange_order_changelist")
    data = {"action": "refund_orders", "_selected_action": [order.pk], "apply": "1", "amount": "1.00", "reason": "r"}
    shown = client.post(url, {"action": "refund_orders", "_selected_action": [order.pk]})
    token = re.search(r'name="token" value="([0-9a-f-]{36})"', shown.content.decode()).group(1)
    refused = client.post(url, data)  # a form without its token (not one the page made) refunds nothing
    assert "This field is required." in refused.content.decode() and not Refund.objects.exists()
    client.post(url, {**data, "token": token})
    client.post(url, {**data, "token": token})  # the same form again (a timeout, a double click): the same refund
    order.refresh_from_db()
    assert Refund.objects.filter(order=order).count() == 1 and order.refunded_amount == 100


def test_buyer_confirms_receipt_and_cancels_only_their_unpaid_orders(
    client, buyer, other_buyer, listing, django_capture_on_commit_callbacks
):
    order = _paid_order(client, buyer, listing, django_capture_on_commit_callbacks)
    client.force_login(other_buyer)
    assert client.post(reverse("exchange:order_action", args=[order.public_id, "confirm"])).status_code == 404
    client.force_login(buyer)
    cancel = client.post(reverse("exchange:order_action", args=[order.public_id, "cancel"]), follow=True)
    assert "Only orders waiting for payment can be cancelled" in cancel.content.decode()
    client.post(reverse("exchange:order_action", args=[order.public_id, "confirm"]))
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED
    assert order.history.last().reason == "buyer confirmed receipt"


def test_pending_order_can_be_cancelled(client, buyer, listing):
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get()
    client.post(reverse("exchange:order_action", args=[order.public_id, "cancel"]))
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED


def test_escrow_is_released_automatically_after_the_configured_days(
    client, buyer, listing, django_capture_on_commit_callbacks, settings
):
    settings.ESCROW_AUTO_CONFIRM_DAYS = 7
    order = _paid_order(client, buyer, listing, django_capture_on_commit_callbacks)
    assert orders_auto_confirm() == 0
    with time_machine.travel(timezone.now() + timedelta(days=8)):
        assert orders_auto_confirm() == 1
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED


def test_bad_plan_choices_are_refused(client, buyer, listing, other_merchant_user, merchant_user):
    from tests.factories import make_listing as make

    other = make(
        merchant=other_merchant_user.merchant_memberships.get().merchant, owner=other_merchant_user, title="Other data"
    )
    client.force_login(buyer)
    response = client.post(
        reverse("exchange:order_buy", args=[listing.slug]),
        {"accept_licence": "1", "token": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "plan": other.plans.get().pk},
        follow=True,
    )
    assert "not available" in response.content.decode()
    assert Order.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_refunds_never_exceed_what_was_paid(merchant, merchant_user, staff, buyer, categories):
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff)
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key="k")
    order_checkout_start(order=order)
    SandboxGateway().session_resolve_and_notify(session_id=Order.objects.get().gateway_session_id, approve=True)
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    results, barrier = [], threading.Barrier(2)

    def attempt():
        try:
            barrier.wait()
            results.append(order_refund(order=order, amount=1000, reason="double click", actor=staff))
        except RefundConflict as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    conflicts = [r for r in results if isinstance(r, RefundConflict)]
    assert len(results) == 2 and len(conflicts) == 1
    assert conflicts[0].code == "refund_exceeds_paid"
    order.refresh_from_db()
    assert order.refunded_amount == 1000
    assert Refund.objects.filter(status=RefundStatus.SUCCEEDED).count() == 1
    assert ledger_verify().ok
    time.sleep(0)


def test_a_second_tab_resumes_the_open_checkout_instead_of_paying_twice(client, buyer, listing):
    client.force_login(buyer)
    first = buy(client, listing, token="11111111-2fa1-11d2-883f-0016d3cca427")
    second = buy(client, listing, token="22222222-2fa1-11d2-883f-0016d3cca427")
    assert Order.objects.count() == 1
    assert first.url == second.url == Order.objects.get().checkout_url


def test_every_entitlement_move_has_a_history_row(client, buyer, listing, django_capture_on_commit_callbacks, settings):
    settings.SUBSCRIPTION_GRACE_DAYS = 0
    _pay(client, buyer, listing, django_capture_on_commit_callbacks, kind="subscription")
    entitlement = Entitlement.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_renewal_failed(subscription=Subscription.objects.get())
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        assert entitlements_expire() == 1
        assert entitlements_expire() == 0  # running the sweep again changes nothing
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_renewal(subscription=Subscription.objects.get())
    history = entitlement.history.order_by("pk")  # pk: the sweep ran at a travelled clock
    assert list(history.values_list("from_status", "to_status")) == [
        ("", "active"),
        ("active", "expired"),
        ("expired", "active"),
    ]
    assert [h.reason for h in history][1:] == ["paid period ended", history.last().reason]
    assert history.last().reason.startswith("invoice in_sbx_")
