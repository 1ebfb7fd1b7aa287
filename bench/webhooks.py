"""Webhook ingestion under a burst: ``make bench-webhooks`` (DESIGN.md §7).

A burst of N distinct, signed ``checkout.session.completed`` events (one per
seeded pending order) is POSTed to the webhook endpoint of a real gunicorn on
loopback; a real Celery worker then processes them (the issue's "processed
exactly once afterwards"; ``--worker-during-burst`` starts it first, so the
processing competes with the ingestion for this machine's two cores). The baseline is a trivial
Django JSON endpoint (``/api/v1/ping/``) on the same server, in the same run,
with the same client. The run repeats the burst (``--rounds``, 3 by default,
new events each time) with a trivial round before the first burst and after
each burst has been processed; each burst is compared with the mean of the
trivial rounds either side of it and the median of those ratios is reported
(the machine is small and noisy: a single burst lasts about three seconds).
Before measuring, both endpoints are warmed up (the webhook one with a single
ignored event delivered repeatedly, so every server thread has its database
connection, as in a long-running server).

Figures: acknowledged events per second (median burst), the p50 (median
burst) and p99 (worst burst) acknowledgement latency (send to response read,
so queueing in the listen backlog counts), and whether every event was
applied exactly once afterwards (events processed, orders paid,
entitlements, PAYMENT journal entries, each counted against N x rounds, and
the ledger chain verified).

Goals (the Trading issue): webhook rate >= 0.5x the trivial rate, p99 < 1 s,
processed_exactly_once true.

    python -m bench.webhooks            # 3 bursts of 1,000 events
    python -m bench.webhooks --smoke    # 1 burst of 30 events, for the test suite

It uses its own PostgreSQL database (dropped and created here) and its own
Redis database (flushed here); override them with BENCH_WEBHOOKS_DATABASE_URL
and BENCH_WEBHOOKS_REDIS_URL. The last line on stdout is the JSON result;
progress goes to stderr.
"""

