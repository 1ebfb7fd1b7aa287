"""Delivery receipts (JSON and page) and the buyer's library."""

import hashlib
import json

import pytest
from django.urls import reverse

from exchange.models import Delivery, DownloadLog, Entitlement, Notification, Order
from tests.conftest import client_for
from tests.exchange.helpers import approve_in_sandbox, buy, library_links
from tests.factories import SAMPLE_CSV, make_listing

pytestmark = pytest.mark.django_db


def purchase(client, user, listing, capture) -> Order:
    client.force_login(user)
    with capture(execute=True):
        buy(client, listing)
        order = Order.objects.get(buyer=user, listing=listing)
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    return order


@pytest.fixture
def delivered(client, buyer, published_listing, django_capture_on_commit_callbacks):
    """The buyer's paid purchase of the published listing, delivered (READY)."""
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    client.logout()
    return Delivery.objects.select_related("entitlement__order", "version").get()


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_receipt_json_is_the_stored_canonical_receipt_with_its_hash(client, buyer, merchant, delivered):
    entitlement = delivered.entitlement
    order, listing, version = entitlement.order, entitlement.listing, delivered.version
    data_file = version.files.get()
    response = client_for(client, buyer).get(reverse("exchange:receipt_json", args=[delivered.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == f'attachment; filename="receipt-{delivered.pk}.json"'
    assert response["X-Receipt-SHA256"] == delivered.receipt_sha256
    assert hashlib.sha256(response.content).hexdigest() == delivered.receipt_sha256
    expected = {
        "receipt_format": 1,
        "delivery_id": delivered.pk,
        "order": {"reference": order.reference, "public_id": str(order.public_id)},
        "product": {
            "title": "City populations",
            "slug": listing.slug,
            "listing_id": listing.pk,
            "registration_number": listing.registration_number,
        },
        "version": {"label": "v1", "published_at": _iso(version.published_at)},
        "files": [
            {
                "name": "data.csv",
                "size": len(SAMPLE_CSV),
                "sha256": hashlib.sha256(SAMPLE_CSV).hexdigest(),
                "format": "csv",
                "content_type": data_file.content_type,
            }
        ],
        "licence": {"code": "CC-BY-4.0", "name": "CC BY 4.0"},
        "scenario": "",
        "buyer": {"email": "buyer@example.com"},
        "merchant": {"name": "Guiyang Data"},
        "granted_at": _iso(entitlement.granted_at),
        "ready_at": _iso(delivered.ready_at),
        "issued_at": _iso(delivered.ready_at),
    }
    assert json.loads(response.content) == expected
    assert response.content == json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
    assert listing.registration_number  # the reviewed product carries its registration number


def test_receipt_page_shows_the_facts_and_how_to_verify(client, buyer, delivered):
    response = client_for(client, buyer).get(reverse("exchange:receipt", args=[delivered.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    order = delivered.entitlement.order
    for fact in (
        order.reference,
        "Guiyang Data",
        "CC BY 4.0",
        "data.csv",
        hashlib.sha256(SAMPLE_CSV).hexdigest(),
        delivered.receipt_sha256,
        f"sha256sum receipt-{delivered.pk}.json",
        "sha256sum data.csv",
        reverse("exchange:receipt_json", args=[delivered.pk]),
    ):
        assert fact in page


def test_staff_may_read_any_receipt(client, staff, delivered):
    response = client_for(client, staff).get(reverse("exchange:receipt_json", args=[delivered.pk]))
    assert response.status_code == 200
    assert response["X-Receipt-SHA256"] == delivered.receipt_sha256


@pytest.mark.parametrize("persona", ["anonymous", "other_buyer", "merchant_user", "other_merchant_user"])
@pytest.mark.parametrize("route", ["exchange:receipt_json", "exchange:receipt"])
def test_receipts_are_404_for_anyone_but_the_buyer_and_change_nothing(client, request, delivered, persona, route):
    user = None if persona == "anonymous" else request.getfixturevalue(persona)
    before = Delivery.objects.values().get(pk=delivered.pk)
    notices = Notification.objects.count()
    response = client_for(client, user).get(reverse(route, args=[delivered.pk]))
    assert response.status_code == 404
    assert delivered.receipt_sha256 not in response.content.decode()
    assert Delivery.objects.values().get(pk=delivered.pk) == before
    assert (DownloadLog.objects.count(), Notification.objects.count()) == (0, notices)


def test_a_delivery_without_a_receipt_yet_is_404(client, buyer, delivered):
    Delivery.objects.filter(pk=delivered.pk).update(status="pending", receipt={}, receipt_sha256="")
    assert client_for(client, buyer).get(reverse("exchange:receipt_json", args=[delivered.pk])).status_code == 404
    assert client.get(reverse("exchange:receipt_json", args=[delivered.pk + 1000])).status_code == 404


def test_library_lists_entitlements_deliveries_files_and_receipts(client, buyer, delivered):
    page = client_for(client, buyer).get(reverse("exchange:library")).content.decode()
    assert len(library_links(page)) == 1
    for fact in (
        "City populations",
        "Guiyang Data",
        delivered.entitlement.order.reference,
        "perpetual access",
        "Ready to download",
        hashlib.sha256(SAMPLE_CSV).hexdigest(),
        reverse("exchange:receipt", args=[delivered.pk]),
        reverse("exchange:receipt_json", args=[delivered.pk]),
    ):
        assert fact in page


def test_library_query_count_does_not_grow_with_purchases(
    client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    for n in range(4):
        listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title=f"Product {n}")
        purchase(client, buyer, listing, django_capture_on_commit_callbacks)
    assert Entitlement.objects.filter(buyer=buyer).count() == 4
    assert Delivery.objects.filter(status="ready").count() == 4
    client.force_login(buyer)
    with django_assert_max_num_queries(9):
        page = client.get(reverse("exchange:library")).content.decode()
    assert len(library_links(page)) == 4


def test_staff_see_a_deliverys_history_and_the_full_download_log_in_the_admin(client, staff, buyer, delivered):
    client.force_login(buyer)
    link = library_links(client.get(reverse("exchange:library")).content.decode())[0]
    b"".join(client.get(link, HTTP_USER_AGENT="curl/8.0").streaming_content)
    client.force_login(staff)
    page = client.get(reverse("admin:exchange_delivery_change", args=[delivered.pk])).content.decode()
    assert "pending" in page.lower() and "files verified" in page
    log_page = client.get(reverse("admin:exchange_downloadlog_changelist")).content.decode()
    assert "curl/8.0" in log_page and buyer.email in log_page
    assert DownloadLog.objects.get().completed
