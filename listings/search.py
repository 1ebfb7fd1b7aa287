"""The catalog's denormalised fields, its full-text search and its facets.

Write side: ``listing_refresh_catalog_fields`` recomputes, from the source
rows, what the catalog filters, sorts and searches on: the lowest active
price, the primary file format, the column names of the latest published
version and (on PostgreSQL) the weighted search vector. Every service that
changes one of those sources calls it in the same transaction, so the
catalog is current on write.

Read side: ``catalog_query`` answers one catalog page. Its cost is bounded
whatever the catalog's size:

* a search term is matched against the stored vector through a GIN index
  (``websearch_to_tsquery('simple', ...)``), never by scanning text;
* relevance ranks only the newest ``CANDIDATE_CAP`` matches, so a broad term
  ("data") costs the same at a million listings as at a thousand; to find
  them without reading every match, each published listing's vector carries
  its publication quarter as a lexeme and the index is asked for the recent
  quarters first (``_candidates_sql``);
* facet counts are taken over that same bounded candidate set; when the cap
  is hit they are reported as lower bounds (``capped``);
* pages are fetched as ``page_size + 1`` rows (the extra row says whether a
  next page exists) at an offset bounded by ``CANDIDATE_CAP``; nothing ever
  runs ``COUNT(*)`` over all matches.

On SQLite (the embedded default) a term falls back to ``icontains`` over
title, summary and column names, ranked by recency.

Per-request Python cost (the API's hot path): compiling the ORM queryset to
SQL costs more than running it, so a ``CatalogShape`` (the FilterSet's
filters in use, without their values) keys a module-level cache of the
statement's text and parameter template; each request only re-binds its
values. The SQL text of a shape never depends on the values (exact matches,
an ``EXISTS`` on the plan kind, ``websearch_to_tsquery`` of the term), and
``_statement`` checks that on each shape's first use. The cache holds one
entry per combination of filters in use, term or not, and sort kind: a few
hundred at most. With ``cards=True`` the page's rows stay plain dicts (no
model instances) for the API's serialiser.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, router
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from listings.catalog_cache import catalog_changed
from listings.choices import FileFormat, Licence, PlanKind, UpdateFrequency
from listings.models import Category, DataFile, Listing, PricingPlan
from merchants.models import Merchant

# How many matches relevance ranks and facets count, at most.
CANDIDATE_CAP = 1000
PAGE_SIZE = 20
# Values shown per facet (the merchant facet can be long).
FACET_LIMIT = 20
QUERY_MAX_LENGTH = 200

SORT_RELEVANCE = "relevance"
SORT_NEWEST = "newest"
SORT_PRICE_ASC = "price_asc"
SORT_PRICE_DESC = "price_desc"
SORT_CHOICES = [
    (SORT_RELEVANCE, "Relevance"),
    (SORT_NEWEST, "Newest"),
    (SORT_PRICE_ASC, "Price: low to high"),
    (SORT_PRICE_DESC, "Price: high to low"),
]
_NEWEST = (F("published_at").desc(), F("pk").desc())
_ORDERINGS = {
    SORT_NEWEST: _NEWEST,
    SORT_PRICE_ASC: (F("price_from").asc(nulls_last=True), F("pk").asc()),
    SORT_PRICE_DESC: (F("price_from").desc(nulls_last=True), F("pk").desc()),
}
# Columns the facets group by; kept off the card queries (large text).
_CARD_DEFERRED = ("description", "licence_terms", "use_scenarios", "data_dictionary", "search_vector")

# The weighted document, in one place: the write path and the benchmark's bulk
# load use the same expression. ``{t}`` is the listing table's alias.
SEARCH_VECTOR_SQL = (
    "setweight(to_tsvector('simple', coalesce({t}.title, '')), 'A')"
    " || setweight(to_tsvector('simple', coalesce((SELECT string_agg(tag.name, ' ')"
    " FROM listings_tag tag JOIN listings_listing_tags lt ON lt.tag_id = tag.id"
    " WHERE lt.listing_id = {t}.id), '')), 'A')"
    " || setweight(to_tsvector('simple', coalesce({t}.summary, '')), 'B')"
    " || setweight(to_tsvector('simple', coalesce({t}.column_names, '')), 'C')"
    " || setweight(to_tsvector('simple', coalesce({t}.description, '')), 'D')"
    # The publication quarter as one lexeme (pubq2026q4), so matches can be narrowed by recency in the index.
    " || to_tsvector('simple', coalesce('pubq' || to_char({t}.published_at AT TIME ZONE 'UTC', 'YYYY\"q\"Q'), ''))"
)

# How many publication quarters (the current one included) the first pass of a bounded search covers.
RECENT_QUARTERS = 2


def _quarter_lexeme(year: int, quarter: int) -> str:
    return f"pubq{year}q{quarter}"


def quarter_lexeme(moment: datetime) -> str:
    """The search vector's lexeme for the quarter (UTC) of ``moment``: ``pubq2026q4``."""
    moment = moment.astimezone(UTC)
    return _quarter_lexeme(moment.year, (moment.month - 1) // 3 + 1)


def recent_quarters_query(now: datetime | None = None) -> str:
    """The ``to_tsquery`` text matching listings published in the last ``RECENT_QUARTERS`` quarters (UTC)."""
    now = (now or timezone.now()).astimezone(UTC)
    current = now.year * 4 + (now.month - 1) // 3  # quarters since year 0
    quarters = (divmod(current - back, 4) for back in range(RECENT_QUARTERS))
    return " | ".join(_quarter_lexeme(year, index + 1) for year, index in quarters)


def price_kinds_encode(kinds) -> str:
    """The ``Listing.price_kinds`` form of a set of plan kinds: sorted, comma-delimited at both ends."""
    kinds = sorted(set(kinds))
    return f",{','.join(kinds)}," if kinds else ""


def price_kinds_decode(value: str | None) -> list[str]:
    return [kind for kind in (value or "").split(",") if kind]


def _latest_published_files(listing: Listing) -> list[DataFile]:
    version = listing.versions.filter(published_at__isnull=False).order_by("-published_at", "-pk").first()
    if version is None:
        version = listing.versions.order_by("-created_at", "-pk").first()
    return list(version.files.all()) if version else []


def listing_refresh_catalog_fields(*, listing_pk: int) -> None:
    """Recompute the listing's catalog fields and (on PostgreSQL) its search vector.

    Call it, in the same transaction, after changing anything the catalog
    shows or searches: plans, files and their columns, title, summary,
    description or tags.
    """
    listing = Listing.objects.get(pk=listing_pk)
    plans = list(PricingPlan.objects.filter(listing=listing, is_active=True).order_by("amount", "pk"))
    cheapest = plans[0] if plans else None
    files = _latest_published_files(listing)
    columns = []
    for data_file in files:
        columns.extend(column["name"] for column in data_file.columns if column.get("name"))
    fields = {
        "price_from": cheapest.amount if cheapest else None,
        "price_kinds": price_kinds_encode(plan.kind for plan in plans),
        "price_currency": cheapest.currency if cheapest else "",
        "primary_format": files[0].format if files else "",
        "column_names": " ".join(dict.fromkeys(columns)),
    }
    Listing.objects.filter(pk=listing.pk).update(**fields)
    catalog_changed()  # an UPDATE sends no model signal: retire the cached catalog pages here
    if connection.vendor == "postgresql":
        table = Listing._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET search_vector = {SEARCH_VECTOR_SQL.format(t=table)} WHERE id = %s",
                [listing.pk],
            )


