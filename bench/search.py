"""make bench-search: the catalog search API at 100,000 (and 1,000,000) published listings.

Seeds its own PostgreSQL database (``BENCH_SEARCH_DATABASE_URL``, default
``exchange_bench_search`` on the local server) with COPY, computes every
search vector in one UPDATE with the write path's own expression, builds the
catalog indexes, ANALYZEs, starts gunicorn on loopback and measures, from
this process, a bounded number of sequential requests per query kind:

* the search API as it really answers (page, facets, serialisation) for a
  selective term, a common term and a two-term query: p50 and p95;
* baseline (a): the API's page-1 SQL alone, the very statement Django
  compiles, through psycopg;
* baseline (b): a trivial JSON endpoint on the same server (the framework's
  fixed cost);
* baseline (c): the naive icontains search of the same API (``?naive=1``,
  enabled by ``BENCH_ENABLE_NAIVE`` only in this run's server).

Prints progress to stderr and exactly one JSON line to stdout. ``--million``
adds a 1,000,000-listing run (in its own database, ``<name>_1m``, so ``--reuse``
keeps both sizes); ``--smoke`` uses tiny sizes (the test suite runs it).
"""

import argparse
import http.client
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg

from bench._servers import database_migrated
from bench.corpus import COMMON_TERM, SELECTIVE_TERM, TWO_TERM, TextGenerator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/exchange_bench_search"
SMOKE_URL_SUFFIX = "_smoke"
MILLION_URL_SUFFIX = "_1m"
QUERIES = {"selective": SELECTIVE_TERM, "common": COMMON_TERM, "two_term": " ".join(TWO_TERM)}
GOAL_API_OVER_SQL_PLUS_TRIVIAL = 3.0
GOAL_NAIVE_OVER_API = 10.0
GOAL_1M_OVER_100K = 3.0
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MERCHANTS = 200
LICENCES = ["CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-4.0", "CC0-1.0", "ODbL-1.0", "custom"]
FREQUENCIES = ["once", "realtime", "daily", "weekly", "monthly", "quarterly", "yearly", "irregular"]
FORMATS = ["csv", "csv", "csv", "parquet", "jsonl", "tsv"]


def log(message: str) -> None:
    print(f"[bench-search] {message}", file=sys.stderr, flush=True)


# --- the database -------------------------------------------------------------


def _with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_fresh(url: str) -> None:
    """Recreate the benchmark's own database, migrated (a plain lower-case name, never the project's own)."""
    name = urlsplit(url).path.lstrip("/")
    if not _DB_NAME.match(name) or name in {"exchange", "exchange_p", "exchange_u", "exchange_s", "postgres"}:
        raise SystemExit(f"refusing to recreate database {name!r}")
    database_migrated(url, env=server_env(url))


def server_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "CELERY_"))}
    env.update(
        DATABASE_URL=url,
        DJANGO_ENV="development",
        DJANGO_DEBUG="false",
        DJANGO_SETTINGS_MODULE="exchange.settings",
        DB_CONN_MAX_AGE="600",
        BENCH_ENABLE_NAIVE="true",
        LOG_LEVEL="WARNING",
    )
    return env


def migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=server_env(url), check=True
    )


def _catalog_indexes() -> dict[str, str]:
    import importlib

    return importlib.import_module("listings.migrations.0003_search_index").INDEXES


def _required_columns(conn, table: str, provided: list[str]) -> dict[str, str]:
    """NOT NULL columns without a database default that the seed does not provide, with a neutral value.

    Other apps may add such columns (Django keeps most defaults in Python); the
    seed fills them so it keeps working as the schema grows.
    """
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s"
        " AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO'",
        [table],
    ).fetchall()
    neutral = {"boolean": False, "jsonb": "{}", "json": "{}", "date": "2024-01-01"}
    extra = {}
    for name, data_type in rows:
        if name in provided:
            continue
        if data_type in neutral:
            extra[name] = neutral[data_type]
        elif "timestamp" in data_type:
            extra[name] = datetime.now(UTC)
        elif data_type in {"integer", "bigint", "smallint", "numeric", "double precision"}:
            extra[name] = 0
        else:
            extra[name] = ""
    return extra


