import json
import re

import pytest
from django.conf import settings
from django.template import Context, Template
from django.urls import reverse

from listings import dcat, search
from listings.choices import ListingStatus
from listings.models import Listing, PricingPlan
from listings.search import listing_refresh_catalog_fields
from merchants.selectors import merchant_for_user
from tests.factories import make_listing
from tests.listings.catalog_data import publish
from tests.web.html import catalog_facet_counts, catalog_titles

pytestmark = pytest.mark.django_db

CATALOG = "/"


@pytest.fixture
def catalog(merchant, merchant_user, other_merchant_user, staff, categories):
    """Four published listings over two merchants, three categories and several licences; one draft."""
    other = merchant_for_user(user=other_merchant_user)
    gov, fin, transport = categories["government"], categories["finance"], categories["transport"]
    mine = {"merchant": merchant, "owner": merchant_user, "reviewer": staff}
    theirs = {"merchant": other, "owner": other_merchant_user, "reviewer": staff}
    listings = {
        "budget": publish(**mine, title="City budget", price=300, category=gov, licence="CC0-1.0"),
        "bonds": publish(**mine, title="Bond yields", price=900, category=fin, update_frequency="daily"),
        "metro": publish(**theirs, title="Metro ridership", price=100, category=transport, tags=("transit",)),
        "council": publish(**theirs, title="Council votes", price=500, category=gov, licence="CC0-1.0"),
    }
    PricingPlan.objects.create(
        listing=listings["metro"], kind="subscription", amount=50, currency="CNY", interval="month"
    )
    listing_refresh_catalog_fields(listing_pk=listings["metro"].pk)  # what the pricing services do
    make_listing(merchant=merchant, owner=merchant_user, title="Secret draft budget", status=ListingStatus.DRAFT)
    return listings


FACET_TITLES = {
    "category": "Category",
    "merchant": "Merchant",
    "licence": "Licence",
    "price_type": "Price type",
    "format": "Format",
    "update_frequency": "Update frequency",
}


def facet_counts(response, name):
    """The counts the page shows for facet ``name`` (what a visitor reads, cached or not)."""
    return catalog_facet_counts(response.content.decode(), FACET_TITLES[name])


def titles(response):
    return catalog_titles(response.content.decode())


def test_catalog_lists_published_newest_first_with_facet_counts(client, catalog):
    response = client.get(CATALOG)
    assert response.status_code == 200
    assert titles(response) == ["Council votes", "Metro ridership", "Bond yields", "City budget"]
    assert facet_counts(response, "category") == {"Government": 2, "Finance": 1, "Transport": 1}
    assert facet_counts(response, "merchant") == {"Guiyang Data": 2, "Shanghai Data": 2}
    assert facet_counts(response, "licence") == {"CC0 1.0 (public domain)": 2, "CC BY 4.0": 2}
    assert facet_counts(response, "price_type") == {"One-time purchase": 4, "Subscription": 1}
    assert facet_counts(response, "format") == {"CSV": 4}
    assert facet_counts(response, "update_frequency") == {"One-off": 3, "Daily": 1}
    html = response.content.decode()
    assert "Secret draft budget" not in html
    assert 'href="?category=government"' in html and 'Government</a> <span class="count">2</span>' in html
    assert "from ¥3.00 CNY" in html and "Subscription" in html and "CC0 1.0" in html


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"category": "government"}, ["Council votes", "City budget"]),
        ({"merchant": "shanghai-data"}, ["Council votes", "Metro ridership"]),
        ({"licence": "CC0-1.0", "merchant": "guiyang-data"}, ["City budget"]),
        ({"price_type": "subscription"}, ["Metro ridership"]),
        ({"update_frequency": "daily"}, ["Bond yields"]),
        ({"format": "csv", "sort": "price_asc"}, ["Metro ridership", "City budget", "Council votes", "Bond yields"]),
        ({"sort": "price_desc"}, ["Bond yields", "Council votes", "City budget", "Metro ridership"]),
        ({"q": "transit"}, ["Metro ridership"]),
        ({"q": "budget"}, ["City budget"]),
    ],
)
def test_filters_and_sorting(client, catalog, params, expected):
    response = client.get(CATALOG, params)
    assert response.status_code == 200
    assert titles(response) == expected


def test_filtered_facets_count_the_filtered_set(client, catalog):
    response = client.get(CATALOG, {"category": "government"})
    assert facet_counts(response, "merchant") == {"Guiyang Data": 1, "Shanghai Data": 1}
    assert facet_counts(response, "category") == {"Government": 2}
    html = response.content.decode()
    # The active value links back to the unfiltered catalog.
    assert 'aria-current="true"' in html and 'href="?"' in html


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"category": "no-such-category"}, "Category"),
        ({"licence": "stolen"}, "Licence"),
        ({"sort": "random"}, "Sort by"),
        ({"price_type": "barter"}, "Price type"),
        ({"cursor": "not-a-cursor"}, "Not a valid page cursor"),
        ({"q": "x" * 201}, "Search"),
    ],
)
def test_bad_parameters_explain_and_change_nothing(client, catalog, params, message):
    before = list(Listing.objects.order_by("pk").values_list("pk", "status", "updated_at"))
    response = client.get(CATALOG, params)
    assert response.status_code == 400
    html = response.content.decode()
    assert "Some search options were not understood" in html and message in html
    assert "Start again with the whole catalog" in html
    assert "Council votes" not in html
    assert list(Listing.objects.order_by("pk").values_list("pk", "status", "updated_at")) == before


