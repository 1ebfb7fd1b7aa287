"""Test settings: the real stack (PostgreSQL and Redis), overridable by env vars.

TEST_DATABASE_URL and TEST_REDIS_URL choose the servers; pytest-django
creates and drops the test database. Celery runs eagerly for unit tests;
system tests start real worker processes (tests/system).
"""

import os
from pathlib import Path

_BASE = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_ENV", "test")
os.environ.setdefault(
    "DATABASE_URL", os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange")
)
os.environ.setdefault("REDIS_URL", os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
os.environ.setdefault("PRIVATE_STORAGE_ROOT", str(_BASE / "var" / "test-private"))
os.environ.setdefault("UPLOAD_MAX_BYTES", str(1024 * 1024))
os.environ.setdefault("EXCHANGE_SIGNING_KEY_FILE", str(_BASE / "var" / "test-signing-key.pem"))

from exchange.env import env_bool  # noqa: E402
from exchange.settings import *  # noqa: E402,F403

CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", True)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
DEBUG = False
# Serve static files from the app folders in tests without a collectstatic run.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
