"""Settlement from scratch: ``make bench-settlement`` (DESIGN.md §7, the settlement issue).

100,000 delivered trades across 1,000 merchants, every one past the dispute
hold with its payment held in escrow, are settled by a settlement run on real
Celery worker processes (queue ``settlement``), once with one worker and once
with two. A run writes, per trade, one SALE journal entry with three postings
(escrow released, platform fee, merchant payable), plus the order's history
row and its signed certificate; then one payout per merchant, each with a
PAYOUT_CREATED entry. The figure is ledger rows written per second: the
run's SALE and PAYOUT_CREATED entries plus their postings, over the time from
the run's creation (``started_at``, its commit queues the work) to its
completion (``finished_at``), both stamped on this machine's clock.

Baseline, measured in the same trial database right after each run:
PostgreSQL ``COPY`` of the same number of entry rows and posting rows (64-hex
hashes, keys, amounts, generated before the timer starts) into copies of the
ledger tables with the same columns and indexes but no triggers or foreign
keys. ``settle_rows_per_s_over_copy`` = one worker's rows/s over COPY's;
``two_workers_over_one`` = two workers' rows/s over one worker's (PostgreSQL
shares the same two cores); ``two_workers_over_copy``, for information, two
workers' rows/s over the COPY of their own trial.

Afterwards, in each trial database: every payout is sent, the chain is
verified (``ledger_verify``), every posting sums to zero per currency, every
seeded trade was settled (with a certificate) and every merchant got exactly
one payout.

The data is seeded once into a template database (merchants, listings and
versions through the project's services; orders, entitlements, deliveries
and the PAYMENT ledger entries in bulk) and each trial runs on a fresh
``CREATE DATABASE ... TEMPLATE`` copy of it: the ledger is append-only, so a
trial is never undone, it is cloned again.

Goals (the issue): settling >= 0.25x the COPY rate; two workers >= 1.3x one;
the ledger balanced and its chain verified afterwards.

    python -m bench.settlement                    # 100,000 trades, 1,000 merchants, one round
    python -m bench.settlement --rounds 3         # medians over three rounds
    python -m bench.settlement --smoke            # 300 trades, 10 merchants, batches of 50, 2 rounds, for the tests
    python -m bench.settlement --reuse            # keep a template seeded earlier at the same sizes and migrations

"Two workers" are two worker processes with concurrency 1 each. It uses its
own PostgreSQL databases (the trial database, dropped and cloned here, and a
template next to it named ``<trial database>_seed``, or ``bench_settlement_seed``
for the default ``bench_settlement_run``) and its own Redis database (flushed
here); override them with BENCH_SETTLEMENT_DATABASE_URL and
BENCH_SETTLEMENT_REDIS_URL. The last line on stdout is the JSON result;
progress goes to stderr.
"""

import argparse
import hashlib
import io
import json
import os
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench._servers import (
    BenchError,
    ServerProcess,
    celery_ready,
    celery_worker,
    database_migrated,
    redis_flush,
    run_checked,
    wait_until,
)
from bench.webhooks import bench_environment, cores, django_setup

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_settlement_run"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
# Only databases whose names say they belong to this benchmark are ever dropped, cloned or renamed here.
_OWN_DATABASE = re.compile(r"^(?=[a-z_])[a-z0-9_]*bench_settlement[a-z0-9_]*$")
BUYERS = 1000
ORDER_CHUNK = 5000
PAYMENT_BLOCK = 1000  # PAYMENT entries per journal_post_many call while seeding (one ledger block each)
COPY_CHUNK_BYTES = 1 << 20
TRIALS = (("one_worker", 1), ("two_workers", 2))
GOAL_SETTLE_OVER_COPY = 0.25
GOAL_TWO_OVER_ONE = 1.3


@dataclass(frozen=True)
class Sizes:
    trades: int
    merchants: int
    batch_size: int


FULL = Sizes(trades=100_000, merchants=1_000, batch_size=500)
SMOKE = Sizes(trades=300, merchants=10, batch_size=50)
SMOKE_ROUNDS = 2  # tiny trials are over in a second: more of them exercise the medians and the re-cloning


def log(message: str) -> None:
    print(f"[bench-settlement] {message}", file=sys.stderr, flush=True)


# --- databases -----------------------------------------------------------------------------------------------------