# --- reading -----------------------------------------------------------------


class CursorError(ValueError):
    """A pagination cursor that this catalog did not issue."""


def cursor_encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> int:
    """The offset inside ``cursor``; raises CursorError for anything else."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise CursorError("Not a valid cursor.") from None
    kind, _, number = raw.partition(":")
    if kind != "o" or not number.isdigit() or int(number) >= CANDIDATE_CAP:
        raise CursorError("Not a valid cursor.")
    return int(number)


def search_vector_available() -> bool:
    return connection.vendor == "postgresql"


def text_query(q: str) -> SearchQuery:
    """The tsquery for a user's terms: web-search syntax ("quoted phrases", -exclusions, or)."""
    return SearchQuery(q, search_type="websearch", config="simple")


def apply_text_search(queryset: QuerySet[Listing], q: str, *, naive: bool = False) -> QuerySet[Listing]:
    """Listings of ``queryset`` matching ``q``: full text on PostgreSQL, icontains otherwise (or if ``naive``)."""
    if not q:
        return queryset
    if search_vector_available() and not naive:
        return queryset.filter(search_vector=text_query(q))
    return queryset.filter(Q(title__icontains=q) | Q(summary__icontains=q) | Q(column_names__icontains=q))


@dataclass
class FacetValue:
    value: str
    label: str
    count: int


