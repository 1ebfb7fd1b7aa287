"""Who may see, edit and download what: anything not theirs is a 404 and changes nothing."""

import time

import pytest
import time_machine
from django.urls import reverse

from exchange.models import DownloadLog, Order
from exchange.services.downloads import download_link_make
from listings.models import DataFile, Listing, ListingVersion, PricingPlan
from tests.exchange.helpers import approve_in_sandbox, buy, library_links, read_stream
from tests.factories import SAMPLE_CSV, csv_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def purchase(client, buyer, published_listing, django_capture_on_commit_callbacks):
    """The buyer's paid purchase; returns a fresh download link for the buyer."""
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    link = library_links(client.get(reverse("exchange:library")).content.decode())[0]
    client.logout()
    return link


PERSONAS = ["anonymous", "buyer", "other_buyer", "merchant_user", "other_merchant_user", "staff"]


def _login(client, request, persona):
    if persona != "anonymous":
        user = request.getfixturevalue(persona)
        client.force_login(user)
        return user
    return None


@pytest.mark.parametrize(
    ("persona", "expected"),
    [("anonymous", 302), ("buyer", 200), ("other_buyer", 403), ("merchant_user", 403), ("other_merchant_user", 403)],
)
def test_download_only_by_the_buyer(client, request, purchase, persona, expected):
    _login(client, request, persona)
    response = client.get(purchase)
    assert response.status_code == expected
    if expected == 200:
        assert read_stream(response) == SAMPLE_CSV
        assert DownloadLog.objects.filter(completed=True).count() == 1
    else:
        assert DownloadLog.objects.count() == 0


def test_tampered_or_foreign_download_links_are_refused(client, buyer, other_buyer, purchase):
    client.force_login(buyer)
    assert client.get(purchase[:-3] + "xyz/").status_code == 403
    assert client.get("/download/..%2F..%2Fetc%2Fpasswd/").status_code in (403, 404)
    delivery = buyer.entitlements.get().deliveries.get()
    foreign = download_link_make(delivery=delivery, file=delivery.version.files.get(), user=other_buyer)
    assert client.get(foreign).status_code == 403
    assert DownloadLog.objects.count() == 0


def test_expired_download_link_is_refused(client, buyer, purchase, settings):
    client.force_login(buyer)
    later = time.time() + settings.DOWNLOAD_LINK_TTL_SECONDS + 1
    with time_machine.travel(later, tick=False):
        response = client.get(purchase)
    assert response.status_code == 403
    assert b"expired" in response.content
    assert DownloadLog.objects.count() == 0


@pytest.mark.parametrize("persona", ["anonymous", "buyer", "other_merchant_user"])
def test_unpublished_listing_is_hidden(client, request, draft_listing, persona):
    _login(client, request, persona)
    assert client.get(reverse("listings:detail", args=[draft_listing.slug])).status_code == 404


@pytest.mark.parametrize(("persona", "expected"), [("merchant_user", 200), ("staff", 200)])
def test_unpublished_listing_is_visible_to_owner_and_staff(client, request, draft_listing, persona, expected):
    _login(client, request, persona)
    assert client.get(reverse("listings:detail", args=[draft_listing.slug])).status_code == expected


@pytest.mark.parametrize("persona", ["buyer", "other_merchant_user", "staff"])
def test_only_members_can_edit_a_listing(client, request, draft_listing, persona, _private_storage):
    _login(client, request, persona)
    pk = draft_listing.pk
    before = (ListingVersion.objects.count(), DataFile.objects.count(), PricingPlan.objects.count())
    assert client.get(reverse("listings:manage", args=[pk])).status_code == 404
    upload = client.post(reverse("listings:upload", args=[pk]), {"file": csv_upload()})
    assert upload.status_code == 404
    price = client.post(reverse("listings:price", args=[pk]), {"price": "10.00", "currency": "CNY"})
    assert price.status_code == 404
    assert client.post(reverse("listings:submit", args=[pk])).status_code == 404
    assert (ListingVersion.objects.count(), DataFile.objects.count(), PricingPlan.objects.count()) == before
    assert Listing.objects.get(pk=pk).status == "draft"
    assert not any(p.is_file() for p in _private_storage.rglob("*"))


def test_anonymous_is_sent_to_login_for_merchant_pages(client, draft_listing):
    response = client.get(reverse("listings:manage", args=[draft_listing.pk]))
    assert response.status_code == 302 and "/accounts/login/" in response.url


def test_owner_can_edit(client, merchant_user, draft_listing):
    client.force_login(merchant_user)
    assert client.get(reverse("listings:manage", args=[draft_listing.pk])).status_code == 200
    response = client.post(reverse("listings:upload", args=[draft_listing.pk]), {"file": csv_upload()})
    assert response.status_code == 302
    assert draft_listing.versions.count() == 1


@pytest.mark.parametrize(
    ("persona", "expected"),
    [("buyer", 200), ("merchant_user", 200), ("staff", 200), ("other_buyer", 404), ("other_merchant_user", 404)],
)
def test_order_page_visibility(client, request, purchase, persona, expected):
    order = Order.objects.get()
    _login(client, request, persona)
    assert client.get(reverse("exchange:order_detail", args=[order.public_id])).status_code == expected
