"""`make bench-download` in smoke mode, so the benchmark cannot rot unnoticed (DESIGN.md §7).

It runs as a subprocess with real gunicorn and nginx processes, on a database of its own named after
the test database, and on the tests' Redis. The bench itself checks that each way serves the file's
exact bytes (sha256), keeps the download headers through nginx, and answers a resume with If-Range.
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
NGINX = Path("/usr/sbin/nginx")
KEYS = {
    "bench",
    "size_mb",
    "nginx_mb_s",
    "xaccel_mb_s",
    "django_mb_s",
    "rss_growth_mb",
    "ratios",
    "goals_met",
    "downloads_logged_complete",
    "machine",
}

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not NGINX.exists(), reason="/usr/sbin/nginx is not installed (apt-get install nginx-light)"),
]


def _bench_database_url() -> str:
    parts = urlsplit(os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange"))
    return urlunsplit(parts._replace(path=f"/{parts.path.lstrip('/') or 'exchange'}_bench_download"))


def test_bench_download_smoke_serves_the_file_three_ways_and_prints_one_json_line():
    env = {
        **os.environ,
        "BENCH_DOWNLOAD_DATABASE_URL": _bench_database_url(),
        "BENCH_DOWNLOAD_REDIS_URL": settings.REDIS_URL,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.download", "--smoke"],
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
    assert (result["bench"], result["size_mb"], result["rounds"], result["smoke"]) == ("download", 4.0, 1, True)
    assert result["verified_sha256"] is True
    # Per server (two Django ones): a verified download, a full answer to a stale If-Range and a measured
    # round, all logged as complete downloads.
    assert result["downloads_logged_complete"] == {"django": 6, "xaccel": 3}
    assert result["django_read_mb_s"] > 0 and set(result["rss_growth_by_server_mb"]) == {"django", "django_read"}
    assert min(result["nginx_mb_s"], result["xaccel_mb_s"], result["django_mb_s"]) > 0
    assert set(result["ratios"]) == {"xaccel_over_nginx", "django_over_nginx"}
    assert all(value > 0 for value in result["ratios"].values())
    assert 0 <= result["rss_growth_mb"] < 100
