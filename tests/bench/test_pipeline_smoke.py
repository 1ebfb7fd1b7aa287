"""`make bench-pipeline` in smoke mode, so the benchmark cannot rot unnoticed (DESIGN.md §7).

It runs as a subprocess with real gunicorn and Celery worker processes, on a
database of its own named after the test database, and on the tests' Redis.
"""

import pytest

from tests.bench.smoke import run_smoke

KEYS = {
    "bench",
    "steady_trades",
    "burst_trades",
    "p50_paid_to_link_ms",
    "p99_paid_to_link_ms",
    "trades_per_s",
    "trivial_rps",
    "delivered_exactly_once",
    "counts",
    "ratios",
    "machine",
}

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def test_bench_pipeline_smoke_prints_one_json_line_and_delivers_every_trade_once():
    result = run_smoke("pipeline")

    assert set(result) >= KEYS
    assert (result["bench"], result["steady_trades"], result["burst_trades"], result["smoke"]) == (
        "pipeline",
        10,
        20,
        True,
    )
    assert result["delivered_exactly_once"] is True, result["counts"]
    assert result["all_delivered"] is True and result["acknowledged"] == 30
    counts = result["counts"]
    each = (
        "events_stored",
        "events_processed",
        "orders_paid",
        "entitlements",
        "payment_journal_entries",
        "deliveries",
        "deliveries_ready",
        "delivery_ready_notifications",
    )
    assert {name: counts[name] for name in each} == dict.fromkeys(each, 30)
    assert counts["entitlements_delivered_twice"] == 0
    assert 0 < result["p50_paid_to_link_ms"] <= result["p99_paid_to_link_ms"] <= result["max_paid_to_link_ms"]
    assert result["trades_per_s"] > 0 and result["trivial_rps"] > 0
    assert set(result["ratios"]) == {"trades_per_s_over_trivial_rps", "p99_link_over_trivial_p99"}
    assert result["ratios"]["trades_per_s_over_trivial_rps"] > 0