import argparse
import http.client
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench._servers import (
    BenchError,
    celery_ready,
    celery_worker,
    database_migrated,
    free_port,
    gunicorn,
    redis_flush,
    wait_until,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/exchange_bench_webhooks"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
PING_PATH = "/api/v1/ping/"
WEBHOOK_PATH = "/webhooks/sandbox/"
FULL_EVENTS, SMOKE_EVENTS = 1000, 30


def log(message: str) -> None:
    print(f"[bench-webhooks] {message}", file=sys.stderr, flush=True)


# --- the environment shared by the bench, gunicorn and the worker ---------------------------------------------


def bench_environment(*, database_url: str, redis_url: str, scratch: Path) -> dict[str, str]:
    """Settings for every process of the run. The webhook secret is explicit so server and client agree."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("STRIPE_", "CELERY_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "exchange.settings",
            "DJANGO_ENV": "development",
            "DJANGO_DEBUG": "0",  # DEBUG would keep every SQL query in memory
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "PAYMENT_GATEWAY": "sandbox",
            "SANDBOX_WEBHOOK_SECRET": "whsec_bench_" + secrets.token_hex(16),
            "EXCHANGE_VAR_DIR": str(scratch / "var"),
            "PRIVATE_STORAGE_ROOT": str(scratch / "private"),
            "LOG_LEVEL": "WARNING",
            # Seeding approves a listing, which emails the merchant; stdout is for the JSON line only.
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def django_setup(env: dict[str, str]) -> None:
    """Configure Django in this process with the run's settings; tasks run inline here (only while seeding)."""
    os.environ.update(env)
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "1"
    import django

    django.setup()


# --- seeding ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeededOrder:
    public_id: str
    session_id: str
    amount: int
    currency: str


def seed(count: int) -> list[SeededOrder]:
    """One merchant, one published listing, ``count`` pending orders with sandbox sessions.

    The listing is built by the test suite's factory (through the listings services, the way the tests build
    theirs), so the seeding follows the review workflow as it changes. The orders are bulk-inserted in the state
    ``order_create`` + ``order_checkout_start`` leave them in, so a 1,000-order run seeds in seconds.
    """
    from django.db import transaction
    from django.urls import reverse

    from accounts.models import User
    from exchange.choices import OrderStatus
    from exchange.models import Order, OrderStatusHistory, SandboxCheckoutSession
    from listings.selectors import listing_active_plan
    from tests.factories import UserFactory, make_listing, make_merchant

    seller = UserFactory(email="seller@bench.invalid")
    # One buyer per order: a buyer has at most one open checkout per product and plan.
    buyers = User.objects.bulk_create(
        [User(email=f"buyer{index}@bench.invalid", password="!") for index in range(count)], batch_size=500
    )
    reviewer = UserFactory(email="reviewer@bench.invalid", is_staff=True)
    merchant = make_merchant(seller, name="Bench Data")
    listing = make_listing(merchant=merchant, owner=seller, reviewer=reviewer, title="Bench populations")
    plan = listing_active_plan(listing=listing)
    if not listing.is_published or plan is None:
        raise BenchError("the seeded listing is not published with a price")

    orders, sessions = [], []
    for index in range(count):
        session_id = f"cs_sbx_bench{index:06d}{secrets.token_hex(4)}"
        order = Order(
            buyer=buyers[index],
            listing=listing,
            plan=plan,
            merchant_id=listing.merchant_id,
            amount=plan.amount,
            currency=plan.currency,
            idempotency_key=f"bench-{index}",
            gateway="sandbox",
            gateway_session_id=session_id,
            checkout_url=reverse("exchange:sandbox_checkout", args=[session_id]),
        )
        detail = reverse("exchange:order_detail", args=[order.public_id])
        orders.append(order)
        sessions.append(
            SandboxCheckoutSession(
                id=session_id,
                order_public_id=order.public_id,
                amount=order.amount,
                currency=order.currency,
                description=listing.title,
                success_url=detail,
                cancel_url=detail,
            )
        )
    with transaction.atomic():
        Order.objects.bulk_create(orders, batch_size=500)
        OrderStatusHistory.objects.bulk_create(
            [
                OrderStatusHistory(
                    order=o, from_status="", to_status=OrderStatus.PENDING_PAYMENT, reason="order placed"
                )
                for o in orders
            ],
            batch_size=500,
        )
        SandboxCheckoutSession.objects.bulk_create(sessions, batch_size=500)
    return [SeededOrder(str(o.public_id), o.gateway_session_id, o.amount, o.currency) for o in orders]


def signed_events(orders: list[SeededOrder], *, secret: str) -> list[tuple[bytes, str]]:
    """One distinct, Stripe-shaped paid event per order: (raw body, Stripe-Signature header)."""
    from exchange.gateways.signing import sign_payload

    run = secrets.token_hex(4)
    events = []
    for index, order in enumerate(orders):
        event = {
            "id": f"evt_bench_{run}_{index:06d}",
            "object": "event",
            "type": "checkout.session.completed",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": order.session_id,
                    "object": "checkout.session",
                    "amount_total": order.amount,
                    "currency": order.currency.lower(),
                    "payment_status": "paid",
                    "payment_intent": f"pi_bench_{run}_{index:06d}",
                    "metadata": {"order_id": order.public_id},
                }
            },
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        events.append((body, sign_payload(body=body, secret=secret)))
    return events


# --- the load ----------------------------------------------------------------------------------------------------


@dataclass
class Burst:
    label: str
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def rate(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1]

    def summary(self) -> str:
        return (
            f"{self.label}: {self.acknowledged}/{sum(self.statuses.values())} acknowledged in {self.seconds:.2f}s "
            f"= {self.rate:.0f}/s, p50 {self.percentile_ms(50):.1f} ms, p99 {self.percentile_ms(99):.1f} ms, "
            f"statuses {dict(self.statuses)}"
        )


Request = tuple[str, str, bytes | None, dict[str, str]]


