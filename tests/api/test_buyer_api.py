"""The buyer's REST API (/api/v1/): orders, access requests, entitlements, deliveries, downloads, receipts.

Purchases run through the sandbox gateway's signed events with Celery eager on commit, as in
tests/exchange; callers authenticate with API keys.
"""

import datetime
import hashlib
import json

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework import serializers
from rest_framework.test import APIClient

from accounts.services import api_key_create
from exchange.choices import DeliveryStatus, OrderStatus
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import (
    AccessRequest,
    Delivery,
    DownloadLog,
    Entitlement,
    Order,
    OrderStatusHistory,
    PaymentEvent,
    TransactionCertificate,
)
from exchange.services.entitlements import entitlement_revoke
from exchange.services.orders import order_cancel, order_create
from merchants.selectors import merchant_for_user
from tests.factories import SAMPLE_CSV, make_listing

pytestmark = pytest.mark.django_db

HOST = "http://testserver"
ORDERS = "/api/v1/orders/"


def iso(moment) -> str | None:
    return serializers.DateTimeField().to_representation(moment) if moment else None


def key_client(user, scopes=("read", "trade")) -> APIClient:
    _, raw = api_key_create(user=user, name="tests", scopes=list(scopes))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client


def order_url(order, action="") -> str:
    return f"{ORDERS}{order.public_id}/" + (f"{action}/" if action else "")


def place(client, listing, key="key-1", **body):
    return client.post(ORDERS, {"listing": listing.slug, **body}, format="json", HTTP_IDEMPOTENCY_KEY=key)


def pay_in_sandbox(order, capture):
    order.refresh_from_db()
    with capture(execute=True):
        SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    order.refresh_from_db()
    return order


def bought(client, listing, capture, key="key-1") -> Order:
    """Order ``listing`` over the API, open the checkout and pay in the sandbox: a paid order with a delivery."""
    created = place(client, listing, key=key)
    assert created.status_code == 201, created.json()
    order = Order.objects.get(public_id=created.json()["public_id"])
    assert client.post(order_url(order, "checkout")).status_code == 200
    order = pay_in_sandbox(order, capture)
    assert order.status == OrderStatus.PAID
    return order


