"""The catalog API's product-page parts (versions, schema, sample, plans) and the merchant profile: public, published
products only, exactly what the web pages show."""

import hashlib

import pytest
from rest_framework import serializers
from rest_framework.test import APIClient

from listings.choices import ListingStatus
from listings.models import Listing, ListingVersion
from listings.profiling import datafile_profile_run
from listings.services import (
    data_dictionary_update,
    listing_approve,
    listing_submit,
    pricing_plan_create,
    pricing_plan_set,
    version_publish,
    version_upload,
)
from merchants.selectors import merchant_for_user
from tests.factories import FULL_CHECKLIST, SAMPLE_CSV, csv_upload, make_listing

pytestmark = pytest.mark.django_db

LISTINGS = "/api/v1/catalog/listings/"
PARTS = ("versions", "schema", "sample", "plans")
V2_CSV = b"city,population,area\nGuiyang,6400000.5,8034.5\n"
V3_CSV = b"name\nnobody\n"
NOT_FOUND = {"error": {"code": "not_found", "message": "No such published data product."}}


def iso(value) -> str:
    return serializers.DateTimeField().to_representation(value)


@pytest.fixture
def api():
    return APIClient()


def _upload(listing, actor, content: bytes, name: str, changelog: str = "") -> ListingVersion:
    version = version_upload(listing=listing, actor=actor, uploaded_file=csv_upload(content, name), changelog=changelog)
    for data_file in version.files.all():
        datafile_profile_run(data_file_pk=data_file.pk)
    return version


@pytest.fixture
def three_versions(published_listing, merchant_user):
    """v1 (published by the review), v2 (published later, a changed schema), v3 (uploaded, not published)."""
    v2 = _upload(published_listing, merchant_user, V2_CSV, "cities-2025.csv", changelog="Area added; year dropped.")
    version_publish(version=v2, actor=merchant_user)
    _upload(published_listing, merchant_user, V3_CSV, "draft.csv")
    return {v.label: v for v in published_listing.versions.all()}


