"""The Stripe path: the real `stripe` SDK against a fake Stripe HTTP server on loopback."""

import json
import time
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from exchange.choices import JournalKind, OrderStatus, PayoutStatus, RefundStatus
from exchange.gateways import GatewayError
from exchange.gateways.signing import sign_payload
from exchange.gateways.stripe_gateway import _client
from exchange.models import Entitlement, JournalEntry, Order, PaymentEvent, Payout, Refund, SettlementRun
from exchange.services.orders import order_checkout_start, order_create
from exchange.services.refunds import order_refund, refunds_retry_pending
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


# --- after the idempotency window: ask Stripe what it made, never send again ---------------------------------------


def _a_day_old(model, obj):
    model.objects.filter(pk=obj.pk).update(created_at=timezone.now() - timedelta(hours=24))
    obj.refresh_from_db()
    return obj


def test_a_transfer_that_timed_out_and_outlived_its_key_is_found_at_stripe_and_booked(
    fake_stripe, stripe_payout, settings
):
    settings.STRIPE_TIMEOUT_SECONDS = 1
    fake_stripe.delay_next["/v1/transfers"] = 2.5  # Stripe makes the transfer; the answer comes too late
    with pytest.raises(GatewayError):
        payout_send(payout_pk=stripe_payout.pk)
    ((made_id, made),) = fake_stripe.objects["/v1/transfers"].items()
    assert made["metadata"] == {
        "payout_id": str(stripe_payout.pk),
        "run_id": str(stripe_payout.run_id),
        "idempotency_key": "payout-1-1-CNY",
    }
    made["created"] = int((timezone.now() - timedelta(hours=24)).timestamp()) + 1  # made when the payout was
    _a_day_old(Payout, stripe_payout)
    payout = payout_send(payout_pk=stripe_payout.pk)  # the task's last retry, a day later
    assert (payout.status, payout.gateway_reference) == (PayoutStatus.SENT, made_id)
    assert fake_stripe.count("/v1/transfers") == 1  # looked up, not sent again
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1


@pytest.fixture
def stripe_paid_order(fake_stripe, client, buyer, published_listing, django_capture_on_commit_callbacks):
    order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="k-refund")
    order_checkout_start(order=order)
    order.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        assert _post(client, _event(order, payment_intent="pi_test_refunds")).status_code == 200
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    return order


def _timed_out_stripe_refund(fake_stripe, order, settings, *, made: bool) -> Refund:
    settings.STRIPE_TIMEOUT_SECONDS = 1
    if made:
        fake_stripe.delay_next["/v1/refunds"] = 2.5
    else:
        fake_stripe.fail_next["/v1/refunds"] = (503, {"error": {"message": "unavailable"}})
    with pytest.raises(GatewayError):
        order_refund(order=order, amount=300, reason="late file", idempotency_key="refund-form-1")
    return _a_day_old(Refund, Refund.objects.get(order=order))


def _stripe_refund(fake_stripe, *, amount=300, key=None, status="succeeded"):
    refund_id = f"re_test_{uuid.uuid4().hex[:10]}"
    fake_stripe.objects["/v1/refunds"][refund_id] = {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "payment_intent": "pi_test_refunds",
        "status": status,
        "created": int(time.time()),
        "metadata": {"idempotency_key": key} if key else {},
    }
    return refund_id


def _sweep():
    return refunds_retry_pending(older_than_seconds=300, max_age_seconds=23 * 3600)


def test_a_refund_that_timed_out_and_outlived_its_key_is_found_at_stripe_by_its_key(
    fake_stripe, stripe_paid_order, settings
):
    refund = _timed_out_stripe_refund(fake_stripe, stripe_paid_order, settings, made=True)
    ((made_id, made),) = fake_stripe.objects["/v1/refunds"].items()
    assert made["metadata"] == {"idempotency_key": refund.idempotency_key}
    for _ in range(120):  # other refunds of the payment, each of its own key: the lookup reads every page
        _stripe_refund(fake_stripe, amount=1, key=f"other-{uuid.uuid4()}")
    assert _sweep()["found_at_gateway"] == [refund.pk]
    refund.refresh_from_db()
    assert (refund.status, refund.gateway_refund_id) == (RefundStatus.SUCCEEDED, made_id)
    assert fake_stripe.count("/v1/refunds") == 1  # looked up, never sent again
    lists = [q for method, path, q, _ in fake_stripe.requests if (method, path) == ("GET", "/v1/refunds")]
    assert [q["payment_intent"] for q in lists] == ["pi_test_refunds"] * 2 and lists[1]["starting_after"]
    assert JournalEntry.objects.filter(kind=JournalKind.REFUND, order=stripe_paid_order).count() == 1