def error(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def download(client, url) -> tuple[int, bytes]:
    response = client.get(url)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, body


def plan_out(plan) -> dict:
    return {
        "id": plan.pk,
        "kind": plan.kind,
        "name": plan.display_name,
        "amount": plan.amount,
        "currency": plan.currency,
        "interval": plan.interval,
    }


# --- the whole purchase over the API ----------------------------------------------------------------------------------


def test_buy_pay_confirm_and_download_over_the_api(
    buyer, published_listing, django_capture_on_commit_callbacks, settings
):
    settings.BUYER_SERVICE_FEE = {"CNY": 100}
    client = key_client(buyer)

    found = client.get("/api/v1/catalog/listings/", {"q": "City populations"})
    assert found.status_code == 200
    assert [card["slug"] for card in found.json()["results"]] == [published_listing.slug]

    created = place(client, published_listing, key="first-purchase")
    assert created.status_code == 201
    order = Order.objects.get()
    plan = published_listing.plans.get()
    listing_ref = {"slug": published_listing.slug, "title": "City populations"}
    placed_at = iso(OrderStatusHistory.objects.get().created_at)
    assert created.json() == {
        "public_id": str(order.public_id),
        "reference": order.reference,
        "status": "pending_payment",
        "status_label": "Pending payment",
        "listing": listing_ref,
        "plan": plan_out(plan) | {"kind": "one_time", "amount": 1234, "currency": "CNY"},
        "amount": 1334,
        "service_fee": 100,
        "refunded_amount": 0,
        "currency": "CNY",
        "licence": published_listing.licence,
        "licence_terms_sha256": "",
        "licence_accepted_at": iso(order.licence_accepted_at),
        "created_at": iso(order.created_at),
        "paid_at": None,
        "delivered_at": None,
        "settled_at": None,
        "certificate_number": None,
        "links": {"self": f"{HOST}{order_url(order)}", "checkout": None, "certificate": None},
        "timeline": [{"from": None, "to": "pending_payment", "reason": "order placed", "at": placed_at}],
    }

    repeat = place(client, published_listing, key="first-purchase")
    assert repeat.status_code == 200
    assert repeat.json() == created.json()
    assert Order.objects.count() == 1

    checkout = client.post(order_url(order, "checkout"))
    order.refresh_from_db()
    assert checkout.status_code == 200
    assert order.checkout_url == f"/sandbox/checkout/{order.gateway_session_id}/"
    assert checkout.json() == {"checkout_url": f"{HOST}{order.checkout_url}"}
    assert client.get(order_url(order)).json()["links"]["checkout"] == f"{HOST}{order.checkout_url}"

    order = pay_in_sandbox(order, django_capture_on_commit_callbacks)
    paid = client.get(order_url(order)).json()
    assert (paid["status"], paid["paid_at"], paid["links"]["checkout"]) == ("paid", iso(order.paid_at), None)
    assert client.post(order_url(order, "checkout")).json() == error(
        "not_pending", "This order is paid (held in escrow), no longer waiting for payment."
    )

    entitlement = Entitlement.objects.get()
    assert client.get("/api/v1/entitlements/").json()["results"] == [
        {
            "id": entitlement.pk,
            "status": "active",
            "usable": True,
            "listing": listing_ref,
            "plan": plan_out(plan),
            "order": str(order.public_id),
            "version_access": "all",
            "scenario": "",
            "granted_at": iso(entitlement.granted_at),
            "valid_until": None,
            "revoked_at": None,
        }
    ]

    delivery = Delivery.objects.get()
    data_file = delivery.version.files.get()
    listed = client.get("/api/v1/deliveries/")
    assert listed.status_code == 200
    [item] = listed.json()["results"]
    download_url = item["files"][0]["download_url"]
    assert download_url.startswith(f"{HOST}/api/v1/downloads/")
    assert item == {
        "id": delivery.pk,
        "status": "ready",
        "entitlement": entitlement.pk,
        "order": str(order.public_id),
        "listing": listing_ref,
        "version_label": delivery.version.label,
        "version_published_at": iso(delivery.version.published_at),
        "prepared_at": iso(delivery.prepared_at),
        "ready_at": iso(delivery.ready_at),
        "confirmed_at": None,
        "files": [
            {
                "id": data_file.pk,
                "name": "data.csv",
                "size": len(SAMPLE_CSV),
                "sha256": hashlib.sha256(SAMPLE_CSV).hexdigest(),
                "format": "csv",
                "download_url": download_url,
            }
        ],
        "receipt_sha256": delivery.receipt_sha256,
        "receipt_url": f"{HOST}/api/v1/deliveries/{delivery.pk}/receipt/",
    }
    assert client.get(f"/api/v1/deliveries/{delivery.pk}/").json() | {"files": None} == item | {"files": None}

    confirmed = client.post(order_url(order, "confirm"))
    assert confirmed.status_code == 200
    assert confirmed.json()["status"] == "delivered"

    status, content = download(client, download_url)
    assert status == 200 and content == SAMPLE_CSV
    receipt = client.get(item["receipt_url"])
    assert receipt.status_code == 200
    assert receipt["X-Receipt-SHA256"] == hashlib.sha256(receipt.content).hexdigest() == delivery.receipt_sha256
    assert json.loads(receipt.content)["files"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert Delivery.objects.get().status == DeliveryStatus.CONFIRMED

    order.refresh_from_db()
    event = PaymentEvent.objects.get()
    history = list(OrderStatusHistory.objects.filter(order=order))
    final = client.get(order_url(order)).json()
    assert (final["status"], final["delivered_at"]) == ("delivered", iso(order.delivered_at))
    assert final["timeline"] == [
        {"from": None, "to": "pending_payment", "reason": "order placed", "at": iso(history[0].created_at)},
        {
            "from": "pending_payment",
            "to": "paid",
            "reason": f"payment confirmed ({event.event_id})",
            "at": iso(history[1].created_at),
        },
        {"from": "paid", "to": "delivered", "reason": "buyer confirmed receipt", "at": iso(history[2].created_at)},
    ]
    assert "buyer@example.com" not in json.dumps(final)


def test_a_complete_download_confirms_so_a_later_confirm_is_a_conflict(
    buyer, published_listing, django_capture_on_commit_callbacks
):
    client = key_client(buyer)
    order = bought(client, published_listing, django_capture_on_commit_callbacks)
    [item] = client.get("/api/v1/deliveries/").json()["results"]

    status, content = download(client, item["files"][0]["download_url"])
    assert (status, content) == (200, SAMPLE_CSV)
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED
    history = OrderStatusHistory.objects.filter(order=order).count()

    refused = client.post(order_url(order, "confirm"))
    assert refused.status_code == 409
    assert refused.json() == error("not_paid", "Receipt can only be confirmed for a paid order; this one is Delivered.")
    cancel = client.post(order_url(order, "cancel"))
    assert cancel.status_code == 409
    assert cancel.json() == error(
        "not_cancellable", "Only orders waiting for payment can be cancelled; this one is Delivered."
    )
    assert OrderStatusHistory.objects.filter(order=order).count() == history
    assert client.get(order_url(order)).json()["timeline"][-1]["reason"] == "first complete download"


def test_free_plan_completes_at_once_and_settled_order_links_its_certificate(
    buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks
):
    listing = make_listing(
        merchant=merchant, owner=merchant_user, reviewer=staff, extra_plans=[{"kind": "free", "amount": 0}]
    )
    free = listing.plans.get(kind="free")
    client = key_client(buyer)
    with django_capture_on_commit_callbacks(execute=True):
        created = place(client, listing, key="free-1", plan=free.pk)
    assert created.status_code == 201
    body = created.json()
    assert (body["status"], body["amount"], body["service_fee"], body["plan"]) == ("paid", 0, 0, plan_out(free))
    assert [row["to"] for row in body["timeline"]] == ["pending_payment", "paid"]
    assert client.get("/api/v1/certificates/").json() == {"next": None, "previous": None, "results": []}

    [item] = client.get("/api/v1/deliveries/").json()["results"]
    assert download(client, item["files"][0]["download_url"]) == (200, SAMPLE_CSV)
    with django_capture_on_commit_callbacks(execute=True):
        call_command("settle")
    order = Order.objects.get()
    assert order.status == OrderStatus.SETTLED
    certificate = TransactionCertificate.objects.get()
    detail = client.get(order_url(order)).json()
    assert detail["certificate_number"] == certificate.number
    assert detail["links"]["certificate"] == f"{HOST}/api/v1/certificates/{certificate.number}/"
    assert client.get("/api/v1/certificates/").json()["results"] == [
        {
            "number": certificate.number,
            "order": str(order.public_id),
            "issued_at": iso(certificate.issued_at),
            "key_id": certificate.key_id,
            "url": f"{HOST}/api/v1/certificates/{certificate.number}/",
        }
    ]
    assert client.get(detail["links"]["certificate"]).json()["number"] == certificate.number


# --- bad input --------------------------------------------------------------------------------------------------------


def test_bad_order_input_is_refused_with_a_code_and_creates_nothing(
    buyer, published_listing, draft_listing, other_merchant_user, settings
):
    client = key_client(buyer)
    other = make_listing(merchant=merchant_for_user(user=other_merchant_user), owner=other_merchant_user, title="Other")
    no_key = client.post(ORDERS, {"listing": published_listing.slug}, format="json")
    assert no_key.status_code == 400
    assert no_key.json() == error(
        "idempotency_key_required",
        "Send an Idempotency-Key header (1 to 100 characters).",
        fields={"non_field_errors": ["Send an Idempotency-Key header (1 to 100 characters)."]},
    )
    cases = [
        ({"listing": "no-such-data"}, "k1", 400, "unknown_listing", "No data product 'no-such-data'."),
        ({"listing": draft_listing.slug}, "k2", 400, "unknown_listing", f"No data product {draft_listing.slug!r}."),
        (
            {"listing": published_listing.slug, "plan": 999999},
            "k3",
            400,
            "bad_plan",
            "That pricing plan is not available for this data product.",
        ),
        (
            {"listing": published_listing.slug, "plan": other.plans.get().pk},
            "k4",
            400,
            "bad_plan",
            "That pricing plan is not available for this data product.",
        ),
        ({"listing": published_listing.slug}, "x" * 101, 400, "bad_key", None),
    ]
    for body, key, status, code, message in cases:
        response = client.post(ORDERS, body, format="json", HTTP_IDEMPOTENCY_KEY=key)
        assert response.status_code == status, body
        assert response.json()["error"]["code"] == code
        if message:
            assert response.json() == error(code, message, fields={"non_field_errors": [message]})
    shape = client.post(ORDERS, {"plan": "two"}, format="json", HTTP_IDEMPOTENCY_KEY="k5")
    assert shape.status_code == 400
    assert shape.json() == error(
        "required",  # the first field's own code
        "The request is not valid.",
        fields={"listing": ["This field is required."], "plan": ["A valid integer is required."]},
    )
    assert Order.objects.count() == 0 and OrderStatusHistory.objects.count() == 0

    assert place(client, published_listing, key="shared").status_code == 201
    reused = place(client, other, key="shared")
    assert reused.status_code == 409
    assert reused.json() == error("key_reused", "This idempotency key was already used for another purchase.")
    assert Order.objects.count() == 1

    bad_filter = client.get(ORDERS, {"status": "lost"})
    assert bad_filter.status_code == 400
    message = "status: Select a valid choice. lost is not one of the available choices."
    assert bad_filter.json() == error("bad_status", message, fields={"non_field_errors": [message]})


def test_order_list_filters_by_status_and_pages_with_the_cursor(buyer, published_listing):
    client = key_client(buyer)
    made = []
    for n in range(5):
        order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key=f"k{n}")
        if n < 4:
            order_cancel(order=order, actor=buyer)
        made.append(order)
    newest_first = [str(o.public_id) for o in reversed(made)]

    seen, url, pages = [], f"{ORDERS}?page_size=2", 0
    while url:
        page = client.get(url)
        assert page.status_code == 200
        seen += [row["public_id"] for row in page.json()["results"]]
        url, pages = page.json()["next"], pages + 1
    assert (seen, pages) == (newest_first, 3)
    assert "timeline" not in page.json()["results"][0]

    cancelled = client.get(ORDERS, {"status": "cancelled"}).json()["results"]
    assert [row["public_id"] for row in cancelled] == newest_first[1:]
    assert [row["public_id"] for row in client.get(ORDERS, {"status": "pending_payment"}).json()["results"]] == [
        newest_first[0]
    ]
    assert client.get(ORDERS, {"status": "paid"}).json()["results"] == []


def test_cancel_a_pending_order(buyer, published_listing):
    client = key_client(buyer)
    order = Order.objects.get(public_id=place(client, published_listing).json()["public_id"])
    cancelled = client.post(order_url(order, "cancel"))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["timeline"][-1] | {"at": None} == {
        "from": "pending_payment",
        "to": "cancelled",
        "reason": "cancelled by the buyer",
        "at": None,
    }
    again = client.post(order_url(order, "cancel"))
    assert again.status_code == 409
    assert again.json() == error(
        "not_cancellable", "Only orders waiting for payment can be cancelled; this one is Cancelled."
    )
    assert client.post(order_url(order, "checkout")).status_code == 409
    assert OrderStatusHistory.objects.filter(order=order).count() == 2


# --- access requests --------------------------------------------------------------------------------------------------


def test_access_request_with_a_use_scenario(buyer, merchant, merchant_user, staff):
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, requires_access_request=True)
    client = key_client(buyer)
    url = "/api/v1/access-requests/"

    short = client.post(url, {"listing": listing.slug, "organisation": "Acme", "use_scenario": "research"})
    assert short.status_code == 400
    assert short.json() == error(
        "invalid",
        "The request is not valid.",
        fields={"use_scenario": ["Describe the use scenario in at least 20 characters."]},
    )
    unknown = client.post(url, {"listing": "nope", "organisation": "Acme", "use_scenario": "x" * 30})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "unknown_listing")
    assert AccessRequest.objects.count() == 0

    blocked = place(client, listing)
    assert blocked.status_code == 409
    assert blocked.json()["error"]["code"] == "access_request_required"
    assert Order.objects.count() == 0

    scenario = "Urban planning research at the city institute."
    created = client.post(url, {"listing": listing.slug, "organisation": "Acme Institute", "use_scenario": scenario})
    assert created.status_code == 201
    item = AccessRequest.objects.get()
    expected = {
        "id": item.pk,
        "listing": {"slug": listing.slug, "title": listing.title},
        "organisation": "Acme Institute",
        "use_scenario": scenario,
        "status": "pending",
        "status_label": "Waiting for the merchant",
        "created_at": iso(item.created_at),
        "expires_at": iso(item.expires_at),
        "decided_at": None,
        "decision_note": "",
    }
    assert created.json() == expected
    assert client.get(f"{url}{item.pk}/").json() == expected
    assert client.get(url).json()["results"] == [expected]

    twice = client.post(url, {"listing": listing.slug, "organisation": "Acme Institute", "use_scenario": scenario})
    assert twice.status_code == 409
    assert twice.json() == error("already_pending", "You already have a request waiting for the merchant.")
    assert AccessRequest.objects.count() == 1


