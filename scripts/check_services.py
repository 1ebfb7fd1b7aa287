"""Fail fast (within seconds) when PostgreSQL or Redis is not reachable for the tests.

Also warn when other clients are already connected to the tests' Redis database: a Celery worker left
running by another run consumes the same queues and takes tasks the system tests wait for.
"""

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
        os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
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
    if not failed:
        warn_other_redis_clients(CHECKS[1][1])
    return 1 if failed else 0


def warn_other_redis_clients(url: str) -> None:
    try:
        import redis
    except ImportError:  # run outside the project's virtualenv: nothing more to check
        return
    client = redis.Redis.from_url(url, socket_timeout=3)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    try:
        me = str(client.client_id())
        others = [entry for entry in client.client_list() if int(entry["db"]) == db and entry["id"] != me]
    except redis.RedisError as exc:  # reachable but not answering as expected: the tests will say more
        print(f"Warning: could not list the Redis clients ({exc}).", file=sys.stderr)
        return
    if others:
        print(
            f"Warning: {len(others)} other client(s) already use Redis database {db}, the tests' broker:",
            file=sys.stderr,
        )
        for entry in others[:5]:
            print(f"  {entry['addr']} name={entry.get('name') or '-'} connected {entry['age']} s", file=sys.stderr)
        print("  A Celery worker left by another run takes the tests' tasks; stop it first.", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
