"""The Stripe path: the real `stripe` SDK against a fake Stripe HTTP server on loopback."""

import json
import time

import pytest
from django.urls import reverse

from exchange.choices import JournalKind, OrderStatus, PayoutStatus
from exchange.gateways import GatewayError
from exchange.gateways.signing import sign_payload
from exchange.models import Entitlement, JournalEntry, Order, PaymentEvent, Payout, SettlementRun
from exchange.services.orders import order_checkout_start, order_create
from exchange.services.settlement import payout_send, settlement_run_execute, settlement_run_start
from tests.fakes.stripe_server import FakeStripe, settings_use_fake_stripe

pytestmark = pytest.mark.django_db
WEBHOOK_SECRET = "whsec_test_stripe_fake"


@pytest.fixture
def fake_stripe(settings):
    server = FakeStripe().start()
    settings_use_fake_stripe(settings, server, webhook_secret=WEBHOOK_SECRET)
    yield server
    server.stop()


def _event(order: Order, *, event_type="checkout.session.completed", payment_intent="pi_test_1") -> dict:
    return {
        "id": f"evt_{time.time_ns()}",
        "object": "event",
        "type": event_type,
        "api_version": "2025-01-27.acacia",
        "data": {
            "object": {
                "id": order.gateway_session_id,
                "object": "checkout.session",
                "amount_total": order.amount,
                "currency": order.currency.lower(),
                "payment_status": "paid",
                "payment_intent": payment_intent,
                "metadata": {"order_id": str(order.public_id)},
            }
        },
    }


def _post(client, event: dict, secret=WEBHOOK_SECRET):
    body = json.dumps(event).encode()
    return client.post(
        reverse("exchange:webhook", args=["stripe"]),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_payload(body=body, secret=secret),
    )


def test_checkout_session_is_created_once_with_escrow_transfer_group(fake_stripe, buyer, published_listing):
    order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="k1")
    assert order.gateway == "stripe"
    url = order_checkout_start(order=order)
    again = order_checkout_start(order=order)
    assert url == again and url.startswith("https://checkout.stripe.test/c/pay/cs_test_")
    assert fake_stripe.count("/v1/checkout/sessions") == 1
    _, _, params, key = fake_stripe.requests[0]
    assert key == f"checkout-{order.public_id}"
    assert params["mode"] == "payment"
    assert params["line_items"][0]["price_data"] == {
        "currency": "cny",
        "unit_amount": "1234",
        "product_data": {"name": published_listing.title},
    }
    assert params["payment_intent_data"]["transfer_group"] == f"order-{order.public_id}"
    assert params["metadata"] == {"order_id": str(order.public_id)}
    assert params["success_url"] == f"https://exchange.example/orders/{order.public_id}/"
    assert len(params["line_items"]) == 1  # no buyer service fee configured: no fee line


def test_the_buyer_service_fee_is_its_own_checkout_line(fake_stripe, buyer, published_listing, settings):
    settings.BUYER_SERVICE_FEE = {"CNY": 200}
    order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="k-fee")
    order_checkout_start(order=order)
    _, _, params, _ = fake_stripe.requests[0]
    assert [
        (line["price_data"]["unit_amount"], line["price_data"]["product_data"]["name"]) for line in params["line_items"]
    ] == [
        ("1234", published_listing.title),
        ("200", "Buyer service fee"),
    ]
    assert (order.amount, order.service_fee) == (1434, 200)


def test_signed_stripe_webhook_pays_the_order(
    fake_stripe, client, buyer, published_listing, django_capture_on_commit_callbacks
):
    order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="k1")
    order_checkout_start(order=order)
    order.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, _event(order))
    assert response.status_code == 200
    order.refresh_from_db()
    assert (order.status, order.gateway_payment_id) == (OrderStatus.PAID, "pi_test_1")
    assert Entitlement.objects.filter(order=order).count() == 1
    assert PaymentEvent.objects.get().gateway == "stripe"


