"""The merchant's REST API (/api/v1/merchant/): products, versions and their profiling, review, pricing plans,
sales, payouts, statements and usage.

Everything is driven through the real services: uploads are profiled by the real task (eager, on commit),
purchases go through the sandbox gateway, settlement runs in process, the data API records real usage.
"""

import hashlib
from datetime import UTC, date, datetime

import pytest
import time_machine
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.services import api_key_create
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import Order, Payout, UsageRecord
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.settlement import settlement_run_execute, settlement_run_start
from exchange.services.usage import usage_aggregate_month
from listings.api import merchant_views
from listings.choices import REVIEW_CHECKLIST, ListingStatus
from listings.models import DataFile, Listing, ListingReview, ListingVersion, PricingPlan
from listings.services import listing_approve, listing_create, listing_reject, version_upload
from tests.factories import FULL_CHECKLIST, UserFactory, make_listing

pytestmark = pytest.mark.django_db

CSV = b"city,year,contact\nGuiyang,2024,li.wei@example.com\nShanghai,2023,wang.fang@example.com\n"
PRODUCTS = "/api/v1/merchant/products/"


def key_for(user, scopes=("merchant",)) -> str:
    return api_key_create(user=user, name="tests", scopes=list(scopes))[1]


def api_as(user, scopes=("merchant",)) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key_for(user, scopes)}")
    return client


@pytest.fixture
def api(merchant, merchant_user) -> APIClient:
    return api_as(merchant_user)


def upload(client, slug, content=CSV, name="cities.csv", **extra):
    return client.post(f"{PRODUCTS}{slug}/versions/", {"file": _file(content, name), **extra}, format="multipart")


