"""The exchange under a mixed load, stepped up to its break point: ``make bench-load`` (DESIGN.md §7, issue 9).

A real gunicorn (gthread, 2 workers x 16 threads: sized for 2 cores, as
``bench.webhooks`` runs it), PostgreSQL, Redis (cache and broker) and one
Celery worker (prefork -c 2, every queue), so checkouts and webhooks work as
in production. The load comes from locust, headless, on loopback, in a
subprocess (``bench.load_profile``: the user classes, their weights and the
stepping), with a mixed profile: catalog browse and search with facets,
listing pages, checkout starts by logged-in buyers (the sandbox gateway),
signed payment webhooks, and buyers downloading their purchased files through
signed links; the trivial endpoint ``/api/v1/ping/`` is part of the mix as
the baseline measured in the same run.

1. Steps: 10, 20, 40, 80... users (each ramped up, then measured for 20 s)
   until a step's error rate exceeds 0.1% or its p99 exceeds 1 s: the break
   point; two more steps, each halfway between the last good and the lowest
   breaking count, narrow it down (so 70% of it stays below the last good
   count). If no step breaks (up to 1,280 users, or the steps' time budget
   of 200 s), ``break_point_users`` is null and the steady phase
   runs at 70% of the highest count reached.
2. Steady: after a cool-down, 70% of the break point's users for 60 s: the
   request rate, p50/p99 per request type, the error rate. While it runs,
   PostgreSQL's client connections are sampled (``pg_stat_activity``, every
   0.5 s) against ``max_connections``, and afterwards the server's and the
   worker's logs are searched for connection-exhaustion errors.

Knobs (the defaults are the profile measured in the README): ``--think MIN MAX``
(seconds a user waits between requests, 0.5 to 1.5), ``--web-workers`` and
``--web-threads`` (gunicorn, 2 x 16), ``--worker-nice`` (the Celery worker's
nice value, 0), ``--steady-seconds``, ``--step-seconds``, ``--start-users``.

Goals (issue 9, this 2-core machine, at 70% of the break point): error rate <
0.1%, p99 browse (catalog browse, search and listing pages together) <= 300
ms, no database connection exhaustion.

Seeded (in seconds, through the project's services, as the other benchmarks
seed): 240 published listings over 8 merchants (titles, descriptions and tags
from ``bench.corpus``, spread over the categories, licences, update
frequencies and prices so every facet has values), 40 buyers who each bought
and received one of them through the sandbox (their session cookies and
signed download links go to the load generator), and 4,000 pending orders
with sandbox sessions whose paid events the webhook users send
(``bench.webhooks.seed``).

    python -m bench.load            # steps of 20 s from 10 users, then 60 s steady (about 5 minutes)
    python -m bench.load --smoke    # a tiny seed, one 8 s step of 10 users, 6 s steady, for the test suite

It uses its own PostgreSQL database (dropped and created here) and its own
Redis database (flushed here); override them with BENCH_LOAD_DATABASE_URL and
BENCH_LOAD_REDIS_URL. The last line on stdout is the JSON result; progress
goes to stderr.
"""

import argparse
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench._servers import (
    ROOT,
    BenchError,
    ServerProcess,
    celery_ready,
    celery_worker,
    database_migrated,
    free_port,
    gunicorn,
    redis_flush,
    wait_until,
)
from bench.webhooks import _ping_ok, bench_environment, cores, django_setup, fire

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_load"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
GOAL_ERROR_RATE = 0.001
GOAL_P99_BROWSE_MS = 300
# PostgreSQL's messages when it refuses a connection for lack of slots.
EXHAUSTION = re.compile(r"too many (clients|connections)|connection slots are reserved", re.IGNORECASE)
LICENCES = ["CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-4.0", "CC0-1.0", "ODbL-1.0", "PDDL-1.0"]
FREQUENCIES = ["once", "daily", "weekly", "monthly", "quarterly", "yearly"]
PRICES = [990, 4900, 19900, 99900]
WORKER_QUEUES = "default,delivery,settlement,notifications"


@dataclass(frozen=True)
class Sizes:
    listings: int
    merchants: int
    buyers: int
    pending_orders: int
    start_users: int
    max_users: int
    step_seconds: float
    refine: int
    steady_seconds: float
    cool_down: float
    budget: float  # seconds the stepping may take at most
    think_min: float = 0.5  # seconds a user waits between two requests (uniform between min and max)
    think_max: float = 1.5
    worker_nice: int = 0  # the Celery worker's nice value (deploy/systemd runs workers at Nice=10 beside web)
    web_workers: int = 2  # gunicorn processes (gthread)
    web_threads: int = 16  # threads per gunicorn process


