"""`make bench-webhooks` in smoke mode, so the benchmark cannot rot unnoticed (DESIGN.md §7).

It runs as a subprocess with real gunicorn and Celery worker processes, on a
database of its own named after the test database, and on the tests' Redis.
"""

import pytest

from tests.bench.smoke import run_smoke

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


def test_bench_webhooks_smoke_prints_one_json_line_and_applies_every_event_once():
    result = run_smoke("webhooks")

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