def _file(content: bytes, name: str):
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def error(response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def snapshot() -> dict:
    """Everything a refused merchant request could have changed."""
    return {
        "listings": sorted(Listing.objects.values_list("pk", "slug", "title", "status", "updated_at")),
        "versions": sorted(ListingVersion.objects.values_list("pk", "listing_id", "label", "published_at")),
        "files": sorted(DataFile.objects.values_list("pk", "sha256", "profile_status")),
        "plans": sorted(PricingPlan.objects.values_list("pk", "listing_id", "kind", "amount", "is_active")),
        "reviews": sorted(ListingReview.objects.values_list("pk", "listing_id", "decision")),
        "orders": sorted(Order.objects.values_list("pk", "status")),
    }


# --- the whole path: create, upload, profile, price, submit, review -----------------------------------------------


def test_create_upload_price_submit_and_see_the_review(
    api, merchant, staff, categories, django_capture_on_commit_callbacks
):
    created = api.post(
        PRODUCTS,
        {
            "title": "  City contacts ",
            "summary": "Contacts by city",
            "category": "government",
            "tags": ["Cities", "contacts", "cities"],
            "licence": "CC-BY-4.0",
            "use_scenarios": ["research", "  ", "planning"],
            "temporal_start": "2023-01-01",
            "temporal_end": "2024-12-31",
            "sensitivity": "personal",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    slug = body["slug"]
    assert slug == "city-contacts"
    assert {k: v for k, v in body.items() if k not in {"created_at", "updated_at"}} == {
        "slug": "city-contacts",
        "merchant": merchant.slug,
        "title": "City contacts",
        "summary": "Contacts by city",
        "description": "",
        "category": "government",
        "tags": ["cities", "contacts"],
        "licence": "CC-BY-4.0",
        "licence_terms": "",
        "update_frequency": "once",
        "temporal_start": "2023-01-01",
        "temporal_end": "2024-12-31",
        "geographic_coverage": "",
        "use_scenarios": ["research", "planning"],
        "sensitivity": "personal",
        "requires_access_request": False,
        "status": "draft",
        "registration_number": None,
        "published_at": None,
        "data_dictionary": {},
        "submission_problems": ["Upload at least one data file.", "Set a price."],
    }
    listing = Listing.objects.get(slug=slug)
    assert listing.merchant == merchant

    # Upload (multipart): the answer comes before profiling; the task runs once the upload commits.
    with django_capture_on_commit_callbacks(execute=True):
        uploaded = upload(api, slug, changelog="First release")
    assert uploaded.status_code == 201, uploaded.content
    version = uploaded.json()
    assert (version["label"], version["changelog"], version["published_at"]) == ("v1", "First release", None)
    (pending,) = version["files"]
    assert (pending["original_name"], pending["size"], pending["sha256"], pending["profile_status"]) == (
        "cities.csv",
        len(CSV),
        hashlib.sha256(CSV).hexdigest(),
        "pending",
    )
    assert (pending["row_count"], pending["columns"], pending["pii_columns"]) == (None, [], {})

    detail = api.get(f"{PRODUCTS}{slug}/versions/{version['id']}/")
    assert detail.status_code == 200
    (profiled,) = detail.json()["files"]
    assert profiled["profile_status"] == "done"
    assert profiled["profile_error"] == ""
    assert profiled["row_count"] == 2
    assert profiled["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert (profiled["format"], profiled["encoding"], profiled["content_type"]) == ("csv", "utf-8", "text/csv")
    assert profiled["columns"] == [
        {"name": "city", "type": "VARCHAR", "null_ratio": 0.0, "min": "Guiyang", "max": "Shanghai", "pii": []},
        {"name": "year", "type": "BIGINT", "null_ratio": 0.0, "min": "2023", "max": "2024", "pii": []},
        {
            "name": "contact",
            "type": "VARCHAR",
            "null_ratio": 0.0,
            "min": "li.wei@example.com",
            "max": "wang.fang@example.com",
            "pii": ["email"],
        },
    ]
    assert profiled["pii_columns"] == {"contact": ["email"]}
    assert profiled["sample"] == {
        "header": ["city", "year", "contact"],
        "rows": [["Guiyang", 2024, "li.wei@example.com"], ["Shanghai", 2023, "wang.fang@example.com"]],
    }
    versions = api.get(f"{PRODUCTS}{slug}/versions/").json()
    assert [(v["id"], v["label"], v["files"][0]["profile_status"]) for v in versions["results"]] == [
        (version["id"], "v1", "done")
    ]

    plan = api.post(f"{PRODUCTS}{slug}/plans/", {"kind": "one_time", "amount": 9900, "currency": "CNY"}, format="json")
    assert plan.status_code == 201, plan.content
    assert {k: v for k, v in plan.json().items() if k not in {"id", "created_at"}} == {
        "kind": "one_time",
        "name": "",
        "amount": 9900,
        "currency": "CNY",
        "interval": "",
        "metered_unit": "",
        "free_units_per_month": 0,
        "monthly_cap_units": None,
        "version_access": "all",
        "is_active": True,
        "price_display": "¥99.00 CNY",
    }

    submitted = api.post(f"{PRODUCTS}{slug}/submit/")
    assert submitted.status_code == 200, submitted.content
    assert (submitted.json()["status"], submitted.json()["submission_problems"]) == ("submitted", [])
    reviews = api.get(f"{PRODUCTS}{slug}/reviews/").json()["results"]
    assert [(r["version"], r["decision"], r["notes"], r["decided_at"]) for r in reviews] == [
        ("v1", "pending", "", None)
    ]

    listing_approve(listing=listing, reviewer=staff, checklist=FULL_CHECKLIST, notes="Sources verified.")

    (review,) = api.get(f"{PRODUCTS}{slug}/reviews/").json()["results"]
    stored = ListingReview.objects.get()
    assert review == {
        "id": stored.pk,
        "version": "v1",
        "decision": "approved",
        "notes": "Sources verified.",
        "checklist": dict.fromkeys(REVIEW_CHECKLIST, True),
        "submitted_at": stored.submitted_at.isoformat().replace("+00:00", "Z"),
        "decided_at": stored.decided_at.isoformat().replace("+00:00", "Z"),
    }
    product = api.get(f"{PRODUCTS}{slug}/").json()
    listing.refresh_from_db()
    assert (product["status"], product["registration_number"]) == ("published", listing.registration_number)
    assert listing.registration_number.startswith("DX-")
    assert [p["slug"] for p in api.get(PRODUCTS).json()["results"]] == [slug]


def test_a_rejection_shows_its_reason_and_the_product_can_be_fixed_and_resubmitted(api, merchant, merchant_user, staff):
    listing = make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)
    listing_reject(
        listing=listing,
        reviewer=staff,
        reason="Name the source of the figures.",
        checklist={"check_lawful_source": True},
    )
    (review,) = api.get(f"{PRODUCTS}{listing.slug}/reviews/").json()["results"]
    assert (review["decision"], review["notes"]) == ("rejected", "Name the source of the figures.")
    assert review["checklist"] == {**dict.fromkeys(REVIEW_CHECKLIST, False), "check_lawful_source": True}

    source = "Source: city statistics bureaus."
    patched = api.patch(f"{PRODUCTS}{listing.slug}/", {"description": source}, format="json")
    assert patched.status_code == 200, patched.content
    assert (patched.json()["description"], patched.json()["status"]) == (source, "rejected")
    assert api.post(f"{PRODUCTS}{listing.slug}/submit/").json()["status"] == "submitted"
    assert [r["decision"] for r in api.get(f"{PRODUCTS}{listing.slug}/reviews/").json()["results"]] == [
        "pending",
        "rejected",
    ]


# --- pricing plans ----------------------------------------------------------------------------------------------


def test_plans_are_replaced_not_changed_and_withdrawn_not_deleted(api, draft_listing):
    url = f"{PRODUCTS}{draft_listing.slug}/plans/"
    metered = api.post(
        url,
        {
            "kind": "metered",
            "name": "Pay per call",
            "amount": 5,
            "currency": "CNY",
            "metered_unit": "call",
            "free_units_per_month": 100,
            "monthly_cap_units": 10000,
        },
        format="json",
    ).json()
    free = api.post(url, {"kind": "free"}, format="json").json()
    assert (free["amount"], free["currency"], free["price_display"]) == (0, "CNY", "Free")

    changed = api.patch(f"{url}{metered['id']}/", {"amount": 7, "monthly_cap_units": None}, format="json")
    assert changed.status_code == 200, changed.content
    new = changed.json()
    assert new["id"] != metered["id"]
    terms = ("kind", "name", "amount", "free_units_per_month", "monthly_cap_units", "is_active")
    assert {k: new[k] for k in terms} == {
        "kind": "metered",
        "name": "Pay per call",
        "amount": 7,
        "free_units_per_month": 100,
        "monthly_cap_units": None,
        "is_active": True,
    }
    assert PricingPlan.objects.get(pk=metered["id"]).is_active is False

    assert api.delete(f"{url}{free['id']}/").status_code == 204
    assert PricingPlan.objects.get(pk=free["id"]).is_active is False
    # Withdrawing twice is not an error; a withdrawn plan cannot change or come back.
    assert api.patch(f"{url}{free['id']}/", {"is_active": False}, format="json").json()["is_active"] is False
    before = snapshot()
    refused = api.patch(f"{url}{free['id']}/", {"is_active": True}, format="json")
    assert error(refused) == (
        409,
        "plan_inactive",
        "A withdrawn plan cannot change or come back; add a new plan instead.",
    )
    assert snapshot() == before

    listed = api.get(url).json()["results"]
    assert [(p["id"], p["kind"], p["amount"], p["is_active"]) for p in listed] == [
        (new["id"], "metered", 7, True),
        (free["id"], "free", 0, False),
        (metered["id"], "metered", 5, False),
    ]


def test_bad_plans_are_refused_and_change_nothing(api, draft_listing):
    url = f"{PRODUCTS}{draft_listing.slug}/plans/"
    one_time = api.post(url, {"kind": "one_time", "amount": 1000, "currency": "CNY"}, format="json").json()
    before = snapshot()

    missing = api.post(url, {"kind": "one_time"}, format="json")
    assert error(missing) == (400, "required", "The request is not valid.")
    assert missing.json()["error"]["fields"] == {
        "amount": ["This field is required."],
        "currency": ["This field is required."],
    }
    no_interval = api.post(url, {"kind": "subscription", "amount": 500, "currency": "CNY"}, format="json")
    assert no_interval.status_code == 400
    assert no_interval.json()["error"]["fields"] == {
        "interval": ["A subscription needs a billing interval: month or year."]
    }
    bad_kind = api.post(url, {"kind": "barter", "amount": 1, "currency": "CNY"}, format="json")
    assert bad_kind.json()["error"]["fields"] == {"kind": ['"barter" is not a valid choice.']}
    overflow = api.post(
        url,
        {"kind": "metered", "amount": 1, "currency": "CNY", "metered_unit": "call", "free_units_per_month": 2**31},
        format="json",
    )
    assert overflow.json()["error"]["fields"] == {
        "free_units_per_month": ["Ensure this value is less than or equal to 2147483647."]
    }
    duplicate = api.post(url, {"kind": "one_time", "amount": 2000, "currency": "CNY"}, format="json")
    assert error(duplicate) == (
        409,
        "duplicate_kind",
        "This product already has an active one-time purchase plan; deactivate it first.",
    )
    # A refused replacement leaves the plan it would have replaced active.
    refused = api.patch(f"{url}{one_time['id']}/", {"amount": 0}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"amount": ["A one-time price must be greater than zero."]}
    both = api.patch(f"{url}{one_time['id']}/", {"amount": 5, "is_active": False}, format="json")
    assert both.json()["error"]["fields"] == {"is_active": ["Withdraw a plan or change its terms, not both at once."]}
    assert snapshot() == before


def test_a_published_product_cannot_be_changed(api, published_listing):
    plan = published_listing.plans.get()
    before = snapshot()
    for response in (
        api.patch(f"{PRODUCTS}{published_listing.slug}/", {"title": "Renamed"}, format="json"),
        api.post(f"{PRODUCTS}{published_listing.slug}/plans/", {"kind": "free"}, format="json"),
        api.patch(f"{PRODUCTS}{published_listing.slug}/plans/{plan.pk}/", {"amount": 1}, format="json"),
        api.delete(f"{PRODUCTS}{published_listing.slug}/plans/{plan.pk}/"),
    ):
        assert error(response)[:2] == (409, "not_editable"), response.content
    resubmit = api.post(f"{PRODUCTS}{published_listing.slug}/submit/")
    assert error(resubmit) == (409, "invalid_transition", "A listing cannot go from Published to Submitted.")
    assert snapshot() == before


# --- bad input ----------------------------------------------------------------------------------------------------


def test_bad_product_input_is_refused_field_by_field_and_creates_nothing(api, categories):
    before = snapshot()
    missing = api.post(PRODUCTS, {"summary": "No title"}, format="json")
    assert error(missing) == (400, "required", "The request is not valid.")
    assert missing.json()["error"]["fields"] == {"title": ["This field is required."]}

    blank = api.post(PRODUCTS, {"title": "   "}, format="json")
    assert blank.json()["error"]["fields"] == {"title": ["This field may not be blank."]}

    unknown = api.post(PRODUCTS, {"title": "X", "category": "astrology", "licence": "WTFPL"}, format="json")
    assert unknown.json()["error"]["fields"] == {
        "category": ["Object with slug=astrology does not exist."],
        "licence": ['"WTFPL" is not a valid choice.'],
    }
    # Rules spanning fields are the service's; its messages come back keyed by field.
    rules = api.post(
        PRODUCTS,
        {
            "title": "X",
            "licence": "custom",
            "temporal_start": "2024-02-01",
            "temporal_end": "2024-01-01",
            "tags": [f"tag{n}" for n in range(11)],
        },
        format="json",
    )
    assert error(rules) == (400, "too_many_tags", "The request is not valid.")
    assert rules.json()["error"]["fields"] == {"tags": ["A data product can have at most 10 tags, not 11."]}
    spans = api.post(
        PRODUCTS,
        {"title": "X", "licence": "custom", "temporal_start": "2024-02-01", "temporal_end": "2024-01-01"},
        format="json",
    )
    assert spans.json()["error"]["fields"] == {
        "licence_terms": ["A custom licence needs its terms: state what buyers may and may not do."],
        "temporal_end": ["The period covered cannot end before it starts."],
    }
    not_json = api.post(PRODUCTS, "title=X", content_type="application/x-www-form-urlencoded")
    assert error(not_json)[:2] == (415, "unsupported_media_type")
    assert snapshot() == before


def test_bad_uploads_are_refused_with_codes_and_store_nothing(api, draft_listing, settings, _private_storage):
    slug = draft_listing.slug
    before = snapshot()
    cases = [
        (b"city\nGuiyang\n", "cities.txt", "bad_extension"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "cities.csv", "content_mismatch"),
        (b"", "cities.csv", "empty"),
        (b"a,b\n1,2,3\n", "cities.csv", "malformed_csv"),
    ]
    for content, name, code in cases:
        response = upload(api, slug, content=content, name=name)
        assert error(response)[:2] == (400, code), (name, response.content)
    settings.UPLOAD_MAX_BYTES = len(CSV) - 1
    too_large = upload(api, slug)
    assert error(too_large) == (
        413,
        "too_large",
        f"The file is {len(CSV)} bytes; the limit is {len(CSV) - 1} bytes.",
    )
    no_file = api.post(f"{PRODUCTS}{slug}/versions/", {"changelog": "nothing attached"}, format="multipart")
    assert no_file.json()["error"]["fields"] == {"file": ["No file was submitted."]}
    as_json = api.post(f"{PRODUCTS}{slug}/versions/", {"file": "city\nGuiyang\n"}, format="json")
    assert error(as_json)[:2] == (415, "unsupported_media_type")
    assert snapshot() == before
    assert [path for path in _private_storage.rglob("*") if path.is_file()] == []


def test_a_large_upload_reaches_the_service_as_a_temporary_file(
    api, draft_listing, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    content = b"id,city\n" + b"".join(b"%d,Guiyang\n" % n for n in range(1000))
    assert len(content) > 4 * settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    received = []

    def spy(*, uploaded_file, **kwargs):
        received.append((type(uploaded_file).__name__, uploaded_file.size))
        return version_upload(uploaded_file=uploaded_file, **kwargs)

    monkeypatch.setattr(merchant_views, "version_upload", spy)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api, draft_listing.slug, content=content, name="big.csv")
    assert response.status_code == 201, response.content
    assert received == [("TemporaryUploadedFile", len(content))]
    version = api.get(f"{PRODUCTS}{draft_listing.slug}/versions/{response.json()['id']}/").json()
    (data_file,) = version["files"]
    assert (data_file["row_count"], data_file["sha256"]) == (1000, hashlib.sha256(content).hexdigest())


def test_submitting_an_incomplete_product_says_what_is_missing(api, draft_listing):
    before = snapshot()
    response = api.post(f"{PRODUCTS}{draft_listing.slug}/submit/")
    assert error(response) == (409, "incomplete", "Upload at least one data file. Set a price.")
    assert snapshot() == before


# --- money: sales, payouts, statements, usage --------------------------------------------------------------------


def _sell(listing, buyer, capture) -> Order:
    """The buyer pays the listing's one-time price through the sandbox gateway."""
    with capture(execute=True):
        order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=f"api-{buyer.pk}")
        order_checkout_start(order=order)
        order.refresh_from_db()
        SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    return Order.objects.get(pk=order.pk)


MARCH_3 = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)


def test_a_sale_its_settlement_payout_and_statement(
    api, merchant, published_listing, buyer, settings, django_capture_on_commit_callbacks
):
    settings.PLATFORM_FEE_BPS = 1000
    settings.BUYER_SERVICE_FEE = {}
    capture = django_capture_on_commit_callbacks
    with time_machine.travel(MARCH_3, tick=False):
        order = _sell(published_listing, buyer, capture)
        sales = api.get("/api/v1/merchant/sales/")
        assert sales.status_code == 200
        assert sales.json()["results"] == [
            {
                "public_id": str(order.public_id),
                "reference": order.reference,
                "product": {"slug": published_listing.slug, "title": "City populations"},
                "plan_kind": "one_time",
                "amount": 1234,
                "currency": "CNY",
                "service_fee": 0,
                "refunded_amount": 0,
                "status": "paid",
                "created_at": "2026-03-03T10:00:00Z",
                "paid_at": "2026-03-03T10:00:00Z",
                "delivered_at": None,
                "settled_at": None,
            }
        ]
        assert buyer.email.encode() not in sales.content
        assert api.get("/api/v1/merchant/payouts/").json()["results"] == []

        with capture(execute=True):
            order_confirm_receipt(order=order, actor=buyer)
        run = settlement_run_start(trigger="test")
        with capture(execute=True):
            settlement_run_execute(run_pk=run.pk)

        (sale,) = api.get("/api/v1/merchant/sales/").json()["results"]
        assert (sale["status"], sale["delivered_at"], sale["settled_at"]) == (
            "settled",
            "2026-03-03T10:00:00Z",
            "2026-03-03T10:00:00Z",
        )
        payout = Payout.objects.get()
        assert api.get("/api/v1/merchant/payouts/").json()["results"] == [
            {
                "id": payout.pk,
                "run": run.pk,
                "amount": 1111,
                "currency": "CNY",
                "status": "sent",
                "gateway_reference": payout.gateway_reference,
                "created_at": "2026-03-03T10:00:00Z",
                "sent_at": "2026-03-03T10:00:00Z",
            }
        ]
        assert payout.gateway_reference

        statement = api.get("/api/v1/merchant/statements/", {"from": "2026-03-01", "to": "2026-03-31"})
        assert statement.status_code == 200, statement.content
        assert statement.json() == {
            "merchant": merchant.slug,
            "period": {"first": "2026-03-01", "last": "2026-03-31"},
            "totals": [
                {
                    "currency": "CNY",
                    "opening": 0,
                    "sales": 1234,
                    "fees": 123,
                    "refunds": 0,
                    "disputes": 0,
                    "payouts": 1111,
                    "payouts_returned": 0,
                    "other": 0,
                    "closing": 0,
                    "payouts_sent": 1111,
                    "lines": 2,
                }
            ],
        }
        # Without a period: the current month, the same figures.
        assert api.get("/api/v1/merchant/statements/").json() == statement.json()
        april = api.get("/api/v1/merchant/statements/", {"from": "2026-04-01", "to": "2026-04-30"}).json()
        assert april["totals"] == [
            {
                "currency": "CNY",
                "opening": 0,
                "sales": 0,
                "fees": 0,
                "refunds": 0,
                "disputes": 0,
                "payouts": 0,
                "payouts_returned": 0,
                "other": 0,
                "closing": 0,
                "payouts_sent": 0,
                "lines": 0,
            }
        ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2026-03-10", "to": "2026-03-01"}, "'from' (2026-03-10) is after 'to' (2026-03-01)."),
        ({"from": "2026-13-01"}, "'from' must be a date written YYYY-MM-DD, not '2026-13-01'."),
        ({"to": "yesterday"}, "'to' must be a date written YYYY-MM-DD, not 'yesterday'."),
        (
            {"from": "2025-01-01", "to": "2026-01-31"},
            "A statement covers at most 366 days; 2025-01-01 to 2026-01-31 is 396.",
        ),
        # The calendar ends: a period reaching December 9999 would need days after it.
        ({"from": "9999-12-01"}, "'from' and 'to' must be days before 9999-12-01."),
        ({"from": "9999-11-01", "to": "9999-12-31"}, "'from' and 'to' must be days before 9999-12-01."),
    ],
)
def test_a_bad_statement_period_is_400_bad_period(api, params, message):
    response = api.get("/api/v1/merchant/statements/", params)
    assert error(response) == (400, "bad_period", message)
    assert response.json()["error"]["fields"] == {"non_field_errors": [message]}


