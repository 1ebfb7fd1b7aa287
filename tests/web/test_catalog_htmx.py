"""The catalog's instant results (issue 8): htmx asks for the results fragment, everything else gets the page.

The view answers a request carrying ``HX-Request`` with only the ``results`` partial of listings/catalog.html and an
``HX-Push-Url`` naming the filters in use; a normal GET (no JavaScript) and htmx's history restore get the whole
page. A browser test at the end types into the real page under the enforced Content-Security-Policy.
"""

import os
import shutil
from urllib.parse import parse_qsl, urlsplit

import pytest

from listings.models import Listing
from merchants.selectors import merchant_for_user
from tests.listings.catalog_data import publish
from tests.web.html import attrs, catalog_titles, elements

pytestmark = pytest.mark.django_db

CATALOG = "/"
HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": "http://testserver/"}


@pytest.fixture
def catalog(merchant, merchant_user, other_merchant_user, staff, categories):
    """Three published listings over two merchants; two in Government."""
    other = merchant_for_user(user=other_merchant_user)
    gov, fin = categories["government"], categories["finance"]
    mine = {"merchant": merchant, "owner": merchant_user, "reviewer": staff}
    theirs = {"merchant": other, "owner": other_merchant_user, "reviewer": staff}
    return {
        "budget": publish(**mine, title="City budget", price=300, category=gov, licence="CC0-1.0"),
        "bonds": publish(**mine, title="Bond yields", price=900, category=fin),
        "council": publish(**theirs, title="Council votes", price=500, category=gov),
    }


def snapshot():
    return list(Listing.objects.order_by("pk").values_list("pk", "status", "updated_at", "title"))


