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
    assert listing.price_kinds == ",one_time,"
    # A new cheaper active plan of another kind lowers price_from and joins the kinds once refreshed.
    plan = PricingPlan.objects.create(
        listing=listing, kind="subscription", amount=500, currency="USD", interval="month"
    )
    listing_refresh_catalog_fields(listing_pk=listing.pk)
    listing.refresh_from_db()
    assert (listing.price_from, listing.price_kinds) == (500, ",one_time,subscription,")
    assert run(q="", sort="newest").listings[0].price_types == ["one_time", "subscription"]
    PricingPlan.objects.filter(pk=plan.pk).update(is_active=False)  # an inactive plan is not offered
    listing_refresh_catalog_fields(listing_pk=listing.pk)
    listing.refresh_from_db()
    assert (listing.price_from, listing.price_kinds) == (990, ",one_time,")
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


# --- the statement compiled once per SQL shape ----------------------------------------------------------


@pytest.fixture
def varied(build, categories, other_merchant_user, merchant_user, staff):
    """Two listings that differ in every structured filter, both matching "survey"; one that matches neither."""
    from merchants.selectors import merchant_for_user

    other = merchant_for_user(user=other_merchant_user)
    build("Survey alpha", category=categories["government"], licence="CC0-1.0", update_frequency="daily")
    second = publish(
        merchant=other, owner=other_merchant_user, reviewer=staff, title="Survey beta", price=700,
        category=categories["finance"], update_frequency="monthly",
    )  # fmt: skip
    PricingPlan.objects.filter(listing=second).update(kind="subscription", interval="month")
    Listing.objects.filter(pk=second.pk).update(primary_format="parquet")
    build("Unrelated", category=categories["transport"])
    return [
        {"category": "government", "merchant": "guiyang-data", "licence": "CC0-1.0", "format": "csv",
         "update_frequency": "daily", "price_type": "one_time"},
        {"category": "finance", "merchant": "shanghai-data", "licence": "CC-BY-4.0", "format": "parquet",
         "update_frequency": "monthly", "price_type": "subscription"},
    ]  # fmt: skip


def _summary(page):
    return (
        [row["slug"] if isinstance(row, dict) else row.slug for row in page.listings],
        {name: [(v.value, v.label, v.count) for v in values] for name, values in page.facets.items()},
        page.matches,
        page.capped,
        page.has_next,
        page.sort,
    )


def _pages(params, cards=False):
    """The page through the shape cache (published catalog) and compiled per request (explicit queryset)."""
    from listings.filters import ListingFilter

    cached = ListingFilter(params)
    direct = ListingFilter(params, queryset=listings_published())
    assert cached.is_valid() and direct.is_valid(), (cached.errors, direct.errors)
    assert cached.published_catalog and not direct.published_catalog
    return cached.page(cards=cards), direct.page(cards=cards)


def _combinations(value_sets):
    import itertools

    from listings.filters import STRUCTURED_FILTERS

    for size in range(len(STRUCTURED_FILTERS) + 1):
        for names in itertools.combinations(STRUCTURED_FILTERS, size):
            for values in value_sets:
                for extra in ({"sort": "price_desc"}, {"q": "survey"}, {"q": "survey", "sort": "newest"}):
                    yield {**{name: values[name] for name in names}, **extra}


def test_every_filter_combination_answers_as_when_compiled_per_request(varied, monkeypatch):
    monkeypatch.setattr(search, "_STATEMENTS", {})
    combinations = list(_combinations(varied))
    assert len(combinations) == 64 * 2 * 3
    expected = {}
    for params in combinations:
        cached, direct = _pages(params)
        expected[tuple(sorted(params.items()))] = _summary(direct)
        assert _summary(cached) == _summary(direct), params
    # Every shape is now compiled; walk them again in reverse order, each shape re-bound with other values
    # than those it was compiled with: nothing of one request's values survives into the next.
    for params in reversed(combinations):
        cached, _ = _pages(params, cards=True)
        assert _summary(cached) == expected[tuple(sorted(params.items()))], params
    if connection.vendor == "postgresql":
        # One statement per shape: 64 filter sets, each without a term, ranked, and with a term by another sort.
        assert len(search._STATEMENTS) == 64 * 3 and None not in search._STATEMENTS.values()


def test_one_shape_rebinds_its_values(varied):
    government, finance = _pages({"category": "government", "q": "survey"})[0], _pages({"category": "finance"})[0]
    assert titles(government) == ["Survey alpha"] and titles(finance) == ["Survey beta"]
    assert titles(_pages({"category": "finance", "q": "survey"})[0]) == ["Survey beta"]
    assert titles(_pages({"category": "government", "q": "alpha"})[0]) == ["Survey alpha"]
    assert titles(_pages({"category": "government", "q": "beta"})[0]) == []
    assert titles(_pages({"q": "survey", "merchant": "shanghai-data", "price_type": "one_time"})[0]) == []
    assert titles(_pages({"q": "survey", "merchant": "shanghai-data", "price_type": "subscription"})[0]) == [
        "Survey beta"
    ]