FULL = Sizes(
    listings=240,
    merchants=8,
    buyers=40,
    pending_orders=4000,
    start_users=10,
    max_users=1280,
    step_seconds=20,
    refine=2,
    steady_seconds=60,
    cool_down=5,
    budget=200,
)
SMOKE = Sizes(
    listings=12,
    merchants=2,
    buyers=4,
    pending_orders=60,
    start_users=10,
    max_users=10,
    step_seconds=8,
    refine=0,
    steady_seconds=6,
    cool_down=1,
    budget=20,
)


def log(message: str) -> None:
    print(f"[bench-load] {message}", file=sys.stderr, flush=True)


def load_environment(*, database_url: str, redis_url: str, scratch: Path) -> dict[str, str]:
    """``bench.webhooks``' environment (sandbox gateway, explicit webhook secret, real broker), with download
    links valid for the whole run (they are signed while seeding)."""
    env = bench_environment(database_url=database_url, redis_url=redis_url, scratch=scratch)
    env = {key: value for key, value in env.items() if not key.startswith("DOWNLOAD_")}
    env["DOWNLOAD_LINK_TTL_SECONDS"] = "3600"
    return env


# --- seeding ---------------------------------------------------------------------------------------------------


def seed_catalog(sizes: Sizes, rng: random.Random) -> list:
    """``sizes.listings`` published listings over ``sizes.merchants`` merchants, spread over every facet.

    Built by the test suite's ``make_listing`` (upload, profile, price, review and approval through the
    services), with text and tags from ``bench.corpus``. Categories are assigned afterwards (the factory
    files every listing under one) with an UPDATE of that column alone: nothing derived depends on it.
    """
    from accounts.models import User
    from bench.corpus import TextGenerator
    from listings.models import Category, Listing
    from tests.factories import make_listing, make_merchant

    reviewer = User.objects.create(email="load-reviewer@bench.invalid", password="!", is_staff=True)
    owners = User.objects.bulk_create(
        [User(email=f"load-seller{n}@bench.invalid", password="!") for n in range(sizes.merchants)]
    )
    merchants = [make_merchant(owner, name=f"Load Merchant {n}") for n, owner in enumerate(owners)]
    categories = list(Category.objects.order_by("position", "pk"))
    text = TextGenerator(42)
    listings = []
    for number in range(sizes.listings):
        doc = text.listing(number)
        owner, merchant = owners[number % len(owners)], merchants[number % len(merchants)]
        listing = make_listing(
            merchant=merchant,
            owner=owner,
            reviewer=reviewer,
            title=doc["title"],
            description=doc["description"],
            tags=doc["tags"],
            licence=rng.choice(LICENCES),
            update_frequency=rng.choice(FREQUENCIES),
            price=rng.choice(PRICES),
        )
        if not listing.is_published:
            raise BenchError(f"seeded listing {listing.slug} was not published")
        Listing.objects.filter(pk=listing.pk).update(category=categories[number % len(categories)])
        listings.append(listing)
    return listings


def seed_buyers(count: int, listings: list) -> list[dict]:
    """``count`` buyers, each of whom bought one listing through the buy form and the sandbox and got it.

    The purchase runs the real flow in this process (the test client; tasks inline): order, checkout,
    payment webhook, entitlement, delivery. Returns per buyer its session cookie, the signed links to its
    files and the slug it owns.
    """
    from django.test import Client

    from accounts.models import User
    from exchange.models import Delivery, Order
    from exchange.services.downloads import download_link_make
    from tests.exchange.helpers import approve_in_sandbox, buy

    buyers = []
    for number in range(count):
        user = User.objects.create(email=f"load-buyer{number}@bench.invalid", password="!")
        listing = listings[(number * 7) % len(listings)]
        client = Client()
        client.force_login(user)
        response = buy(client, listing)
        order = Order.objects.filter(buyer=user).first()
        if response.status_code != 302 or order is None:
            raise BenchError(f"buyer {number} could not start a checkout (HTTP {response.status_code})")
        approve_in_sandbox(client, order.checkout_url)
        delivery = Delivery.objects.filter(entitlement__order=order).select_related("version").first()
        if delivery is None or delivery.status != "ready":
            raise BenchError(f"buyer {number}'s purchase was not delivered ({delivery and delivery.status})")
        links = [download_link_make(delivery=delivery, file=f, user=user) for f in delivery.version.files.all()]
        buyers.append({"session": client.cookies["sessionid"].value, "downloads": links, "owned": [listing.slug]})
    return buyers