def test_stripe_webhook_with_wrong_secret_or_stale_timestamp_writes_nothing(
    fake_stripe, client, buyer, published_listing
):
    order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="k1")
    order_checkout_start(order=order)
    order.refresh_from_db()
    assert _post(client, _event(order), secret="whsec_wrong").status_code == 400
    body = json.dumps(_event(order)).encode()
    stale = sign_payload(body=body, secret=WEBHOOK_SECRET, timestamp=int(time.time()) - 301)
    response = client.post(
        reverse("exchange:webhook", args=["stripe"]),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=stale,
    )
    assert response.status_code == 400
    assert PaymentEvent.objects.count() == 0
    assert Order.objects.get().status == OrderStatus.PENDING_PAYMENT


@pytest.fixture
def stripe_payout(fake_stripe, merchant):
    merchant.stripe_account_id = "acct_test_merchant"
    merchant.save()
    run = SettlementRun.objects.create(status="completed")
    return Payout.objects.create(
        run=run, merchant=merchant, amount=4500, currency="CNY", idempotency_key="payout-1-1-CNY", gateway="stripe"
    )


def test_payout_is_a_connect_transfer_with_the_stored_key(fake_stripe, stripe_payout):
    payout = payout_send(payout_pk=stripe_payout.pk)
    assert payout.status == PayoutStatus.SENT and payout.gateway_reference.startswith("tr_test_")
    ((_, _, params, key),) = [r for r in fake_stripe.requests if r[1] == "/v1/transfers"]
    assert key == "payout-1-1-CNY"
    assert (params["amount"], params["currency"], params["destination"]) == ("4500", "cny", "acct_test_merchant")
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1
    assert payout_send(payout_pk=payout.pk).gateway_reference == payout.gateway_reference
    assert fake_stripe.count("/v1/transfers") == 1


def test_transfer_that_times_out_after_succeeding_is_not_repeated(fake_stripe, stripe_payout, settings):
    settings.STRIPE_TIMEOUT_SECONDS = 1
    fake_stripe.delay_next["/v1/transfers"] = 2.5
    with pytest.raises(GatewayError) as exc:
        payout_send(payout_pk=stripe_payout.pk)
    assert exc.value.transient
    stripe_payout.refresh_from_db()
    assert (stripe_payout.status, stripe_payout.attempts) == (PayoutStatus.PENDING, 1)
    assert JournalEntry.objects.count() == 0
    payout = payout_send(payout_pk=stripe_payout.pk)  # the task's retry
    assert payout.status == PayoutStatus.SENT
    assert fake_stripe.count("/v1/transfers") == 2  # two calls, same key ...
    assert len(fake_stripe.objects["/v1/transfers"]) == 1  # ... one transfer
    assert payout.gateway_reference in fake_stripe.objects["/v1/transfers"]


def test_a_transfer_whose_key_is_still_in_progress_is_retried_not_refused(fake_stripe, stripe_payout):
    """Stripe answers 409 while another request with the same idempotency key is in flight: ask again later."""
    fake_stripe.fail_next["/v1/transfers"] = (
        409,
        {"error": {"type": "idempotency_error", "message": "There is currently another in-progress request."}},
    )
    with pytest.raises(GatewayError) as exc:
        payout_send(payout_pk=stripe_payout.pk)
    assert exc.value.transient
    stripe_payout.refresh_from_db()
    assert (stripe_payout.status, stripe_payout.attempts) == (PayoutStatus.PENDING, 1)
    assert JournalEntry.objects.count() == 0
    payout = payout_send(payout_pk=stripe_payout.pk)
    assert payout.status == PayoutStatus.SENT
    assert len(fake_stripe.objects["/v1/transfers"]) == 1


