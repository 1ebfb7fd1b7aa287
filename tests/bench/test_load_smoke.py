"""`make bench-load` in smoke mode, so the benchmark cannot rot unnoticed (DESIGN.md §7).

It runs as a subprocess with real gunicorn, Celery worker and locust processes, on a database of its own
named after the test database, and on the tests' Redis: a tiny seed, one short step, a few seconds steady.
"""

import pytest

from bench.load import main
from tests.bench.smoke import run_smoke

TYPES = {"browse", "search", "listing", "checkout", "webhook", "download", "trivial"}
KEYS = {
    "bench",
    "steps",
    "break_point_users",
    "steady_users",
    "sustained_rps",
    "error_rate",
    "p50_browse_ms",
    "p99_browse_ms",
    "per_type",
    "all_phases",
    "connections",
    "counts",
    "goals_met",
    "ratios",
    "machine",
}

pytestmark = [pytest.mark.system, pytest.mark.timeout(150)]


def test_bench_load_smoke_prints_one_json_line_and_every_request_type_succeeds():
    result = run_smoke("load", timeout=120)

    assert set(result) >= KEYS
    assert (result["bench"], result["smoke"]) == ("load", True)
    # One step of 10 users; the steady phase at 70% of the top count reached.
    assert [step["users"] for step in result["steps"]] == [10]
    assert result["steady_users"] == 7
    # Every kind of request was made, and none failed (checkout redirected to a sandbox session, the
    # webhook was acknowledged, the download returned the file...).
    assert set(result["all_phases"]) >= TYPES
    for name in TYPES:
        assert result["all_phases"][name]["requests"] > 0, name
        assert result["all_phases"][name]["failures"] == 0, (name, result["errors"])
    assert result["requests"] > 0 and result["failures"] == 0 and result["error_rate"] == 0
    assert result["sustained_rps"] > 0
    assert set(result["per_type"]) == TYPES
    for figures in result["per_type"].values():
        assert set(figures) == {"requests", "failures", "rps", "p50_ms", "p99_ms"}
        if figures["requests"]:
            assert 0 <= figures["p50_ms"] <= figures["p99_ms"]
    assert 0 < result["p50_browse_ms"] <= result["p99_browse_ms"]
    assert set(result["goals_met"]) == {"error_rate_lt_0.1%", "p99_browse_le_300ms", "no_connection_exhaustion"}
    assert result["goals_met"]["error_rate_lt_0.1%"] is True
    # PostgreSQL's connections were sampled during the run and nothing ran out of them.
    connections = result["connections"]
    assert connections["samples"] > 0 and connections["exhaustion_errors_in_logs"] == 0
    assert 0 < connections["peak_bench_database"] <= connections["peak_all_databases"] < connections["max_connections"]
    assert result["goals_met"]["no_connection_exhaustion"] is True
    # The worker applied every paid event the webhook users sent (and the seeding's own purchases).
    counts = result["counts"]
    assert counts["events_failed"] == 0
    assert counts["events_processed"] == counts["events_stored"] >= result["all_phases"]["webhook"]["requests"] > 0
    assert set(result["ratios"]) == {
        "p50_browse_over_trivial_p50",
        "p99_browse_over_trivial_p99",
        "steady_users_over_break_users",
    }


@pytest.mark.parametrize(
    "argv",
    [["--steady-seconds", "0"], ["--step-seconds", "500"], ["--start-users", "0"], ["--smoke", "--start-users", "11"]],
)
def test_bench_load_rejects_bad_arguments_before_touching_anything(argv, capsys, monkeypatch):
    def must_not_run(**kwargs):
        raise AssertionError("the benchmark ran with bad arguments")

    monkeypatch.setattr("bench.load.run", must_not_run)
    with pytest.raises(SystemExit) as exc:
        main(argv)

    assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err