def fire(port: int, requests: list[Request], *, concurrency: int, label: str) -> Burst:
    """Send ``requests`` with at most ``concurrency`` in flight, each client thread on a keep-alive connection."""
    local = threading.local()
    opened: list[http.client.HTTPConnection] = []
    lock = threading.Lock()

    def connection() -> http.client.HTTPConnection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                opened.append(conn)
        return conn

    def send(request: Request) -> tuple[int, float, bytes]:
        method, path, body, headers = request
        started = time.perf_counter()
        for attempt in (1, 2):
            conn = connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                # A keep-alive connection the server had just closed: reconnect once.
                conn.close()
                local.conn = None
                if attempt == 2:
                    raise
        if response.will_close:
            conn.close()
            local.conn = None
        return response.status, (time.perf_counter() - started) * 1000, data

    burst = Burst(label)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=label) as pool:
        results = list(pool.map(send, requests))
    burst.seconds = time.perf_counter() - started
    for conn in opened:
        conn.close()
    for status, latency, data in results:
        burst.statuses[status] += 1
        burst.latencies_ms.append(latency)
        burst.bodies.append(data)
    return burst


def ping_requests(count: int) -> list[Request]:
    return [("GET", PING_PATH, None, {"Accept": "application/json"})] * count


WARM_UP_EVENT_ID = "evt_warmup"


def warm_up_event(*, secret: str) -> tuple[bytes, str]:
    """An event of a type the exchange ignores, delivered repeatedly during the warm-up.

    The first delivery stores it and the rest are duplicates; every server
    thread that handles one opens its database connection, as a long-running
    server's threads already have (the trivial endpoint never touches the
    database, so its warm-up alone would leave the burst to pay for them).
    It is left out of the counts.
    """
    from exchange.gateways.signing import sign_payload

    event = {"id": WARM_UP_EVENT_ID, "object": "event", "type": "bench.warm_up", "data": {"object": {}}}
    body = json.dumps(event, separators=(",", ":")).encode()
    return body, sign_payload(body=body, secret=secret)


def webhook_requests(events: list[tuple[bytes, str]]) -> list[Request]:
    return [
        ("POST", WEBHOOK_PATH, body, {"Content-Type": "application/json", "Stripe-Signature": signature})
        for body, signature in events
    ]


# --- counting ----------------------------------------------------------------------------------------------------


def outcome_counts() -> dict[str, int]:
    from django.db.models import Count

    from exchange.choices import JournalKind, OrderStatus, PaymentEventStatus
    from exchange.models import Delivery, Entitlement, JournalEntry, Order, OrderStatusHistory, PaymentEvent

    events = PaymentEvent.objects.exclude(event_id=WARM_UP_EVENT_ID)
    by_status = dict(events.order_by().values_list("status").annotate(n=Count("pk")))
    return {
        "events_stored": sum(by_status.values()),
        "events_processed": by_status.get(PaymentEventStatus.PROCESSED, 0),
        "events_failed": by_status.get(PaymentEventStatus.FAILED, 0),
        "orders_paid": Order.objects.filter(status=OrderStatus.PAID).count(),
        "paid_transitions": OrderStatusHistory.objects.filter(to_status=OrderStatus.PAID).count(),
        "entitlements": Entitlement.objects.count(),
        "payment_journal_entries": JournalEntry.objects.filter(kind=JournalKind.PAYMENT).count(),
        "deliveries": Delivery.objects.count(),
    }


def wait_for_processing(count: int, *, timeout: float) -> float | None:
    """Poll until every event is processed or failed; return the seconds it took, None on timeout."""
    from exchange.choices import PaymentEventStatus
    from exchange.models import PaymentEvent

    started = time.monotonic()
    done_statuses = [PaymentEventStatus.PROCESSED, PaymentEventStatus.FAILED]
    try:
        wait_until(
            lambda: (
                PaymentEvent.objects.filter(status__in=done_statuses).exclude(event_id=WARM_UP_EVENT_ID).count()
                >= count
            ),
            timeout=timeout,
            interval=0.25,
            what="the worker to process every event",
        )
    except BenchError:
        return None
    return time.monotonic() - started