def _own_name(url: str) -> str:
    name = urlsplit(url).path.lstrip("/")
    if not _OWN_DATABASE.match(name):
        raise BenchError(f"refusing to use database {name!r}: its name must contain 'bench_settlement'")
    if len(name) > 58:  # PostgreSQL's limit is 63 and the template's name adds "_seed"
        raise BenchError(f"database name {name!r} is too long: at most 58 characters")
    return name


def seed_database_url(url: str) -> str:
    """The template next to the trial database ``url`` (``bench_settlement_run`` -> ``bench_settlement_seed``)."""
    name = _own_name(url)
    seed = f"{name.removesuffix('_run')}_seed"
    return urlunsplit(urlsplit(url)._replace(path=f"/{seed}"))


def _admin(url: str):
    import psycopg

    return psycopg.connect(urlunsplit(urlsplit(url)._replace(path="/postgres")), autocommit=True, connect_timeout=10)


def database_clone(*, template_url: str, target_url: str) -> None:
    """Drop the target database (closing what is connected to it) and create it as a copy of the template."""
    from psycopg import errors, sql

    template, target = _own_name(template_url), _own_name(target_url)
    with _admin(target_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        try:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(target), sql.Identifier(template))
            )
        except errors.ObjectInUse as exc:
            raise BenchError(f"cannot copy {template}: something is connected to it ({exc})") from None


def database_rename(*, source_url: str, target_url: str) -> None:
    """Rename the (closed) source database to the target's name, dropping any database of that name first."""
    from psycopg import sql

    source, target = _own_name(source_url), _own_name(target_url)
    with _admin(source_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(source), sql.Identifier(target)))


def close_django_connections() -> None:
    from django.db import connections

    connections.close_all()


# --- seeding ----------------------------------------------------------------------------------------------------------


def _sample_csv(number: int) -> bytes:
    """A small, distinct CSV per merchant, so every version's manifest has its own sha256."""
    rows = "".join(f"district-{number}-{row},{2000 + row},{(number + 1) * 1000 + row * 37}\n" for row in range(12))
    return f"district,year,population\n{rows}".encode()


def _amount(index: int) -> int:
    """A trade's price in minor units: spread over 100..99,999 (fen), the same for the same index in every run."""
    return 100 + (index * 7919) % 99_900


def seed_catalog(*, merchants: int) -> list[tuple]:
    """One owner, merchant and published listing (one version, one file, one price) per merchant.

    Built through the project's services (the test suite's ``make_merchant``
    and ``make_listing``, as ``bench.webhooks`` builds its listing), so these
    rows are valid whatever the review workflow requires. Returns
    (merchant, listing, plan, version) per merchant.
    """
    from accounts.models import User
    from listings.models import ListingVersion
    from listings.selectors import listing_active_plan
    from tests.factories import UserFactory, make_listing, make_merchant

    reviewer = UserFactory(email="reviewer@settlement.bench.invalid", is_staff=True)
    # Unusable passwords: hashing a thousand real ones would take minutes and nobody logs in.
    owners = User.objects.bulk_create(
        [User(email=f"owner{number}@settlement.bench.invalid", password="!") for number in range(merchants)],
        batch_size=1000,
    )
    catalog = []
    for number, owner in enumerate(owners):
        merchant = make_merchant(owner, name=f"Bench Merchant {number:04d}")
        listing = make_listing(
            merchant=merchant,
            owner=owner,
            reviewer=reviewer,
            title=f"District populations {number:04d}",
            content=_sample_csv(number),
            price=_amount(number),
        )
        plan = listing_active_plan(listing=listing)
        version = ListingVersion.objects.filter(listing=listing, published_at__isnull=False).first()
        if not listing.is_published or plan is None or version is None:
            raise BenchError(f"merchant {number}'s listing was not published with a price and a version")
        catalog.append((merchant, listing, plan, version))
        if (number + 1) % 100 == 0:
            log(f"  {number + 1} merchants with a published listing")
    return catalog


