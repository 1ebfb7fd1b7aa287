"""`make bench-download` in smoke mode, so the benchmark cannot rot unnoticed (DESIGN.md §7).

It runs as a subprocess with real gunicorn and nginx processes, on a database of its own named after
the test database, and on the tests' Redis. The bench itself checks that each way serves the file's
exact bytes (sha256), keeps the download headers through nginx, and answers a resume with If-Range.
"""

from pathlib import Path

import pytest

from tests.bench.smoke import run_smoke

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


def test_bench_download_smoke_serves_the_file_three_ways_and_prints_one_json_line():
    result = run_smoke("download")

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