def _file(name: str, content: bytes, rows: int) -> dict:
    return {
        "name": name,
        "format": "csv",
        "size": len(content),
        "row_count": rows,
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def test_versions_are_the_published_ones_newest_first_with_schema_changes_and_files(
    api, published_listing, three_versions, django_assert_num_queries
):
    v1, v2 = three_versions["v1"], three_versions["v2"]
    with django_assert_num_queries(3):  # the listing, the page of versions, their files
        response = api.get(f"{LISTINGS}{published_listing.slug}/versions/")
    assert response.status_code == 200
    assert response.json() == {
        "next": None,
        "previous": None,
        "results": [
            {
                "label": "v2",
                "changelog": "Area added; year dropped.",
                "published_at": iso(v2.published_at),
                "schema_diff": {
                    "added": ["area"],
                    "removed": ["year"],
                    "retyped": [{"name": "population", "from": "BIGINT", "to": "DOUBLE"}],
                },
                "files": [_file("cities-2025.csv", V2_CSV, 1)],
            },
            {
                "label": "v1",
                "changelog": "",
                "published_at": iso(v1.published_at),
                "schema_diff": None,  # the first version: nothing to compare with
                "files": [_file("data.csv", SAMPLE_CSV, 2)],
            },
        ],
    }


def test_versions_page_through_with_the_cursor(api, published_listing, three_versions):
    first = api.get(f"{LISTINGS}{published_listing.slug}/versions/", {"page_size": 1}).json()
    assert [v["label"] for v in first["results"]] == ["v2"] and first["previous"] is None
    second = api.get(first["next"]).json()
    assert [v["label"] for v in second["results"]] == ["v1"] and second["next"] is None


def test_schema_is_the_current_published_versions_with_the_data_dictionary(api, published_listing, merchant_user):
    data_dictionary_update(
        listing=published_listing, actor=merchant_user, descriptions={"city": "City name", "population": "Residents"}
    )
    response = api.get(f"{LISTINGS}{published_listing.slug}/schema/")
    assert response.status_code == 200
    assert response.json() == {
        "version": "v1",
        "columns": [
            {"name": "city", "type": "VARCHAR", "description": "City name"},
            {"name": "year", "type": "BIGINT", "description": ""},
            {"name": "population", "type": "BIGINT", "description": "Residents"},
        ],
    }


def test_schema_and_sample_follow_the_newest_published_version_not_an_unpublished_one(
    api, published_listing, three_versions
):
    assert api.get(f"{LISTINGS}{published_listing.slug}/schema/").json() == {
        "version": "v2",
        "columns": [
            {"name": "city", "type": "VARCHAR", "description": ""},
            {"name": "population", "type": "DOUBLE", "description": ""},
            {"name": "area", "type": "DOUBLE", "description": ""},
        ],
    }
    assert api.get(f"{LISTINGS}{published_listing.slug}/sample/").json() == {
        "version": "v2",
        "columns": ["city", "population", "area"],
        "rows": [["Guiyang", 6400000.5, 8034.5]],
    }


def test_sample_is_the_rows_the_product_page_shows(api, published_listing):
    response = api.get(f"{LISTINGS}{published_listing.slug}/sample/")
    assert response.status_code == 200
    assert response.json() == {
        "version": "v1",
        "columns": ["city", "year", "population"],
        "rows": [["Guiyang", 2024, 6400000], ["Shanghai", 2024, 24870000]],
    }


@pytest.fixture
def priced_listing(merchant, merchant_user, staff):
    """A published product with four plans offered and one withdrawn (a replaced one-time price)."""
    listing = make_listing(merchant=merchant, owner=merchant_user, title="Bus ridership", status=ListingStatus.DRAFT)
    _upload(listing, merchant_user, SAMPLE_CSV, "rides.csv")
    pricing_plan_set(listing=listing, actor=merchant_user, amount=5000, currency="CNY")
    pricing_plan_set(listing=listing, actor=merchant_user, amount=4500, currency="CNY")  # replaces the 5000 one
    plans = [
        {"kind": "metered", "amount": 5, "metered_unit": "thousand_rows", "free_units_per_month": 10},
        {"kind": "subscription", "amount": 9900, "interval": "month", "name": "Monthly feed"},
        {"kind": "free", "amount": 0, "version_access": "latest"},
    ]
    for plan in plans:
        pricing_plan_create(listing=listing, actor=merchant_user, currency="CNY", **plan)
    pricing_plan_create(
        listing=listing,
        actor=merchant_user,
        currency="CNY",
        kind="metered",
        amount=2,
        metered_unit="call",
        monthly_cap_units=1000,
        version_access="while_entitled",
    )
    listing_submit(listing=listing, actor=merchant_user)
    listing_approve(listing=listing, reviewer=staff, checklist=FULL_CHECKLIST, notes="ok")
    listing.refresh_from_db()
    return listing


def _plan(plan, **fields) -> dict:
    return {
        "id": plan.pk,
        "kind": plan.kind,
        "amount": plan.amount,
        "currency": "CNY",
        "interval": None,
        "metered_unit": None,
        "free_units_per_month": 0,
        "monthly_cap_units": None,
        "version_access": "all",
        "buyer_service_fee": 0,
        "buyer_service_fee_display": "¥0.00 CNY",
        **fields,
    }


def test_plans_are_the_active_ones_cheapest_commitment_first_with_terms_and_fee(api, priced_listing, settings):
    settings.BUYER_SERVICE_FEE = {"CNY": 200}
    plans = {(p.kind, p.amount): p for p in priced_listing.plans.all()}
    response = api.get(f"{LISTINGS}{priced_listing.slug}/plans/")
    assert response.status_code == 200
    assert response.json() == {
        "results": [
            _plan(
                plans["free", 0],
                kind_label="Free",
                name="Free",
                price_display="Free",
                version_access="latest",
                terms="Free access · Latest version only",
            ),
            _plan(
                plans["one_time", 4500],
                kind_label="One-time purchase",
                name="One-time purchase",
                price_display="¥45.00 CNY",
                terms="Pay once, keep access · All versions",
                buyer_service_fee=200,
                buyer_service_fee_display="¥2.00 CNY",
            ),
            _plan(
                plans["subscription", 9900],
                kind_label="Subscription",
                name="Monthly feed",
                price_display="¥99.00 CNY / month",
                interval="month",
                terms="Billed monthly · All versions",
            ),
            _plan(
                plans["metered", 2],
                kind_label="Metered (pay per use)",
                name="Metered (pay per use)",
                price_display="¥0.02 CNY per API call",
                metered_unit="call",
                monthly_cap_units=1000,
                version_access="while_entitled",
                terms="Pay per API call; at most 1000 per month · Versions published while entitled",
            ),
            _plan(
                plans["metered", 5],
                kind_label="Metered (pay per use)",
                name="Metered (pay per use)",
                price_display="¥0.05 CNY per 1,000 rows",
                metered_unit="thousand_rows",
                free_units_per_month=10,
                terms="Pay per 1,000 rows; first 10 free each month · All versions",
            ),
        ]
    }
    assert ("one_time", 5000) in plans and not plans["one_time", 5000].is_active  # withdrawn: not offered


@pytest.mark.parametrize("status", [ListingStatus.DRAFT, ListingStatus.SUBMITTED])
@pytest.mark.parametrize("part", ["", *PARTS])
def test_anything_not_published_is_not_found(api, merchant, merchant_user, status, part):
    listing = make_listing(merchant=merchant, owner=merchant_user, title=f"Hidden {status}", status=status)
    before = list(Listing.objects.values_list("pk", "status", "updated_at"))
    url = f"{LISTINGS}{listing.slug}/" + (f"{part}/" if part else "")
    # Not even its own merchant sees it here: the catalog is the published catalog.
    api.force_authenticate(merchant_user)
    response = api.get(url)
    assert response.status_code == 404
    assert response.json() == NOT_FOUND
    assert list(Listing.objects.values_list("pk", "status", "updated_at")) == before


@pytest.mark.parametrize("part", PARTS)
def test_an_unknown_slug_is_not_found(api, db, part):
    response = api.get(f"{LISTINGS}no-such-product/{part}/")
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_the_list_answers_the_first_invalid_parameters_own_code(api, published_listing):
    response = api.get(LISTINGS, {"licence": "mine"})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid_choice",
            "message": "The request is not valid.",
            "fields": {"licence": ["Select a valid choice. mine is not one of the available choices."]},
        }
    }
    response = api.get(LISTINGS, {"cursor": "%%%"})
    assert response.json()["error"]["code"] == "invalid_cursor"