def search_terms(listings: list, rng: random.Random) -> list[str]:
    """Words of the seeded titles (one and two at a time) and the corpus's common term."""
    from bench.corpus import COMMON_TERM

    words = sorted({w.lower() for listing in listings for w in listing.title.split() if w.isascii() and len(w) > 3})
    terms = rng.sample(words, k=min(30, len(words)))
    terms += [" ".join(rng.sample(words, k=2)) for _ in range(10)] if len(words) > 1 else []
    return [*terms, COMMON_TERM]


def seed(sizes: Sizes, *, secret: str) -> dict:
    """Everything the load generator needs, as a JSON-ready manifest (see ``bench.load_profile``)."""
    from bench.webhooks import seed as seed_pending_orders
    from bench.webhooks import signed_events
    from listings.models import Listing
    from listings.search import SORT_CHOICES

    rng = random.Random(42)
    started = time.monotonic()
    # First: bench.webhooks' seed names its own merchant, listing and buyers (buyer<n>@bench.invalid).
    pending = seed_pending_orders(sizes.pending_orders)
    bodies = [body.decode() for body, _ in signed_events(pending, secret=secret)]  # signed again when sent
    log(f"  {len(pending)} pending orders in {time.monotonic() - started:.1f}s")
    listings = seed_catalog(sizes, rng)
    log(f"  {len(listings)} listings published after {time.monotonic() - started:.1f}s")
    buyers = seed_buyers(sizes.buyers, listings)
    log(f"  {len(buyers)} buyers with a delivery after {time.monotonic() - started:.1f}s")
    published = Listing.objects.filter(status="published").select_related("category", "merchant")
    facets = {
        "category": sorted({listing.category.slug for listing in published}),
        "licence": sorted({listing.licence for listing in published}),
        "update_frequency": sorted({listing.update_frequency for listing in published}),
        "merchant": sorted({listing.merchant.slug for listing in published}),
        "price_type": ["one_time"],
        "format": ["csv"],
    }
    return {
        "listings": sorted(listing.slug for listing in published),
        "buyable": [listing.slug for listing in listings],
        "facets": facets,
        "sorts": [value for value, _ in SORT_CHOICES if value],
        "search_terms": search_terms(listings, rng),
        "buyers": buyers,
        "webhook_secret": secret,
        "webhook_events": bodies,
    }


# --- watching PostgreSQL -----------------------------------------------------------------------------------------