def exactly_once(counts: dict[str, int], *, expected: int, acknowledged: int, ledger_ok: bool) -> bool:
    applied = ("events_stored", "events_processed", "orders_paid", "paid_transitions", "entitlements")
    return (
        acknowledged == expected
        and all(counts[name] == expected for name in applied)
        and counts["payment_journal_entries"] == expected
        and counts["events_failed"] == 0
        and ledger_ok
    )


# --- the run -----------------------------------------------------------------------------------------------------


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run(
    *,
    events_count: int,
    rounds: int,
    concurrency: int,
    database_url: str,
    redis_url: str,
    drain_timeout: float,
    worker_during_burst: bool = False,
) -> dict:
    """``rounds`` bursts of ``events_count`` distinct events, each between two trivial rounds; medians reported."""
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as scratch_dir:
        scratch = Path(scratch_dir)
        env = bench_environment(database_url=database_url, redis_url=redis_url, scratch=scratch)
        started = time.monotonic()
        log(f"recreating {database_url.rsplit('/', 1)[-1]}, flushing {redis_url}, migrating")
        database_migrated(database_url, env=env, timeout=300)
        redis_flush(redis_url)
        django_setup(env)
        orders = seed(events_count * rounds)
        events = signed_events(orders, secret=env["SANDBOX_WEBHOOK_SECRET"])
        log(f"seeded {len(orders)} pending orders in {time.monotonic() - started:.1f}s; starting gunicorn and worker")

        port = free_port()
        servers = []

        def start_worker():
            worker = celery_worker(
                env=env,
                log_path=scratch / "worker.log",
                queues="default,delivery,settlement,notifications",
                concurrency=2,
                name=f"bench-webhooks-{secrets.token_hex(3)}",
            )
            servers.append(worker)
            worker.wait_ready(lambda: celery_ready(worker), timeout=60)
            return worker

        trivials, bursts, processed_s = [], [], []
        try:
            worker = start_worker() if worker_during_burst else None
            web = gunicorn(port=port, env=env, log_path=scratch / "gunicorn.log")
            servers.append(web)
            web.wait_ready(lambda: _ping_ok(port), timeout=60)

            warm_up = min(200, 4 * events_count)
            fire(port, ping_requests(warm_up), concurrency=concurrency, label="warm-up")
            repeated = warm_up_event(secret=env["SANDBOX_WEBHOOK_SECRET"])
            fire(port, webhook_requests([repeated] * warm_up), concurrency=concurrency, label="warm-up")
            trivials.append(fire(port, ping_requests(events_count), concurrency=concurrency, label="trivial"))
            log(trivials[-1].summary())
            for number in range(1, rounds + 1):
                batch = events[(number - 1) * events_count : number * events_count]
                hooks = fire(port, webhook_requests(batch), concurrency=concurrency, label=f"webhooks {number}")
                bursts.append(hooks)
                log(hooks.summary())
                if not worker_during_burst:  # the events waited in the broker
                    worker = start_worker()
                drained = wait_for_processing(number * events_count, timeout=drain_timeout)
                if drained is None:
                    log(f"the worker had not processed every event {drain_timeout:.0f}s after burst {number}")
                else:
                    processed_s.append(hooks.seconds + drained)
                    log(f"the worker had processed burst {number} {processed_s[-1]:.1f}s after it began")
                # Let the deliveries the payments scheduled finish too, so the next trivial round runs on a quiet box.
                _wait_quietly(lambda n=number: outcome_counts()["deliveries"] >= n * events_count, timeout=30)
                if not worker_during_burst:
                    worker.stop()
                    servers.remove(worker)
                trivials.append(fire(port, ping_requests(events_count), concurrency=concurrency, label="trivial"))
                log(trivials[-1].summary())
            for server in servers:
                server.check_alive()
        finally:
            for server in reversed(servers):
                server.stop()

        from exchange.services.ledger import ledger_verify

        expected = events_count * rounds
        counts = outcome_counts()
        ledger = ledger_verify()
        bodies = [body for hooks in bursts for body in hooks.bodies]
        duplicates = sum(1 for body in bodies if b'"duplicate": true' in body or b'"duplicate":true' in body)
        acknowledged = sum(hooks.acknowledged for hooks in bursts)
        ok = exactly_once(counts, expected=expected, acknowledged=acknowledged, ledger_ok=ledger.ok)
        # Each burst against the mean of the trivial rounds either side of it.
        round_ratios = [
            hooks.rate / statistics.mean([trivials[i].rate, trivials[i + 1].rate]) for i, hooks in enumerate(bursts)
        ]
        ratio = statistics.median(round_ratios)
        p99 = max(hooks.percentile_ms(99) for hooks in bursts)  # the worst burst
        return {
            "bench": "webhooks",
            "events": events_count,
            "rounds": rounds,
            "concurrency": concurrency,
            "server": "gunicorn gthread 2 workers x 16 threads; celery prefork -c 2",
            "trivial_rps": round(statistics.median(t.rate for t in trivials), 1),
            "trivial_rps_rounds": [round(t.rate, 1) for t in trivials],
            "webhook_rps": round(statistics.median(hooks.rate for hooks in bursts), 1),
            "webhook_rps_rounds": [round(hooks.rate, 1) for hooks in bursts],
            "acknowledged": acknowledged,
            "duplicates_acknowledged": duplicates,
            "p50_ack_ms": round(statistics.median(hooks.percentile_ms(50) for hooks in bursts), 1),
            "p99_ack_ms": round(p99, 1),
            "trivial_p50_ms": round(statistics.median(t.percentile_ms(50) for t in trivials), 1),
            "trivial_p99_ms": round(statistics.median(t.percentile_ms(99) for t in trivials), 1),
            "worker_during_burst": worker_during_burst,
            "all_processed_s": round(statistics.median(processed_s), 2) if len(processed_s) == rounds else None,
            "processed_per_s": (
                round(events_count / statistics.median(processed_s), 1) if len(processed_s) == rounds else None
            ),
            "processed_exactly_once": ok,
            "counts": counts,
            "ledger_verified": ledger.ok,
            "goals_met": {"rate_ratio_ge_0.5": ratio >= 0.5, "p99_lt_1000ms": p99 < 1000, "exactly_once": ok},
            "ratios": {"webhook_rate_over_trivial_rate": round(ratio, 3)},
            "ratio_per_round": [round(value, 3) for value in round_ratios],
            "machine": f"{cores()} cores",
        }


