"""The web catalog's cached results (listings.catalog_cache): shared between visitors, retired by any change.

The catalog's results (cards, facet counts, page links) are rendered once per filters, language and time zone and
kept for CATALOG_CACHE_SECONDS under the catalog's generation; saving anything the catalog shows bumps the
generation at once and again when the transaction commits.
"""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from listings.catalog_cache import GENERATION_KEY, cached_results, catalog_generation
from listings.models import Listing
from listings.search import listing_refresh_catalog_fields
from listings.services import listing_suspend
from merchants.selectors import merchant_for_user
from merchants.services import merchant_verify
from tests.listings.catalog_data import publish
from tests.web.html import catalog_titles, elements

pytestmark = pytest.mark.django_db

CATALOG = "/"


@pytest.fixture
def catalog(merchant, merchant_user, staff, categories):
    mine = {"merchant": merchant, "owner": merchant_user, "reviewer": staff}
    return {
        "budget": publish(**mine, title="City budget", price=300, category=categories["government"]),
        "bonds": publish(**mine, title="Bond yields", price=900, category=categories["finance"]),
    }


def results_region(response) -> str:
    (region,) = elements(response.content.decode(), "div", id="catalog-results")
    return str(region)


def catalog_queries(client, params=None) -> tuple[object, int]:
    """The response and how many statements read the listings table while answering it."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CATALOG, params or {})
    table = Listing._meta.db_table
    return response, sum(table in query["sql"] for query in queries.captured_queries)


def cached_result_keys() -> list[bytes]:
    return cache._cache.get_client().keys("*catalog:results:*")


def test_the_second_visitor_gets_the_same_results_without_a_catalog_query(client, catalog):
    first, first_reads = catalog_queries(client, {"category": "government"})
    assert first.status_code == 200 and first_reads >= 1
    assert catalog_titles(first.content.decode()) == ["City budget"]

    again, reads = catalog_queries(client, {"category": "government"})
    assert again.status_code == 200
    assert reads == 0
    assert results_region(again) == results_region(first)
    # The search box and the page around the results are still the visitor's own.
    assert 'id="catalog-search"' in again.content.decode()


def test_other_filters_are_cached_apart(client, catalog):
    client.get(CATALOG, {"category": "government"})
    response, reads = catalog_queries(client, {"category": "finance"})
    assert reads >= 1
    assert catalog_titles(response.content.decode()) == ["Bond yields"]


def test_an_htmx_fragment_and_the_whole_page_share_the_cached_results(client, catalog):
    whole = client.get(CATALOG, {"q": "budget"})
    with CaptureQueriesContext(connection) as queries:
        fragment = client.get(
            CATALOG, {"q": "budget"}, HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/"
        )
    assert not any(Listing._meta.db_table in query["sql"] for query in queries.captured_queries)
    assert catalog_titles(fragment.content.decode()) == catalog_titles(whole.content.decode()) == ["City budget"]
    # The fragment still carries the status line for screen readers, from the cached results.
    (status,) = elements(fragment.content.decode(), "p", id="catalog-status")
    assert "Showing 1\N{EN DASH}1" in str(status)
    assert fragment.headers["HX-Push-Url"] == "/?q=budget"


@pytest.mark.parametrize("change", ["publish", "suspend", "verify", "category", "price"])
def test_a_change_to_what_the_catalog_shows_is_seen_by_the_next_visitor(
    change, client, catalog, merchant, merchant_user, staff, categories
):
    before = client.get(CATALOG)
    assert catalog_titles(before.content.decode()) == ["Bond yields", "City budget"]
    generation = catalog_generation()

    if change == "publish":
        publish(merchant=merchant, owner=merchant_user, reviewer=staff, title="Port traffic", price=100)
        expected = lambda html: catalog_titles(html) == ["Port traffic", "Bond yields", "City budget"]  # noqa: E731
    elif change == "suspend":
        listing_suspend(listing=catalog["bonds"], reviewer=staff, reason="licence dispute")
        expected = lambda html: catalog_titles(html) == ["City budget"]  # noqa: E731
    elif change == "verify":
        merchant_verify(merchant=merchant_for_user(user=merchant_user), actor=staff, note="licence checked")
        expected = lambda html: "Verified merchant" in html  # noqa: E731
    elif change == "category":
        government = categories["government"]
        government.name = "Public sector"
        government.save()
        expected = lambda html: "Public sector" in html  # noqa: E731
    else:  # a price changed the way the pricing services change it: rows updated, then the catalog fields
        catalog["budget"].plans.update(amount=12345)
        listing_refresh_catalog_fields(listing_pk=catalog["budget"].pk)
        expected = lambda html: "123.45" in html  # noqa: E731

    assert catalog_generation() > generation
    assert not expected(before.content.decode())
    after = client.get(CATALOG)
    assert after.status_code == 200
    assert expected(after.content.decode())


def test_an_entry_cached_before_the_change_commits_is_retired_when_it_commits(
    catalog, staff, django_capture_on_commit_callbacks
):
    """A reader between a change and its commit sees the old rows and may cache them under the bumped generation;
    the second bump, at the commit, makes sure nobody is served that entry afterwards."""
    renders = []

    def render(label):
        def inner():
            renders.append(label)
            return {"body": label, "status": "", "q": ""}

        return inner

    with django_capture_on_commit_callbacks(execute=True):
        listing_suspend(listing=catalog["bonds"], reviewer=staff, reason="withdrawn")
        # Another visitor, reading the committed (old) rows, caches them now.
        assert cached_results(params={}, cursor="", render=render("old rows"))["body"] == "old rows"
        assert cached_results(params={}, cursor="", render=render("unused"))["body"] == "old rows"
    # Committed: the entry cached in between is not served again.
    assert cached_results(params={}, cursor="", render=render("new rows"))["body"] == "new rows"
    assert renders == ["old rows", "new rows"]


def test_languages_and_time_zones_are_cached_apart(client, catalog):
    english = client.get(CATALOG, HTTP_ACCEPT_LANGUAGE="en")
    assert "Verified merchant" not in english.content.decode() and "Refine" in english.content.decode()
    chinese = client.get(CATALOG, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "Refine" not in results_region(chinese)
    assert catalog_titles(chinese.content.decode()) == ["Bond yields", "City budget"]

    client.cookies["tz"] = "Asia/Shanghai"
    shanghai = client.get(CATALOG, HTTP_ACCEPT_LANGUAGE="en")
    client.cookies["tz"] = "America/New_York"
    new_york = client.get(CATALOG, HTTP_ACCEPT_LANGUAGE="en")
    # The cards' machine-readable times are written in the visitor's own zone.
    assert "+08:00" in results_region(shanghai) and "+08:00" not in results_region(new_york)
    assert len(cached_result_keys()) == 4


def test_bad_parameters_are_refused_and_nothing_is_cached(client, catalog):
    response = client.get(CATALOG, {"category": "no-such-category", "sort": "loudest"})
    assert response.status_code == 400
    assert "Some search options were not understood" in response.content.decode()
    assert cached_result_keys() == []


def test_a_zero_lifetime_renders_every_request(client, catalog, settings):
    settings.CATALOG_CACHE_SECONDS = 0
    client.get(CATALOG)
    response, reads = catalog_queries(client)
    assert reads >= 1
    assert catalog_titles(response.content.decode()) == ["Bond yields", "City budget"]
    assert cached_result_keys() == []


def test_a_lost_generation_counter_never_returns_to_an_older_generation(client, catalog):
    client.get(CATALOG)
    before = catalog_generation()
    cache.delete(GENERATION_KEY)
    assert catalog_generation() > before
    # So the entry cached under the old generation is not served: the page is rendered again.
    response, reads = catalog_queries(client)
    assert reads >= 1 and response.status_code == 200