def test_a_shape_whose_values_the_sql_transforms_is_not_cached(monkeypatch):
    monkeypatch.setattr(search, "_STATEMENTS", {})

    def compile_like(values):
        # As icontains does: the value inside another string, not a parameter of its own.
        return "SELECT 1 WHERE 'x' LIKE %s AND 2 = %s", [f"%{values['q']}%", values["limit"]]

    key = ("test-shape", "like")
    assert search._statement(key, {"q": "air", "limit": 21}, compile_like)[1] == ["%air%", 21]
    assert search._STATEMENTS[key] is None
    assert search._statement(key, {"q": "rain", "limit": 5}, compile_like)[1] == ["%rain%", 5]

    def compile_inlined(values):
        return f"SELECT {values['limit']}", []

    key = ("test-shape", "inlined")
    assert search._statement(key, {"limit": 21}, compile_inlined) == ("SELECT 21", [])
    assert search._STATEMENTS[key] is None
    assert search._statement(key, {"limit": 5}, compile_inlined) == ("SELECT 5", [])


def test_a_shape_is_rebound_not_recompiled(monkeypatch):
    monkeypatch.setattr(search, "_STATEMENTS", {})

    calls = []

    def compile_plain(values):
        calls.append(values)
        return "SELECT %s, %s, %s", [values["q"], "constant", values["limit"]]

    key = ("test-shape", "plain")
    assert search._statement(key, {"q": "air", "limit": 21}, compile_plain) == (
        "SELECT %s, %s, %s",
        ["air", "constant", 21],
    )
    assert len(calls) == 2  # the real values, then the placeholders
    assert search._statement(key, {"q": "rain", "limit": 5}, compile_plain) == (
        "SELECT %s, %s, %s",
        ["rain", "constant", 5],
    )
    assert len(calls) == 2


def test_naive_search_through_a_shape_matches_the_direct_path(varied):
    from listings.filters import ListingFilter

    cached, direct = ListingFilter({"q": "survey"}), ListingFilter({"q": "survey"}, queryset=listings_published())
    assert cached.is_valid() and direct.is_valid()
    assert _summary(cached.page(naive=True)) == _summary(direct.page(naive=True))
    assert sorted(titles(cached.page(naive=True))) == ["Survey alpha", "Survey beta"]


def test_the_migration_backfills_price_kinds_from_the_active_plans(build):
    import importlib

    from django.apps import apps

    listing = build("Rail freight", price=700)
    PricingPlan.objects.create(listing=listing, kind="free", amount=0, currency="USD")
    PricingPlan.objects.create(
        listing=listing, kind="metered", amount=5, currency="USD", metered_unit="call", is_active=False
    )
    Listing.objects.filter(pk=listing.pk).update(price_kinds="")  # as before the column existed
    migration = importlib.import_module("listings.migrations.0005_listing_price_kinds")
    with connection.schema_editor() as editor:
        migration.backfill(apps, editor)
    listing.refresh_from_db()
    assert listing.price_kinds == ",free,one_time,"


def test_recent_quarters_query_names_this_quarter_and_the_previous_one():
    from datetime import UTC, datetime

    assert search.recent_quarters_query(datetime(2026, 11, 27, tzinfo=UTC)) == "pubq2026q4 | pubq2026q3"
    assert search.recent_quarters_query(datetime(2027, 2, 1, tzinfo=UTC)) == "pubq2027q1 | pubq2026q4"
    assert search.quarter_lexeme(datetime(2026, 4, 1, tzinfo=UTC)) == "pubq2026q2"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the quarter lexeme is part of the PostgreSQL vector")
def test_the_candidates_are_the_newest_matches_across_recent_and_older_quarters(build, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    ages = {"Harbor 0": 0, "Harbor 10": 10, "Harbor 400": 400, "Harbor 500": 500, "Harbor 600": 600}
    for title, days in ages.items():
        listing = build(title)
        Listing.objects.filter(pk=listing.pk).update(published_at=now - timedelta(days=days))
        listing_refresh_catalog_fields(listing_pk=listing.pk)
    vector = str(Listing.objects.get(title="Harbor 400").search_vector)
    assert f"'{search.quarter_lexeme(now - timedelta(days=400))}'" in vector
    monkeypatch.setattr(search, "CANDIDATE_CAP", 3)
    # Two matches in the recent quarters, fewer than the cap: the newest older one completes the candidates.
    page = run("harbor", sort="relevance")
    assert sorted(titles(page)) == ["Harbor 0", "Harbor 10", "Harbor 400"]
    assert (page.matches, page.capped) == (3, True)
    # Other sorts walk every match for the page; their facets count the same candidates.
    assert (run("harbor", sort="newest").matches, len(titles(run("harbor", sort="newest")))) == (3, 5)
    # Enough recent matches: the older quarters are not needed, and the newest recent ones win.
    for days in (1, 2):
        listing = build(f"Harbor new {days}")
        Listing.objects.filter(pk=listing.pk).update(published_at=now - timedelta(days=days))
        listing_refresh_catalog_fields(listing_pk=listing.pk)
    assert sorted(titles(run("harbor", sort="relevance"))) == ["Harbor 0", "Harbor new 1", "Harbor new 2"]
    # A term only older listings carry is still found.
    monkeypatch.setattr(search, "CANDIDATE_CAP", 1000)
    assert titles(run("harbor", sort="newest"))[-3:] == ["Harbor 400", "Harbor 500", "Harbor 600"]
