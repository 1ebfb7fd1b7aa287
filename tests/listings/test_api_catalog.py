import json

import pytest
from django.core.serializers.json import DjangoJSONEncoder

from listings import search
from listings.choices import ListingStatus
from listings.models import Listing
from merchants.selectors import merchant_for_user
from tests.factories import make_listing
from tests.listings.catalog_data import publish

pytestmark = pytest.mark.django_db

LIST = "/api/v1/catalog/listings/"


@pytest.fixture
def catalog(merchant, merchant_user, other_merchant_user, staff, categories):
    other = merchant_for_user(user=other_merchant_user)
    mine = {"merchant": merchant, "owner": merchant_user, "reviewer": staff}
    listings = {
        "budget": publish(**mine, title="City budget", price=300, category=categories["government"], tags=("fiscal",)),
        "bonds": publish(**mine, title="Bond yields", price=900, category=categories["finance"]),
        "metro": publish(merchant=other, owner=other_merchant_user, reviewer=staff, title="Metro ridership", price=100),
    }
    make_listing(merchant=merchant, owner=merchant_user, title="Draft budget", status=ListingStatus.DRAFT)
    return listings


def test_list_answers_results_next_and_facets(client, catalog):
    response = client.get(LIST)
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"results", "next", "facets", "matches"}
    assert [r["title"] for r in body["results"]] == ["Metro ridership", "Bond yields", "City budget"]
    assert body["next"] is None
    first = body["results"][2]
    assert first["slug"] == catalog["budget"].slug
    assert first["category"] == {"slug": "government", "name": "Government"}
    assert first["merchant"] == {"slug": "guiyang-data", "name": "Guiyang Data"}
    assert (first["price_from"], first["price_currency"], first["price_display"]) == (300, "CNY", "¥3.00 CNY")
    assert first["price_types"] == ["one_time"] and first["primary_format"] == "csv"
    assert first["registration_number"] == catalog["budget"].registration_number
    assert {f["value"]: f["count"] for f in body["facets"]["category"]} == {"government": 1, "finance": 1}
    assert {f["value"]: f["count"] for f in body["facets"]["merchant"]} == {"guiyang-data": 2, "shanghai-data": 1}
    assert body["facets"]["licence"] == [{"value": "CC-BY-4.0", "label": "CC BY 4.0", "count": 3}]
    assert body["matches"] == {"counted": 3, "capped": False, "cap": search.CANDIDATE_CAP}


def test_same_filterset_as_the_html_catalog(client, catalog):
    body = client.get(LIST, {"q": "fiscal"}).json()
    assert [r["title"] for r in body["results"]] == ["City budget"]
    body = client.get(LIST, {"merchant": "guiyang-data", "sort": "price_desc"}).json()
    assert [r["title"] for r in body["results"]] == ["Bond yields", "City budget"]
    assert client.get(LIST, {"q": "draft"}).json()["results"] == []


def test_next_cursor_pages_through(client, catalog, monkeypatch):
    monkeypatch.setattr(search, "PAGE_SIZE", 2)
    first = client.get(LIST, {"sort": "price_asc"}).json()
    assert [r["title"] for r in first["results"]] == ["Metro ridership", "City budget"]
    assert first["next"] and "cursor=" in first["next_url"] and "sort=price_asc" in first["next_url"]
    second = client.get(LIST, {"sort": "price_asc", "cursor": first["next"]}).json()
    assert [r["title"] for r in second["results"]] == ["Bond yields"] and second["next"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"category": "nope"}, "category"),
        ({"merchant": "nobody"}, "merchant"),
        ({"licence": "mine"}, "licence"),
        ({"format": "xlsx"}, "format"),
        ({"update_frequency": "hourly"}, "update_frequency"),
        ({"price_type": "barter"}, "price_type"),
        ({"sort": "random"}, "sort"),
        ({"cursor": "%%%"}, "cursor"),
    ],
)
def test_bad_values_answer_400_per_parameter(client, catalog, params, field):
    before = list(Listing.objects.order_by("pk").values_list("pk", "status", "updated_at"))
    response = client.get(LIST, params)
    assert response.status_code == 400
    error = response.json()["error"]  # the API's one error shape, with the problem per parameter
    assert list(error["fields"]) == [field] and error["fields"][field][0]
    code = "invalid_cursor" if field == "cursor" else "invalid_choice"  # the filter form's own code
    assert (error["code"], error["message"]) == (code, "The request is not valid.")
    assert list(Listing.objects.order_by("pk").values_list("pk", "status", "updated_at")) == before