@dataclass
class CatalogPage:
    """One page of the catalog and the facets of the bounded candidate set."""

    listings: list[Listing]  # card dicts instead with ``catalog_query(cards=True)``
    q: str
    sort: str
    offset: int
    page_size: int
    has_next: bool
    facets: dict[str, list[FacetValue]] = field(default_factory=dict)
    # Matches counted for the facets; a lower bound when ``capped``.
    matches: int = 0
    capped: bool = False

    @property
    def next_cursor(self) -> str | None:
        return cursor_encode(self.offset + self.page_size) if self.has_next else None

    @property
    def previous_cursor(self) -> str | None:
        if self.offset <= 0:
            return None
        return cursor_encode(max(self.offset - self.page_size, 0))

    @property
    def start_index(self) -> int:
        return self.offset + 1 if self.listings else 0

    @property
    def end_index(self) -> int:
        return self.offset + len(self.listings)


def _resolve_sort(q: str, sort: str) -> str:
    """The sort to apply: a known one, else relevance with a term and newest without one."""
    if sort not in dict(SORT_CHOICES):
        sort = ""
    sort = sort or (SORT_RELEVANCE if q else SORT_NEWEST)
    if sort == SORT_RELEVANCE and not q:
        return SORT_NEWEST
    return sort


def _candidates_sql(
    base: QuerySet[Listing], q: str, *, bounded: bool, ranked: bool, naive: bool = False, recent: str = ""
) -> tuple[str, list, list]:
    """SQL of the candidate set: the newest ``CANDIDATE_CAP`` matches (all when not bounded), with facet columns.

    ``ranked`` adds ``ts_rank`` as the last column; it is computed for the
    candidates only, as the scan produces them.

    With full text, a term and ``recent`` (``recent_quarters_query()``), the
    search runs newest quarters first: one pass matches ``term & recent`` in
    the GIN index, a second ``term & !recent``, each newest first, and the
    first ``CANDIDATE_CAP`` rows of the two in that order are the candidates.
    PostgreSQL runs the second pass only when the first found fewer than the
    cap, so a broad term reads about ``CANDIDATE_CAP`` rows of the table
    whatever the catalog's size, rather than every match.
    """
    columns = [
        "id",
        "published_at",
        "category_id",
        "merchant_id",
        "licence",
        "primary_format",
        "update_frequency",
        "price_kinds",
    ]
    if ranked:
        columns.append("rank")

    def candidates_of(matches: QuerySet[Listing]) -> QuerySet:
        if ranked:
            matches = matches.annotate(rank=SearchRank(F("search_vector"), text_query(q)))
        matches = matches.order_by(*_NEWEST) if bounded else matches.order_by()
        matches = matches.values(*columns)
        return matches[:CANDIDATE_CAP] if bounded else matches

    if bounded and q and recent and search_vector_available() and not naive:
        recent_query = SearchQuery(recent, search_type="raw", config="simple")
        newer = candidates_of(base.filter(search_vector=text_query(q) & recent_query))
        older = candidates_of(base.filter(search_vector=text_query(q) & ~recent_query))
        candidates = newer.union(older, all=True)[:CANDIDATE_CAP]
    else:
        candidates = candidates_of(apply_text_search(base, q, naive=naive))
    sql, params = candidates.query.sql_with_params()
    return sql, list(params), columns


def _with_candidates(sql: str, columns: list[str]) -> str:
    return f"WITH c ({', '.join(columns)}) AS ({sql}) "


_RANK_ORDER = "c.rank DESC, c.published_at DESC, c.id DESC"


# The facets grouped in one pass over the candidates (PostgreSQL's GROUPING SETS): GROUPING() of the five
# columns is a bit mask with a 1 for each column a row is not grouped by (the first column is the high bit).
_FACET_GROUPS = ("category_id", "merchant_id", "licence", "primary_format", "update_frequency")
_GROUPED_BY = {name: 0b11111 ^ (1 << (4 - index)) for index, name in enumerate(_FACET_GROUPS)}