class ConnectionSampler(threading.Thread):
    """Samples PostgreSQL's client connections (all databases, and the bench's) every ``interval`` seconds."""

    def __init__(self, database_url: str, *, interval: float = 0.5):
        super().__init__(name="pg-sampler", daemon=True)
        self.database_url = database_url
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (epoch seconds, all client backends, this database's)
        self.failures = 0
        self._halt = threading.Event()
        self.limits = self._limits()

    def _limits(self) -> dict[str, int]:
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT name, setting::int FROM pg_settings"
                " WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
            ).fetchall()
        return dict(rows)

    def run(self) -> None:
        import psycopg

        query = (
            "SELECT count(*), count(*) FILTER (WHERE datname = current_database())"
            " FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=10) as conn:
            while not self._halt.wait(self.interval):
                try:
                    total, ours = conn.execute(query).fetchone()
                except psycopg.Error:
                    self.failures += 1
                    continue
                self.samples.append((time.time(), total, ours))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def peaks(self, start: float = 0.0, end: float = float("inf")) -> tuple[int | None, int | None]:
        window = [(total, ours) for at, total, ours in self.samples if start <= at <= end]
        if not window:
            return None, None
        return max(total for total, _ in window), max(ours for _, ours in window)


def exhaustion_errors(*servers: ServerProcess) -> int:
    """Lines in the servers' logs where PostgreSQL refused a connection for lack of slots."""
    return sum(1 for server in servers for line in server.log().splitlines() if EXHAUSTION.search(line))


def server_errors(*servers: ServerProcess, keep: int = 3, lines: int = 30) -> dict:
    """What the servers logged about failed requests and tasks: how many tracebacks, and the first ``keep`` of them
    (each from the line before it, up to ``lines`` lines), so a failure in the figures can be explained."""
    tracebacks = []
    for server in servers:
        log_lines = server.log().splitlines()
        for index, line in enumerate(log_lines):
            if line.startswith("Traceback (most recent call last):"):
                tracebacks.append("\n".join([server.name, *log_lines[max(0, index - 1) : index + lines]]))
    return {"tracebacks": len(tracebacks), "first": tracebacks[:keep]}


def connection_report(sampler: ConnectionSampler, steady: dict, log_errors: int) -> dict:
    limits = sampler.limits
    usable = limits["max_connections"] - limits.get("superuser_reserved_connections", 0)
    usable -= limits.get("reserved_connections", 0)
    peak_total, peak_ours = sampler.peaks()
    steady_total, steady_ours = sampler.peaks(steady["started_at"], steady["ended_at"])
    exhausted = log_errors > 0 or peak_total is None or peak_total >= usable
    return {
        "max_connections": limits["max_connections"],
        "usable_connections": usable,
        "peak_all_databases": peak_total,
        "peak_bench_database": peak_ours,
        "steady_peak_all_databases": steady_total,
        "steady_peak_bench_database": steady_ours,
        "samples": len(sampler.samples),
        "exhaustion_errors_in_logs": log_errors,
        "exhausted": exhausted,
    }


# --- after the load ----------------------------------------------------------------------------------------------


def outcome_counts(*, timeout: float) -> dict[str, int]:
    """The worker's side: wait (bounded) for the stored payment events to be handled, then count."""
    from exchange.choices import PaymentEventStatus
    from exchange.models import Order, PaymentEvent, SandboxCheckoutSession

    done = [PaymentEventStatus.PROCESSED, PaymentEventStatus.FAILED]
    try:
        wait_until(
            lambda: not PaymentEvent.objects.exclude(status__in=done).exists(),
            timeout=timeout,
            interval=0.5,
            what="the worker to handle every payment event",
        )
    except BenchError as exc:
        log(str(exc))
    events = PaymentEvent.objects.all()
    return {
        "events_stored": events.count(),
        "events_processed": events.filter(status=PaymentEventStatus.PROCESSED).count(),
        "events_failed": events.filter(status=PaymentEventStatus.FAILED).count(),
        "orders_paid_or_later": Order.objects.exclude(paid_at=None).count(),
        "checkout_sessions": SandboxCheckoutSession.objects.count(),
    }


def _ms(value) -> float | None:
    return None if value is None else round(float(value), 1)


def summarise(locust_result: dict, *, sizes: Sizes, connections: dict, counts: dict) -> dict:
    steady, breaking, last_good = locust_result["steady"], locust_result["breaking"], locust_result["last_good"]
    per_type = {
        name: {key: figures[key] for key in ("requests", "failures", "rps", "p50_ms", "p99_ms")}
        for name, figures in steady["per_type"].items()
    }
    browse = steady["browse_combined"]
    trivial = steady["per_type"]["trivial"]
    error_rate = steady["error_rate"]
    p99_browse = browse["p99_ms"]
    goals = {
        "error_rate_lt_0.1%": steady["requests"] > 0 and error_rate < GOAL_ERROR_RATE,
        "p99_browse_le_300ms": p99_browse is not None and p99_browse <= GOAL_P99_BROWSE_MS,
        "no_connection_exhaustion": not connections["exhausted"],
    }

    def ratio(a, b):
        return round(a / b, 2) if a is not None and b else None

    return {
        "bench": "load",
        "seed": {
            "published_listings": sizes.listings + 1,  # and bench.webhooks' listing
            "buyers_with_downloads": sizes.buyers,
            "pending_orders_for_webhooks": sizes.pending_orders,
        },
        "server": (
            f"gunicorn gthread {sizes.web_workers} workers x {sizes.web_threads} threads; "
            f"celery prefork -c 2 on every queue (nice {sizes.worker_nice}); PostgreSQL; Redis"
        ),
        "client": f"locust {locust_result['locust']} FastHttpUser, headless, in its own process on the same cores",
        "think_seconds": [sizes.think_min, sizes.think_max],
        "steps": [
            {
                key: step.get(key)
                for key in ("users", "rps", "error_rate", "p50_ms", "p99_ms", "browse_p99_ms", "broken")
            }
            for step in locust_result["steps"]
        ],
        "break_point_users": breaking["users"] if breaking else None,
        "break_point_rps": breaking["rps"] if breaking else None,
        "break_point_reason": breaking["broken"] if breaking else None,
        "last_good_users": last_good["users"] if last_good else None,
        "last_good_rps": last_good["rps"] if last_good else None,
        "steady_users": steady["users"],
        "steady_seconds": round(steady["ended_at"] - steady["started_at"], 1),
        "sustained_rps": steady["rps"],
        "requests": steady["requests"],
        "failures": steady["failures"],
        "error_rate": error_rate,
        "p50_ms": _ms(steady["p50_ms"]),
        "p99_ms": _ms(steady["p99_ms"]),
        "p50_browse_ms": _ms(browse["p50_ms"]),
        "p99_browse_ms": _ms(p99_browse),
        "per_type": per_type,
        "errors": steady["errors"],
        "all_phases": locust_result["all_phases"],
        "connections": connections,
        "counts": counts,
        "goals_met": goals,
        "ratios": {
            "p50_browse_over_trivial_p50": ratio(browse["p50_ms"], trivial["p50_ms"]),
            "p99_browse_over_trivial_p99": ratio(p99_browse, trivial["p99_ms"]),
            "steady_users_over_break_users": ratio(steady["users"], breaking["users"] if breaking else None),
        },
        "machine": f"{cores()} cores",
    }


# --- the run -----------------------------------------------------------------------------------------------------


def run_locust(*, port: int, manifest: Path, out: Path, sizes: Sizes, log_path: Path) -> dict:
    argv = [
        sys.executable,
        "-m",
        "bench.load_profile",
        "--host",
        f"http://127.0.0.1:{port}",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--start-users",
        str(sizes.start_users),
        "--max-users",
        str(sizes.max_users),
        "--step-seconds",
        str(sizes.step_seconds),
        "--refine",
        str(sizes.refine),
        "--steady-seconds",
        str(sizes.steady_seconds),
        "--cool-down",
        str(sizes.cool_down),
        "--budget",
        str(sizes.budget),
        "--think",
        str(sizes.think_min),
        str(sizes.think_max),
    ]
    # Bounded: the stepping's budget, a last step, the refinement, the steady phase, cool-downs, start-up.
    timeout = sizes.budget + (2 + sizes.refine) * sizes.step_seconds + sizes.steady_seconds + 4 * sizes.cool_down + 90
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOCUST_", "DJANGO_"))}
    with open(log_path, "wb") as locust_log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=locust_log, stderr=subprocess.STDOUT)
        try:
            # The locust log is followed on stderr as it grows (the step lines are the progress).
            shown = 0
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait(timeout=10)
                    raise BenchError(f"locust did not finish within {timeout:.0f}s")
                time.sleep(0.5)
                shown = _follow(log_path, shown)
            _follow(log_path, shown)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    if process.returncode != 0 or not out.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BenchError(f"locust exited with {process.returncode}:\n{tail}")
    return json.loads(out.read_text())