# --- who may do what ----------------------------------------------------------------------------------------------


def test_another_buyer_gets_404_on_every_object_and_changes_nothing(
    buyer, other_buyer, merchant, merchant_user, staff, published_listing, django_capture_on_commit_callbacks
):
    owner = key_client(buyer)
    order = bought(owner, published_listing, django_capture_on_commit_callbacks)
    assert place(owner, published_listing, key="second").json()["error"]["code"] == "already_entitled"
    second = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title="Second")
    pending = Order.objects.get(public_id=place(owner, second, key="second").json()["public_id"])
    gated = make_listing(
        merchant=merchant, owner=merchant_user, reviewer=staff, title="Gated", requires_access_request=True
    )
    request = owner.post(
        "/api/v1/access-requests/", {"listing": gated.slug, "organisation": "Acme", "use_scenario": "y" * 25}
    )
    assert request.status_code == 201
    delivery = Delivery.objects.get()
    [item] = owner.get("/api/v1/deliveries/").json()["results"]
    link = item["files"][0]["download_url"]

    stranger = key_client(other_buyer, scopes=("read", "trade", "data"))
    before = (
        list(Order.objects.order_by("pk").values_list("status", "gateway_session_id")),
        OrderStatusHistory.objects.count(),
        DownloadLog.objects.count(),
        Delivery.objects.get().status,
    )
    object_routes = [
        ("get", order_url(order), "order"),
        ("post", order_url(pending, "checkout"), "order"),
        ("post", order_url(pending, "cancel"), "order"),
        ("post", order_url(order, "confirm"), "order"),
        ("get", f"/api/v1/access-requests/{request.json()['id']}/", "access request"),
        ("get", f"/api/v1/entitlements/{delivery.entitlement_id}/", "entitlement"),
        ("get", f"/api/v1/deliveries/{delivery.pk}/", "delivery"),
        ("get", f"/api/v1/deliveries/{delivery.pk}/receipt/", "delivery"),
        ("get", link, "download"),
    ]
    for method, url, noun in object_routes:
        response = getattr(stranger, method)(url)
        assert response.status_code == 404, url
        assert response.json() == error("not_found", f"No such {noun}."), url
    for url in [ORDERS, "/api/v1/access-requests/", "/api/v1/entitlements/", "/api/v1/deliveries/"]:
        assert stranger.get(url).json() == {"next": None, "previous": None, "results": []}, url
    after = (
        list(Order.objects.order_by("pk").values_list("status", "gateway_session_id")),
        OrderStatusHistory.objects.count(),
        DownloadLog.objects.count(),
        Delivery.objects.get().status,
    )
    assert after == before
    assert before[0] == [(OrderStatus.PAID, order.gateway_session_id), (OrderStatus.PENDING_PAYMENT, None)]