def _facet_sql() -> str:
    """The facet rows (name, value, label, count) over the candidates ``c``, and the total.

    Category and merchant are counted per id, then labelled (their slugs are
    unique); a listing counts once per kind of active plan it has
    (``price_kinds``; '%%' is a literal '%' in a statement with parameters).
    On PostgreSQL the plain columns are grouped in one pass (a CTE ``g``
    appended to the candidates' WITH); elsewhere one GROUP BY each.
    """
    category, merchant = Category._meta.db_table, Merchant._meta.db_table
    price_types = "".join(
        f" UNION ALL SELECT 'price_type', '{kind}', '', COUNT(*) FROM c WHERE c.price_kinds LIKE '%%,{kind},%%'"
        " HAVING COUNT(*) > 0"
        for kind in PlanKind.values
    )
    price_types += " UNION ALL SELECT 'total', '', '', COUNT(*) FROM c"
    if connection.vendor == "postgresql":
        columns = ", ".join(_FACET_GROUPS)
        sets = ", ".join(f"({name})" for name in _FACET_GROUPS)
        grouped = _GROUPED_BY  # short name for the filters below
        return (
            f", g AS (SELECT GROUPING({columns}) AS s, {columns}, COUNT(*) AS n FROM c GROUP BY GROUPING SETS ({sets}))"
            f" SELECT 'category', x.slug, x.name, g.n FROM g JOIN {category} x ON x.id = g.category_id"
            f" WHERE g.s = {grouped['category_id']}"
            f" UNION ALL SELECT 'merchant', x.slug, x.name, g.n FROM g JOIN {merchant} x ON x.id = g.merchant_id"
            f" WHERE g.s = {grouped['merchant_id']}"
            f" UNION ALL SELECT 'licence', g.licence, '', g.n FROM g WHERE g.s = {grouped['licence']}"
            " UNION ALL SELECT 'format', g.primary_format, '', g.n FROM g"
            f" WHERE g.s = {grouped['primary_format']} AND g.primary_format <> ''"
            " UNION ALL SELECT 'update_frequency', g.update_frequency, '', g.n FROM g"
            f" WHERE g.s = {grouped['update_frequency']}" + price_types
        )
    return (
        "SELECT 'category', x.slug, x.name, g.n FROM (SELECT c.category_id, COUNT(*) AS n FROM c"
        f" GROUP BY c.category_id) g JOIN {category} x ON x.id = g.category_id"
        " UNION ALL SELECT 'merchant', x.slug, x.name, g.n FROM (SELECT c.merchant_id, COUNT(*) AS n FROM c"
        f" GROUP BY c.merchant_id) g JOIN {merchant} x ON x.id = g.merchant_id"
        " UNION ALL SELECT 'licence', c.licence, '', COUNT(*) FROM c GROUP BY c.licence"
        " UNION ALL SELECT 'format', c.primary_format, '', COUNT(*) FROM c WHERE c.primary_format <> ''"
        " GROUP BY c.primary_format"
        " UNION ALL SELECT 'update_frequency', c.update_frequency, '', COUNT(*) FROM c GROUP BY c.update_frequency"
        + price_types
    )


def ranked_page_sql(queryset: QuerySet[Listing], q: str, *, page_size: int | None = None) -> tuple[str, list]:
    """One statement for page 1 by relevance with the card's columns: the top-N query on its own.

    The benchmark's raw-SQL baseline; the API ranks the same candidate set
    (and counts its facets in the same statement).
    """
    sql, params, columns = _candidates_sql(queryset, q, bounded=True, ranked=True, recent=recent_quarters_query())
    listing, merchant, category = Listing._meta.db_table, Merchant._meta.db_table, Category._meta.db_table
    statement = _with_candidates(sql, columns) + (
        "SELECT l.id, l.title, l.slug, l.summary, l.registration_number, l.licence, l.update_frequency,"
        " l.primary_format, l.price_from, l.price_currency, l.published_at, l.updated_at,"
        " m.slug, m.name, x.slug, x.name"
        f" FROM (SELECT * FROM c ORDER BY {_RANK_ORDER} LIMIT %s) c"
        f" JOIN {listing} l ON l.id = c.id JOIN {merchant} m ON m.id = l.merchant_id"
        f" LEFT JOIN {category} x ON x.id = l.category_id ORDER BY {_RANK_ORDER}"
    )
    return statement, [*params, (page_size or PAGE_SIZE) + 1]