# --- the merchant profile ---------------------------------------------------------------------------------------------


@pytest.fixture
def merchant_catalog(merchant, merchant_user, other_merchant_user, staff):
    """The merchant's two published products and a draft, and another merchant's published product."""
    mine = {"merchant": merchant, "owner": merchant_user, "reviewer": staff}
    older = make_listing(**mine, title="Rainfall")
    newer = make_listing(**mine, title="Air quality")
    make_listing(merchant=merchant, owner=merchant_user, title="Not yet", status=ListingStatus.DRAFT)
    theirs = merchant_for_user(user=other_merchant_user)
    make_listing(merchant=theirs, owner=other_merchant_user, reviewer=staff, title="Ferry times")
    return {"older": older, "newer": newer}


def test_merchant_profile_with_its_published_products_latest_first(api, merchant, merchant_catalog):
    cards = {card["slug"]: card for card in api.get(LISTINGS).json()["results"]}
    response = api.get(f"/api/v1/catalog/merchants/{merchant.slug}/")
    assert response.status_code == 200
    assert response.json() == {
        "slug": "guiyang-data",
        "name": "Guiyang Data",
        "description": "",
        "url": "http://127.0.0.1:8000/merchants/guiyang-data/",
        "products": {
            "next": None,
            "previous": None,
            # The same cards as the catalog's.
            "results": [cards[merchant_catalog["newer"].slug], cards[merchant_catalog["older"].slug]],
        },
    }


def test_merchant_products_page_through_with_the_cursor(api, merchant, merchant_catalog, django_assert_num_queries):
    url = f"/api/v1/catalog/merchants/{merchant.slug}/"
    with django_assert_num_queries(3):  # the merchant, the page of products, their plans
        first = api.get(url, {"page_size": 1}).json()["products"]
    assert [card["title"] for card in first["results"]] == ["Air quality"]
    second = api.get(first["next"]).json()["products"]
    assert [card["title"] for card in second["results"]] == ["Rainfall"] and second["next"] is None
    assert api.get(second["previous"]).json()["products"]["results"] == first["results"]


def test_an_unknown_merchant_is_not_found(api, db):
    response = api.get("/api/v1/catalog/merchants/nobody/")
    assert (response.status_code, response.json()) == (
        404,
        {"error": {"code": "not_found", "message": "No such merchant."}},
    )


def test_reading_twice_answers_the_same_and_writes_nothing(api, published_listing):
    # Read-only endpoints: asking twice answers the same and writes nothing.
    before = list(Listing.objects.values_list("pk", "status", "updated_at"))
    bodies = [api.get(f"{LISTINGS}{published_listing.slug}/{part}/").json() for part in PARTS for _ in range(2)]
    assert bodies[0::2] == bodies[1::2]
    assert list(Listing.objects.values_list("pk", "status", "updated_at")) == before
