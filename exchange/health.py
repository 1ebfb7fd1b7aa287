"""GET /healthz: is this process able to serve? Checks the database, the Celery broker and private storage.

Answers 200 ``{"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}``, or 503 with
``"status": "error"`` and, for each failed check, ``"failed: <exception class>"``. The exception's message is
only logged (it can name hosts and users), never sent, and no URL or credential appears in either.

Each check is bounded: the database query by a 2-second statement timeout on PostgreSQL (the connection by
``connect_timeout`` in DATABASE_URL, see deploy/env.example), Redis by 2-second socket timeouts, other brokers
by a 2-second connect timeout, each S3 request by 2-second connect and read timeouts without retries. No
authentication, no session, no throttling, never cached: load balancers and Compose call it every few seconds.
"""

import logging
import time
import uuid
import weakref

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connections, transaction
from django.http import JsonResponse
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2
PROBE_PREFIX = "healthz/"


def check_database() -> None:
    connection = connections["default"]
    # SET LOCAL lasts until the end of this transaction only.
    with transaction.atomic(using="default"), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL statement_timeout = %s", [TIMEOUT_SECONDS * 1000])
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    if row != (1,):
        raise RuntimeError("SELECT 1 did not answer 1")


def check_broker() -> None:
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        # The embedded broker: a folder the web process must be able to write tasks into.
        queue_dir = settings.BROKER_DIR / "queue"
        probe = queue_dir / f".healthz-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
        return
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS)
        try:
            if client.ping() is not True:
                raise RuntimeError("PING did not answer PONG")
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(url, connect_timeout=TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1, timeout=TIMEOUT_SECONDS)


# The probe's own copy of each S3 storage, by storage: building a boto3 client loads its service model (slow).
_s3_probes: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def probe_storage(storage):
    """``storage`` itself, or for S3 the same bucket and credentials with TIMEOUT_SECONDS and no retry.

    The storage's own client waits S3_CONNECT_TIMEOUT / S3_READ_TIMEOUT and retries (botocore's defaults are
    60 s each): right for a large upload, far too long for a probe that a load balancer times out.
    """
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # django-storages is optional for the embedded default
        return storage
    if not isinstance(storage, S3Storage):
        return storage
    probe = _s3_probes.get(storage)
    if probe is None:
        from botocore.config import Config

        quick = Config(
            connect_timeout=TIMEOUT_SECONDS,
            read_timeout=TIMEOUT_SECONDS,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        config = storage.client_config.merge(quick) if storage.client_config else quick
        options = {**settings.STORAGES["default"].get("OPTIONS", {}), "client_config": config}
        probe = _s3_probes[storage] = S3Storage(**options)
    return probe


def check_storage() -> None:
    """Write, read back and delete a tiny object in the private storage (local folder or S3 bucket)."""
    from django.core.files.storage import storages

    storage = probe_storage(storages["default"])
    payload = uuid.uuid4().hex.encode()
    name = storage.save(f"{PROBE_PREFIX}{uuid.uuid4().hex}.probe", ContentFile(payload))
    try:
        with storage.open(name, "rb") as fh:
            if fh.read() != payload:
                raise RuntimeError("the probe object read back differs from what was written")
    finally:
        storage.delete(name)


CHECKS = {"database": check_database, "broker": check_broker, "storage": check_storage}


def run_checks() -> dict[str, str]:
    """Each check's answer by name: ``"ok"`` or ``"failed: <exception class>"`` (the message is only logged)."""
    results = {}
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            check()
        except Exception as exc:  # any failure is this check's answer, not a 500
            results[name] = f"failed: {type(exc).__name__}"
            logger.warning(
                "health check %s failed after %.2fs: %s: %s",
                name,
                time.monotonic() - started,
                type(exc).__name__,
                exc,
            )
        else:
            results[name] = "ok"
    return results


@require_safe
def healthz(request):
    results = run_checks()
    healthy = all(value == "ok" for value in results.values())
    response = JsonResponse({"status": "ok" if healthy else "error", "checks": results}, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response


def main() -> int:
    """``python -m exchange.health``: the same checks for processes without HTTP (Celery workers, beat)."""
    import json
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")
    django.setup()
    results = run_checks()
    healthy = all(value == "ok" for value in results.values())
    print(json.dumps({"status": "ok" if healthy else "error", "checks": results}))
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
