"""Real Celery worker processes against the test PostgreSQL database and Redis."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from bench._servers import celery_worker_argv
from exchange.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.1, message="condition"):
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` after ``timeout`` seconds.

    ``message`` may be a callable, called only on failure (for what is known then, such as log tails).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message() if callable(message) else message}")


def _database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or ""
    auth = f"{user}:{db['PASSWORD']}@" if db.get("PASSWORD") else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class WorkerProcess:
    def __init__(self, *, queues: str, storage_root: Path, log_path: Path, concurrency: int = 2):
        self.log_path = log_path
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "PRIVATE_STORAGE_ROOT": str(storage_root),
        }
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            celery_worker_argv(queues=queues, concurrency=concurrency, name=f"test-{uuid.uuid4().hex[:8]}"),
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout=60, message=f"the Celery worker to start (log: {log_path})")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"Celery worker exited with {self.process.returncode}:\n{self.log()}")
        return " ready." in self.log()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def broker():
    """The tests' Redis database, emptied so no stale task reaches the worker."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    celery_app.conf.task_always_eager = False
    yield client
    celery_app.conf.task_always_eager = True
    client.flushdb()


@pytest.fixture
def celery_worker_process(transactional_db, broker, _private_storage, tmp_path):
    worker = WorkerProcess(
        queues="default,delivery,settlement,notifications",
        storage_root=_private_storage,
        log_path=tmp_path / "worker.log",
    )
    yield worker
    worker.stop()


@pytest.fixture
def workers():
    """Every worker a fault test starts (tests.system.faults.start_worker), stopped at the end.

    SIGTERM, then SIGKILL of its process group if it lingers.
    """
    started = []
    yield started
    for worker in reversed(started):
        worker.stop()