def test_list_query_count_is_pinned(client, catalog, django_assert_num_queries):
    with django_assert_num_queries(2):  # the page (plan kinds included), the facets
        assert client.get(LIST).status_code == 200
    with django_assert_num_queries(1):  # by relevance: the page and the facets in one statement
        assert client.get(LIST, {"q": "city budget", "sort": "relevance", "format": "csv"}).status_code == 200


def test_detail_by_slug_is_published_only(client, catalog):
    listing = catalog["budget"]
    response = client.get(f"{LIST}{listing.slug}/")
    assert response.status_code == 200
    body = response.json()
    assert body["tags"] == ["fiscal"] and body["jsonld"]["@type"] == "Dataset"
    assert body["jsonld"]["identifier"] == listing.registration_number
    draft = Listing.objects.get(title="Draft budget")
    assert client.get(f"{LIST}{draft.slug}/").status_code == 404


def test_naive_search_only_when_the_benchmark_enables_it(client, catalog, settings, django_assert_num_queries):
    settings.BENCH_ENABLE_NAIVE = False
    # Tags are only in the search vector; the naive path would not find "fiscal".
    assert [r["title"] for r in client.get(LIST, {"q": "fiscal", "naive": "1"}).json()["results"]] == ["City budget"]
    settings.BENCH_ENABLE_NAIVE = True
    assert client.get(LIST, {"q": "fiscal", "naive": "1"}).json()["results"] == []


def test_ping_is_trivial(client, db, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/api/v1/ping/")
    assert response.json() == {"ok": True}


@pytest.mark.parametrize("params", [{"q": "city"}, {"q": "metro"}, {}, {"sort": "price_asc"}])
def test_cards_are_what_the_declared_serializer_fields_give(client, catalog, params):
    from rest_framework import serializers

    from listings.api.serializers import ListingCardSerializer
    from listings.selectors import listings_published

    body = client.get(LIST, params).json()
    assert body["results"]
    by_slug = {listing.slug: listing for listing in listings_published().select_related("category")}
    for result in body["results"]:
        # The generic, field-by-field DRF path over a model instance (URL reversed per listing, plans queried).
        declared = serializers.ModelSerializer.to_representation(ListingCardSerializer(), by_slug[result["slug"]])
        assert result == json.loads(json.dumps(declared, cls=DjangoJSONEncoder)), result["slug"]
        assert list(result) == list(declared)


def test_a_listing_without_category_has_a_null_category(client, catalog):
    Listing.objects.filter(pk=catalog["metro"].pk).update(category=None)
    for params in ({"q": "metro"}, {}):
        (metro,) = [r for r in client.get(LIST, params).json()["results"] if r["title"] == "Metro ridership"]
        assert metro["category"] is None


def test_filtersets_share_form_fields_but_not_filters(catalog):
    from listings.filters import ListingFilter

    first, second = ListingFilter({"category": "government"}), ListingFilter({"category": "finance"})
    assert first.is_valid() and second.is_valid()
    # The form's fields are shared (never changed per request) ...
    assert first.form.fields["category"] is second.form.fields["category"]
    assert first.form.fields is not second.form.fields
    assert (first.form.cleaned_data["category"].slug, second.form.cleaned_data["category"].slug) == (
        "government",
        "finance",
    )
    # ... each instance has its own filters, bound to it (method filters call their own FilterSet).
    assert first.filters["price_type"] is not second.filters["price_type"]
    assert first.filters["price_type"].parent is first and second.filters["price_type"].parent is second
    assert first.filters["price_type"].filter.f is first.filters["price_type"]
    assert first.filters["category"].extra is not ListingFilter.base_filters["category"].extra
    assert not hasattr(ListingFilter.base_filters["price_type"], "parent")
    assert [listing.title for listing in first.qs] == ["City budget"]
    assert [listing.title for listing in second.qs] == ["Bond yields"]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai"])
def test_card_datetimes_are_what_drf_datetime_field_gives(zone):
    from datetime import UTC, datetime, timedelta
    from datetime import timezone as fixed

    from django.utils import timezone
    from rest_framework import serializers

    from listings.api.serializers import CardWriter

    values = [
        datetime(2025, 3, 1, 12, 30, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 30, 5, 120000, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 30, tzinfo=fixed(timedelta(hours=-5))),
        datetime(2025, 3, 1, 12, 30),  # naive: DRF's own path
        None,
    ]
    with timezone.override(zone):
        writer, field = CardWriter(), serializers.DateTimeField()
        for value in values:
            assert writer._iso(value) == (field.to_representation(value) if value else None), value
