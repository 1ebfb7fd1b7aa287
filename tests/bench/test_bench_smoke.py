"""The search benchmark's smoke mode runs in the suite, so the benchmark cannot rot unnoticed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def _bench_database_url() -> str:
    # The benchmark's own database, on the server the tests use (never the test database itself).
    db = settings.DATABASES["default"]
    user, host, port = db.get("USER") or "postgres", db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/exchange_bench_search"


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="needs PostgreSQL"
)
def test_search_benchmark_smoke_prints_one_json_line():
    env = {**os.environ, "BENCH_SEARCH_DATABASE_URL": _bench_database_url()}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.search", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stdout
    result = json.loads(lines[0])
    assert result["bench"] == "search" and result["listings"] == 300
    assert set(result["ratios"]) == {"worst_api_over_sql_plus_trivial", "selective_icontains_over_api"}
    for kind in ("selective", "common", "two_term"):
        assert result["api_ms"][kind]["p50"] > 0 and result["api_ms"][kind]["p95"] >= result["api_ms"][kind]["p50"]
        assert result["raw_sql_ms"][kind]["p50"] > 0
        assert result["answers"][kind]["results"] > 0
    assert result["trivial_ms"]["p50"] > 0 and result["naive_selective_ms"]["p50"] > 0
    assert result["matches"]["common"] > result["matches"]["two_term"] > 0