def _ping_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", PING_PATH, headers={"Accept": "application/json"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _wait_quietly(predicate, *, timeout: float) -> None:
    try:
        wait_until(predicate, timeout=timeout, interval=0.25, what="deliveries")
    except BenchError:
        log("deliveries did not all finish in time; measuring the second baseline anyway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_EVENTS} events, for the test suite")
    parser.add_argument("--events", type=int, default=None, help=f"events in the burst (default {FULL_EVENTS})")
    parser.add_argument("--rounds", type=int, default=None, help="bursts, each of --events new events (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--drain-timeout", type=float, default=None, help="seconds to wait for processing")
    parser.add_argument(
        "--worker-during-burst",
        action="store_true",
        help="run the worker during the bursts too (on this machine it takes CPU from the web server)",
    )
    args = parser.parse_args(argv)
    events_count = args.events or (SMOKE_EVENTS if args.smoke else FULL_EVENTS)
    rounds = args.rounds or (1 if args.smoke else 3)
    if not 1 <= events_count <= 100_000 or not 1 <= args.concurrency <= 256 or not 1 <= rounds <= 20:
        parser.error("--events must be 1..100000, --rounds 1..20 and --concurrency 1..256")
    # Bounded; generous because processing shares this machine's cores with everything else.
    drain_timeout = args.drain_timeout or (90.0 if args.smoke else 300.0)
    result = run(
        events_count=events_count,
        rounds=rounds,
        concurrency=min(args.concurrency, events_count),
        database_url=os.environ.get("BENCH_WEBHOOKS_DATABASE_URL", DEFAULT_DATABASE_URL),
        redis_url=os.environ.get("BENCH_WEBHOOKS_REDIS_URL", DEFAULT_REDIS_URL),
        drain_timeout=drain_timeout,
        worker_during_burst=args.worker_during_burst,
    )
    result["smoke"] = bool(args.smoke)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
