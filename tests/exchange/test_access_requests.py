"""Listings that require approval: buyers state their use, merchants decide, only approved buyers buy."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from exchange.choices import AccessRequestStatus, OrderStatus
from exchange.models import AccessRequest, Entitlement, Order
from exchange.services.access import access_requests_expire
from tests.exchange.helpers import approve_in_sandbox, buy
from tests.factories import make_listing

pytestmark = pytest.mark.django_db
SCENARIO = "Route planning research for the bus network of the city, internal use only."


@pytest.fixture
def gated(merchant, merchant_user, staff, categories):
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, requires_access_request=True)
    assert listing.requires_access_request
    return listing


def _request(client, listing, **data):
    payload = {"organisation": "Guiyang Transit Lab", "use_scenario": SCENARIO, **data}
    return client.post(reverse("exchange:access_request_new", args=[listing.slug]), payload, follow=True)


def test_buyer_needs_approval_then_buys_with_the_scenario_recorded(
    client, buyer, merchant_user, gated, django_capture_on_commit_callbacks
):
    client.force_login(buyer)
    refused = client.post(
        reverse("exchange:order_buy", args=[gated.slug]),
        {"accept_licence": "1", "token": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
        follow=True,
    )
    assert "needs the merchant&#x27;s approval first" in refused.content.decode()
    assert Order.objects.count() == 0

    page = _request(client, gated)
    assert "Request sent" in page.content.decode()
    item = AccessRequest.objects.get()
    assert (item.status, item.organisation) == (AccessRequestStatus.PENDING, "Guiyang Transit Lab")

    client.force_login(merchant_user)
    queue = client.get(reverse("exchange:access_requests")).content.decode()
    assert SCENARIO in queue
    client.post(reverse("exchange:access_requests"), {"request": item.pk, "decision": "approve"})
    item.refresh_from_db()
    assert item.status == AccessRequestStatus.APPROVED and item.decided_by == merchant_user

    client.force_login(buyer)
    buy(client, gated)
    order = Order.objects.get()
    assert order.access_request == item
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert Entitlement.objects.get(order=order).scenario == SCENARIO


def test_bad_requests_change_nothing(client, buyer, merchant_user, gated, published_listing):
    client.force_login(buyer)
    assert "at least 20 characters" in _request(client, gated, use_scenario="research").content.decode()
    assert "which organisation" in _request(client, gated, organisation=" ").content.decode()
    assert "does not take access requests" in _request(client, published_listing).content.decode()
    assert AccessRequest.objects.count() == 0
    _request(client, gated)
    assert "already have a request waiting" in _request(client, gated).content.decode()
    assert AccessRequest.objects.count() == 1
    client.force_login(merchant_user)
    assert "own merchant" in _request(client, gated).content.decode()
    assert AccessRequest.objects.count() == 1


def test_rejection_needs_a_note_and_blocks_buying(client, buyer, merchant_user, other_merchant_user, gated):
    client.force_login(buyer)
    _request(client, gated)
    item = AccessRequest.objects.get()
    client.force_login(other_merchant_user)
    assert (
        client.post(reverse("exchange:access_requests"), {"request": item.pk, "decision": "approve"}).status_code == 404
    )
    client.force_login(merchant_user)
    empty = client.post(reverse("exchange:access_requests"), {"request": item.pk, "decision": "reject"}, follow=True)
    assert "Tell the buyer why" in empty.content.decode()
    assert AccessRequest.objects.get().status == AccessRequestStatus.PENDING
    client.post(
        reverse("exchange:access_requests"),
        {"request": item.pk, "decision": "reject", "note": "Commercial resale is not allowed."},
    )
    assert AccessRequest.objects.get().status == AccessRequestStatus.REJECTED
    client.force_login(buyer)
    buy(client, gated)
    assert Order.objects.count() == 0


def test_unanswered_requests_expire(client, buyer, gated, settings):
    client.force_login(buyer)
    _request(client, gated)
    assert access_requests_expire() == 0
    assert access_requests_expire(now=timezone.now() + timedelta(days=settings.ACCESS_REQUEST_TTL_DAYS + 1)) == 1
    assert AccessRequest.objects.get().status == AccessRequestStatus.EXPIRED