# The listing columns a card shows, fetched by the ranked statement (others load lazily if touched).
_CARD_COLUMNS = (
    "id",
    "merchant_id",
    "category_id",
    "title",
    "slug",
    "summary",
    "status",
    "registration_number",
    "licence",
    "update_frequency",
    "primary_format",
    "price_from",
    "price_currency",
    "created_at",
    "updated_at",
    "published_at",
    "price_kinds",
)
_DATETIME_COLUMNS = {"created_at", "updated_at", "published_at"}


def _from_db(model, data: dict):
    # from_db takes the loaded values in the model's field order; the rest are deferred.
    names = [f.attname for f in model._meta.concrete_fields if f.attname in data]
    return model.from_db(router.db_for_read(model), names, [data[name] for name in names])


def _card_from_json(text: str, related: dict) -> Listing:
    """A Listing (with its merchant and category) from the ranked statement's JSON array.

    Built with ``from_db`` like any queryset row: the columns not fetched are
    deferred, so touching one loads it rather than reading a wrong default.
    """
    values = json.loads(text)
    fields = dict(zip(_CARD_COLUMNS, values, strict=False))
    for name in _DATETIME_COLUMNS:
        if fields[name]:
            fields[name] = datetime.fromisoformat(fields[name])
    merchant_slug, merchant_name, merchant_verification, category_slug, category_name = values[len(_CARD_COLUMNS) :]
    listing = _from_db(Listing, fields)
    # One instance per merchant and category on the page (``related`` caches them across cards).
    merchant_key, category_key = ("m", fields["merchant_id"]), ("c", fields["category_id"])
    if merchant_key not in related:
        related[merchant_key] = _from_db(
            Merchant,
            {
                "id": fields["merchant_id"],
                "slug": merchant_slug,
                "name": merchant_name,
                "verification_status": merchant_verification,
            },
        )
    if category_key not in related:
        related[category_key] = (
            _from_db(Category, {"id": fields["category_id"], "slug": category_slug, "name": category_name})
            if fields["category_id"]
            else None
        )
    listing.merchant, listing.category = related[merchant_key], related[category_key]
    listing.price_types = price_kinds_decode(fields["price_kinds"])
    return listing


# A card as a plain dict (``catalog_query(cards=True)``, the API's path): the card columns, plus these.
CARD_RELATED_KEYS = ("merchant_slug", "merchant_name", "merchant_verification_status", "category_slug", "category_name")


_CARD_DICT_KEYS = (*_CARD_COLUMNS, *CARD_RELATED_KEYS)  # the JSON array's items


def _card_dict_from_json(text: str) -> dict:
    """The ranked statement's JSON array as a card dict, without instantiating models (the API's path)."""
    values = json.loads(text)
    card = dict(zip(_CARD_DICT_KEYS, values, strict=False))
    for name in _DATETIME_COLUMNS:
        if card[name]:
            card[name] = datetime.fromisoformat(card[name])
    card["price_types"] = price_kinds_decode(card["price_kinds"])
    return card


def _card_dict_from_listing(listing: Listing) -> dict:
    """The same card dict from a Listing loaded by the ORM (sorts other than relevance)."""
    card = {name: getattr(listing, name) for name in _CARD_COLUMNS}
    merchant, category = listing.merchant, listing.category
    card.update(
        merchant_slug=merchant.slug,
        merchant_name=merchant.name,
        merchant_verification_status=merchant.verification_status,
        category_slug=category.slug if category else None,
        category_name=category.name if category else None,
        price_types=listing.price_types,
    )
    return card


@dataclass(frozen=True)
class CatalogShape:
    """The structured filters of a catalog query, split into its SQL shape and its values.

    ``key`` names the shape (the base queryset and which filters are in use,
    never their values). ``values`` maps each filter in use to its SQL
    parameter (a string or an int: a model as its pk). ``build(values)``
    returns the base queryset narrowed by ``values``; the statement of a shape
    is compiled once from placeholder values and then only re-bound (see
    ``_statement``).
    """

    key: tuple
    values: dict[str, str | int]
    build: Callable[[dict], QuerySet[Listing]]