def seed_trades(*, trades: int, catalog: list[tuple]) -> None:
    """``trades`` delivered, paid, unsettled orders spread round-robin over the catalog, in bulk.

    Each has its entitlement, one READY delivery of the listing's version, its
    history row and its PAYMENT entry (gateway clearing debited, escrow held
    credited, in blocks of PAYMENT_BLOCK entries) as a paid and delivered trade has.
    """
    from django.conf import settings
    from django.db import transaction
    from django.utils import timezone

    from accounts.models import User
    from exchange.choices import AccountKind, DeliveryStatus, EntitlementStatus, JournalKind, OrderStatus
    from exchange.models import Delivery, Entitlement, Order, OrderStatusHistory
    from exchange.services.ledger import EntrySpec, account_get, journal_post_many

    buyers = User.objects.bulk_create(
        [
            # Half the buyers chose a display name (certificates name them by it), half are "Buyer #<pk>".
            User(email=f"buyer{n}@settlement.bench.invalid", password="!", display_name=f"Buyer Co. {n}" * (n % 2))
            for n in range(min(BUYERS, trades))
        ],
        batch_size=1000,
    )
    clearing, held = account_get(kind=AccountKind.GATEWAY_CLEARING), account_get(kind=AccountKind.ESCROW_HELD)
    # Past the dispute hold whatever it is set to: delivered 30 days ago (or just before the hold began).
    delivered_at = timezone.now() - timedelta(days=max(30, settings.DISPUTE_HOLD_DAYS + 1))
    paid_at = delivered_at - timedelta(minutes=5)
    for start in range(0, trades, ORDER_CHUNK):
        indexes = range(start, min(start + ORDER_CHUNK, trades))
        orders = []
        for index in indexes:
            merchant, listing, plan, _ = catalog[index % len(catalog)]
            orders.append(
                Order(
                    buyer=buyers[index % len(buyers)],
                    listing=listing,
                    plan=plan,
                    merchant=merchant,
                    amount=_amount(index),
                    currency="CNY",
                    status=OrderStatus.DELIVERED,
                    idempotency_key=f"bench-settlement-{index}",
                    gateway="sandbox",
                    gateway_session_id=f"cs_sbx_settle{index:07d}",
                    gateway_payment_id=f"pi_sbx_settle{index:07d}",
                    paid_at=paid_at,
                    delivered_at=delivered_at,
                )
            )
        with transaction.atomic():
            Order.objects.bulk_create(orders, batch_size=1000)
            OrderStatusHistory.objects.bulk_create(
                [
                    OrderStatusHistory(
                        order=order, from_status=OrderStatus.PAID, to_status=OrderStatus.DELIVERED, reason="downloaded"
                    )
                    for order in orders
                ],
                batch_size=1000,
            )
            entitlements = Entitlement.objects.bulk_create(
                [
                    Entitlement(
                        order=order,
                        buyer_id=order.buyer_id,
                        listing_id=order.listing_id,
                        plan_id=order.plan_id,
                        status=EntitlementStatus.ACTIVE,
                    )
                    for order in orders
                ],
                batch_size=1000,
            )
            Delivery.objects.bulk_create(
                [
                    Delivery(
                        entitlement=entitlement,
                        version=catalog[index % len(catalog)][3],
                        status=DeliveryStatus.READY,
                        ready_at=delivered_at - timedelta(minutes=1),
                        attempts=1,
                    )
                    for index, entitlement in zip(indexes, entitlements, strict=True)
                ],
                batch_size=1000,
            )
            for block_start in range(0, len(orders), PAYMENT_BLOCK):
                journal_post_many(
                    [
                        EntrySpec(
                            idempotency_key=f"payment:{order.pk}",
                            kind=JournalKind.PAYMENT,
                            postings=[(clearing, order.amount, order.currency), (held, -order.amount, order.currency)],
                            order=order,
                            memo=f"payment for order {order.reference} held until delivery",
                        )
                        for order in orders[block_start : block_start + PAYMENT_BLOCK]
                    ]
                )
        log(f"  {indexes.stop} of {trades} trades seeded")


def eligible_count() -> int:
    """Orders a run would settle now, by the rules the settlement service applies."""
    from django.conf import settings
    from django.utils import timezone

    from exchange.choices import OrderStatus, RefundStatus
    from exchange.models import Order

    cutoff = timezone.now() - timedelta(days=settings.DISPUTE_HOLD_DAYS)
    return (
        Order.objects.filter(status=OrderStatus.DELIVERED, settled_at__isnull=True, delivered_at__lte=cutoff)
        .exclude(refunds__status=RefundStatus.PENDING)
        .count()
    )


