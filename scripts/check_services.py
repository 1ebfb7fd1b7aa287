"""Fail fast (within seconds) when PostgreSQL or Redis is not reachable for the tests."""

import os
import socket
import sys
from urllib.parse import urlparse

CHECKS = [
    (
        "PostgreSQL",
        os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange"),
        5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    (
        "Redis",
        os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        6379,
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no',
    ),
]


def main() -> int:
    failed = False
    for name, url, default_port, how in CHECKS:
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
        try:
            with socket.create_connection((host, port), timeout=3):
                pass
        except OSError as exc:
            failed = True
            print(f"{name} is not reachable at {host}:{port} ({exc}).", file=sys.stderr)
            print(f"  Start it, e.g.: {how}", file=sys.stderr)
            print(
                f"  or point the tests elsewhere with TEST_{'DATABASE' if name == 'PostgreSQL' else 'REDIS'}_URL.",
                file=sys.stderr,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