# SQL shape -> (statement text, parameter template), or None for a shape that cannot be re-bound.
# A template entry is (True, slot name) for a per-request value and (False, value) for a constant.
_STATEMENTS: dict[tuple, tuple[str, tuple] | None] = {}
_SLOT = "\x00catalog-slot:"


def _sentinel(name: str, value, number: int):
    """A placeholder of ``value``'s type that no real query uses (None when the type is not supported)."""
    if type(value) is str:
        return f"{_SLOT}{name}\x00"
    if type(value) is int:
        return -(2**62) - number
    return None


def _template(params: list, sentinels: dict) -> tuple | None:
    slots = {(type(v), v): name for name, v in sentinels.items()}
    template = []
    for param in params:
        name = slots.get((type(param), param))
        if name is not None:
            template.append((True, name))
        elif isinstance(param, str) and _SLOT in param:
            return None  # a placeholder transformed into another value: its position cannot be re-bound
        else:
            template.append((False, param))
    return tuple(template)


def _typed(params: list) -> list:
    return [(type(param), param) for param in params]


def _bind(template: tuple, values: dict) -> list:
    return [values[item] if is_slot else item for is_slot, item in template]


def _statement(key: tuple, values: dict, compile_statement: Callable[[dict], tuple[str, list]]) -> tuple[str, list]:
    """The statement for ``values``: compiled once per SQL shape ``key``, then re-bound with the values.

    ``compile_statement(values)`` compiles it through the ORM. On a shape's
    first use it is compiled twice, with placeholders and with the real
    values; the template is kept only if re-binding the real values gives back
    exactly the real statement (same text, same parameters), so a value the
    ORM transforms or inlines makes that shape uncached rather than wrong.
    """
    try:
        cached = _STATEMENTS[key]
    except KeyError:
        pass
    else:
        if cached is None:
            return compile_statement(values)
        return cached[0], _bind(cached[1], values)
    sql, params = compile_statement(values)
    sentinels = {name: _sentinel(name, value, n) for n, (name, value) in enumerate(values.items())}
    entry = None
    if None not in sentinels.values():
        template_sql, template_params = compile_statement(sentinels)
        template = _template(template_params, sentinels)
        if template is not None and template_sql == sql and _typed(_bind(template, values)) == _typed(params):
            entry = (template_sql, template)
    _STATEMENTS[key] = entry
    return sql, params


def _with_card_fields(queryset: QuerySet[Listing]) -> QuerySet[Listing]:
    """What a catalog card shows: merchant and category joined, long text deferred (plan kinds: ``price_kinds``)."""
    return queryset.select_related("merchant", "category").defer(*_CARD_DEFERRED)


def _read_facets(rows) -> tuple[dict[str, list[FacetValue]], int]:
    grouped: dict[str, list] = {name: [] for name in FACET_NAMES}
    total = 0
    for row in rows:
        if row[0] == "total":
            total = row[3]
        elif row[0] in grouped:
            grouped[row[0]].append(row)
    facets = {}
    for name, values in grouped.items():
        labels = _CHOICE_LABELS.get(name, {})
        items = [(value, label or labels.get(value, value), count) for _, value, label, count in values]
        items.sort(key=lambda item: (-item[2], item[1].lower()))
        facets[name] = [FacetValue(value=v, label=label, count=count) for v, label, count in items[:FACET_LIMIT]]
    return facets, total