def test_pagination_links_walk_the_catalog(client, catalog, monkeypatch):
    monkeypatch.setattr(search, "PAGE_SIZE", 3)
    first = client.get(CATALOG, {"sort": "price_asc"})
    assert titles(first) == ["Metro ridership", "City budget", "Council votes"]
    next_link = re.search(r'rel="next" href="([^"]+)"', first.content.decode()).group(1)
    assert "sort=price_asc" in next_link
    second = client.get(CATALOG + next_link.replace("&amp;", "&"))
    assert titles(second) == ["Bond yields"]
    assert 'rel="next"' not in second.content.decode() and 'rel="prev"' in second.content.decode()


def test_empty_state_offers_a_way_out(client, catalog):
    response = client.get(CATALOG, {"q": "zebra"})
    html = response.content.decode()
    assert "No data products match “zebra”" in html and "clear all filters" in html


def test_catalog_query_count_is_pinned(client, catalog, django_assert_num_queries, merchant, merchant_user, staff):
    # The page (plan kinds included) and the facets — whatever the number of listings.
    with django_assert_num_queries(2):
        assert client.get(CATALOG).status_code == 200
    publish(merchant=merchant, owner=merchant_user, reviewer=staff, title="Another one")
    # By relevance: one statement ranks the candidates, returns the page and counts the facets.
    with django_assert_num_queries(1):
        assert client.get(CATALOG, {"q": "another", "sort": "relevance"}).status_code == 200
    # A category or merchant filter is resolved once (an unknown slug is a 400).
    with django_assert_num_queries(3):
        assert client.get(CATALOG, {"category": "finance"}).status_code == 200


def test_listing_jsonld_tag_is_valid_and_escapes_script(client, catalog):
    listing = catalog["budget"]
    Listing.objects.filter(pk=listing.pk).update(
        summary="Spend </script><script>alert(1)</script> & more",
        geographic_coverage="Guiyang",
        temporal_start="2020-01-01",
    )
    listing = Listing.objects.select_related("merchant", "category").get(pk=listing.pk)
    html = Template("{% load listing_extras %}{% listing_jsonld listing %}").render(Context({"listing": listing}))
    assert html.startswith('<script type="application/ld+json">') and html.count("</script>") == 1
    assert "<script>alert" not in html
    data = json.loads(html.removeprefix('<script type="application/ld+json">').removesuffix("</script>"))
    assert data["@type"] == "Dataset" and data["@context"] == "https://schema.org"
    assert data["name"] == "City budget" and data["identifier"] == listing.registration_number
    assert data["description"].startswith("Spend </script><script>alert(1)</script> & more")
    assert data["license"] == "https://creativecommons.org/publicdomain/zero/1.0/"
    assert data["creator"]["name"] == "Guiyang Data" and data["publisher"] == data["creator"]
    assert data["keywords"] == ["Government"]
    assert data["temporalCoverage"] == "2020-01-01/.."
    assert data["spatialCoverage"] == {"@type": "Place", "name": "Guiyang"}
    assert data["distribution"][0]["encodingFormat"] == "text/csv"
    assert data["offers"] == [
        {"@type": "Offer", "name": "One-time purchase", "price": "3.00", "priceCurrency": "CNY", "url": data["url"]}
    ]


def test_dcat_export_lists_published_datasets_in_pages(client, catalog, monkeypatch, django_assert_num_queries):
    monkeypatch.setattr(dcat, "DCAT_PAGE_SIZE", 3)
    url = reverse("listings:catalog_dcat")
    with django_assert_num_queries(2):  # datasets with merchant and category, their tags
        response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/ld+json"
    document = json.loads(response.content)
    assert document["@type"] == "dcat:Catalog"
    datasets = document["dcat:dataset"]
    assert [d["dct:title"] for d in datasets] == ["City budget", "Bond yields", "Metro ridership"]
    assert all(d["@type"] == "dcat:Dataset" for d in datasets)
    metro = datasets[2]
    assert metro["dcat:keyword"] == ["transit"] and metro["dct:publisher"]["foaf:name"] == "Shanghai Data"
    assert metro["dcat:distribution"][0]["dcat:mediaType"]["@id"].endswith("/text/csv")
    assert datasets[1]["dct:accrualPeriodicity"]["@id"].endswith("/frequency/DAILY")
    next_url = document["hydra:view"]["hydra:next"]["@id"]
    rest = json.loads(client.get(next_url.removeprefix(settings.SITE_URL)).content)
    assert [d["dct:title"] for d in rest["dcat:dataset"]] == ["Council votes"]
    assert "hydra:next" not in rest["hydra:view"]
    assert client.get(url, {"after": "-1"}).status_code == 400
