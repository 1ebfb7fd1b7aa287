"""Merchant pages (create, edit, manage, plans, dictionary, upload) and the public product page."""

import datetime
import json

import pytest
from django.urls import reverse

from listings.choices import ListingStatus, ProfileStatus
from listings.models import DataFile, Listing, PricingPlan
from listings.profiling import datafile_profile_run
from listings.services import (
    listing_approve,
    listing_create,
    listing_submit,
    pricing_plan_create,
    pricing_plan_set,
    version_upload,
)
from tests.factories import FULL_CHECKLIST, csv_upload

pytestmark = pytest.mark.django_db

PRODUCT_POST = {
    "title": "Guiyang bus ridership",
    "summary": "Daily boardings per line",
    "description": "## Method\n\nCounted at the gates.",
    "category": "",
    "tags": "Transport, buses\uff0cguiyang",  # a full-width comma separates too
    "licence": "custom",
    "licence_terms": "Research use only.",
    "update_frequency": "daily",
    "temporal_start": "2023-01-01",
    "temporal_end": "2024-12-31",
    "geographic_coverage": "Guiyang",
    "use_scenarios": "Urban planning\nAcademic research",
    "sensitivity": "deidentified",
}

COLUMNS = [
    {"name": "city", "type": "VARCHAR", "null_ratio": 0.0, "min": "Guiyang", "max": "Shanghai", "pii": []},
    {"name": "year", "type": "BIGINT", "null_ratio": 0.125, "min": 2024, "max": 2024, "pii": []},
    {"name": "contact", "type": "VARCHAR", "null_ratio": 0.5, "min": None, "max": None, "pii": ["email"]},
]
SAMPLE = [["Guiyang", 2024, "a***@example.com"], ["Shanghai", 2024, None]]


def profile(data_file: DataFile, columns=COLUMNS, rows=SAMPLE) -> DataFile:
    """What the profiling task records (written directly: profiling is tested on its own)."""
    data_file.profile_status = ProfileStatus.DONE
    data_file.columns = columns
    data_file.sample_rows = rows
    data_file.row_count = 2
    data_file.save()
    return data_file


def test_create_through_the_form(client, merchant, merchant_user, categories):
    client.force_login(merchant_user)
    assert client.get(reverse("listings:new")).status_code == 200
    response = client.post(reverse("listings:new"), {**PRODUCT_POST, "category": categories["transport"].pk})
    listing = Listing.objects.get()
    assert response.status_code == 302 and response.url == reverse("listings:manage", args=[listing.pk])
    assert (listing.title, listing.category, listing.licence_terms) == (
        "Guiyang bus ridership",
        categories["transport"],
        "Research use only.",
    )
    assert sorted(listing.tags.values_list("name", flat=True)) == ["buses", "guiyang", "transport"]
    assert (listing.temporal_start, listing.temporal_end) == (datetime.date(2023, 1, 1), datetime.date(2024, 12, 31))
    assert (listing.sensitivity, listing.update_frequency) == ("deidentified", "daily")
    assert listing.scenario_list == ["Urban planning", "Academic research"]


def test_create_form_shows_service_errors_and_creates_nothing(client, merchant, merchant_user):
    client.force_login(merchant_user)
    response = client.post(reverse("listings:new"), {**PRODUCT_POST, "licence_terms": ""})
    assert response.status_code == 400
    assert "A custom licence needs its terms" in response.content.decode()
    tags = ", ".join(f"t{i}" for i in range(11))
    response = client.post(reverse("listings:new"), {**PRODUCT_POST, "tags": tags})
    assert response.status_code == 400
    assert "at most 10 tags, not 11" in response.content.decode()
    assert Listing.objects.count() == 0


def test_edit_through_the_form(client, merchant_user, draft_listing, categories):
    client.force_login(merchant_user)
    url = reverse("listings:edit", args=[draft_listing.pk])
    page = client.get(url)
    assert page.status_code == 200 and 'value="Draft data"' in page.content.decode()
    response = client.post(url, {**PRODUCT_POST, "category": categories["finance"].pk, "licence": "CC0-1.0"})
    assert response.status_code == 302
    draft_listing.refresh_from_db()
    assert (draft_listing.title, draft_listing.licence, draft_listing.category) == (
        "Guiyang bus ridership",
        "CC0-1.0",
        categories["finance"],
    )
    page = client.get(url).content.decode()
    assert 'value="buses, guiyang, transport"' in page or 'value="transport, buses, guiyang"' in page