def test_usage_is_aggregated_per_product_and_day_without_buyers(
    api, published_listing, buyer, other_buyer, django_capture_on_commit_callbacks
):
    data_file = published_listing.versions.get().files.get()
    rows_url = reverse("data_api:file_rows", args=[data_file.pk])
    with time_machine.travel(MARCH_3, tick=False):
        for user in (buyer, other_buyer):
            _sell(published_listing, user, django_capture_on_commit_callbacks)
        for user, calls in ((buyer, 2), (other_buyer, 1)):
            client = api_as(user, scopes=("data",))
            for _ in range(calls):
                assert client.get(rows_url).status_code == 200
        usage_aggregate_month(month=date(2026, 3, 1))
        response = api.get("/api/v1/merchant/usage/")
    assert response.status_code == 200
    sent = sum(UsageRecord.objects.values_list("bytes", flat=True))
    assert sent > 0
    product = {"slug": published_listing.slug, "title": "City populations"}
    assert response.json() == {
        "api_daily": [{"day": "2026-03-03", "product": product, "calls": 3, "rows": 6, "bytes": sent, "buyers": 2}],
        "api_monthly": [
            {
                "month": "2026-03",
                "product": product,
                "calls": 3,
                "rows": 6,
                "bytes": sent,
                "units": 0,
                "amount": 0,
                "currency": "CNY",
                "buyers": 2,
            }
        ],
        "downloads_daily": [],
        "downloads_monthly": [],
    }
    for user in (buyer, other_buyer):
        assert user.email.encode() not in response.content