def _follow(path: Path, shown: int) -> int:
    lines = path.read_text(errors="replace").splitlines()
    for line in lines[shown:]:
        if line.startswith("[bench-load locust]"):
            print(line, file=sys.stderr, flush=True)
    return len(lines)


def run(*, sizes: Sizes, database_url: str, redis_url: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch_dir:
        scratch = Path(scratch_dir)
        env = load_environment(database_url=database_url, redis_url=redis_url, scratch=scratch)
        started, load_at_start = time.monotonic(), os.getloadavg()[0]
        log(f"recreating {database_url.rsplit('/', 1)[-1]}, flushing {redis_url}, migrating")
        database_migrated(database_url, env=env, timeout=300)
        redis_flush(redis_url)
        django_setup(env)
        manifest = seed(sizes, secret=env["SANDBOX_WEBHOOK_SECRET"])
        manifest_path = scratch / "manifest.json"
        manifest_path.write_text(json.dumps(manifest))
        redis_flush(redis_url)  # nothing cached while seeding (tasks ran inline) outlives it
        from django.db import connections

        connections.close_all()  # this process's connection stays out of the counts until the end
        log(
            f"seeded {len(manifest['listings'])} listings, {len(manifest['buyers'])} buyers with a delivery, "
            f"{len(manifest['webhook_events'])} pending orders in {time.monotonic() - started:.0f}s"
        )

        port = free_port()
        servers: list[ServerProcess] = []
        sampler = ConnectionSampler(database_url)
        try:
            worker = celery_worker(
                env=env,
                log_path=scratch / "worker.log",
                queues=WORKER_QUEUES,
                concurrency=2,
                name=f"bench-load-{secrets.token_hex(3)}",
                nice=sizes.worker_nice,
            )
            servers.append(worker)
            worker.wait_ready(lambda: celery_ready(worker), timeout=60)
            web = gunicorn(
                port=port,
                env=env,
                log_path=scratch / "gunicorn.log",
                workers=sizes.web_workers,
                threads=sizes.web_threads,
            )
            servers.append(web)
            web.wait_ready(lambda: _ping_ok(port), timeout=60)
            # Every server thread opens its database connection, as a long-running server's have.
            warm_up = [("GET", "/", None, {}), ("GET", f"/data/{manifest['listings'][0]}/", None, {})] * 32
            fire(port, warm_up, concurrency=32, label="warm-up")
            sampler.start()
            log(f"gunicorn on 127.0.0.1:{port}; locust steps from {sizes.start_users} users")
            result = run_locust(
                port=port,
                manifest=manifest_path,
                out=scratch / "locust.json",
                sizes=sizes,
                log_path=scratch / "locust.log",
            )
            for server in servers:
                server.check_alive()
            counts = outcome_counts(timeout=min(30.0, 10 + sizes.steady_seconds))
        finally:
            sampler.stop()
            for server in reversed(servers):
                server.stop()
        connections = connection_report(sampler, result["steady"], exhaustion_errors(*servers))
        summary = summarise(result, sizes=sizes, connections=connections, counts=counts)
        summary["server_errors"] = server_errors(*servers)
        for traceback in summary["server_errors"]["first"]:
            log(f"a server logged:\n{traceback}")
        summary["duration_s"] = round(time.monotonic() - started, 1)
        # Context for the figures: what else the machine was running (1-minute load average, start and end).
        summary["load_average_1m"] = [round(load_at_start, 2), round(os.getloadavg()[0], 2)]
        summary["sizes"] = asdict(sizes)
        return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny seed, one 8 s step of 10 users, 6 s steady (test suite)"
    )
    parser.add_argument("--steady-seconds", type=float, default=None, help="length of the steady phase (60)")
    parser.add_argument("--step-seconds", type=float, default=None, help="length of each step (20)")
    parser.add_argument("--start-users", type=int, default=None, help="users in the first step (10)")
    parser.add_argument(
        "--think",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="seconds a user waits between requests, uniform between MIN and MAX (0.5 1.5)",
    )
    parser.add_argument("--worker-nice", type=int, default=None, help="the Celery worker's nice value (0)")
    parser.add_argument("--web-workers", type=int, default=None, help="gunicorn processes (2)")
    parser.add_argument("--web-threads", type=int, default=None, help="threads per gunicorn process (16)")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    overrides = {
        "steady_seconds": args.steady_seconds,
        "step_seconds": args.step_seconds,
        "start_users": args.start_users,
        "web_workers": args.web_workers,
        "web_threads": args.web_threads,
        "worker_nice": args.worker_nice,
        "think_min": args.think[0] if args.think else None,
        "think_max": args.think[1] if args.think else None,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides:
        if not 1 <= overrides.get("steady_seconds", 1) <= 600 or not 1 <= overrides.get("step_seconds", 1) <= 120:
            parser.error("--steady-seconds must be 1..600 and --step-seconds 1..120")
        if not 1 <= overrides.get("start_users", 1) <= sizes.max_users:
            parser.error(f"--start-users must be 1..{sizes.max_users}")
        if not 1 <= overrides.get("web_workers", 1) <= 16 or not 1 <= overrides.get("web_threads", 1) <= 64:
            parser.error("--web-workers must be 1..16 and --web-threads 1..64")
        if not 0 <= overrides.get("think_min", 0) <= overrides.get("think_max", 60) <= 60:
            parser.error("--think needs 0 <= MIN <= MAX <= 60")
        sizes = Sizes(**{**asdict(sizes), **overrides})
    result = run(
        sizes=sizes,
        database_url=os.environ.get("BENCH_LOAD_DATABASE_URL", DEFAULT_DATABASE_URL),
        redis_url=os.environ.get("BENCH_LOAD_REDIS_URL", DEFAULT_REDIS_URL),
    )
    result["smoke"] = bool(args.smoke)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