def test_edit_form_refuses_bad_dates_and_changes_nothing(client, merchant_user, draft_listing):
    client.force_login(merchant_user)
    before = Listing.objects.filter(pk=draft_listing.pk).values().get()
    response = client.post(
        reverse("listings:edit", args=[draft_listing.pk]),
        {**PRODUCT_POST, "temporal_start": "2025-01-01", "temporal_end": "2024-01-01"},
    )
    assert response.status_code == 400
    assert "The period covered cannot end before it starts." in response.content.decode()
    assert Listing.objects.filter(pk=draft_listing.pk).values().get() == before


@pytest.mark.parametrize("persona", ["other_merchant_user", "buyer"])
def test_other_users_cannot_edit(client, request, draft_listing, persona):
    client.force_login(request.getfixturevalue(persona))
    before = Listing.objects.filter(pk=draft_listing.pk).values().get()
    assert client.get(reverse("listings:edit", args=[draft_listing.pk])).status_code == 404
    assert client.post(reverse("listings:edit", args=[draft_listing.pk]), PRODUCT_POST).status_code == 404
    plans = reverse("listings:plan_add", args=[draft_listing.pk])
    assert client.post(plans, {"kind": "free", "plan-free-version_access": "all"}).status_code == 404
    assert client.post(reverse("listings:dictionary", args=[draft_listing.pk]), {}).status_code == 404
    assert Listing.objects.filter(pk=draft_listing.pk).values().get() == before
    assert PricingPlan.objects.count() == 0


def test_published_listing_edit_page_redirects(client, merchant_user, published_listing):
    client.force_login(merchant_user)
    url = reverse("listings:edit", args=[published_listing.pk])
    response = client.post(url, PRODUCT_POST, follow=True)
    assert response.redirect_chain[-1][0] == reverse("listings:manage", args=[published_listing.pk])
    assert "Only a draft or a rejected product can be edited." in response.content.decode()
    assert Listing.objects.get(pk=published_listing.pk).title == "City populations"


def test_manage_page_shows_profiling_results(client, merchant_user, draft_listing):
    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(), changelog="First cut")
    client.force_login(merchant_user)
    url = reverse("listings:manage", args=[draft_listing.pk])
    pending = client.get(url).content.decode()
    assert "Profiling…" in pending
    data_file = profile(DataFile.objects.get())
    page = client.get(url).content.decode()
    assert "Profiling…" not in page
    assert "First cut" in page
    assert data_file.sha256 in page and "data.csv" in page and "CSV" in page
    assert "<code>contact</code>" in page and '<tr class="pii">' in page
    assert '<span class="badge pii-flag">email</span>' in page
    assert "Possible personal data in 1 column" in page
    assert "<td>12.5%</td>" in page and "<td>50%</td>" in page  # null ratios
    assert "<td>a***@example.com</td>" in page  # sample rows
    assert 'name="col_2"' in page  # one dictionary input per profiled column
    assert "data-upload" in page and "<progress" in page and "js/upload.js" in page


def test_manage_page_shows_failed_profiling_and_review(client, merchant_user, staff, draft_listing):
    from listings.models import ListingReview

    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload())
    DataFile.objects.update(profile_status=ProfileStatus.FAILED, profile_error="Unreadable row 3.")
    ListingReview.objects.create(
        listing=draft_listing, submitted_by=merchant_user, reviewer=staff, decision="rejected", notes="Name the source."
    )
    client.force_login(merchant_user)
    page = client.get(reverse("listings:manage", args=[draft_listing.pk])).content.decode()
    assert "Profiling failed: Unreadable row 3." in page
    assert '<span class="badge rejected">Rejected</span>' in page and "Name the source." in page


def test_dictionary_through_the_form(client, merchant_user, published_listing):
    profile(DataFile.objects.get(version__listing=published_listing))
    client.force_login(merchant_user)
    url = reverse("listings:dictionary", args=[published_listing.pk])
    response = client.post(url, {"col_0": "City name", "col_1": "", "col_2": "Masked email"})
    assert response.status_code == 302
    published_listing.refresh_from_db()
    assert published_listing.data_dictionary == {"city": "City name", "contact": "Masked email"}
    too_long = client.post(url, {"col_0": "x" * 501})
    assert too_long.status_code == 400
    assert Listing.objects.get(pk=published_listing.pk).data_dictionary == {
        "city": "City name",
        "contact": "Masked email",
    }


