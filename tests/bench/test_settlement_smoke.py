"""`make bench-settlement` in smoke mode, so the benchmark cannot rot unnoticed (DESIGN.md §7).

The smoke run is a subprocess with real Celery worker processes, on a trial
database of its own named after the test database (and its ``_seed``
template next to it), and on the tests' Redis: 300 trades over 10 merchants in
batches of 50, two rounds of one worker then two. The bench checks each
trial database afterwards; this test holds it to those checks.
"""

import hashlib
import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings

from bench.settlement import copy_payload, seed_database_url
from tests.bench.smoke import ROOT, bench_database_url, run_smoke

KEYS = {
    "bench",
    "trades",
    "merchants",
    "batch_size",
    "rounds",
    "workers_mode",
    "seed_seconds",
    "one_worker",
    "two_workers",
    "copy_rows_per_s",
    "ratios",
    "ledger_balanced",
    "chain_verified",
    "settled_every_trade",
    "one_payout_per_merchant",
    "goals",
    "trials",
    "machine",
    "smoke",
}


def _database_exists(url: str) -> bool:
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [parts.path.lstrip("/")]).fetchone()
    return row is not None


def _bench(*args: str, database_url: str) -> subprocess.CompletedProcess:
    # The tests' Redis, as in the smoke run: a bench that wrongly went ahead would flush nobody else's database.
    env = {
        **os.environ,
        "BENCH_SETTLEMENT_DATABASE_URL": database_url,
        "BENCH_SETTLEMENT_REDIS_URL": settings.REDIS_URL,
    }
    return subprocess.run(
        [sys.executable, "-m", "bench.settlement", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.system
@pytest.mark.timeout(300)
def test_bench_settlement_smoke_settles_every_trade_once_per_trial_and_keeps_the_ledger_verified():
    result = run_smoke("settlement")

    assert set(result) >= KEYS
    assert (result["bench"], result["trades"], result["merchants"], result["batch_size"]) == ("settlement", 300, 10, 50)
    assert (result["rounds"], result["smoke"]) == (2, True)
    assert result["ledger_balanced"] is True and result["chain_verified"] is True
    assert result["settled_every_trade"] is True and result["one_payout_per_merchant"] is True
    assert [(trial["round"], trial["label"], trial["workers"]) for trial in result["trials"]] == [
        (1, "one_worker", 1),
        (1, "two_workers", 2),
        (2, "one_worker", 1),
        (2, "two_workers", 2),
    ]
    for trial in result["trials"]:
        # Each trial settles the same freshly cloned 300 trades: 300 SALE entries of 3 postings, 10 payouts of 2.
        assert (trial["entries"], trial["postings"], trial["rows"]) == (310, 920, 1230), trial
        assert trial["batches"] == 6, trial
        assert (trial["orders_settled"], trial["run_orders_settled"], trial["certificates"]) == (300, 300, 300), trial
        assert trial["orders_left_unsettled"] == 0, trial
        payouts = (trial["payouts"], trial["payouts_sent"], trial["merchants_paid"], trial["max_payouts_per_merchant"])
        assert payouts == (10, 10, 10, 1), trial
        assert trial["ledger_sums"] == {"CNY": 0}, trial
        # Escrow released in full, every payable paid out, every payout sent.
        assert (
            trial["escrow_held_balance"],
            trial["merchant_payable_balance"],
            trial["payouts_pending_balance"],
        ) == (0, 0, 0), trial
        assert trial["chain_verified"] is True and trial["ledger_balanced"] is True, trial["verify_message"]
        # 300 PAYMENT + 300 SALE + 10 PAYOUT_CREATED + 10 PAYOUT_SENT entries.
        assert trial["verify_message"].startswith("620 entries in "), trial["verify_message"]
        assert trial["seconds"] > 0 and trial["rows_per_s"] > 0 and trial["copy_rows_per_s"] > 0, trial
    for label in ("one_worker", "two_workers"):
        assert set(result[label]) == {"seconds", "rows", "rows_per_s"}
        assert result[label]["rows"] == 1230 and result[label]["rows_per_s"] > 0
    assert set(result["ratios"]) == {"settle_rows_per_s_over_copy", "two_workers_over_one", "two_workers_over_copy"}
    assert result["ratios"]["two_workers_over_copy"] > 0
    assert result["ratios"]["settle_rows_per_s_over_copy"] > 0 and result["ratios"]["two_workers_over_one"] > 0
    assert set(result["goals"]) == {
        "settle_over_copy_ge_0_25",
        "two_workers_over_one_ge_1_3",
        "ledger_balanced",
        "chain_verified",
    }
    assert result["goals"]["ledger_balanced"] is True and result["goals"]["chain_verified"] is True
    assert result["machine"]["cores"] >= 1 and result["machine"]["postgresql"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # <test db>_bench_refused_by_settlement: not named for this benchmark.
        ("refused_by_settlement", "could not run: refusing to use database"),
        # Named for it, but the template's name ("<name>_seed") would pass PostgreSQL's 63 characters.
        ("settlement_" + "x" * 50, "is too long: at most 58 characters"),
    ],
)
def test_bench_settlement_refuses_a_database_it_may_not_use_and_creates_nothing(name, message):
    foreign = bench_database_url(name)
    seed = urlunsplit(urlsplit(foreign)._replace(path=f"{urlsplit(foreign).path}_seed"))
    assert not _database_exists(foreign)

    done = _bench("--smoke", database_url=foreign)

    assert done.returncode == 1
    assert done.stdout == ""
    assert message in done.stderr
    assert not _database_exists(foreign) and not _database_exists(seed)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be 1..10000"),
        (["--batch-size", "10001"], "--batch-size must be 1..10000"),
        (["--rounds", "0"], "--rounds 1..20"),
        (["--rounds", "21"], "--rounds 1..20"),
        (["--merchants", "0"], "--merchants must be 1..10000"),
        (["--trades", "5", "--merchants", "10"], "--trades at least --merchants"),
    ],
)
def test_bench_settlement_rejects_bad_sizes_before_touching_any_database(args, message):
    database_url = bench_database_url("settlement_badargs")
    assert not _database_exists(database_url)

    done = _bench(*args, database_url=database_url)

    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr
    assert not _database_exists(database_url)
    assert not _database_exists(seed_database_url(database_url))