def test_refused_transfer_is_recorded_not_dropped(fake_stripe, stripe_payout):
    fake_stripe.fail_next["/v1/transfers"] = (
        400,
        {"error": {"type": "invalid_request_error", "message": "Insufficient funds in Stripe account."}},
    )
    payout = payout_send(payout_pk=stripe_payout.pk)
    assert payout.status == PayoutStatus.FAILED
    assert "Insufficient funds" in payout.error
    (refused,) = payout.history.all()  # the fixture made the payout directly: only the move is recorded
    assert (refused.from_status, refused.to_status) == (PayoutStatus.PENDING, PayoutStatus.FAILED)
    assert refused.reason.startswith("refused by the gateway: ") and "Insufficient funds" in refused.reason
    # The money goes back to what the merchant is owed ...
    (returned,) = JournalEntry.objects.all()
    assert returned.kind == JournalKind.PAYOUT_RETURNED and returned.payout_id == payout.pk
    legs = dict(returned.postings.values_list("account__code", "amount"))
    assert legs == {"payouts_pending": 4500, f"merchant_payable:{payout.merchant_id}": -4500}
    assert payout_send(payout_pk=payout.pk).status == PayoutStatus.FAILED  # a repeat books nothing more
    assert JournalEntry.objects.count() == 1
    # ... and the next settlement run pays it again.
    run = settlement_run_start(trigger="test")
    settlement_run_execute(run_pk=run.pk)
    again = Payout.objects.get(run=run)
    assert (again.merchant_id, again.amount, again.currency, again.status) == (
        payout.merchant_id,
        4500,
        "CNY",
        PayoutStatus.PENDING,
    )


def test_merchant_without_connected_account_fails_clearly(fake_stripe, stripe_payout):
    stripe_payout.merchant.stripe_account_id = ""
    stripe_payout.merchant.save()
    payout = payout_send(payout_pk=stripe_payout.pk)
    assert payout.status == PayoutStatus.FAILED
    assert "has not connected a Stripe account" in payout.error
    assert fake_stripe.count("/v1/transfers") == 0


def test_subscription_and_metered_plans_use_subscription_and_setup_modes(
    fake_stripe, buyer, merchant, merchant_user, staff, categories
):
    from tests.factories import make_listing

    listing = make_listing(
        merchant=merchant,
        owner=merchant_user,
        reviewer=staff,
        extra_plans=(
            {"kind": "subscription", "amount": 3000, "interval": "year"},
            {"kind": "metered", "amount": 5, "metered_unit": "call"},
        ),
    )
    sub_order, _ = order_create(
        buyer=buyer, listing=listing, idempotency_key="s", plan=listing.plans.get(kind="subscription")
    )
    order_checkout_start(order=sub_order)
    metered_order, _ = order_create(
        buyer=buyer, listing=listing, idempotency_key="m", plan=listing.plans.get(kind="metered")
    )
    order_checkout_start(order=metered_order)
    sessions = [params for method, path, params, _ in fake_stripe.requests if path == "/v1/checkout/sessions"]
    assert sessions[0]["mode"] == "subscription"
    assert sessions[0]["line_items"][0]["price_data"]["recurring"] == {"interval": "year"}
    assert sessions[0]["line_items"][0]["price_data"]["unit_amount"] == "3000"
    assert sessions[1]["mode"] == "setup" and "line_items" not in sessions[1]
    assert metered_order.amount == 0


def test_merchant_connects_stripe_express_once(fake_stripe, client, merchant_user, merchant, other_merchant_user):
    client.force_login(merchant_user)
    page = client.get(reverse("exchange:connect"))
    assert b"Connect with Stripe" in page.content
    first = client.post(reverse("exchange:connect"))
    assert first.status_code == 302 and first.url.startswith("https://connect.stripe.test/setup/acct_test_")
    merchant.refresh_from_db()
    account = merchant.stripe_account_id
    second = client.post(reverse("exchange:connect"))
    merchant.refresh_from_db()
    assert merchant.stripe_account_id == account and second.url.endswith(account)
    assert fake_stripe.count("/v1/accounts") == 1 and fake_stripe.count("/v1/account_links") == 2
    ((_, _, params, key),) = [r for r in fake_stripe.requests if r[1] == "/v1/accounts"]
    assert params["type"] == "express" and key == f"connect-account-{merchant.pk}"


def test_sandbox_merchants_have_nothing_to_connect(client, merchant_user, merchant):
    client.force_login(merchant_user)
    response = client.post(reverse("exchange:connect"), follow=True)
    assert b"sandbox pays merchants without an account" in response.content
    merchant.refresh_from_db()
    assert merchant.stripe_account_id == ""