def test_plans_through_the_forms(client, merchant_user, draft_listing):
    client.force_login(merchant_user)
    url = reverse("listings:plan_add", args=[draft_listing.pk])
    posts = [
        {"kind": "free", "plan-free-version_access": "latest"},
        {
            "kind": "one_time",
            "plan-one_time-price": "99.90",
            "plan-one_time-currency": "CNY",
            "plan-one_time-version_access": "all",
        },
        {
            "kind": "subscription",
            "plan-subscription-name": "Monthly feed",
            "plan-subscription-price": "15",
            "plan-subscription-currency": "USD",
            "plan-subscription-interval": "month",
            "plan-subscription-version_access": "while_entitled",
        },
        {
            "kind": "metered",
            "plan-metered-price": "0.05",
            "plan-metered-currency": "CNY",
            "plan-metered-metered_unit": "call",
            "plan-metered-free_units_per_month": "1000",
            "plan-metered-monthly_cap_units": "",
            "plan-metered-version_access": "all",
        },
    ]
    for data in posts:
        assert client.post(url, data).status_code == 302, data
    shown = [p.price_display for p in draft_listing.plans.order_by("pk")]
    assert shown == ["Free", "¥99.90 CNY", "$15.00 USD / month", "¥0.05 CNY per API call"]
    metered = draft_listing.plans.get(kind="metered")
    assert (metered.amount, metered.free_units_per_month, metered.monthly_cap_units) == (5, 1000, None)

    bad = client.post(url, {**posts[3], "plan-metered-monthly_cap_units": "10"})
    assert bad.status_code == 400
    assert "The monthly cap cannot be lower than the free units per month." in bad.content.decode()
    duplicate = client.post(url, posts[1])
    assert duplicate.status_code == 400 and "already has an active one-time purchase plan" in duplicate.content.decode()
    assert client.post(url, {"kind": "barter"}).status_code == 302
    assert draft_listing.plans.count() == 4

    free = draft_listing.plans.get(kind="free")
    response = client.post(reverse("listings:plan_deactivate", args=[draft_listing.pk, free.pk]))
    assert response.status_code == 302
    free.refresh_from_db()
    assert free.is_active is False
    page = client.get(reverse("listings:manage", args=[draft_listing.pk])).content.decode()
    assert "withdrawn" in page and "Monthly feed" in page


def test_plan_of_another_listing_cannot_be_deactivated(client, merchant, merchant_user, draft_listing):
    other = listing_create(merchant=merchant, actor=merchant_user, title="Other")
    plan = pricing_plan_set(listing=other, actor=merchant_user, amount=100, currency="CNY")
    client.force_login(merchant_user)
    response = client.post(reverse("listings:plan_deactivate", args=[draft_listing.pk, plan.pk]))
    assert response.status_code == 404
    assert PricingPlan.objects.get(pk=plan.pk).is_active


def test_upload_answers_json_to_the_progress_script(client, merchant_user, draft_listing):
    client.force_login(merchant_user)
    url = reverse("listings:upload", args=[draft_listing.pk])
    xhr = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}
    ok = client.post(url, {"file": csv_upload(), "changelog": "v1"}, **xhr)
    assert ok.status_code == 200
    assert ok.json() == {"ok": True, "redirect": reverse("listings:manage", args=[draft_listing.pk])}
    bad = client.post(url, {"file": csv_upload(b"", name="empty.csv")}, **xhr)
    assert bad.status_code == 400
    assert bad.json()["ok"] is False and bad.json()["errors"]
    assert draft_listing.versions.count() == 1
    # Without JavaScript: the ordinary form post and redirect.
    plain = client.post(url, {"file": csv_upload()})
    assert plain.status_code == 302 and draft_listing.versions.count() == 2


def test_upload_script_is_served():
    from django.contrib.staticfiles import finders

    path = finders.find("js/upload.js")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    assert "upload.onprogress" in source and "X-Requested-With" in source


@pytest.fixture
def rich_listing(merchant, merchant_user, staff, categories):
    """A published product with every field, four plans, two versions (the second with a schema diff)."""
    listing = listing_create(
        merchant=merchant,
        actor=merchant_user,
        title="City populations",
        summary="Populations by city",
        description="Intro <script>alert('pwned')</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        category=categories["government"],
        tags=["census", "cities"],
        licence="custom",
        licence_terms="No resale.",
        temporal_start=datetime.date(2020, 1, 1),
        temporal_end=datetime.date(2024, 12, 31),
        geographic_coverage="China",
        update_frequency="daily",
        use_scenarios="Market research\nAcademic research",
        sensitivity="none",
    )
    version_upload(listing=listing, actor=merchant_user, uploaded_file=csv_upload(), changelog="First release")
    version_upload(listing=listing, actor=merchant_user, uploaded_file=csv_upload(name="v2.csv"), changelog="Emails")
    pricing_plan_create(listing=listing, actor=merchant_user, kind="free", amount=0, currency="CNY", name="Taster")
    pricing_plan_set(listing=listing, actor=merchant_user, amount=9900, currency="CNY")
    pricing_plan_create(
        listing=listing, actor=merchant_user, kind="subscription", interval="year", amount=50000, currency="CNY"
    )
    pricing_plan_create(
        listing=listing, actor=merchant_user, kind="metered", metered_unit="thousand_rows", amount=300, currency="CNY"
    )
    listing_submit(listing=listing, actor=merchant_user)
    for data_file in DataFile.objects.filter(version__listing=listing):
        datafile_profile_run(data_file_pk=data_file.pk)
    listing_approve(listing=listing, reviewer=staff, checklist=FULL_CHECKLIST)
    latest = listing.versions.order_by("-pk").first()
    latest.schema_diff = {
        "added": ["contact"],
        "removed": ["district"],
        "retyped": [{"name": "year", "from": "VARCHAR", "to": "BIGINT"}],
    }
    latest.save()
    profile(latest.files.get())
    Listing.objects.filter(pk=listing.pk).update(data_dictionary={"city": "Official city name"})
    listing.refresh_from_db()
    return listing