def test_seed_database_sits_next_to_the_trial_database():
    assert seed_database_url("postgres://postgres@127.0.0.1:5432/bench_settlement_run") == (
        "postgres://postgres@127.0.0.1:5432/bench_settlement_seed"
    )
    assert seed_database_url("postgres://postgres@db:5433/exchange_h2_bench_settlement") == (
        "postgres://postgres@db:5433/exchange_h2_bench_settlement_seed"
    )


def test_copy_payload_holds_the_asked_rows_chained_and_balanced():
    entry_chunks, posting_chunks = copy_payload(entries=3, postings=8)
    entries = [line.split("\t") for line in b"".join(entry_chunks).decode().splitlines()]
    postings = [line.split("\t") for line in b"".join(posting_chunks).decode().splitlines()]

    assert [row[:6] for row in entries] == [
        ["1", "1000001", "1", "1", "sale:500001", "sale"],
        ["2", "1000002", "1", "2", "sale:500002", "sale"],
        ["3", "1000003", "1", "3", "sale:500003", "sale"],
    ]
    genesis = "0" * 64
    first = hashlib.sha256(f"{genesis}1".encode()).hexdigest()
    second = hashlib.sha256(f"{first}2".encode()).hexdigest()
    assert [(row[10], row[11]) for row in entries[:2]] == [(genesis, first), (first, second)]
    # 8 postings over 3 entries: the first two are sales (3 legs: gross, fee, merchant), the last a payout (2 legs).
    assert [(row[0], row[1], row[3], row[4]) for row in postings] == [
        ("1", "1", "8019", "CNY"),
        ("2", "1", "-801", "CNY"),
        ("3", "1", "-7218", "CNY"),
        ("4", "2", "15938", "CNY"),
        ("5", "2", "-1593", "CNY"),
        ("6", "2", "-14345", "CNY"),
        ("7", "3", "23857", "CNY"),
        ("8", "3", "-23857", "CNY"),
    ]
