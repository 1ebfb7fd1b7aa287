"""GET /healthz: database, broker and storage, each bounded; 503 naming what failed (issue 9)."""

import pytest
from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper

from exchange import health

pytestmark = pytest.mark.django_db

ALL_OK = {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_all_ok(client, _private_storage):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == ALL_OK
    assert response["Cache-Control"] == "no-store"
    assert response["Content-Type"] == "application/json"
    assert "Set-Cookie" not in response.headers
    # The probe object is removed again.
    assert [p for p in _private_storage.rglob("*") if p.is_file()] == []


def test_head_and_no_post(client):
    assert client.head("/healthz").status_code == 200
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_not_throttled_nor_cached(client):
    statuses = {client.get("/healthz").status_code for _ in range(30)}
    assert statuses == {200}


def test_database_down(client, monkeypatch, caplog):
    def refuse(self, *args, **kwargs):
        raise OperationalError('connection to server at "db.internal" failed: password=hunter2 rejected')

    monkeypatch.setattr(BaseDatabaseWrapper, "cursor", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "error",
        "checks": {"database": "failed: OperationalError", "broker": "ok", "storage": "ok"},
    }
    assert b"hunter2" not in response.content and b"db.internal" not in response.content
    assert "health check database failed" in caplog.text


def test_broker_unreachable(client, settings, caplog):
    settings.CELERY_BROKER_URL = "redis://:s3cret-pass@127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "error",
        "checks": {"database": "ok", "broker": "failed: ConnectionError", "storage": "ok"},
    }
    assert b"s3cret" not in response.content and b"127.0.0.1" not in response.content
    assert "health check broker failed" in caplog.text
    assert "s3cret" not in caplog.text


def test_filesystem_broker_folder_must_be_writable(client, settings, tmp_path):
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.BROKER_DIR = tmp_path / "broker"
    (tmp_path / "broker" / "queue").mkdir(parents=True)
    assert client.get("/healthz").json() == ALL_OK
    assert list((tmp_path / "broker" / "queue").iterdir()) == []
    settings.BROKER_DIR = tmp_path / "no-broker-here"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "broker": "failed: FileNotFoundError", "storage": "ok"}


def test_storage_failure(client, settings, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage root should be")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(blocker), "base_url": None},
        },
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "error",
        "checks": {"database": "ok", "broker": "ok", "storage": "failed: NotADirectoryError"},
    }
    assert blocker.read_text() == "a file where the storage root should be"


def test_storage_reading_back_different_bytes_fails(client, monkeypatch):
    from django.core.files.storage import FileSystemStorage

    original_open = FileSystemStorage._open

    def corrupt(self, name, mode="rb"):
        fh = original_open(self, name, mode)
        fh.file.read = lambda *args: b"something else"
        return fh

    monkeypatch.setattr(FileSystemStorage, "_open", corrupt)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == "failed: RuntimeError"


def test_checks_are_time_bounded():
    assert health.TIMEOUT_SECONDS == 2


def test_command_line_checks_for_workers_and_beat(production_env, settings):
    """``python -m exchange.health`` runs the same checks in a production process (Compose's worker health)."""
    import json
    import subprocess
    import sys

    from tests.hardening.conftest import BASE_DIR

    db = settings.DATABASES["default"]
    env = {**production_env, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    result = subprocess.run(
        [sys.executable, "-m", "exchange.health"], env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=45
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ALL_OK
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    result = subprocess.run(
        [sys.executable, "-m", "exchange.health"], env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=45
    )
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "status": "error",
        "checks": {"database": "ok", "broker": "failed: ConnectionError", "storage": "ok"},
    }
