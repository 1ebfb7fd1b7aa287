"""Running a benchmark in smoke mode from a test: one subprocess, one JSON line back.

Each benchmark gets a database of its own named after the test database
(``<test db>_bench_<name>``) and the tests' Redis, through the
``BENCH_<NAME>_DATABASE_URL`` / ``BENCH_<NAME>_REDIS_URL`` variables every
benchmark reads.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def bench_database_url(name: str) -> str:
    parts = urlsplit(os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange"))
    return urlunsplit(parts._replace(path=f"/{parts.path.lstrip('/') or 'exchange'}_bench_{name}"))


def run_smoke(name: str, *, timeout: int = 240) -> dict:
    """Run ``python -m bench.<name> --smoke``; assert it succeeded and printed exactly one JSON line; return it."""
    env = {
        **os.environ,
        f"BENCH_{name.upper()}_DATABASE_URL": bench_database_url(name),
        f"BENCH_{name.upper()}_REDIS_URL": settings.REDIS_URL,
    }
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])