@pytest.mark.parametrize("stripe_shows", ["nothing", "failed", "known_keyless", "failed_keyless"])
def test_a_refund_stripe_never_made_is_failed_and_its_amount_freed(
    fake_stripe, stripe_paid_order, settings, stripe_shows
):
    refund = _timed_out_stripe_refund(fake_stripe, stripe_paid_order, settings, made=False)
    if stripe_shows == "failed":  # made under its key, then failed at the bank: no money went back
        _stripe_refund(fake_stripe, key=refund.idempotency_key, status="failed")
    elif stripe_shows == "failed_keyless":  # made in Stripe's dashboard and failed: no money moved
        _stripe_refund(fake_stripe, amount=300, status="failed")
    elif stripe_shows == "known_keyless":  # made in Stripe's dashboard and already booked from its webhook
        known = _stripe_refund(fake_stripe, amount=200)
        Refund.objects.create(
            order=stripe_paid_order,
            amount=200,
            currency="CNY",
            source="gateway",
            idempotency_key=f"gateway-refund:{known}",
            gateway_refund_id=known,
            status=RefundStatus.SUCCEEDED,
        )
    assert _sweep()["not_at_gateway"] == [refund.pk]
    refund.refresh_from_db()
    stripe_paid_order.refresh_from_db()
    assert (refund.status, stripe_paid_order.refunded_amount) == (RefundStatus.FAILED, 0)
    assert not JournalEntry.objects.filter(kind=JournalKind.REFUND).exists()


@pytest.mark.parametrize(
    ("stripe_shows", "why"),
    [
        ("down", "Stripe: "),
        ("unknown_keyless", "has refunds that carry no key"),
        ("other_amount", "is of 250, not 300"),
        ("two", "Stripe shows 2 refunds carrying refund"),
    ],
)
def test_a_refund_stripe_cannot_place_stays_held_and_changes_nothing(
    fake_stripe, stripe_paid_order, settings, stripe_shows, why
):
    refund = _timed_out_stripe_refund(fake_stripe, stripe_paid_order, settings, made=False)
    if stripe_shows == "down":
        fake_stripe.fail_next_get["/v1/refunds"] = (500, {"error": {"message": "unavailable"}})
    elif stripe_shows == "unknown_keyless":
        _stripe_refund(fake_stripe)  # made before refunds carried their key, or not reported yet: could be this one
    elif stripe_shows == "other_amount":
        _stripe_refund(fake_stripe, amount=250, key=refund.idempotency_key)
    else:
        _stripe_refund(fake_stripe, key=refund.idempotency_key)
        _stripe_refund(fake_stripe, key=refund.idempotency_key)
    assert _sweep()["too_old"] == [refund.pk]
    refund.refresh_from_db()
    stripe_paid_order.refresh_from_db()
    assert (refund.status, stripe_paid_order.refunded_amount) == (RefundStatus.PENDING, 300)
    assert refund.error.startswith("Held for review: the gateway could not say") and why in refund.error
    assert refund.history.count() == 1 and not JournalEntry.objects.filter(kind=JournalKind.REFUND).exists()
    assert fake_stripe.count("/v1/refunds") == 1


# --- Stripe's refund.created reports ---------------------------------------------------------------------------------


def _refund_event(client, capture, refund_obj: dict, *, event_type="refund.created"):
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "api_version": "2025-01-27.acacia",
        "data": {"object": {"object": "refund", "payment_intent": "pi_test_refunds", **refund_obj}},
    }
    with capture(execute=True):
        assert _post(client, event).status_code == 200
    return PaymentEvent.objects.get(event_id=event["id"])


