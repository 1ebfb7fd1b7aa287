"""The buyer accepts the product's licence at checkout, and the order records which licence and when."""

import hashlib

import pytest
from django.urls import reverse

from exchange.models import Order
from listings.models import Listing
from tests.exchange.helpers import buy
from tests.factories import make_listing

pytestmark = pytest.mark.django_db

TERMS = "Use inside your organisation only.\nNo resale; attribution: Guiyang Data."


def test_every_buy_form_asks_for_the_licence(client, buyer, published_listing):
    client.force_login(buyer)
    page = client.get(reverse("listings:detail", args=[published_listing.slug])).content.decode()
    forms = page.count(reverse("exchange:order_buy", args=[published_listing.slug]))
    assert forms >= 1
    assert page.count('name="accept_licence" value="1" required') == forms
    assert f"I accept the licence: {published_listing.get_licence_display()}" in page


def test_the_order_records_the_licence_and_the_time(client, buyer, published_listing):
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    assert (order.licence, order.licence_terms_sha256) == (published_listing.licence, "")
    assert abs((order.licence_accepted_at - order.created_at).total_seconds()) < 5
    page = client.get(reverse("exchange:order_detail", args=[order.public_id])).content.decode()
    assert f"Licence accepted: {published_listing.get_licence_display()}" in page


def test_a_custom_licence_is_recorded_by_the_hash_of_its_text(client, buyer, merchant, merchant_user, staff):
    listing = make_listing(
        merchant=merchant, owner=merchant_user, reviewer=staff, licence="custom", licence_terms=TERMS
    )
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get()
    assert order.licence == "custom"
    assert order.licence_terms_sha256 == hashlib.sha256(TERMS.encode()).hexdigest()
    # The merchant editing the terms later does not change what this buyer agreed to.
    Listing.objects.filter(pk=listing.pk).update(licence_terms=TERMS + "\nNew clause.")
    order.refresh_from_db()
    assert order.licence_terms_sha256 == hashlib.sha256(TERMS.encode()).hexdigest()
    page = client.get(reverse("exchange:order_detail", args=[order.public_id])).content.decode()
    assert order.licence_terms_sha256 in page
