"""Helpers for the fault tests: real prefork Celery workers that a test can SIGKILL, and PostgreSQL lock probes.

Shared by tests/system/test_delivery_faults.py and tests/system/test_settlement_faults.py.
"""

import json
import os
import signal
from pathlib import Path

from django.db import connection

from bench._servers import ServerProcess, celery_ready, celery_worker
from tests.system.conftest import _database_url

ROOT = Path(__file__).resolve().parents[2]
# The production visibility timeout is an hour: that long after its worker died, an unacknowledged task is
# handed out again. These tests shorten it (and the sweep for such tasks) so a recovery takes seconds.
VISIBILITY_TIMEOUT = 4
SETTINGS_MODULE = "fault_worker_settings"


def _worker_settings(tmp_path: Path) -> Path:
    """A settings module for the workers: the test settings with a short visibility timeout.

    Written per test (the settings refuse CELERY_VISIBILITY_TIMEOUT below 60 s, a
    sane floor for production), and put first on the workers' PYTHONPATH.
    """
    folder = tmp_path / "worker_settings"
    folder.mkdir(exist_ok=True)
    options = {"visibility_timeout": VISIBILITY_TIMEOUT, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    (folder / f"{SETTINGS_MODULE}.py").write_text(
        "from tests.settings import *  # noqa: F403\n\n"
        f"CELERY_BROKER_TRANSPORT_OPTIONS = {{**CELERY_BROKER_TRANSPORT_OPTIONS, **{json.dumps(options)}}}\n"
    )
    return folder


def start_worker(
    tmp_path: Path,
    storage_root: Path,
    *,
    redis_url: str,
    label: str,
    concurrency: int = 2,
    queues: str = "default,delivery,notifications",
    short_visibility: bool = True,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """A real prefork worker in a session of its own, so the test can SIGKILL its whole process group.

    ``short_visibility``: the broker hands an unacknowledged task out again
    VISIBILITY_TIMEOUT seconds after its delivery (otherwise the test
    settings' hour). ``env`` adds or overrides environment variables (the
    settings read them at start).
    """
    settings_module, path = "tests.settings", [str(ROOT)]
    if short_visibility:
        settings_module, path = SETTINGS_MODULE, [str(_worker_settings(tmp_path)), str(ROOT)]
    worker_env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("CELERY_")},
        "DJANGO_SETTINGS_MODULE": settings_module,
        "PYTHONPATH": os.pathsep.join(path),
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PRIVATE_STORAGE_ROOT": str(storage_root),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    worker = celery_worker(
        env=worker_env,
        log_path=tmp_path / f"worker-{label}.log",
        queues=queues,
        concurrency=concurrency,
        name=f"faults-{label}-{os.getpid()}",
    )
    worker.wait_ready(lambda: celery_ready(worker), timeout=60)
    return worker


def sigkill(worker: ServerProcess) -> None:
    """kill -9 the worker's main process and its pool children (its process group) at once."""
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)
    worker.stop()  # closes the log; the process is already gone


def blocked_backends(locker_pid: int) -> list[int]:
    """The database sessions (of this test database) waiting for a lock that session ``locker_pid`` holds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND %s = ANY(pg_blocking_pids(pid))",
            [locker_pid],
        )
        return [pid for (pid,) in cursor.fetchall()]


def waiting_backends() -> dict[int, str]:
    """Every session of this test database waiting for a lock, whoever holds it: {pid: its query}."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        return dict(cursor.fetchall())