def test_normal_request_gets_the_whole_page_with_the_htmx_search_box(client, catalog):
    response = client.get(CATALOG, {"q": "budget"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().lower().startswith("<!doctype html>") and "</html>" in html
    assert "HX-Push-Url" not in response.headers
    assert "HX-Request" in response.headers["Vary"]
    (form,) = elements(html, "form", id="catalog-search")
    form_attrs = attrs(form)
    # Without JavaScript the form is a plain GET to the catalog; with htmx it asks for the results fragment.
    assert form_attrs["method"] == "get" and form_attrs["action"] == "/"
    assert form_attrs["hx-get"] == "/" and form_attrs["hx-target"] == "#catalog-results"
    assert form_attrs["hx-push-url"] == "true"
    assert form_attrs["hx-trigger"] == "submit, input changed delay:250ms from:#catalog-q, search from:#catalog-q"
    (box,) = elements(html, "input", id="catalog-q")
    assert attrs(box)["type"] == "search" and attrs(box)["name"] == "q" and attrs(box)["value"] == "budget"
    # The results region is on the page, holding the results.
    (region,) = elements(html, "div", id="catalog-results")
    assert "City budget" in str(region) and "Council votes" not in str(region)


def test_htmx_request_gets_only_the_results_fragment(client, catalog):
    response = client.get(CATALOG, {"q": "budget"}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and "<head" not in html and "<body" not in html
    assert 'id="catalog-search"' not in html  # the search box stays where it is, with the user's caret
    assert "City budget" in html and "Council votes" not in html and "Bond yields" not in html
    assert elements(html, "section", **{"class": "results"})
    assert "HX-Request" in response.headers["Vary"]
    # The live region for screen readers is refreshed out of band.
    (status,) = elements(html, "p", id="catalog-status")
    assert attrs(status)["hx-swap-oob"] == "true" and "Showing 1\u20131" in str(status)


def test_history_restore_gets_the_whole_page(client, catalog):
    response = client.get(CATALOG, {"q": "budget"}, HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and "</html>" in html and 'id="catalog-search"' in html


def test_pushed_url_keeps_the_query_and_filters_in_use(client, catalog):
    response = client.get(CATALOG, {"q": "budget", "category": "government", "sort": "", "licence": ""}, **HTMX)
    assert response.status_code == 200
    pushed = urlsplit(response.headers["HX-Push-Url"])
    assert pushed.path == "/"
    # Empty fields the form sent are left out: the address is the one a person would share.
    assert dict(parse_qsl(pushed.query)) == {"q": "budget", "category": "government"}
    # Following the pushed URL without htmx shows the same results.
    again = client.get(response.headers["HX-Push-Url"])
    assert catalog_titles(again.content.decode()) == ["City budget"]


def test_pushed_url_of_the_whole_catalog_has_no_query(client, catalog):
    response = client.get(CATALOG, {"q": ""}, **HTMX)
    assert response.headers["HX-Push-Url"] == "/"


def test_fragment_carries_the_filters_for_the_search_box(client, catalog):
    """The search form's hidden filters live in the fragment, so a new search keeps a facet chosen since."""
    html = client.get(CATALOG, {"category": "government", "q": "votes"}, **HTMX).content.decode()
    hidden = {
        attrs(field)["name"]: attrs(field)["value"]
        for field in elements(html, "input", type="hidden", form="catalog-search")
    }
    assert hidden == {"category": "government"}  # q is the search box itself


def test_fragment_facets_have_counts_and_toggle_links(client, catalog):
    html = client.get(CATALOG, {}, **HTMX).content.decode()
    assert 'Government</a> <span class="count">2</span>' in html
    assert 'Finance</a> <span class="count">1</span>' in html
    assert 'href="?category=government"' in html
    (facets,) = elements(html, "aside", id="facets")
    assert attrs(facets)["hx-boost"] == "true" and attrs(facets)["hx-target"] == "#catalog-results"
    filtered = client.get(CATALOG, {"category": "government"}, **HTMX).content.decode()
    assert 'Government</a> <span class="count">2</span>' in filtered and "Finance</a>" not in filtered
    # The active value links back to the catalog without it.
    (active,) = elements(filtered, "a", **{"aria-current": "true"})
    assert attrs(active)["href"] == "?"


def test_cards_show_price_type_licence_format_merchant_and_freshness(client, catalog):
    html = client.get(CATALOG, {"q": "budget"}, **HTMX).content.decode()
    (card,) = elements(html, "article")
    text = str(card)
    assert "One-time purchase" in text and "from ¥3.00 CNY" in text
    assert "CC0 1.0" in text and "CSV" in text and "Guiyang Data" in text
    assert "updated 0\xa0minutes ago" in text


def test_empty_state_shows_the_query_and_ways_out(client, catalog):
    html = client.get(CATALOG, {"q": "zebra"}, **HTMX).content.decode()
    assert "No data products match “zebra”." in html and "Clear all filters" in html
    with_filters = client.get(CATALOG, {"q": "zebra", "category": "government"}, **HTMX).content.decode()
    assert "No data products match “zebra” with these filters." in with_filters
    assert "Keep the filters, drop the search" in with_filters and 'href="?category=government"' in with_filters
    assert "Search “zebra” in the whole catalog" in with_filters and 'href="?q=zebra"' in with_filters
    # The facet that filtered everything away can still be cleared from the sidebar.
    assert "Any category" in with_filters


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort": "random"}, "Sort by"),
        ({"category": "no-such-category"}, "Category"),
        ({"cursor": "not-a-cursor"}, "Not a valid page cursor"),
    ],
)
def test_bad_parameters_answer_400_with_the_reason_and_change_nothing(client, catalog, params, message):
    before = snapshot()
    response = client.get(CATALOG, params, **HTMX)
    assert response.status_code == 400
    html = response.content.decode()
    assert "<html" not in html
    assert "Some search options were not understood" in html and message in html
    assert "Start again with the whole catalog" in html and "City budget" not in html
    assert "HX-Push-Url" not in response.headers  # the address bar keeps the last good search
    assert snapshot() == before
    page = client.get(CATALOG, params)
    assert page.status_code == 400 and "</html>" in page.content.decode()
    assert message in page.content.decode() and snapshot() == before


# --- in a real browser ---------------------------------------------------------------------------------------------


@pytest.fixture
def chromium():
    """Headless Debian chromium through Playwright, or a skip where it is not installed (.ci/run installs it)."""
    executable = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if executable is None:
        pytest.skip("needs Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an asyncio loop in this thread; Django's ORM would refuse the fixtures' queries.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox"] if os.geteuid() == 0 else []
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}])
def test_typing_swaps_the_results_in_place_under_the_enforced_csp(chromium, live_server, catalog, settings, viewport):
    settings.CSP_REPORT_ONLY = False  # enforce the policy: a blocked script or style breaks the test
    problems = []
    page = chromium.new_page(viewport=viewport, locale="en-US")
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "response", lambda response: response.status >= 400 and problems.append(f"{response.status} {response.url}")
    )
    page.goto(live_server.url + "/")
    assert page.locator("#catalog-results article").count() == 3
    # Evaluated by the test runner over the DevTools protocol (not by the page, so the CSP does not apply):
    # a marker that a full page load would wipe out.
    page.evaluate("window.stillTheSamePage = true")

    page.fill("#catalog-q", "budget")
    page.wait_for_url("**/?q=budget")
    page.locator("#catalog-results article").filter(has_text="City budget").wait_for()
    assert page.locator("#catalog-results article").count() == 1
    assert page.locator("#catalog-results").inner_text().count("Council votes") == 0

    page.fill("#catalog-q", "")
    page.wait_for_url(live_server.url + "/")
    page.locator("#catalog-results article").nth(2).wait_for()
    page.locator("#facets a", has_text="Government").click()
    page.wait_for_url("**/?category=government")
    page.locator("#facets a[aria-current=true]").wait_for()
    assert page.locator("#catalog-results article").count() == 2

    assert page.evaluate("window.stillTheSamePage") is True
    assert page.locator("#catalog-q").input_value() == ""
    # With JavaScript, changing the menu sorts: the Sort button is only for browsers without it.
    assert page.locator(".sort-submit").is_hidden()

    # The language switch comes back to the address the instant results left, not the one the page loaded with.
    page.select_option("#language-select", "zh-hans")
    page.locator("form.language-switch button[type=submit]").click()
    page.wait_for_url("**/?category=government")
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert page.locator("#catalog-results article").count() == 2
    assert problems == []  # no CSP violation, no script error, nothing missing
    page.close()
