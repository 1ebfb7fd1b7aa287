"""One migrated database for the session's benchmark smoke runs.

Every benchmark starts from a freshly migrated database of its own. Here the
first smoke test migrates ``<test db>_bench_template`` once and names it in
``BENCH_MIGRATED_TEMPLATE``; each benchmark then copies it
(``bench._servers.database_migrated``) instead of running every migration
again, which took about 25 s per benchmark.
"""

import os
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from bench._servers import database_migrated
from tests.bench.smoke import bench_database_url


@pytest.fixture(scope="session", autouse=True)
def bench_migrated_template():
    url = bench_database_url("template")
    name = urlsplit(url).path.lstrip("/")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_ENV": "development",
        "DJANGO_SETTINGS_MODULE": "exchange.settings",
    }
    os.environ.pop("BENCH_MIGRATED_TEMPLATE", None)
    database_migrated(url, env=env)
    os.environ["BENCH_MIGRATED_TEMPLATE"] = name
    yield name
    del os.environ["BENCH_MIGRATED_TEMPLATE"]
    admin_url = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