def seed(*, sizes: Sizes, run_url: str, template_url: str, env: dict[str, str]) -> float:
    """Migrate a fresh database, seed it and rename it to the template; return the seconds it took."""
    started = time.monotonic()
    log(f"recreating {_own_name(run_url)} and migrating")
    database_migrated(run_url, env=env, timeout=600)
    migrated = time.monotonic()
    log(f"migrated in {migrated - started:.1f}s; seeding {sizes.merchants} merchants")
    catalog = seed_catalog(merchants=sizes.merchants)
    log(f"catalog seeded in {time.monotonic() - migrated:.1f}s; seeding {sizes.trades} trades")
    seed_trades(trades=sizes.trades, catalog=catalog)
    eligible = eligible_count()
    if eligible != sizes.trades:
        raise BenchError(f"seeded {sizes.trades} trades but {eligible} are eligible for settlement")

    from exchange.signing_key import signing_key

    signing_key()  # created once here, so every worker signs with the same key
    close_django_connections()
    import psycopg

    # Planner statistics and the visibility map travel with the template, so no trial starts on a cold, unanalysed copy.
    with psycopg.connect(run_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("VACUUM ANALYZE")
    database_rename(source_url=run_url, target_url=template_url)
    seconds = time.monotonic() - started
    log(f"seeded {_own_name(template_url)} in {seconds:.1f}s")
    return seconds


def template_reusable(*, template_url: str, sizes: Sizes) -> str | None:
    """Why the template seeded earlier cannot be reused at ``sizes`` (None when it can), or "migrate".

    It must exist, hold exactly the trades and merchants asked for, and have
    no migration applied that this code lacks. "migrate" means this code has
    migrations it lacks: the caller migrates it forward, so a changed schema
    is never measured on a stale copy.
    """
    import psycopg
    from django.db.migrations.loader import MigrationLoader

    try:
        conn = psycopg.connect(template_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        return "no template database"
    with conn:
        applied = set(conn.execute("SELECT app, name FROM django_migrations").fetchall())
        trades = conn.execute("SELECT count(*) FROM exchange_order").fetchone()[0]
        merchants = conn.execute("SELECT count(*) FROM merchants_merchant").fetchone()[0]
    on_disk = set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)
    if (trades, merchants) != (sizes.trades, sizes.merchants):
        return f"it holds {trades} trades over {merchants} merchants"
    if not applied <= on_disk:
        return f"it has {len(applied - on_disk)} migration(s) this code does not know"
    return "migrate" if applied != on_disk else None


# --- one trial -------------------------------------------------------------------------------------------------------


def _ledger_rows() -> tuple[int, int]:
    """(entries, postings) a settlement run writes itself: its SALE entries and its payouts' PAYOUT_CREATED entries."""
    from exchange.choices import JournalKind
    from exchange.models import JournalEntry, Posting

    kinds = [JournalKind.SALE, JournalKind.PAYOUT_CREATED]
    return JournalEntry.objects.filter(kind__in=kinds).count(), Posting.objects.filter(entry__kind__in=kinds).count()


def _progress(run_pk: int) -> str:
    from exchange.models import SettlementRun
    from exchange.services.settlement import settlement_run_progress

    run = SettlementRun.objects.get(pk=run_pk)
    batches_done, orders_settled = settlement_run_progress(run)
    batches = f", batches {batches_done}/{run.batches_total}" if run.batches_total else ""
    return f"{orders_settled} orders settled{batches}"


def settle(*, workers: list[ServerProcess], timeout: float):
    """Start a run (its commit queues the work), wait until it is no longer running, return it."""
    from exchange.choices import SettlementRunStatus
    from exchange.models import SettlementRun
    from exchange.services.settlement import settlement_run_start

    run = settlement_run_start(actor=None, trigger="bench")
    last_report = time.monotonic()

    def finished() -> bool:
        nonlocal last_report
        for worker in workers:
            worker.check_alive()
        if SettlementRun.objects.filter(pk=run.pk, status=SettlementRunStatus.RUNNING).exists():
            if time.monotonic() - last_report >= 15:
                last_report = time.monotonic()
                log(f"  {_progress(run.pk)}")
            return False
        return True

    wait_until(finished, timeout=timeout, interval=0.2, what=f"settlement run {run.pk} to finish")
    run.refresh_from_db()
    if run.status != SettlementRunStatus.COMPLETED:
        raise BenchError(f"settlement run {run.pk} ended {run.status}: {run.error}")
    return run


def wait_payouts_sent(*, run, workers: list[ServerProcess], timeout: float) -> None:
    """Wait until no payout of ``run`` is pending any more (the payout_send tasks follow the run)."""
    from exchange.choices import PayoutStatus
    from exchange.models import Payout

    def done() -> bool:
        for worker in workers:
            worker.check_alive()
        return not Payout.objects.filter(run=run, status=PayoutStatus.PENDING).exists()

    wait_until(done, timeout=timeout, interval=0.2, what=f"run {run.pk}'s payouts to be sent")


def trial_checks(*, run, trades: int, merchants: int) -> dict:
    """What the trial database holds afterwards: settled trades, payouts, sums per currency, the chain."""
    from django.db.models import Count, Max, Sum

    from exchange.choices import AccountKind, OrderStatus, PayoutStatus
    from exchange.models import Order, Payout, Posting, TransactionCertificate
    from exchange.services.ledger import ledger_verify

    per_merchant = Payout.objects.filter(run=run).values("merchant_id").annotate(n=Count("pk"))
    sums = {
        row["currency"]: row["total"]
        for row in Posting.objects.values("currency").annotate(total=Sum("amount")).order_by("currency")
    }

    def balance(kind: str) -> int:
        return Posting.objects.filter(account__kind=kind).aggregate(total=Sum("amount"))["total"] or 0

    started = time.monotonic()
    verified = ledger_verify()
    verify_seconds = time.monotonic() - started
    settled = Order.objects.filter(settlement_run=run, status=OrderStatus.SETTLED, settled_at__isnull=False).count()
    checks = {
        "orders_settled": settled,
        "run_orders_settled": run.orders_settled,
        "certificates": TransactionCertificate.objects.filter(order__settlement_run=run).count(),
        "orders_left_unsettled": Order.objects.filter(status=OrderStatus.DELIVERED).count(),
        "payouts": Payout.objects.filter(run=run).count(),
        "payouts_sent": Payout.objects.filter(run=run, status=PayoutStatus.SENT).count(),
        "merchants_paid": per_merchant.count(),
        "max_payouts_per_merchant": per_merchant.aggregate(most=Max("n"))["most"] or 0,
        "ledger_sums": sums,
        "escrow_held_balance": balance(AccountKind.ESCROW_HELD),
        "merchant_payable_balance": balance(AccountKind.MERCHANT_PAYABLE),
        "payouts_pending_balance": balance(AccountKind.PAYOUTS_PENDING),
        "ledger_balanced": bool(sums) and not any(sums.values()),
        "chain_verified": verified.ok,
        "verify_message": verified.message,
        "verify_seconds": round(verify_seconds, 2),
    }
    checks["settled_every_trade"] = settled == trades == checks["certificates"] == run.orders_settled
    checks["one_payout_per_merchant"] = (
        checks["payouts"] == checks["merchants_paid"] == merchants and checks["max_payouts_per_merchant"] == 1
    )
    return checks


def stop_all(servers: list[ServerProcess]) -> None:
    """Stop the workers side by side (each finishes its task first): a warm shutdown takes a second or two each."""
    if not servers:
        return
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        for stopped in [pool.submit(server.stop) for server in servers]:
            stopped.result()


def trial(
    *, label: str, workers: int, sizes: Sizes, template_url: str, run_url: str, redis_url: str, env: dict, scratch: Path
) -> dict:
    """Clone the template, settle it with ``workers`` worker processes, check it, then COPY the same rows."""
    close_django_connections()
    database_clone(template_url=template_url, target_url=run_url)
    redis_flush(redis_url)
    entries_before, postings_before = _ledger_rows()
    worker_env = {**env, "SETTLEMENT_BATCH_SIZE": str(sizes.batch_size), "CELERY_TASK_ALWAYS_EAGER": "0"}
    servers: list[ServerProcess] = []
    try:
        tag = secrets.token_hex(3)
        for number in range(workers):
            servers.append(
                celery_worker(
                    env=worker_env,
                    log_path=scratch / f"{label}-worker{number}.log",
                    queues="settlement",
                    concurrency=1,
                    name=f"bench-settlement-{label}-{number}-{tag}",
                )
            )
        for server in servers:
            server.wait_ready(lambda s=server: celery_ready(s), timeout=90)
        log(f"{label}: {workers} worker process(es) ready; settling {sizes.trades} trades")
        run = settle(workers=servers, timeout=max(300.0, sizes.trades * 0.1))
        seconds = (run.finished_at - run.started_at).total_seconds()
        wait_payouts_sent(run=run, workers=servers, timeout=max(120.0, sizes.merchants * 1.0))
        for server in servers:
            server.check_alive()
    except BenchError as exc:
        tails = "\n".join(f"--- {server.log_path.name}\n{server.log_tail()}" for server in servers)
        raise BenchError(f"{label}: {exc}\n{tails}") from None
    finally:
        stop_all(servers)

    entries_after, postings_after = _ledger_rows()
    entries, postings = entries_after - entries_before, postings_after - postings_before
    rows = entries + postings
    result = {
        "label": label,
        "workers": workers,
        "seconds": round(seconds, 3),
        "entries": entries,
        "postings": postings,
        "rows": rows,
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
        "batches": run.batches_total,
    }
    log(f"{label}: {rows} ledger rows in {seconds:.2f}s = {result['rows_per_s']} rows/s; checking")
    result.update(trial_checks(run=run, trades=sizes.trades, merchants=sizes.merchants))
    close_django_connections()
    copy = copy_baseline(database_url=run_url, entries=entries, postings=postings)
    result["copy_seconds"] = copy["seconds"]
    result["copy_rows_per_s"] = copy["rows_per_s"]
    if result["rows_per_s"] and copy["rows_per_s"]:
        result["rows_per_s_over_copy"] = round(result["rows_per_s"] / copy["rows_per_s"], 4)
    log(
        f"{label}: verified={result['chain_verified']} balanced={result['ledger_balanced']} "
        f"settled={result['orders_settled']} payouts={result['payouts']}; "
        f"COPY {copy['rows']} rows in {copy['seconds']:.3f}s = {copy['rows_per_s']} rows/s"
    )
    return result


# --- the baseline ----------------------------------------------------------------------------------------------------

POSTING_COLUMNS = ("id", "entry_id", "account_id", "amount", "currency")


def ledger_entry_columns() -> tuple[str, ...]:
    """The journal entry columns, as the ledger writes them (imported once Django is set up)."""
    from exchange.services.ledger import ENTRY_COLUMNS

    return ENTRY_COLUMNS


def copy_payload(*, entries: int, postings: int) -> tuple[list[bytes], list[bytes]]:
    """COPY text for ``entries`` journal entries and ``postings`` postings, shaped like the run's own rows.

    Entries come in blocks of 500, each chained from the genesis hash inside its
    block as the ledger chains them; each posting belongs to one of the
    entries (three per SALE entry when the counts allow) and the postings of
    an entry sum to zero.
    """
    created_at = "2026-01-01 02:00:00.123456+00"
    entry_lines, previous = [], "0" * 64
    for index in range(1, entries + 1):
        position = (index - 1) % 500 + 1
        if position == 1:
            previous = "0" * 64
        digest = hashlib.sha256(f"{previous}{index}".encode()).hexdigest()
        entry_lines.append(
            f"{index}\t{1_000_000 + index}\t{(index - 1) // 500 + 1}\t{position}\tsale:{500_000 + index}\tsale\t"
            f"{500_000 + index}\t\\N\torder {index:08X} settled in run 1\t{created_at}\t{previous}\t{digest}\t\\N\n"
        )
        previous = digest
    posting_lines = []
    per_entry, extra = divmod(postings, entries) if entries else (0, 0)
    posting_id = 0
    for entry in range(1, entries + 1):
        legs = per_entry + (1 if entry <= extra else 0)
        gross = _amount(entry)
        fee = gross // 10
        # A sale's three legs (escrow, fee, merchant), a payout's two; any other count still sums to zero.
        amounts = {3: [gross, -fee, -(gross - fee)], 2: [gross, -gross]}.get(
            legs, [gross] * (legs - 1) + [-gross * (legs - 1)]
        )
        for leg, amount in enumerate(amounts[:legs]):
            posting_id += 1
            posting_lines.append(f"{posting_id}\t{entry}\t{leg + 1 + entry % 997}\t{amount}\tCNY\n")
    return _chunks(entry_lines), _chunks(posting_lines)


def _chunks(lines: list[str]) -> list[bytes]:
    chunks, buffer = [], io.StringIO()
    for line in lines:
        buffer.write(line)
        if buffer.tell() >= COPY_CHUNK_BYTES:
            chunks.append(buffer.getvalue().encode())
            buffer = io.StringIO()
    if buffer.tell():
        chunks.append(buffer.getvalue().encode())
    return chunks


def copy_baseline(*, database_url: str, entries: int, postings: int) -> dict:
    """COPY ``entries`` + ``postings`` rows into index-for-index copies of the ledger tables; time both COPYs."""
    import psycopg

    entry_data, posting_data = copy_payload(entries=entries, postings=postings)
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        with conn.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS bench_copy_posting, bench_copy_entry")
            cursor.execute(
                "CREATE TABLE bench_copy_entry (LIKE exchange_journalentry INCLUDING DEFAULTS INCLUDING INDEXES)"
            )
            cursor.execute(
                "CREATE TABLE bench_copy_posting (LIKE exchange_posting INCLUDING DEFAULTS INCLUDING INDEXES)"
            )
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cursor:
            for table, columns, data in (
                ("bench_copy_entry", ledger_entry_columns(), entry_data),
                ("bench_copy_posting", POSTING_COLUMNS, posting_data),
            ):
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for chunk in data:
                        copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - started
        with conn.cursor() as cursor:
            cursor.execute("SELECT (SELECT count(*) FROM bench_copy_entry), (SELECT count(*) FROM bench_copy_posting)")
            copied = cursor.fetchone()
    if copied != (entries, postings):
        raise BenchError(f"COPY stored {copied} rows, expected ({entries}, {postings})")
    rows = entries + postings
    return {"rows": rows, "seconds": round(seconds, 4), "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None}


# --- the run ---------------------------------------------------------------------------------------------------------


def machine(database_url: str) -> dict:
    import psycopg

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "cores": cores(),
        "cpu": cpu,
        "python": platform.python_version(),
        "postgresql": server,
        "system": f"{platform.system()} {platform.release()}",
    }


def _median(values: list[float]) -> float | None:
    values = [value for value in values if value is not None]
    if not values:
        return None
    middle = round(statistics.median(values), 4)
    return int(middle) if float(middle).is_integer() else middle


def summarise(trials: list[dict], *, label: str) -> dict:
    mine = [result for result in trials if result["label"] == label]
    return {
        "seconds": _median([result["seconds"] for result in mine]),
        "rows": _median([result["rows"] for result in mine]),
        "rows_per_s": _median([result["rows_per_s"] for result in mine]),
        "copy_rows_per_s": _median([result["copy_rows_per_s"] for result in mine]),
        "workers": mine[0]["workers"] if mine else None,
    }


def run(*, sizes: Sizes, rounds: int, database_url: str, redis_url: str, reuse: bool = False) -> dict:
    template_url = seed_database_url(database_url)
    with tempfile.TemporaryDirectory(prefix="bench-settlement-") as scratch_dir:
        scratch = Path(scratch_dir)
        env = bench_environment(database_url=database_url, redis_url=redis_url, scratch=scratch)
        django_setup(env)  # tasks run inline in this process while seeding
        redis_flush(redis_url)
        why_not = template_reusable(template_url=template_url, sizes=sizes) if reuse else "--reuse not given"
        if why_not == "migrate":
            log(f"migrating the template {_own_name(template_url)} forward")
            run_checked(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                env={**env, "DATABASE_URL": template_url},
                timeout=600,
            )
            import psycopg

            with psycopg.connect(template_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute("VACUUM ANALYZE")
            why_not = None
        reused = why_not is None
        if reused:
            log(f"reusing the template {_own_name(template_url)}")
            seed_seconds = 0.0
        else:
            if reuse:
                log(f"seeding again: {why_not}")
            seed_seconds = seed(sizes=sizes, run_url=database_url, template_url=template_url, env=env)

        # From here on this process only starts runs: their work must go to the workers through the broker.
        from exchange.celery import app

        app.conf.task_always_eager = False
        trials = []
        for number in range(1, rounds + 1):
            for label, workers in TRIALS:
                log(f"round {number}/{rounds}: {label}")
                result = trial(
                    label=label,
                    workers=workers,
                    sizes=sizes,
                    template_url=template_url,
                    run_url=database_url,
                    redis_url=redis_url,
                    env=env,
                    scratch=scratch,
                )
                result["round"] = number
                trials.append(result)
        close_django_connections()
        host = machine(database_url)

    one, two = summarise(trials, label="one_worker"), summarise(trials, label="two_workers")
    by_round = {(result["round"], result["label"]): result for result in trials}
    over_copy = _median([by_round[(n, "one_worker")].get("rows_per_s_over_copy") for n in range(1, rounds + 1)])
    # For information (the goal is on one worker, as COPY is one connection): both cores' settling over COPY.
    two_over_copy = _median([by_round[(n, "two_workers")].get("rows_per_s_over_copy") for n in range(1, rounds + 1)])
    two_over_one = _median(
        [
            by_round[(n, "two_workers")]["rows_per_s"] / by_round[(n, "one_worker")]["rows_per_s"]
            for n in range(1, rounds + 1)
            if by_round[(n, "one_worker")]["rows_per_s"]
        ]
    )
    balanced = all(result["ledger_balanced"] for result in trials)
    verified = all(result["chain_verified"] for result in trials)
    return {
        "bench": "settlement",
        "trades": sizes.trades,
        "merchants": sizes.merchants,
        "batch_size": sizes.batch_size,
        "rounds": rounds,
        "workers_mode": "1 worker: one process -c 1; 2 workers: two processes -c 1 each (prefork, queue settlement)",
        "seed_seconds": round(seed_seconds, 1),
        "seed_reused": reused,
        "one_worker": {key: one[key] for key in ("seconds", "rows", "rows_per_s")},
        "two_workers": {key: two[key] for key in ("seconds", "rows", "rows_per_s")},
        "copy_rows_per_s": _median([result["copy_rows_per_s"] for result in trials]),
        "ratios": {
            "settle_rows_per_s_over_copy": round(over_copy, 4) if over_copy is not None else None,
            "two_workers_over_one": round(two_over_one, 4) if two_over_one is not None else None,
            "two_workers_over_copy": round(two_over_copy, 4) if two_over_copy is not None else None,
        },
        "ledger_balanced": balanced,
        "chain_verified": verified,
        "settled_every_trade": all(result["settled_every_trade"] for result in trials),
        "one_payout_per_merchant": all(result["one_payout_per_merchant"] for result in trials),
        "goals": {
            "settle_over_copy_ge_0_25": over_copy is not None and over_copy >= GOAL_SETTLE_OVER_COPY,
            "two_workers_over_one_ge_1_3": two_over_one is not None and two_over_one >= GOAL_TWO_OVER_ONE,
            "ledger_balanced": balanced,
            "chain_verified": verified,
        },
        "trials": trials,
        "machine": host,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.settlement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="300 trades, 10 merchants, batches of 50, for the tests")
    parser.add_argument("--trades", type=int, default=None, help="delivered trades to settle (default 100000)")
    parser.add_argument(
        "--merchants", type=int, default=None, help="merchants the trades are spread over (default 1000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of (1 worker, 2 workers), medians reported (1; smoke: 2)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep the template seeded by an earlier run if sizes and migrations match"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="SETTLEMENT_BATCH_SIZE for the workers (500)")
    args = parser.parse_args(argv)
    base = SMOKE if args.smoke else FULL

    def given(value: int | None, default: int) -> int:
        return default if value is None else value

    sizes = Sizes(
        trades=given(args.trades, base.trades),
        merchants=given(args.merchants, base.merchants),
        batch_size=given(args.batch_size, base.batch_size),
    )
    if not 1 <= sizes.merchants <= 10_000 or not sizes.merchants <= sizes.trades <= 10_000_000:
        parser.error("--merchants must be 1..10000 and --trades at least --merchants (at most 10000000)")
    rounds = given(args.rounds, SMOKE_ROUNDS if args.smoke else 1)
    if not 1 <= sizes.batch_size <= 10_000 or not 1 <= rounds <= 20:
        parser.error("--batch-size must be 1..10000 (as SETTLEMENT_BATCH_SIZE) and --rounds 1..20")
    try:
        result = run(
            sizes=sizes,
            rounds=rounds,
            database_url=os.environ.get("BENCH_SETTLEMENT_DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url=os.environ.get("BENCH_SETTLEMENT_REDIS_URL", DEFAULT_REDIS_URL),
            reuse=args.reuse,
        )
    except BenchError as exc:
        log(f"could not run: {exc}")
        return 1
    result["smoke"] = bool(args.smoke)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