# --- who may do what ------------------------------------------------------------------------------------------------


def _object_routes(listing) -> list[tuple[str, str, dict | None]]:
    """Every object route of the merchant API, with the method and a body that would change something."""
    version = listing.versions.get()
    plan = listing.plans.get()
    product = f"{PRODUCTS}{listing.slug}/"
    return [
        ("get", product, None),
        ("patch", product, {"title": "Taken over"}),
        ("get", f"{product}versions/", None),
        ("post", f"{product}versions/", "upload"),
        ("get", f"{product}versions/{version.pk}/", None),
        ("get", f"{product}reviews/", None),
        ("get", f"{product}plans/", None),
        ("post", f"{product}plans/", {"kind": "free"}),
        ("get", f"{product}plans/{plan.pk}/", None),
        ("patch", f"{product}plans/{plan.pk}/", {"amount": 1}),
        ("delete", f"{product}plans/{plan.pk}/", None),
        ("post", f"{product}submit/", None),  # last: a submitted product takes no more changes
    ]


def _call(client, method, url, body):
    if body == "upload":
        return client.post(url, {"file": _file(CSV, "cities.csv")}, format="multipart")
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


@pytest.fixture
def rejected_listing(merchant, merchant_user, staff):
    """A product every write route would accept from its owner (editable, with a version and a plan)."""
    listing = make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)
    listing_reject(listing=listing, reviewer=staff, reason="Fix it.")
    return listing


