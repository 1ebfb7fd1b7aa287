"""The locust side of ``make bench-load``: the mixed profile and the stepped run (DESIGN.md §7).

Run by ``bench.load`` as a subprocess (locust patches the standard library
with gevent when imported, so it never shares a process with Django):

    python -m bench.load_profile --host http://127.0.0.1:PORT --manifest seed.json --out result.json ...

It imports nothing of the project's Django code: everything it needs (listing
slugs, facet values, search terms, buyers' session cookies and signed
download links, the bodies of the payment events and the webhook secret)
comes from the manifest ``bench.load`` writes after seeding. It runs headless
(no web UI, no master/worker ports), against the one loopback host given,
and every phase is bounded in time.

The profile (user classes and their weights, tasks and theirs):

* ``CatalogVisitor`` (anonymous, weight 6): catalog browse with facet
  parameters (``browse``), catalog search with a query and sometimes a facet
  (``search``), a listing page (``listing``), and now and then the trivial
  endpoint ``/api/v1/ping/`` (``trivial``: the baseline measured in the
  same run).
* ``Buyer`` (logged in as a seeded buyer, weight 3): browse, a listing page,
  a checkout start (the listing page, then the buy form POSTed: the sandbox
  gateway opens a checkout session and the server redirects to it;
  ``checkout``), and downloads of the buyer's purchased file through its
  signed link (``download``).
* ``PaymentGateway`` (weight 1): signed ``checkout.session.completed``
  events for seeded pending orders, signed when sent (``webhook``); once
  every event was sent, earlier ones are delivered again, as a gateway
  retries (the server answers them as duplicates).

Procedure: steps of increasing users (each step ramps up, then its stats are
reset and it is measured for ``--step-seconds``) until a step's error rate
exceeds 0.1% or its p99 exceeds 1 s (the break point), with ``--refine``
halving steps between the last good and the breaking count; then, after a
cool-down, a steady phase at ``--steady-fraction`` of the break point's
users. The result (every step, and the steady phase per request type) is
written to ``--out`` as JSON.
"""

# locust first: it monkey-patches the standard library with gevent on import.
import locust  # noqa: I001
import gevent
from locust import FastHttpUser, between, task
from locust.env import Environment
from locust.stats import StatsEntry

import argparse
import importlib.util
import itertools
import json
import logging
import random
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BREAK_ERROR_RATE = 0.001  # a step with more than 0.1% failed requests is past the break point
BREAK_P99_MS = 1000.0  # ... and so is one whose p99 (all requests) exceeds 1 s
BROWSE_TYPES = ("browse", "search", "listing")  # the read-only pages a visitor browses
TYPES = ("browse", "search", "listing", "checkout", "webhook", "download", "trivial")


