import pytest
from django.core.exceptions import ImproperlyConfigured

from exchange.env import env_bool, env_choice, env_int


def test_bad_values_fail_loudly(monkeypatch):
    monkeypatch.setenv("X_INT", "ten")
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_CHOICE", "stripe-ish")
    with pytest.raises(ImproperlyConfigured, match="X_INT must be an integer"):
        env_int("X_INT", 1)
    with pytest.raises(ImproperlyConfigured, match="X_BOOL must be a boolean"):
        env_bool("X_BOOL")
    with pytest.raises(ImproperlyConfigured, match="X_CHOICE must be one of"):
        env_choice("X_CHOICE", "a", {"a", "b"})
    monkeypatch.setenv("X_INT", "-5")
    with pytest.raises(ImproperlyConfigured, match=">= 0"):
        env_int("X_INT", 1, minimum=0)


def test_defaults_and_good_values(monkeypatch):
    monkeypatch.delenv("X_MISSING", raising=False)
    assert env_int("X_MISSING", 7) == 7
    monkeypatch.setenv("X_BOOL", "Yes")
    assert env_bool("X_BOOL") is True


def test_production_without_secret_key_refuses_to_start(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='exchange.settings'; django.setup()",
        ],
        env={"DJANGO_ENV": "production", "EXCHANGE_VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_embedded_default_shares_its_cache_between_processes(tmp_path):
    """Web and worker processes must see each other's cache flags (the payment-event drain relies on it)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import os, django; os.environ['DJANGO_SETTINGS_MODULE']='exchange.settings'; django.setup();"
        "from django.conf import settings; print(settings.CACHES['default']['BACKEND']);"
        "print(settings.CELERY_BROKER_URL)"
    )
    env = {"EXCHANGE_VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    assert result.returncode == 0, result.stderr
    backend, broker = result.stdout.split()
    assert backend == "django.core.cache.backends.filebased.FileBasedCache"
    assert broker == "filesystem://"


def test_a_missing_retired_signing_key_file_refuses_to_start(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "retired" / "2025.pem"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='exchange.settings'; django.setup()",
        ],
        env={"EXCHANGE_VAR_DIR": str(tmp_path), "EXCHANGE_SIGNING_RETIRED_KEYS": str(missing), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert result.returncode != 0
    assert f"EXCHANGE_SIGNING_RETIRED_KEYS names missing files: {missing}" in result.stderr