@pytest.mark.parametrize("persona", ["other_merchant_user", "buyer", "staff"])
def test_other_merchants_buyers_and_staff_get_404_on_every_object_route(request, rejected_listing, persona):
    client = api_as(request.getfixturevalue(persona))
    before = snapshot()
    for method, url, body in _object_routes(rejected_listing):
        response = _call(client, method, url, body)
        assert error(response)[:2] == (404, "not_found"), (method, url)
    assert snapshot() == before


def test_the_same_routes_succeed_for_the_owner(api, rejected_listing):
    statuses = [_call(api, method, url, body).status_code for method, url, body in _object_routes(rejected_listing)]
    assert statuses == [200, 200, 200, 201, 200, 200, 200, 201, 200, 200, 204, 200]


@pytest.mark.parametrize("persona", ["buyer", "staff"])
def test_a_caller_who_is_no_merchant_gets_404_on_the_collections(request, persona, published_listing):
    client = api_as(request.getfixturevalue(persona))
    before = snapshot()
    for url in (
        PRODUCTS,
        "/api/v1/merchant/sales/",
        "/api/v1/merchant/payouts/",
        "/api/v1/merchant/statements/",
        "/api/v1/merchant/usage/",
    ):
        assert error(client.get(url)) == (404, "not_found", "You are not a member of a merchant."), url
    assert error(client.post(PRODUCTS, {"title": "Mine now"}, format="json"))[:2] == (404, "not_found")
    assert snapshot() == before


