"""Bad input gets a clear error and changes nothing (row counts asserted)."""

import json
import time

import pytest
from django.urls import reverse

from exchange.models import Entitlement, JournalEntry, Order, OrderStatusHistory, PaymentEvent
from tests.exchange.helpers import buy, checkout_completed_event, post_webhook

pytestmark = pytest.mark.django_db


def _counts():
    return (
        Order.objects.count(),
        OrderStatusHistory.objects.count(),
        PaymentEvent.objects.count(),
        Entitlement.objects.count(),
        JournalEntry.objects.count(),
    )


def test_buying_own_listing_is_refused(client, merchant_user, published_listing):
    client.force_login(merchant_user)
    before = _counts()
    response = buy(client, published_listing)
    assert response.status_code == 302
    page = client.get(response.url)
    assert "You cannot buy your own merchant&#x27;s data product." in page.content.decode()
    assert _counts() == before


def test_buying_unpublished_listing_is_404(client, buyer, draft_listing):
    client.force_login(buyer)
    before = _counts()
    assert buy(client, draft_listing).status_code == 404
    assert _counts() == before


def test_buying_submitted_listing_as_staff_is_refused(client, staff, merchant, merchant_user):
    from listings.choices import ListingStatus
    from tests.factories import make_listing

    listing = make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)
    client.force_login(staff)  # staff may see it, but nobody may buy it
    before = _counts()
    response = buy(client, listing)
    assert "not available for purchase" in client.get(response.url).content.decode()
    assert _counts() == before


def test_buy_form_without_token_is_refused(client, buyer, published_listing):
    client.force_login(buyer)
    before = _counts()
    response = client.post(
        reverse("exchange:order_buy", args=[published_listing.slug]), {"accept_licence": "1", "token": "not-a-uuid"}
    )
    assert "incomplete" in client.get(response.url).content.decode()
    assert _counts() == before


@pytest.mark.parametrize("accept", [None, "", "false"])
def test_buying_without_accepting_the_licence_is_refused(client, buyer, published_listing, accept):
    client.force_login(buyer)
    before = _counts()
    body = {"token": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"}
    if accept is not None:
        body["accept_licence"] = accept
    response = client.post(reverse("exchange:order_buy", args=[published_listing.slug]), body)
    page = client.get(response.url).content.decode()
    assert "Accept the data product&#x27;s licence to buy it" in page
    assert "incomplete" not in page
    assert _counts() == before


@pytest.fixture
def pending_order(client, buyer, published_listing):
    client.force_login(buyer)
    buy(client, published_listing)
    client.logout()
    return Order.objects.get()


def test_webhook_with_wrong_secret_is_400(client, pending_order):
    before = _counts()
    response = post_webhook(client, checkout_completed_event(pending_order), secret="whsec_wrong")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_rejected"
    assert "does not match" in response.json()["error"]["message"]
    assert _counts() == before


def test_webhook_body_altered_by_one_byte_is_400(client, pending_order, settings):
    raw = json.dumps(checkout_completed_event(pending_order)).encode()
    from exchange.gateways.signing import sign_payload

    header = sign_payload(body=raw, secret=settings.SANDBOX_WEBHOOK_SECRET)
    tampered = raw.replace(b'"paid"', b'"pais"')
    before = _counts()
    assert post_webhook(client, {}, secret="", body=tampered, header=header).status_code == 400
    assert _counts() == before


def test_webhook_without_signature_header_is_400(client, pending_order):
    before = _counts()
    response = post_webhook(client, checkout_completed_event(pending_order), secret="", header="")
    assert response.status_code == 400
    assert "Missing signature" in response.json()["error"]["message"]
    assert _counts() == before


def test_webhook_replayed_after_tolerance_is_400(client, pending_order, settings):
    before = _counts()
    stale = int(time.time()) - 301
    response = post_webhook(
        client, checkout_completed_event(pending_order), secret=settings.SANDBOX_WEBHOOK_SECRET, timestamp=stale
    )
    assert response.status_code == 400
    assert "tolerance" in response.json()["error"]["message"]
    assert _counts() == before


def test_webhook_for_unknown_gateway_is_400(client, pending_order, settings):
    raw = json.dumps(checkout_completed_event(pending_order)).encode()
    before = _counts()
    response = client.post("/webhooks/paypal/", raw, content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=x")
    assert response.status_code == 400
    assert _counts() == before


def test_webhook_with_wrong_amount_is_recorded_failed_and_grants_nothing(
    client, pending_order, settings, django_capture_on_commit_callbacks
):
    event = checkout_completed_event(pending_order, amount=1)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, event, secret=settings.SANDBOX_WEBHOOK_SECRET)
    assert response.status_code == 200
    stored = PaymentEvent.objects.get()
    assert stored.status == "failed" and "Paid 1" in stored.error
    pending_order.refresh_from_db()
    assert pending_order.status == "pending_payment"
    assert Entitlement.objects.count() == 0 and JournalEntry.objects.count() == 0


def test_duplicate_webhook_is_acknowledged_and_applied_once(
    client, pending_order, settings, django_capture_on_commit_callbacks
):
    event = checkout_completed_event(pending_order)
    with django_capture_on_commit_callbacks(execute=True):
        first = post_webhook(client, event, secret=settings.SANDBOX_WEBHOOK_SECRET)
        second = post_webhook(client, event, secret=settings.SANDBOX_WEBHOOK_SECRET)
    assert first.status_code == second.status_code == 200
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert PaymentEvent.objects.count() == 1
    assert Entitlement.objects.count() == 1
    assert JournalEntry.objects.count() == 1


def test_unknown_event_type_is_acknowledged_and_ignored(client, settings, django_capture_on_commit_callbacks):
    event = {"id": "evt_other", "type": "customer.created", "data": {"object": {}}}
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, event, secret=settings.SANDBOX_WEBHOOK_SECRET)
    assert response.status_code == 200
    assert PaymentEvent.objects.get().status == "ignored"
    assert Order.objects.count() == 0


def test_sandbox_checkout_page_is_gone_when_stripe_is_the_gateway(client, pending_order, settings):
    settings.PAYMENT_GATEWAY = "stripe"
    before = _counts()
    assert client.get(pending_order.checkout_url).status_code == 404
    assert client.post(pending_order.checkout_url, {"decision": "approve"}).status_code == 404
    assert _counts() == before


def test_webhook_with_a_nul_escape_is_400_and_stores_nothing(client, pending_order, settings):
    from exchange.gateways.signing import sign_payload

    event = checkout_completed_event(pending_order)
    event["data"]["object"]["metadata"]["note"] = "a\u0000b"  # jsonb cannot hold U+0000
    raw = json.dumps(event).encode()
    before = _counts()
    response = post_webhook(
        client, {}, secret="", body=raw, header=sign_payload(body=raw, secret=settings.SANDBOX_WEBHOOK_SECRET)
    )
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["message"]
    assert _counts() == before