def test_stripes_refund_report_books_the_pending_refund_its_key_names(
    fake_stripe, stripe_paid_order, settings, client, django_capture_on_commit_callbacks
):
    settings.STRIPE_TIMEOUT_SECONDS = 1
    for key in ("refund-form-a", "refund-form-b"):  # two refunds of the same amount, both answered too late
        fake_stripe.delay_next["/v1/refunds"] = 2.5
        with pytest.raises(GatewayError):
            order_refund(order=Order.objects.get(pk=stripe_paid_order.pk), amount=300, reason="x", idempotency_key=key)
    first, second = Refund.objects.order_by("pk")
    made = {obj["metadata"]["idempotency_key"]: obj for obj in fake_stripe.objects["/v1/refunds"].values()}
    report = made[second.idempotency_key]  # the second refund's report comes first
    event = _refund_event(client, django_capture_on_commit_callbacks, report)
    assert (event.status, event.outcome) == ("processed", f"refund {second.pk} booked")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status, second.gateway_refund_id) == (
        RefundStatus.PENDING,
        RefundStatus.SUCCEEDED,
        report["id"],
    )
    assert second.history.order_by("pk").last().reason == (
        f"gateway refund {report['id']}, reported by the gateway (matched by its idempotency key)"
    )
    _refund_event(client, django_capture_on_commit_callbacks, report, event_type="refund.updated")  # again: nothing
    stripe_paid_order.refresh_from_db()
    assert stripe_paid_order.refunded_amount == 600 and Refund.objects.count() == 2
    assert JournalEntry.objects.filter(kind=JournalKind.REFUND).count() == 1


def test_a_refund_made_in_stripes_dashboard_is_booked_once_and_a_failed_one_not_at_all(
    fake_stripe, stripe_paid_order, client, django_capture_on_commit_callbacks
):
    failed = _refund_event(
        client, django_capture_on_commit_callbacks, {"id": "re_dash_0", "amount": 100, "status": "failed"}
    )
    assert (failed.status, failed.outcome) == ("processed", "refund re_dash_0 is failed: nothing booked")
    assert not Refund.objects.exists()
    report = {"id": "re_dash_1", "amount": 200, "status": "succeeded", "reason": "requested_by_customer"}
    _refund_event(client, django_capture_on_commit_callbacks, report)
    again = _refund_event(client, django_capture_on_commit_callbacks, report, event_type="refund.updated")
    assert again.outcome == "refund already booked"
    (refund,) = Refund.objects.all()
    assert (refund.source, refund.gateway_refund_id, refund.amount, refund.status) == (
        "gateway",
        "re_dash_1",
        200,
        RefundStatus.SUCCEEDED,
    )
    stripe_paid_order.refresh_from_db()
    assert (stripe_paid_order.refunded_amount, stripe_paid_order.status) == (200, OrderStatus.PARTIALLY_REFUNDED)
    assert JournalEntry.objects.filter(kind=JournalKind.REFUND).count() == 1
    # It fails at the buyer's bank afterwards: the event fails for staff to see, and nothing is booked or undone.
    later = _refund_event(
        client, django_capture_on_commit_callbacks, {**report, "status": "failed"}, event_type="refund.updated"
    )
    assert later.status == "failed" and "is failed at the gateway after it was booked as made" in later.error
    refund.refresh_from_db()
    assert refund.status == RefundStatus.SUCCEEDED
    assert JournalEntry.objects.filter(kind=JournalKind.REFUND).count() == 1


# --- a key first used with other parameters (Stripe's idempotency_error): looked up, never a refusal ----------------


def test_a_payout_whose_key_stripe_saw_with_other_metadata_is_looked_up_not_paid_again(fake_stripe, stripe_payout):
    # Sent by the release before transfers carried their key; the answer was lost, so it is still pending.
    made = _client().v1.transfers.create(
        params={
            "amount": 4500,
            "currency": "cny",
            "destination": "acct_test_merchant",
            "metadata": {"payout_id": str(stripe_payout.pk), "run_id": str(stripe_payout.run_id)},
        },
        options={"idempotency_key": stripe_payout.idempotency_key},
    )
    payout = payout_send(payout_pk=stripe_payout.pk)  # the task's retry, by this release
    assert (payout.status, payout.gateway_reference) == (PayoutStatus.SENT, made.id)
    assert len(fake_stripe.objects["/v1/transfers"]) == 1  # one transfer: the merchant is paid once
    assert payout.history.get().reason == (
        f"transfer {made.id} found at the gateway after it refused the payout's key with other parameters"
    )
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1
    assert not JournalEntry.objects.filter(kind=JournalKind.PAYOUT_RETURNED).exists()