def test_another_merchant_sees_none_of_this_merchants_products_or_money(
    other_merchant_user, published_listing, buyer, django_capture_on_commit_callbacks
):
    _sell(published_listing, buyer, django_capture_on_commit_callbacks)
    client = api_as(other_merchant_user)
    assert client.get(PRODUCTS).json()["results"] == []
    assert client.get("/api/v1/merchant/sales/").json()["results"] == []
    assert client.get("/api/v1/merchant/payouts/").json()["results"] == []
    assert client.get("/api/v1/merchant/statements/").json()["totals"] == []


def test_a_key_without_the_merchant_scope_gets_403_and_changes_nothing(merchant_user, rejected_listing):
    client = api_as(merchant_user, scopes=("read", "trade", "data"))
    before = snapshot()
    routes = [
        *_object_routes(rejected_listing),
        ("get", PRODUCTS, None),
        ("post", PRODUCTS, {"title": "New"}),
        ("get", "/api/v1/merchant/sales/", None),
        ("get", "/api/v1/merchant/payouts/", None),
        ("get", "/api/v1/merchant/statements/", None),
        ("get", "/api/v1/merchant/usage/", None),
    ]
    for method, url, body in routes:
        assert error(_call(client, method, url, body)) == (
            403,
            "permission_denied",
            "This API key lacks the scope this needs: merchant.",
        ), (method, url)
    assert snapshot() == before