def test_scopes_and_authentication(buyer, published_listing):
    reader = key_client(buyer, scopes=("read",))
    refused = place(reader, published_listing)
    assert refused.status_code == 403
    assert refused.json() == error("permission_denied", "This API key lacks the scope this needs: trade.")
    assert Order.objects.count() == 0
    assert reader.get(ORDERS).status_code == 200

    order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="made-elsewhere")
    for action in ("checkout", "cancel", "confirm"):
        assert reader.post(order_url(order, action)).status_code == 403, action
    order.refresh_from_db()
    assert (order.status, order.gateway_session_id) == (OrderStatus.PENDING_PAYMENT, None)

    trader = key_client(buyer, scopes=("trade",))
    assert trader.get(order_url(order)).status_code == 200
    assert trader.get("/api/v1/deliveries/").status_code == 403

    anonymous = APIClient()
    for url in [ORDERS, "/api/v1/deliveries/", "/api/v1/certificates/", order_url(order)]:
        response = anonymous.get(url)
        assert response.status_code == 401, url
        assert response.json()["error"]["code"] == "not_authenticated"
    assert place(anonymous, published_listing, key="anon").status_code == 401
    assert Order.objects.count() == 1


def test_money_rate_limit_answers_429_with_retry_after(buyer, published_listing, settings):
    settings.API_MONEY_RATE_PER_MINUTE = 2
    with time_machine.travel(datetime.datetime(2030, 5, 6, 12, 0, 15, tzinfo=datetime.UTC), tick=False):
        client = key_client(buyer)
        assert place(client, published_listing, key="a").status_code == 201
        assert place(client, published_listing, key="a").status_code == 200
        third = place(client, published_listing, key="b")
        assert third.status_code == 429
        assert third["Retry-After"] == "45"
        assert third.json() == error(
            "throttled", "Too many purchase requests: slow down. Expected available in 45 seconds."
        )
        assert Order.objects.count() == 1
        assert client.get(ORDERS).status_code == 200  # reading is not limited by the money limiter
    with time_machine.travel(datetime.datetime(2030, 5, 6, 12, 1, 0, tzinfo=datetime.UTC), tick=False):
        assert client.post(order_url(Order.objects.get(), "checkout")).status_code == 200


