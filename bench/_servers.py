"""Real processes for benchmarks: a scratch PostgreSQL database, gunicorn, a Celery worker.

Each helper works on resources the benchmark names (its own database, its own
Redis database) and every process started here is stopped by the same
object, by its process id, also when the benchmark fails half-way.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class BenchError(RuntimeError):
    """The benchmark could not run (a server did not start, seeding failed)."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_recreate(url: str, *, template: str = "") -> None:
    """Drop (if present) and create the PostgreSQL database that ``url`` names, empty or as a copy of ``template``.

    Only a plain lower-case name is accepted, so a typo can never point this
    at an unexpected database; connections left open by an earlier run are
    terminated (``WITH (FORCE)``, PostgreSQL 13+).
    """
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    for checked in (name, template or name):
        if not _DB_NAME.match(checked) or checked in {"postgres", "template0", "template1"}:
            raise BenchError(f"refusing to recreate database {name!r} from {template!r}")
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(create)


def database_migrated(url: str, *, env: dict[str, str], timeout: float = 600) -> None:
    """A fresh database at ``url`` with every migration applied: recreated, then ``manage.py migrate``.

    When ``BENCH_MIGRATED_TEMPLATE`` names a database already migrated by
    this code (the test suite's smoke tests migrate one per session), it is
    copied instead (``CREATE DATABASE ... TEMPLATE``): about a second where
    a fresh migrate takes some 25.
    """
    template = os.environ.get("BENCH_MIGRATED_TEMPLATE", "")
    if template:
        database_recreate(url, template=template)
        return
    database_recreate(url)
    run_checked([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, timeout=timeout)


def redis_flush(url: str) -> None:
    """Empty the one Redis database ``url`` names (never FLUSHALL)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def run_checked(argv: list[str], *, env: dict[str, str], timeout: float) -> str:
    """Run a command to completion in the project root; raise BenchError with its output if it fails."""
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


class ServerProcess:
    """A long-running child process with its output in a log file.

    It runs in a session of its own, so stopping it also reaches the children
    it forked (gunicorn's and Celery's worker processes) through its process
    group, and nothing else.
    """

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def wait_ready(self, predicate: Callable[[], bool], *, timeout: float) -> None:
        def ready() -> bool:
            self.check_alive()
            return predicate()

        try:
            wait_until(ready, timeout=timeout, interval=0.2, what=f"{self.name} to start")
        except BenchError as exc:
            raise BenchError(f"{exc}\n{self.log_tail()}") from None

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful: the worker finishes its task); SIGKILL the process group if it lingers."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    # Not reaped yet, so the group id (the child's pid, by start_new_session) is still ours.
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=timeout)
        finally:
            self._log.close()


def gunicorn(
    *,
    port: int,
    env: dict[str, str],
    log_path: Path,
    workers: int = 2,
    threads: int = 16,
    name: str = "gunicorn",
    extra_args: tuple[str, ...] = (),
) -> ServerProcess:
    """gunicorn (gthread) serving the project on loopback; ``extra_args`` are added to its command line."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "exchange.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--backlog",
        "2048",
        "--keep-alive",
        "10",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        *extra_args,
    ]
    return ServerProcess(name, argv, env=env, log_path=log_path)


def celery_worker_argv(*, queues: str, concurrency: int, name: str) -> list[str]:
    """A real prefork Celery worker on ``queues`` (the benchmarks' and the system tests' worker)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "exchange",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "info",
        "-n",
        f"{name}@%h",
    ]


def celery_worker(
    *, env: dict[str, str], log_path: Path, queues: str, concurrency: int, name: str, nice: int = 0
) -> ServerProcess:
    """A Celery worker process; ``nice`` > 0 runs it at a lower CPU priority than the web server (``nice -n``)."""
    argv = celery_worker_argv(queues=queues, concurrency=concurrency, name=name)
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    return ServerProcess("celery worker", argv, env=env, log_path=log_path)


def celery_ready(worker: ServerProcess) -> bool:
    return " ready." in worker.log()
