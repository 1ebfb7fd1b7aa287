"""Helpers for the hardening tests: a production-like environment for subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent.parent
SECRET_KEY = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"  # 64 characters, all different

assert len(SECRET_KEY) == 64


def write_signing_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


@pytest.fixture
def production_env(tmp_path):
    """What a production host sets, pointing at the test services; nothing inherited from the test process."""
    var = tmp_path / "var"
    var.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "exchange.settings",
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "DJANGO_ALLOWED_HOSTS": "exchange.example",
        "SITE_URL": "https://exchange.example",
        "DATABASE_URL": os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange"),
        "REDIS_URL": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
        "EXCHANGE_SIGNING_KEY_FILE": str(write_signing_key(tmp_path / "signing_key.pem")),
        "EXCHANGE_VAR_DIR": str(var),
        "PRIVATE_STORAGE_ROOT": str(tmp_path / "private"),
    }


def run_python(code: str, env: dict, timeout: int = 45) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (settings are read once per process) from the project folder."""
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=timeout
    )


def last_error_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]