def _load_signing():
    """The project's webhook signing module (``exchange/gateways/signing.py``, standard library only).

    Loaded from its file, not as ``exchange.gateways.signing``: importing the ``exchange`` package would
    import the Celery app and Django settings into this gevent-patched process.
    """
    path = ROOT / "exchange" / "gateways" / "signing.py"
    spec = importlib.util.spec_from_file_location("bench_load_signing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_signing = _load_signing()


class Manifest:
    """What the seeding left for the users (loaded once, shared by every user in this process)."""

    data: dict = {}
    rng = random.Random(7)
    _events = None
    _pairs: dict[int, object] = {}
    _next_buyer = itertools.count()

    @classmethod
    def load(cls, path: Path, *, seed: int = 7) -> None:
        cls.data = json.loads(path.read_text())
        cls.rng = random.Random(seed)
        bodies = [body.encode() for body in cls.data["webhook_events"]]
        # Each event once, then again from the first (retries): never exhausted, always bounded.
        cls._events = itertools.cycle(bodies)
        cls._pairs = {}
        cls._next_buyer = itertools.count()

    @classmethod
    def next_event(cls) -> bytes:
        return next(cls._events)

    @classmethod
    def next_buyer(cls) -> int:
        return next(cls._next_buyer) % len(cls.data["buyers"])

    @classmethod
    def next_listing_to_buy(cls, buyer: int) -> str | None:
        """A listing ``buyer`` has not started a checkout for yet (one open checkout per product and buyer)."""
        if buyer not in cls._pairs:
            owned = set(cls.data["buyers"][buyer]["owned"])
            slugs = [slug for slug in cls.data["buyable"] if slug not in owned]
            random.Random(buyer).shuffle(slugs)
            cls._pairs[buyer] = iter(slugs)
        return next(cls._pairs[buyer], None)

    @classmethod
    def catalog_params(cls) -> dict[str, str]:
        """Facet parameters for a browse: one or two facets, sometimes a sort."""
        facets = cls.data["facets"]
        params = {}
        for name in cls.rng.sample(sorted(facets), k=cls.rng.choice((1, 1, 2))):
            params[name] = cls.rng.choice(facets[name])
        if cls.rng.random() < 0.3:
            params["sort"] = cls.rng.choice(cls.data["sorts"])
        return params


def _check(response, *, expect_status: int, what: str) -> None:
    """Mark ``response`` failed unless it has ``expect_status`` (a catch_response context)."""
    if response.status_code != expect_status:
        response.failure(f"{what}: HTTP {response.status_code}, expected {expect_status}")
    else:
        response.success()


class _Browsing:
    """Tasks shared by anonymous visitors and buyers."""

    def browse(self) -> None:
        with self.client.get("/", params=Manifest.catalog_params(), name="browse", catch_response=True) as r:
            _check(r, expect_status=200, what="catalog")

    def listing_page(self) -> str:
        slug = Manifest.rng.choice(Manifest.data["listings"])
        with self.client.get(f"/data/{slug}/", name="listing", catch_response=True) as r:
            _check(r, expect_status=200, what="listing page")
        return slug


class CatalogVisitor(_Browsing, FastHttpUser):
    weight = 6
    wait_time = between(0.5, 1.5)
    network_timeout = connection_timeout = 15.0

    @task(4)
    def catalog_browse(self) -> None:
        self.browse()

    @task(4)
    def catalog_search(self) -> None:
        params = {"q": Manifest.rng.choice(Manifest.data["search_terms"])}
        if Manifest.rng.random() < 0.3:
            params.update(Manifest.catalog_params())
        with self.client.get("/", params=params, name="search", catch_response=True) as r:
            _check(r, expect_status=200, what="catalog search")

    @task(3)
    def listing(self) -> None:
        self.listing_page()

    @task(1)
    def trivial(self) -> None:
        with self.client.get("/api/v1/ping/", name="trivial", catch_response=True) as r:
            _check(r, expect_status=200, what="ping")


class Buyer(_Browsing, FastHttpUser):
    """A seeded buyer, logged in (its session cookie), with one delivered purchase to download."""

    weight = 3
    wait_time = between(0.5, 1.5)
    network_timeout = connection_timeout = 15.0

    def on_start(self) -> None:
        self.index = Manifest.next_buyer()
        me = Manifest.data["buyers"][self.index]
        self.csrf = uuid.uuid4().hex  # 32 characters: a CSRF secret Django accepts from cookie and header alike
        self.downloads = me["downloads"]
        # Explicit, so the client's cookie jar (which only fills in a missing Cookie header) never changes them.
        self.headers = {"Cookie": f"sessionid={me['session']}; csrftoken={self.csrf}"}

    @task(1)
    def buyer_browse(self) -> None:
        with self.client.get(
            "/", params=Manifest.catalog_params(), headers=self.headers, name="browse", catch_response=True
        ) as r:
            _check(r, expect_status=200, what="catalog")

    @task(1)
    def buyer_listing(self) -> None:
        slug = Manifest.rng.choice(Manifest.data["listings"])
        with self.client.get(f"/data/{slug}/", headers=self.headers, name="listing", catch_response=True) as r:
            _check(r, expect_status=200, what="listing page")

    @task(1)
    def checkout(self) -> None:
        """The product page, then its buy form: an order and a sandbox checkout session, redirected to."""
        slug = Manifest.next_listing_to_buy(self.index)
        if slug is None:
            self.environment.events.request.fire(
                request_type="POST",
                name="checkout",
                response_time=0,
                response_length=0,
                exception=RuntimeError("no listing left that this buyer has not started a checkout for"),
                context={},
            )
            return
        with self.client.get(f"/data/{slug}/", headers=self.headers, name="listing", catch_response=True) as r:
            _check(r, expect_status=200, what="listing page")
        headers = {**self.headers, "X-CSRFToken": self.csrf, "Content-Type": "application/x-www-form-urlencoded"}
        with self.client.post(
            f"/buy/{slug}/",
            data=f"token={uuid.uuid4()}&accept_licence=1",
            headers=headers,
            name="checkout",
            allow_redirects=False,
            catch_response=True,
        ) as r:
            location = r.headers.get("Location") or ""
            if r.status_code == 302 and "/sandbox/checkout/" in location:
                r.success()
            else:
                r.failure(f"checkout: HTTP {r.status_code} to {location or 'nowhere'}, not to a sandbox checkout")

    @task(2)
    def download(self) -> None:
        link = Manifest.rng.choice(self.downloads)
        with self.client.get(link, headers=self.headers, name="download", catch_response=True) as r:
            if r.status_code == 200 and r.content:
                r.success()
            else:
                r.failure(f"download: HTTP {r.status_code}, {len(r.content or b'')} bytes")


class PaymentGateway(FastHttpUser):
    """The payment provider notifying the exchange: signed ``checkout.session.completed`` events."""

    weight = 1
    wait_time = between(0.5, 1.5)
    network_timeout = connection_timeout = 15.0

    @task
    def webhook(self) -> None:
        body = Manifest.next_event()
        signature = _signing.sign_payload(body=body, secret=Manifest.data["webhook_secret"])
        headers = {"Content-Type": "application/json", "Stripe-Signature": signature}
        with self.client.post(
            "/webhooks/sandbox/", data=body, headers=headers, name="webhook", catch_response=True
        ) as r:
            if r.status_code == 200 and b'"received"' in (r.content or b""):
                r.success()
            else:
                r.failure(f"webhook: HTTP {r.status_code}")


USER_CLASSES = [CatalogVisitor, Buyer, PaymentGateway]


# --- measuring ----------------------------------------------------------------------------------------------------


def entry_figures(entry: StatsEntry, seconds: float) -> dict:
    requests = entry.num_requests
    return {
        "requests": requests,
        "failures": entry.num_failures,
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "error_rate": round(entry.num_failures / requests, 5) if requests else 0.0,
        "p50_ms": entry.get_response_time_percentile(0.5) if requests else None,
        "p99_ms": entry.get_response_time_percentile(0.99) if requests else None,
        "max_ms": round(entry.max_response_time) if requests else None,
    }


def combined(env: Environment, names: tuple[str, ...]) -> StatsEntry:
    """One stats entry merging every method's entries of the request types ``names``."""
    merged = StatsEntry(env.stats, "+".join(names), "")
    for entry in env.stats.entries.values():
        if entry.name in names:
            merged.extend(entry)
    return merged


def snapshot(env: Environment, *, seconds: float, per_type: bool) -> dict:
    figures = entry_figures(env.stats.total, seconds)
    figures["browse_p99_ms"] = combined(env, BROWSE_TYPES).get_response_time_percentile(0.99) or None
    if per_type:
        figures["per_type"] = {name: entry_figures(combined(env, (name,)), seconds) for name in TYPES}
        figures["browse_combined"] = entry_figures(combined(env, BROWSE_TYPES), seconds)
        errors = sorted(env.stats.errors.values(), key=lambda e: -e.occurrences)
        figures["errors"] = [
            {"type": e.name, "error": str(e.error)[:300], "occurrences": e.occurrences} for e in errors[:10]
        ]
    return figures


def broken(figures: dict) -> str | None:
    """Why a step is past the break point (None if it is not)."""
    if figures["requests"] == 0:
        return "no request completed"
    if figures["error_rate"] > BREAK_ERROR_RATE:
        return f"error rate {figures['error_rate']:.2%} > {BREAK_ERROR_RATE:.1%}"
    if figures["p99_ms"] is not None and figures["p99_ms"] > BREAK_P99_MS:
        return f"p99 {figures['p99_ms']} ms > {BREAK_P99_MS:.0f} ms"
    return None


class Driver:
    """Runs phases on one local (in-process) locust runner: ramp to N users, reset stats, measure, report."""

    def __init__(self, host: str, *, log):
        self.env = Environment(user_classes=USER_CLASSES, host=host)
        self.runner = self.env.create_local_runner()
        self.log = log
        # Every request of every phase (ramps included), per type: never reset.
        self.totals = {name: {"requests": 0, "failures": 0} for name in TYPES}
        self.env.events.request.add_listener(self._count)

    def _count(self, *, name: str, exception=None, **_) -> None:
        totals = self.totals.setdefault(name, {"requests": 0, "failures": 0})
        totals["requests"] += 1
        totals["failures"] += exception is not None

    def phase(self, users: int, *, seconds: float, spawn_rate: float, per_type: bool = False) -> dict:
        self.runner.start(users, spawn_rate=spawn_rate)
        self.runner.spawning_greenlet.join(timeout=users / spawn_rate + 30)
        self.env.stats.reset_all()
        started = time.time()
        gevent.sleep(seconds)
        ended = time.time()
        figures = snapshot(self.env, seconds=ended - started, per_type=per_type)
        figures.update({"users": users, "started_at": started, "ended_at": ended})
        return figures

    def cool_down(self, seconds: float) -> None:
        """Stop every user and let the server drain what is queued before the next phase."""
        self.runner.stop()
        gevent.sleep(seconds)

    def close(self) -> None:
        self.runner.quit()


def step_up(driver: Driver, *, start: int, factor: float, max_users: int, step_seconds: float,
            refine: int, cool_down: float, deadline: float) -> dict:  # fmt: skip
    """Steps of ``start`` x ``factor``^k users until one breaks (or ``max_users``/the deadline); then ``refine``
    bisections between the last good and the breaking count. Returns the steps and the break point."""
    steps, last_good, breaking = [], None, None
    users = start
    while users <= max_users and time.monotonic() + step_seconds < deadline:
        figures = driver.phase(users, seconds=step_seconds, spawn_rate=max(5.0, users / 2))
        figures["broken"] = broken(figures)
        steps.append(figures)
        driver.log(_step_line(figures))
        if figures["broken"]:
            breaking = figures
            break
        last_good = figures
        users = max(users + 1, round(users * factor))
    for _ in range(refine):
        if breaking is None or last_good is None or breaking["users"] - last_good["users"] < 2:
            break
        if time.monotonic() + step_seconds + cool_down >= deadline:
            break
        users = (breaking["users"] + last_good["users"]) // 2
        driver.cool_down(cool_down)
        figures = driver.phase(users, seconds=step_seconds, spawn_rate=max(5.0, users / 2))
        figures["broken"] = broken(figures)
        figures["refinement"] = True
        steps.append(figures)
        driver.log(_step_line(figures))
        if figures["broken"]:
            breaking = figures
        else:
            last_good = figures
    return {"steps": steps, "last_good": last_good, "breaking": breaking}


def _step_line(f: dict) -> str:
    return (
        f"{f['users']:>4} users: {f['requests']} requests = {f['rps']} req/s, errors {f['error_rate']:.3%}, "
        f"p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, browse p99 {f['browse_p99_ms']} ms"
        + (f"  <- {f['broken']}" if f.get("broken") else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="the server, http://127.0.0.1:PORT (loopback only)")
    parser.add_argument("--manifest", type=Path, required=True, help="the seed manifest bench.load wrote")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result JSON")
    parser.add_argument("--start-users", type=int, default=10)
    parser.add_argument("--factor", type=float, default=2.0, help="users multiply by this each step")
    parser.add_argument("--max-users", type=int, default=1280)
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--refine", type=int, default=1, help="bisections between last good and breaking")
    parser.add_argument("--steady-fraction", type=float, default=0.7)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--cool-down", type=float, default=5.0, help="seconds with no load before a phase")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds the steps may take at most")
    parser.add_argument(
        "--think", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"), help="seconds between requests"
    )
    args = parser.parse_args(argv)
    if not args.host.startswith(("http://127.0.0.1:", "http://localhost:")):
        parser.error("--host must be a loopback address (http://127.0.0.1:PORT)")
    if not (1 <= args.start_users <= args.max_users <= 5000 and args.factor > 1 and 0 < args.steady_fraction <= 1):
        parser.error("need 1 <= --start-users <= --max-users <= 5000, --factor > 1, 0 < --steady-fraction <= 1")

    def log(message: str) -> None:
        print(f"[bench-load locust] {message}", file=sys.stderr, flush=True)

    logging.getLogger("locust").setLevel(logging.WARNING)
    Manifest.load(args.manifest)
    if not 0 <= args.think[0] <= args.think[1] <= 60:
        parser.error("--think needs 0 <= MIN <= MAX <= 60")
    for user_class in (CatalogVisitor, Buyer, PaymentGateway):
        user_class.wait_time = between(*args.think)
    driver = Driver(args.host, log=log)
    try:
        started = time.monotonic()
        found = step_up(
            driver,
            start=args.start_users,
            factor=args.factor,
            max_users=args.max_users,
            step_seconds=args.step_seconds,
            refine=args.refine,
            cool_down=args.cool_down,
            deadline=started + args.budget,
        )
        top = found["breaking"] or found["last_good"] or {"users": args.start_users}
        steady_users = max(1, round(top["users"] * args.steady_fraction))
        driver.cool_down(args.cool_down)
        log(f"steady: {steady_users} users for {args.steady_seconds:.0f}s")
        steady = driver.phase(
            steady_users, seconds=args.steady_seconds, spawn_rate=max(5.0, steady_users / 2), per_type=True
        )
        log(_step_line(steady))
    finally:
        driver.close()
    result = {
        "locust": locust.__version__,
        "think_seconds": list(args.think),
        "steps": found["steps"],
        "last_good": found["last_good"],
        "breaking": found["breaking"],
        "steady": steady,
        "all_phases": driver.totals,
    }
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