def test_a_payout_retried_after_the_merchant_changed_account_is_looked_up_not_paid_again(
    fake_stripe, stripe_payout, settings
):
    settings.STRIPE_TIMEOUT_SECONDS = 1
    fake_stripe.delay_next["/v1/transfers"] = 2.5
    with pytest.raises(GatewayError):
        payout_send(payout_pk=stripe_payout.pk)  # made, to the old account; the answer lost
    stripe_payout.merchant.stripe_account_id = "acct_test_new"
    stripe_payout.merchant.save(update_fields=["stripe_account_id"])
    ((made_id, made),) = fake_stripe.objects["/v1/transfers"].items()
    payout = payout_send(payout_pk=stripe_payout.pk)
    assert (payout.status, payout.gateway_reference, made["destination"]) == (
        PayoutStatus.SENT,
        made_id,
        "acct_test_merchant",
    )
    assert len(fake_stripe.objects["/v1/transfers"]) == 1


def test_a_refund_whose_key_stripe_saw_with_other_parameters_stays_pending_not_failed(
    fake_stripe, stripe_paid_order, settings
):
    settings.STRIPE_TIMEOUT_SECONDS = 1
    fake_stripe.fail_next["/v1/refunds"] = (503, {"error": {"message": "unavailable"}})
    with pytest.raises(GatewayError):
        order_refund(order=stripe_paid_order, amount=300, reason="late file", idempotency_key="refund-form-1")
    refund = Refund.objects.get()
    # The release before refunds carried their key had sent it, and Stripe made it; its answer was lost.
    _client().v1.refunds.create(
        params={"payment_intent": "pi_test_refunds", "amount": 300},
        options={"idempotency_key": refund.idempotency_key},
    )
    swept = refunds_retry_pending(older_than_seconds=0, max_age_seconds=23 * 3600)  # sent again by this release
    refund.refresh_from_db()
    assert swept["still_pending"] == [refund.pk]
    stripe_paid_order.refresh_from_db()
    # Stripe cannot place the keyless refund it made: pending (asked again by the sweep, held after its window),
    # not failed, which would free the amount for a second refund.
    assert (refund.status, stripe_paid_order.refunded_amount) == (RefundStatus.PENDING, 300)
    assert refund.error.startswith("the gateway could not say") and "carry no key" in refund.error
    assert len(fake_stripe.objects["/v1/refunds"]) == 1 and not JournalEntry.objects.filter(kind=JournalKind.REFUND)


def test_a_refund_stripe_creates_as_failed_fails_and_frees_its_amount(fake_stripe, stripe_paid_order, monkeypatch):
    created = FakeStripe._create

    def failing(self, path, params):
        status, obj = created(self, path, params)
        if path == "/v1/refunds":
            obj["status"] = "failed"
        return status, obj

    monkeypatch.setattr(FakeStripe, "_create", failing)
    refund = order_refund(order=stripe_paid_order, amount=300, reason="late file", idempotency_key="refund-form-1")
    stripe_paid_order.refresh_from_db()
    assert (refund.status, stripe_paid_order.refunded_amount) == (RefundStatus.FAILED, 0)
    assert refund.gateway_refund_id in fake_stripe.objects["/v1/refunds"]  # its later reports are known
    assert "is failed" in refund.error and not JournalEntry.objects.filter(kind=JournalKind.REFUND).exists()


def test_stripes_failed_report_fails_the_pending_refund_its_key_names(
    fake_stripe, stripe_paid_order, settings, client, django_capture_on_commit_callbacks
):
    refund = _timed_out_stripe_refund(fake_stripe, stripe_paid_order, settings, made=True)
    ((_, made),) = fake_stripe.objects["/v1/refunds"].items()
    event = _refund_event(
        client, django_capture_on_commit_callbacks, {**made, "status": "failed"}, event_type="refund.failed"
    )
    assert event.outcome == f"refund {refund.pk} is failed at the gateway: failed, its amount free again"
    refund.refresh_from_db()
    stripe_paid_order.refresh_from_db()
    assert (refund.status, stripe_paid_order.refunded_amount) == (RefundStatus.FAILED, 0)
    assert refund.gateway_refund_id == made["id"]
    # A late report of the same refund, from before it failed (Stripe does not order its events): nothing booked.
    late = _refund_event(client, django_capture_on_commit_callbacks, {**made, "status": "pending"})
    assert late.outcome == "refund already booked" and Refund.objects.count() == 1
    # A later retry would get Stripe's replay of its first answer: none is made, and nothing is booked.
    swept = refunds_retry_pending(older_than_seconds=0, max_age_seconds=48 * 3600)
    assert swept["succeeded"] == swept["found_at_gateway"] == swept["too_old"] == []
    assert not JournalEntry.objects.filter(kind=JournalKind.REFUND).exists()
