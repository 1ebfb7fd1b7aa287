import base64

import pytest
from django.db import connection

from listings import search
from listings.choices import ListingStatus
from listings.models import DataFile, Listing, PricingPlan
from listings.search import CursorError, catalog_query, cursor_decode, cursor_encode, listing_refresh_catalog_fields
from listings.selectors import listings_published
from tests.factories import make_listing
from tests.listings.catalog_data import publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def build(merchant, merchant_user, staff):
    def _build(title, **kwargs):
        return publish(merchant=merchant, owner=merchant_user, reviewer=staff, title=title, **kwargs)

    return _build


def titles(page):
    return [listing.title for listing in page.listings]


def run(q="", **kwargs):
    return catalog_query(queryset=listings_published(), q=q, **kwargs)


def test_refresh_keeps_the_catalog_fields_current(build):
    listing = build("Air quality", price=990, currency="USD", columns=["station", "pm25", "station"])
    assert (listing.price_from, listing.price_currency, listing.primary_format) == (990, "USD", "csv")
    assert listing.column_names == "station pm25"
    # A new cheaper active plan lowers price_from once refreshed.
    PricingPlan.objects.create(listing=listing, kind="one_time", amount=500, currency="USD")
    listing_refresh_catalog_fields(listing_pk=listing.pk)
    listing.refresh_from_db()
    assert listing.price_from == 500
    assert connection.vendor != "postgresql" or listing.search_vector is not None


def test_search_covers_title_tags_column_names_and_description(build):
    build("Air quality in Guiyang")
    build("Traffic counts", tags=("pollution",))
    build("Weather stations", columns=["station_id", "rainfall_mm"])
    build("Port throughput", description="Container volumes at Yangshan deep-water port.")
    assert titles(run("air")) == ["Air quality in Guiyang"]
    assert titles(run("pollution")) == ["Traffic counts"]
    assert titles(run("rainfall_mm")) == ["Weather stations"]
    assert titles(run("yangshan")) == ["Port throughput"]
    assert titles(run("nothing-like-this")) == []


def test_column_names_come_from_the_profiled_file(build):
    listing = build("Energy use")
    DataFile.objects.filter(version__listing=listing).update(columns=[{"name": "kwh_total"}, {"name": "meter_id"}])
    assert titles(run("kwh_total")) == []  # not refreshed yet
    listing_refresh_catalog_fields(listing_pk=listing.pk)
    assert titles(run("kwh_total")) == ["Energy use"]


def test_two_terms_must_both_match_and_exclusion_works(build):
    build("Guiyang traffic")
    build("Shanghai traffic")
    build("Guiyang weather")
    assert titles(run("guiyang traffic")) == ["Guiyang traffic"]
    assert sorted(titles(run("traffic -shanghai"))) == ["Guiyang traffic"]
    assert sorted(titles(run('"guiyang weather"'))) == ["Guiyang weather"]


def test_relevance_puts_title_matches_before_description_matches(build):
    build("Rainfall totals", description="")
    build("Harbour data", description="Mentions rainfall once.")
    # The description match is newer, so recency alone would put it first.
    assert titles(run("rainfall")) == ["Rainfall totals", "Harbour data"]
    assert titles(run("rainfall", sort="newest")) == ["Harbour data", "Rainfall totals"]


def test_unpublished_listings_never_match(build, merchant, merchant_user):
    build("Census published")
    make_listing(merchant=merchant, owner=merchant_user, title="Census draft", status=ListingStatus.DRAFT)
    make_listing(merchant=merchant, owner=merchant_user, title="Census submitted", status=ListingStatus.SUBMITTED)
    for q in ("census", ""):
        assert titles(run(q)) == ["Census published"]
    assert run("census").matches == 1


def test_sorting_by_price_and_newest(build):
    build("Mid", price=500)
    build("Cheap", price=100)
    build("Dear", price=900)
    assert titles(run(sort="price_asc")) == ["Cheap", "Mid", "Dear"]
    assert titles(run(sort="price_desc")) == ["Dear", "Mid", "Cheap"]
    assert titles(run(sort="newest")) == ["Dear", "Cheap", "Mid"]
    assert run().sort == "newest"  # relevance without a term means newest
    assert titles(run(sort="relevance")) == ["Dear", "Cheap", "Mid"]


def test_pages_fetch_one_extra_row_and_cursor_walks_them(build):
    for n in range(5):
        build(f"Series {n}")
    first = run(page_size=2)
    assert titles(first) == ["Series 4", "Series 3"] and first.has_next and first.previous_cursor is None
    second = run(page_size=2, offset=cursor_decode(first.next_cursor))
    assert titles(second) == ["Series 2", "Series 1"] and second.offset == 2
    third = run(page_size=2, offset=cursor_decode(second.next_cursor))
    assert titles(third) == ["Series 0"] and third.next_cursor is None
    assert cursor_decode(third.previous_cursor) == 2


def test_broad_terms_rank_and_count_only_a_bounded_candidate_set(build, monkeypatch):
    for n in range(5):
        build(f"Common data {n}")
    monkeypatch.setattr(search, "CANDIDATE_CAP", 3)
    page = run("common", page_size=2)
    # Only the newest three matches are candidates: ranked, paged and counted.
    assert titles(page) == ["Common data 4", "Common data 3"]
    assert (page.matches, page.capped) == (3, True)
    assert [(v.label, v.count) for v in page.facets["merchant"]] == [("Guiyang Data", 3)]
    last = run("common", page_size=2, offset=2)
    assert titles(last) == ["Common data 2"] and not last.has_next
    # Below the cap the counts are exact.
    monkeypatch.setattr(search, "CANDIDATE_CAP", 1000)
    assert (run("common").matches, run("common").capped) == (5, False)


def test_sqlite_fallback_uses_icontains_over_title_summary_and_columns(build, monkeypatch):
    build("Air quality", columns=["pm25"])
    build("Traffic", summary="Vehicle counts near the airport")
    build("Tagged only", tags=("air",))
    monkeypatch.setattr(search, "search_vector_available", lambda: False)
    page = run("air")
    # Recency order; tags are not searched without the vector.
    assert titles(page) == ["Traffic", "Air quality"]
    assert page.sort == "relevance"
    assert titles(run("pm25")) == ["Air quality"]
    assert page.matches == 2


def test_naive_search_counts_every_match(build):
    build("Air quality")
    page = run("air", naive=True)
    assert titles(page) == ["Air quality"] and page.matches == 1 and not page.capped


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", ["!!", _b64(b"o:abc"), cursor_encode(5000), _b64(b"x:5"), _b64(b"o:-1"), "\u00e9"])
def test_foreign_cursors_are_rejected(cursor):
    with pytest.raises(CursorError):
        cursor_decode(cursor)


def test_search_vector_is_indexed_for_published_listings(db):
    if connection.vendor != "postgresql":
        pytest.skip("GIN index exists on PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'listing_search_gin'")
        (definition,) = cursor.fetchone()
    assert "gin (search_vector)" in definition and "published" in definition
    assert Listing.objects.count() == 0


def test_ranked_page_cards_load_unfetched_fields_on_access(build):
    listing = build("Rainfall totals", description="Full text.", tags=("weather",))
    (card,) = run("rainfall").listings
    assert (card.pk, card.slug, card.merchant.name, card.price_types) == (
        listing.pk,
        listing.slug,
        "Guiyang Data",
        ["one_time"],
    )
    assert card.published_at == listing.published_at
    assert card.description == "Full text."  # deferred, then loaded from the database