def test_detail_page_shows_everything(client, buyer, rich_listing):
    client.force_login(buyer)
    response = client.get(reverse("listings:detail", args=[rich_listing.slug]))
    page = response.content.decode()
    # Plans side by side, each with its own buy button.
    for text in ("Taster", "Free", "¥99.00 CNY", "¥500.00 CNY / year", "¥3.00 CNY per 1,000 rows"):
        assert text in page
    assert page.count(reverse("exchange:order_buy", args=[rich_listing.slug])) == 4
    assert 'name="token"' in page
    # Description: Markdown rendered, script removed.
    description = page[page.index('<section class="card description"') :]
    description = description[: description.index("</section>")]
    assert "<table>" in description and "pwned" not in description
    assert "<script>alert" not in page
    # Schema with the dictionary, sample rows, diff.
    assert "<code>contact</code>" in page and "Official city name" in page
    assert "<td>a***@example.com</td>" in page
    assert "Added <code>contact</code>" in page and "Removed <code>district</code>" in page
    assert "Retyped <code>year</code>: VARCHAR → BIGINT" in page
    # v1 was superseded by v2 before the review, so only v2 was approved and published.
    assert "Emails" in page and "First release" not in page
    # Facts.
    for text in ("No resale.", "Custom terms", "Daily", "China", "2020-01-01", "No personal data", "Market research"):
        assert text in page, text
    assert rich_listing.registration_number in page
    assert reverse("listings:merchant_profile", args=[rich_listing.merchant.slug]) in page
    assert "census" in page and "Government" in page


def test_detail_page_embeds_json_ld(client, rich_listing):
    page = client.get(reverse("listings:detail", args=[rich_listing.slug])).content.decode()
    start = page.index('<script type="application/ld+json">') + len('<script type="application/ld+json">')
    data = json.loads(page[start : page.index("</script>", start)])
    assert data["@type"] == "Dataset" and data["name"] == "City populations"


def test_detail_page_anonymous_gets_sign_in_not_buy(client, rich_listing):
    page = client.get(reverse("listings:detail", args=[rich_listing.slug])).content.decode()
    assert reverse("exchange:order_buy", args=[rich_listing.slug]) not in page
    assert "Sign in to buy" in page


def test_detail_page_query_count_is_constant(client, django_assert_num_queries, rich_listing, merchant_user):
    url = reverse("listings:detail", args=[rich_listing.slug])
    # listing (+merchant, category), tags, plans, versions, files.
    with django_assert_num_queries(5):
        assert client.get(url).status_code == 200
    # More versions, files and plans do not add queries.
    Listing.objects.filter(pk=rich_listing.pk).update(status=ListingStatus.DRAFT)
    version_upload(listing=rich_listing, actor=merchant_user, uploaded_file=csv_upload(name="v3.csv"))
    pricing_plan_create(
        listing=rich_listing, actor=merchant_user, kind="metered", metered_unit="call", amount=1, currency="CNY"
    )
    Listing.objects.filter(pk=rich_listing.pk).update(status=ListingStatus.PUBLISHED)
    rich_listing.versions.update(published_at=rich_listing.published_at)
    with django_assert_num_queries(5):
        page = client.get(url).content.decode()
    assert "v3" in page and "per API call" in page


def test_members_preview_unpublished_versions(client, merchant_user, draft_listing):
    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(), changelog="Work in progress")
    client.force_login(merchant_user)
    page = client.get(reverse("listings:detail", args=[draft_listing.slug])).content.decode()
    assert "Work in progress" in page and "Manage it" in page
    assert reverse("exchange:order_buy", args=[draft_listing.slug]) not in page


def test_merchant_profile_and_console(client, merchant_user, rich_listing):
    page = client.get(reverse("listings:merchant_profile", args=[rich_listing.merchant.slug])).content.decode()
    assert "City populations" in page and "¥99.00 CNY" in page and rich_listing.registration_number in page
    client.force_login(merchant_user)
    console = client.get(reverse("listings:console")).content.decode()
    assert "City populations" in console and "¥500.00 CNY / year" in console