def catalog_query(
    *,
    queryset: QuerySet[Listing] | None = None,
    q: str = "",
    sort: str = "",
    offset: int = 0,
    page_size: int | None = None,
    naive: bool = False,
    shape: CatalogShape | None = None,
    cards: bool = False,
) -> CatalogPage:
    """One catalog page of ``queryset`` (already filtered, published only) for the term ``q``, with facets.

    At most three queries whatever the size of the catalog. By relevance (a
    term on PostgreSQL), one: a statement builds the candidate set once,
    ranks it for the page's rows (with their plan kinds) and counts the facets
    over it. Other sorts walk their index for ``page_size + 1`` rows, then
    their active plans, then the facets. ``naive`` (the benchmark's baseline only)
    searches with icontains and counts facets over every match.

    Instead of ``queryset``, a ``shape`` (the FilterSet's filters as SQL shape
    and values) lets the statement be compiled once per shape and re-bound per
    request. ``cards`` returns the listings as plain card dicts (the API's
    path) rather than Listing instances (the HTML's).
    """
    if (queryset is None) == (shape is None):
        raise TypeError("catalog_query takes either a queryset or a shape.")
    q = (q or "").strip()[:QUERY_MAX_LENGTH]
    page_size = page_size or PAGE_SIZE
    offset = max(0, min(int(offset), CANDIDATE_CAP - 1))
    vector = search_vector_available()
    ranked_search = bool(q) and vector and not naive
    sort = _resolve_sort(q, sort)
    ranked = ranked_search and sort == SORT_RELEVANCE
    bounded = not naive

    def base(values: dict) -> QuerySet[Listing]:
        return queryset if shape is None else shape.build(values)

    def compile_statement(values: dict) -> tuple[str, list]:
        sql, params, columns = _candidates_sql(
            base(values),
            values.get("q", ""),
            bounded=bounded,
            ranked=ranked,
            naive=naive,
            recent=values.get("recent", ""),
        )
        statement = _with_candidates(sql, columns) + _facet_sql()
        if ranked:
            statement += _ranked_page_sql()
            params += [values["limit"], values["offset"]]
        return statement, params

    values = dict(shape.values) if shape is not None else {}
    if q:
        values["q"] = q
        if vector and bounded:
            values["recent"] = recent_quarters_query()
    if ranked:
        values.update(limit=page_size + 1, offset=offset)
    if shape is not None:
        key = (shape.key, bool(q), ranked, bounded, vector, CANDIDATE_CAP, connection.alias, connection.vendor)
        statement, params = _statement(key, values, compile_statement)
    else:
        statement, params = compile_statement(values)
    if not ranked:
        # Newest, price, or relevance without full text (recency): the index gives the order.
        ordering = _ORDERINGS.get(sort, _NEWEST)
        matches = apply_text_search(base(shape.values if shape is not None else {}), q, naive=naive)
        rows = list(_with_card_fields(matches.order_by(*ordering))[offset : offset + page_size + 1])
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        result = cursor.fetchall()
    facets, total = _read_facets(result)
    if ranked:
        related: dict = {}
        ranked_rows = sorted((r for r in result if r[0] == "page"), key=lambda r: r[3])
        if cards:
            rows = [_card_dict_from_json(r[2]) for r in ranked_rows]
        else:
            rows = [_card_from_json(r[2], related) for r in ranked_rows]
    else:
        for row in rows:
            row.price_types = price_kinds_decode(row.price_kinds)
        if cards:
            rows = [_card_dict_from_listing(row) for row in rows]
    has_next = len(rows) > page_size and offset + page_size < CANDIDATE_CAP
    if not cards:
        kind_labels = dict(PlanKind.choices)
        for row in rows:
            row.price_type_labels = [kind_labels.get(kind, kind) for kind in row.price_types]
    return CatalogPage(
        listings=rows[:page_size],
        q=q,
        sort=sort,
        offset=offset,
        page_size=page_size,
        has_next=has_next,
        facets=facets,
        matches=total,
        capped=not naive and total >= CANDIDATE_CAP,
    )


def _ranked_page_sql() -> str:
    """The page itself, in rank order: each card's columns (with its merchant and category) as one JSON array."""
    listing, merchant, category = Listing._meta.db_table, Merchant._meta.db_table, Category._meta.db_table
    card_columns = ", ".join(f"l.{name}" for name in _CARD_COLUMNS)
    return (
        f" UNION ALL SELECT 'page', '', CAST(json_build_array({card_columns}, m.slug, m.name,"
        " m.verification_status, x.slug, x.name)"
        " AS TEXT), p.n"
        f" FROM (SELECT c.id, ROW_NUMBER() OVER (ORDER BY {_RANK_ORDER}) AS n FROM (SELECT c.id, c.rank,"
        f" c.published_at FROM c ORDER BY {_RANK_ORDER} LIMIT %s OFFSET %s) c) p JOIN {listing} l ON l.id = p.id"
        f" JOIN {merchant} m ON m.id = l.merchant_id LEFT JOIN {category} x ON x.id = l.category_id"
    )


FACET_NAMES = ("category", "price_type", "licence", "format", "merchant", "update_frequency")
_CHOICE_LABELS = {
    "licence": dict(Licence.choices),
    "format": dict(FileFormat.choices),
    "update_frequency": dict(UpdateFrequency.choices),
    "price_type": dict(PlanKind.choices),
}