def test_a_revoked_entitlement_offers_no_download_link(buyer, published_listing, django_capture_on_commit_callbacks):
    client = key_client(buyer)
    bought(client, published_listing, django_capture_on_commit_callbacks)
    [item] = client.get("/api/v1/deliveries/").json()["results"]
    link = item["files"][0]["download_url"]
    entitlement_revoke(entitlement_pk=Entitlement.objects.get().pk, reason="tests")

    again = client.get(f"/api/v1/deliveries/{item['id']}/").json()
    assert again["files"][0]["download_url"] is None
    [entitlement] = client.get("/api/v1/entitlements/").json()["results"]
    assert (entitlement["status"], entitlement["usable"]) == ("revoked", False)
    response = client.get(link)
    assert response.status_code == 403
    assert response.json() == error("download_denied", "Your access to this data product has ended.")
    assert DownloadLog.objects.count() == 0


def test_list_pages_cost_the_same_queries_however_many_rows(
    buyer, merchant, merchant_user, staff, published_listing, django_capture_on_commit_callbacks
):
    client = key_client(buyer)
    urls = [ORDERS, "/api/v1/deliveries/", "/api/v1/entitlements/", "/api/v1/certificates/"]

    def costs() -> list[int]:
        counts = []
        for url in urls:
            with CaptureQueriesContext(connection) as queries:
                assert client.get(url).status_code == 200
            counts.append(len(queries))
        return counts

    bought(client, published_listing, django_capture_on_commit_callbacks)
    one = costs()
    for n in range(2):
        listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title=f"More {n}")
        bought(client, listing, django_capture_on_commit_callbacks, key=f"more-{n}")
    assert [len(client.get(url).json()["results"]) for url in urls] == [3, 3, 3, 0]
    assert costs() == one