def _copy(conn, table: str, columns: list[str], rows) -> None:
    extra = _required_columns(conn, table, columns)
    names = [*columns, *extra]
    values = list(extra.values())
    with conn.cursor().copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([*row, *values])


def seed(url: str, listings: int, *, seed_value: int = 42) -> dict:
    """Load ``listings`` published listings (plus 5 % drafts) with merchants, tags and plans; returns timings."""
    from listings.search import SEARCH_VECTOR_SQL, price_kinds_encode

    started = time.perf_counter()
    rng = random.Random(seed_value)
    text = TextGenerator(seed_value)
    now = datetime.now(UTC)
    drafts = max(1, listings // 20)
    total = listings + drafts
    with psycopg.connect(url, autocommit=True) as conn:
        for name in _catalog_indexes():
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        category_ids = [row[0] for row in conn.execute("SELECT id FROM listings_category ORDER BY id")]
        _copy(
            conn,
            "merchants_merchant",
            ["id", "name", "slug", "description", "contact_email", "status", "created_at"],
            (
                (n, f"Merchant {n} 数据", f"merchant-{n}", "", f"m{n}@example.com", "active", now)
                for n in range(1, MERCHANTS + 1)
            ),
        )
        tag_ids: dict[str, int] = {}
        listing_rows, tag_rows, plan_rows = [], [], []
        plan_id = 0
        span = timedelta(days=3 * 365)
        for number in range(1, total + 1):
            doc = text.listing(number)
            published = number <= listings
            # Newer ids were published later, with some jitter (as reviews finish out of order).
            when = now - span * (1 - number / total) - timedelta(minutes=rng.randint(0, 600))
            price = rng.choice([0, 990, 4900, 19900, 99900, 500000]) or 100
            currency = rng.choice(["CNY", "CNY", "CNY", "USD", "EUR"])
            listing_rows.append(
                (
                    number,
                    rng.randint(1, MERCHANTS),
                    doc["title"][:200],
                    f"listing-{number}",
                    doc["summary"],
                    doc["description"],
                    rng.choice(category_ids),
                    rng.choice(LICENCES),
                    "",
                    rng.choice(FREQUENCIES),
                    "",
                    "",
                    "none",
                    "{}",
                    "published" if published else "draft",
                    f"DX-{when:%Y}-{number:08d}" if published else None,
                    when,
                    when,
                    when if published else None,
                    price,
                    currency,
                    rng.choice(FORMATS),
                    doc["column_names"],
                )
            )
            for tag in doc["tags"]:
                tag_rows.append((number, tag_ids.setdefault(tag, len(tag_ids) + 1)))
            plan_id += 1
            plan_rows.append((plan_id, number, "one_time", "", price, currency, "", "", 0, "all", True, when))
            kinds = ["one_time"]
            if rng.random() < 0.25:
                plan_id += 1
                plan_rows.append(
                    (plan_id, number, "subscription", "", price // 10 + 1, currency, "month", "", 0, "all", True, when)
                )
                kinds.append("subscription")
            listing_rows[-1] += (price_kinds_encode(kinds),)  # Listing.price_kinds
        _copy(conn, "listings_tag", ["id", "name"], ((tid, name) for name, tid in tag_ids.items()))
        _copy(
            conn,
            "listings_listing",
            [
                "id",
                "merchant_id",
                "title",
                "slug",
                "summary",
                "description",
                "category_id",
                "licence",
                "licence_terms",
                "update_frequency",
                "geographic_coverage",
                "use_scenarios",
                "sensitivity",
                "data_dictionary",
                "status",
                "registration_number",
                "created_at",
                "updated_at",
                "published_at",
                "price_from",
                "price_currency",
                "primary_format",
                "column_names",
                "price_kinds",
            ],
            listing_rows,
        )
        _copy(conn, "listings_listing_tags", ["listing_id", "tag_id"], tag_rows)
        _copy(
            conn,
            "listings_pricingplan",
            [
                "id",
                "listing_id",
                "kind",
                "name",
                "amount",
                "currency",
                "interval",
                "metered_unit",
                "free_units_per_month",
                "version_access",
                "is_active",
                "created_at",
            ],
            plan_rows,
        )
        del listing_rows, tag_rows, plan_rows
        for table in ("merchants_merchant", "listings_tag", "listings_listing", "listings_pricingplan"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        loaded = time.perf_counter()
        # Every vector in one statement, with the expression the write path uses.
        conn.execute(f"UPDATE listings_listing SET search_vector = {SEARCH_VECTOR_SQL.format(t='listings_listing')}")
        vectors = time.perf_counter()
        for name, definition in _catalog_indexes().items():
            conn.execute(f"CREATE INDEX {name} ON listings_listing {definition} WHERE status = 'published'")
        conn.execute("VACUUM ANALYZE")
        finished = time.perf_counter()
    return {
        "load_s": round(loaded - started, 1),
        "vectors_s": round(vectors - loaded, 1),
        "index_analyze_s": round(finished - vectors, 1),
    }


def match_counts(url: str) -> dict[str, int]:
    """How many published listings each query matches (context for the figures; not timed)."""
    with psycopg.connect(url) as conn:
        return {
            kind: conn.execute(
                "SELECT count(*) FROM listings_listing WHERE status = 'published'"
                " AND search_vector @@ websearch_to_tsquery('simple', %s)",
                [q],
            ).fetchone()[0]
            for kind, q in QUERIES.items()
        }


# --- the server and the client ---------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn on loopback with two sync workers; stopped by its own process id."""

    def __init__(self, url: str):
        self.port = free_port()
        self.log_path = ROOT / "var" / f"bench-search-gunicorn-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self._log = self.log_path.open("w")
        # One server for the API and the trivial endpoint alike: 2 sync workers for a 2-core box
        # (the client sends one request at a time; PostgreSQL and this process need the other core).
        workers = ["--workers", "2", "--worker-class", "sync"]
        self.process = subprocess.Popen(
            [str(gunicorn), "exchange.wsgi:application", "--bind", f"127.0.0.1:{self.port}", *workers],
            cwd=ROOT,
            env=server_env(url),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited; see {self.log_path}")
            try:
                status, _ = get(self.port, "/api/v1/ping/")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"gunicorn did not answer within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def timed(call, *, warmup: int, requests: int) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p95": round(p95, 2), "n": len(ordered)}


def _http_call(port: int, path: str):
    def call():
        status, body = get(port, path)
        if status != 200:
            raise SystemExit(f"GET {path} answered {status}: {body[:300]!r}")
        return body

    return call


def page_sql(q: str) -> tuple[str, list]:
    """Baseline (a): one statement returning page 1 by relevance with the card's columns.

    Built by the catalog itself (``ranked_page_sql``) from the candidate set
    the API ranks, after the same FilterSet validated the term.
    """
    from listings.filters import ListingFilter
    from listings.search import ranked_page_sql
    from listings.selectors import listings_published

    filterset = ListingFilter({"q": q}, queryset=listings_published())
    if not filterset.is_valid():
        raise SystemExit(f"invalid benchmark query {q!r}: {filterset.errors}")
    return ranked_page_sql(filterset.qs, q)


def measure(url: str, listings: int, *, requests: int, warmup: int, naive_requests: int) -> dict:
    """All figures for one catalog size: API per query kind and the three baselines."""
    server = Server(url)
    try:
        server.wait_ready()
        port = server.port
        trivial = timed(_http_call(port, "/api/v1/ping/"), warmup=warmup, requests=requests)
        api, raw_sql, results = {}, {}, {}
        with psycopg.connect(url, cursor_factory=psycopg.ClientCursor) as conn:
            for kind, q in QUERIES.items():
                path = "/api/v1/catalog/listings/?" + urlencode({"q": q})
                body = json.loads(_http_call(port, path)())
                results[kind] = {"results": len(body["results"]), "counted": body["matches"]["counted"]}
                api[kind] = summary(timed(_http_call(port, path), warmup=warmup, requests=requests))
                sql, params = page_sql(q)

                def run_sql(sql=sql, params=params):
                    with conn.cursor() as cursor:
                        cursor.execute(sql, params)
                        cursor.fetchall()

                raw_sql[kind] = summary(timed(run_sql, warmup=warmup, requests=requests))
                log(f"{listings}: {kind} {q!r}: api {api[kind]} sql {raw_sql[kind]}")
        naive_path = "/api/v1/catalog/listings/?" + urlencode({"q": QUERIES["selective"], "naive": "1"})
        naive = summary(timed(_http_call(port, naive_path), warmup=min(warmup, 2), requests=naive_requests))
        log(f"{listings}: trivial {summary(trivial)} naive selective {naive}")
    finally:
        server.stop()
    return {"api_ms": api, "raw_sql_ms": raw_sql, "trivial_ms": summary(trivial), "naive_selective_ms": naive,
            "answers": results}  # fmt: skip


def _published_count(url: str) -> int | None:
    try:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM listings_listing WHERE status = 'published'").fetchone()[0]
    except psycopg.Error:
        return None


def run_size(url: str, listings: int, args) -> dict:
    if args.reuse and _published_count(url) == listings:
        # A development aid: measure again without re-seeding (the data is deterministic).
        log(f"reusing the {listings} listings already in {urlsplit(url).path.lstrip('/')}")
        migrate(url)
        timings = {"reused": True}
    else:
        log(f"seeding {listings} published listings into {urlsplit(url).path.lstrip('/')}")
        database_fresh(url)
        timings = seed(url, listings)
        log(f"seeded: {timings}")
    figures = measure(
        url, listings, requests=args.requests, warmup=args.warmup, naive_requests=max(5, args.requests // 4)
    )
    figures["matches"] = match_counts(url)
    figures["seed_s"] = timings
    return figures


def ratios(figures: dict) -> dict[str, float]:
    trivial = figures["trivial_ms"]["p50"]
    worst = max(figures["api_ms"][kind]["p50"] / (figures["raw_sql_ms"][kind]["p50"] + trivial) for kind in QUERIES)
    naive = figures["naive_selective_ms"]["p50"] / figures["api_ms"]["selective"]["p50"]
    return {"worst_api_over_sql_plus_trivial": round(worst, 2), "selective_icontains_over_api": round(naive, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="also run at 1,000,000 listings")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (the test suite runs this)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query kind")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep an already seeded database of the same size")
    args = parser.parse_args(argv)
    url = os.environ.get("BENCH_SEARCH_DATABASE_URL", DEFAULT_URL)
    if args.smoke:
        args.listings, args.requests, args.warmup, args.million = 300, 20, 3, False
        url = _with_dbname(url, urlsplit(url).path.lstrip("/") + SMOKE_URL_SUFFIX)
    # This process compiles the API's SQL with Django itself (baseline a).
    os.environ.update(server_env(url))
    import django

    django.setup()

    started = time.perf_counter()
    figures = run_size(url, args.listings, args)
    result = {
        "bench": "search",
        "listings": args.listings,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "terms": QUERIES,
        "requests_per_kind": args.requests,
        **figures,
        "ratios": ratios(figures),
    }
    if args.million:
        # Its own database, so ``--reuse`` keeps both sizes (re-seeding 1M takes a quarter of an hour).
        million = run_size(_with_dbname(url, urlsplit(url).path.lstrip("/") + MILLION_URL_SUFFIX), 1_000_000, args)
        result["million"] = {**million, "ratios": ratios(million)}
        result["ratios"]["worst_p50_1m_over_100k"] = round(
            max(million["api_ms"][kind]["p50"] / figures["api_ms"][kind]["p50"] for kind in QUERIES), 2
        )
    r = result["ratios"]
    goals = {
        "api_over_sql_plus_trivial": r["worst_api_over_sql_plus_trivial"] <= GOAL_API_OVER_SQL_PLUS_TRIVIAL,
        "selective_icontains_over_api": r["selective_icontains_over_api"] >= GOAL_NAIVE_OVER_API,
    }
    if "worst_p50_1m_over_100k" in r:
        goals["p50_1m_over_100k"] = r["worst_p50_1m_over_100k"] <= GOAL_1M_OVER_100K
    result["goals_met"] = goals
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
