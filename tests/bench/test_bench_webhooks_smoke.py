"""`make bench-webhooks` in smoke mode, so the benchmark cannot rot unnoticed (DESIGN.md §7).

It runs as a subprocess with real gunicorn and Celery worker processes, on a
database of its own named after the test database, and on the tests' Redis.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "bench",
    "events",
    "trivial_rps",
    "webhook_rps",
    "p50_ack_ms",
    "p99_ack_ms",
    "trivial_p99_ms",
    "processed_exactly_once",
    "ratios",
    "machine",
}

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def _bench_database_url() -> str:
    parts = urlsplit(os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange"))
    return urlunsplit(parts._replace(path=f"/{parts.path.lstrip('/') or 'exchange'}_bench_webhooks"))


def test_bench_webhooks_smoke_prints_one_json_line_and_applies_every_event_once():
    env = {
        **os.environ,
        "BENCH_WEBHOOKS_DATABASE_URL": _bench_database_url(),
        "BENCH_WEBHOOKS_REDIS_URL": settings.REDIS_URL,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.webhooks", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])

    assert set(result) >= KEYS
    assert (result["bench"], result["events"], result["smoke"]) == ("webhooks", 30, True)
    assert result["processed_exactly_once"] is True, result["counts"]
    counts = result["counts"]
    applied = ("events_stored", "events_processed", "orders_paid", "entitlements", "payment_journal_entries")
    assert {name: counts[name] for name in applied} == dict.fromkeys(applied, 30)
    assert counts["events_failed"] == 0
    assert result["acknowledged"] == 30 and result["duplicates_acknowledged"] == 0
    assert result["webhook_rps"] > 0 and result["trivial_rps"] > 0 and result["p99_ack_ms"] > 0
    assert set(result["ratios"]) == {"webhook_rate_over_trivial_rate"}
    assert result["ratios"]["webhook_rate_over_trivial_rate"] > 0