def test_anonymous_callers_get_401(rejected_listing):
    client = APIClient()
    for method, url, body in [*_object_routes(rejected_listing), ("get", "/api/v1/merchant/usage/", None)]:
        assert error(_call(client, method, url, body))[:2] == (401, "not_authenticated"), (method, url)


def test_the_web_session_acts_with_the_merchant_scope(merchant_user, draft_listing):
    client = APIClient()
    client.force_login(merchant_user)
    assert [p["slug"] for p in client.get(PRODUCTS).json()["results"]] == [draft_listing.slug]


def test_lists_are_cursor_paginated(api, merchant, merchant_user):
    made = [listing_create(merchant=merchant, actor=merchant_user, title=f"Set {n}").slug for n in range(3)]
    first = api.get(PRODUCTS, {"page_size": 2}).json()
    assert [p["slug"] for p in first["results"]] == made[:0:-1]
    second = api.get(first["next"]).json()
    assert ([p["slug"] for p in second["results"]], second["next"]) == ([made[0]], None)


def test_list_queries_are_pinned_and_do_not_grow_with_the_rows(
    api, merchant, merchant_user, buyer, django_capture_on_commit_callbacks
):
    def count(url) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert api.get(url).status_code == 200
        return len(queries)

    first = make_listing(merchant=merchant, owner=merchant_user, title="First")
    _sell(first, buyer, django_capture_on_commit_callbacks)
    product = f"{PRODUCTS}{first.slug}/"
    urls = [PRODUCTS, "/api/v1/merchant/sales/", f"{product}versions/", f"{product}plans/", f"{product}reviews/"]
    api.get(PRODUCTS)  # the key's first use records when it was used
    # The key (1) and the merchant or the product (1), then the rows (1) and their tags or files (1).
    assert [count(url) for url in urls] == [4, 3, 4, 3, 3]
    for n in range(3):
        listing = make_listing(merchant=merchant, owner=merchant_user, title=f"More {n}")
        _sell(listing, UserFactory(), django_capture_on_commit_callbacks)
        listing_create(merchant=merchant, actor=merchant_user, title=f"Draft {n}")
    assert [count(url) for url in urls] == [4, 3, 4, 3, 3]
    assert len(api.get(PRODUCTS).json()["results"]) == 7
