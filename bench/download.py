"""A purchased 1 GiB file through its signed link: ``make bench-download`` (DESIGN.md §7).

Three ways to serve the same file, on loopback, in the same run:

* ``django``: gunicorn (one gthread worker) streams it itself (DOWNLOAD_SERVING=django; gunicorn sends
  a local file with sendfile(2) through ``wsgi.file_wrapper``);
* ``xaccel``: nginx in front of a second gunicorn (DOWNLOAD_SERVING=xaccel): Django checks and logs,
  nginx sends the bytes from its ``internal`` location;
* ``nginx``: the baseline, nginx serving the same file directly from a plain location;
* ``django_read`` (for comparison): a third gunicorn started with ``--no-sendfile``, so the bytes go
  through Python in DOWNLOAD_CHUNK-sized reads, as under a WSGI server without sendfile.

nginx is Debian's ``/usr/sbin/nginx``, started here with a generated configuration in a temporary
directory (``-p``/``-c``, ``daemon off``, its own pid and error log) and one worker, like gunicorn.
The client is ``curl -o /dev/null`` (C, one read loop into /dev/null; it shares the two cores with
the server, so it is as cheap a client as there is). The three are measured in interleaved rounds
(``--rounds``, 3 by default) and the medians reported. While Django streams, the gunicorn worker's
resident memory (VmRSS from /proc) is sampled, for both Django servers; ``rss_growth_mb`` is the larger
peak less the value before the first download (after a HEAD warmed the worker up).

Goals (the Delivery issue): xaccel >= 0.9x nginx, django >= 0.5x nginx, RSS growth <= 20 MB.

    python -m bench.download             # 1 GiB, 3 rounds
    python -m bench.download --smoke     # 4 MiB, 1 round, for the test suite

The random file is made once and kept in var/bench/download/. It uses its own PostgreSQL database
(dropped and created here) and Redis database (flushed here); override them with
BENCH_DOWNLOAD_DATABASE_URL and BENCH_DOWNLOAD_REDIS_URL. The last line on stdout is the JSON result;
progress goes to stderr.
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench._servers import (
    ROOT,
    BenchError,
    ServerProcess,
    database_migrated,
    free_port,
    gunicorn,
    redis_flush,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/exchange_bench_download"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
NGINX = "/usr/sbin/nginx"
FULL_SIZE, SMOKE_SIZE = 1024**3, 4 * 1024**2
CACHE_DIR = ROOT / "var" / "bench" / "download"
STORED_NAME = "datasets/bench/download.csv"
MB = 1_000_000  # throughput in MB/s (10^6 bytes); sizes in MiB


def log(message: str) -> None:
    print(f"[bench-download] {message}", file=sys.stderr, flush=True)


# --- the file ----------------------------------------------------------------------------------------------------


def random_file(size: int) -> tuple[Path, str]:
    """A file of ``size`` random bytes and its sha256, made once and kept under var/bench/download/.

    Random, so nothing on the way can compress it; world-readable, because nginx's worker runs as an
    unprivileged user when the benchmark runs as root.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"random-{size}.bin"
    sidecar = path.with_suffix(".sha256")
    if not (path.exists() and path.stat().st_size == size and sidecar.exists()):
        log(f"writing {size / 1024**2:.0f} MiB of random bytes to {path} (once)")
        digest = hashlib.sha256()
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as out:
            left = size
            while left:
                block = os.urandom(min(left, 8 * 1024 * 1024))
                digest.update(block)
                out.write(block)
                left -= len(block)
        partial.rename(path)
        sidecar.write_text(digest.hexdigest())
    path.chmod(0o644)
    return path, sidecar.read_text().strip()


# --- the environment shared by the bench and the servers -----------------------------------------------------------


def bench_environment(*, database_url: str, redis_url: str, scratch: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("STRIPE_", "CELERY_", "DOWNLOAD_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "exchange.settings",
            "DJANGO_ENV": "development",
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),  # one key: links made here are valid there
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_TASK_ALWAYS_EAGER": "1",  # nothing is queued while serving; seeding runs tasks inline
            "PAYMENT_GATEWAY": "sandbox",
            "EXCHANGE_VAR_DIR": str(scratch / "var"),
            "PRIVATE_STORAGE_ROOT": str(scratch / "private"),
            "DOWNLOAD_LINK_TTL_SECONDS": "3600",
            "LOG_LEVEL": "WARNING",
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def django_setup(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()


def seed(*, cached: Path, size: int, sha256: str, private: Path) -> dict:
    """A published listing whose file is the random one, bought and paid by a buyer (sandbox).

    The listing is made by the test suite's factory through the real services; its small uploaded file
    is then swapped for the big one (hard-linked into the private storage) so the download serves it.
    Returns the buyer's session cookie and a function-free description of the delivery.
    """
    from django.test import Client

    from exchange.models import Delivery, Order
    from listings.models import DataFile
    from tests.exchange.helpers import approve_in_sandbox, buy
    from tests.factories import UserFactory, make_listing, make_merchant

    seller = UserFactory(email="seller@bench.invalid")
    buyer = UserFactory(email="buyer@bench.invalid")
    reviewer = UserFactory(email="reviewer@bench.invalid", is_staff=True)
    listing = make_listing(
        merchant=make_merchant(seller, name="Bench Data"), owner=seller, reviewer=reviewer, title="Bench download"
    )
    target = private / STORED_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(cached, target)
    except OSError:  # another filesystem: a copy, made once per run
        shutil.copyfile(cached, target)
    target.chmod(0o644)
    DataFile.objects.filter(version__listing=listing).update(
        file=STORED_NAME, size=size, sha256=sha256, original_name="bench-download.csv"
    )

    client = Client()
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get(buyer=buyer)
    approve_in_sandbox(client, order.checkout_url)
    delivery = Delivery.objects.get(entitlement__order=order)
    if delivery.status != "ready":
        raise BenchError(f"the bench delivery is {delivery.status}, not ready")
    return {"session": client.cookies["sessionid"].value, "delivery_pk": delivery.pk, "buyer_pk": buyer.pk}


def fresh_link(seeded: dict) -> str:
    from accounts.models import User
    from exchange.models import Delivery
    from exchange.services.downloads import download_link_make

    delivery = Delivery.objects.get(pk=seeded["delivery_pk"])
    return download_link_make(
        delivery=delivery, file=delivery.version.files.get(), user=User.objects.get(pk=seeded["buyer_pk"])
    )


# --- servers -------------------------------------------------------------------------------------------------------


def gunicorn_server(
    *, name: str, port: int, env: dict[str, str], log_path: Path, sendfile: bool = True
) -> ServerProcess:
    """One gthread worker (so its memory can be watched), as many threads as a small deployment.

    ``sendfile=False`` makes gunicorn iterate the response (Django's FileResponse reading
    DOWNLOAD_CHUNK-sized blocks) instead of handing the descriptor to sendfile(2).
    """
    extra = ("--timeout", "120", *(() if sendfile else ("--no-sendfile",)))
    return gunicorn(port=port, env=env, log_path=log_path, workers=1, threads=4, name=name, extra_args=extra)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    sendfile on;
    tcp_nopush on;
    types {{ }}
    default_type application/octet-stream;
    upstream exchange_app {{
        server 127.0.0.1:{app_port};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        # The baseline: the same file, straight from disk.
        location /direct/ {{
            alias {root}/;
        }}
        # What deploy/nginx/exchange.conf documents.
        location /_protected/ {{
            internal;
            alias {root}/;
            etag off;
            add_header ETag $upstream_http_etag;
            add_header X-Content-SHA256 $upstream_http_x_content_sha256;
            add_header Repr-Digest $upstream_http_repr_digest;
            add_header X-Content-Type-Options nosniff;
        }}
        location / {{
            proxy_pass http://exchange_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def nginx_server(*, port: int, app_port: int, root: Path, prefix: Path) -> ServerProcess:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, app_port=app_port, root=root))
    argv = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return ServerProcess("nginx", argv, env={"PATH": "/usr/sbin:/usr/bin:/bin"}, log_path=prefix / "stdout.log")


def worker_pid(master_pid: int) -> int:
    """The single gunicorn worker: the master's child."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == master_pid:
                return int(entry.name)
    raise BenchError(f"gunicorn master {master_pid} has no worker")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


class RssSampler(threading.Thread):
    """The peak resident memory of a process, sampled every 20 ms until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kib = pid, rss_kib(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_kib


# --- the client ----------------------------------------------------------------------------------------------------


def curl(url: str, *, session: str | None, method: str = "GET", timeout: float) -> dict:
    """Fetch ``url`` into /dev/null; status, bytes and seconds as curl measured them."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", "-X", method]
    if method == "HEAD":
        argv[-2:] = ["-I"]
    if session:
        argv += ["-H", f"Cookie: sessionid={session}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"curl {url} failed: {done.stderr.strip()}")
    status, size, seconds = done.stdout.split()
    return {"status": int(status), "bytes": int(size), "seconds": float(seconds)}


def fetch_sha256(url: str, *, session: str | None) -> tuple[str, dict[str, str]]:
    """The sha256 of what ``url`` serves and its headers (read in Python; only used on small files)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", parts.path, headers={"Cookie": f"sessionid={session}"} if session else {})
        response = conn.getresponse()
        digest = hashlib.sha256()
        while block := response.read(1024 * 1024):
            digest.update(block)
        if response.status != 200:
            raise BenchError(f"{url} answered {response.status}")
        return digest.hexdigest(), {name.lower(): value for name, value in response.getheaders()}
    finally:
        conn.close()


def fetch_range(url: str, *, session: str, first: int, last: int, if_range: str) -> tuple[int, bytes]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        headers = {"Cookie": f"sessionid={session}", "Range": f"bytes={first}-{last}", "If-Range": if_range}
        conn.request("GET", parts.path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- the run ------------------------------------------------------------------------------------------------------


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run(*, size: int, rounds: int, database_url: str, redis_url: str, verify: bool) -> dict:
    if not Path(NGINX).exists():
        raise BenchError(f"{NGINX} is not installed (Debian package nginx-light or nginx)")
    cached, sha256 = random_file(size)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Next to the cached file (same filesystem: hard links) and traversable by nginx's unprivileged worker.
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE_DIR))
    scratch.chmod(0o755)
    servers: list[ServerProcess] = []
    try:
        private = scratch / "private"
        private.mkdir(mode=0o755)
        env = bench_environment(database_url=database_url, redis_url=redis_url, scratch=scratch)
        log(f"recreating {database_url.rsplit('/', 1)[-1]}, flushing {redis_url}, migrating")
        database_migrated(database_url, env=env, timeout=300)
        redis_flush(redis_url)
        django_setup(env)
        seeded = seed(cached=cached, size=size, sha256=sha256, private=private)
        for path in (private, *private.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)

        django_port, read_port, xaccel_app_port, nginx_port = free_port(), free_port(), free_port(), free_port()
        django_web = gunicorn_server(
            name="gunicorn (django)",
            port=django_port,
            env={**env, "DOWNLOAD_SERVING": "django"},
            log_path=scratch / "gunicorn-django.log",
        )
        servers.append(django_web)
        read_web = gunicorn_server(
            name="gunicorn (django, no sendfile)",
            port=read_port,
            env={**env, "DOWNLOAD_SERVING": "django"},
            log_path=scratch / "gunicorn-read.log",
            sendfile=False,
        )
        servers.append(read_web)
        xaccel_web = gunicorn_server(
            name="gunicorn (xaccel)",
            port=xaccel_app_port,
            env={**env, "DOWNLOAD_SERVING": "xaccel"},
            log_path=scratch / "gunicorn-xaccel.log",
        )
        servers.append(xaccel_web)
        nginx = nginx_server(port=nginx_port, app_port=xaccel_app_port, root=private, prefix=scratch / "nginx")
        servers.append(nginx)
        link = fresh_link(seeded)
        session = seeded["session"]
        urls = {
            "nginx": f"http://127.0.0.1:{nginx_port}/direct/{STORED_NAME}",
            "xaccel": f"http://127.0.0.1:{nginx_port}{link}",
            "django": f"http://127.0.0.1:{django_port}{link}",
            "django_read": f"http://127.0.0.1:{read_port}{link}",
        }

        def answers(url: str) -> bool:
            try:
                return curl(url, session=session, method="HEAD", timeout=5)["status"] == 200
            except (BenchError, subprocess.TimeoutExpired):
                return False

        ready = ((django_web, "django"), (read_web, "django_read"), (xaccel_web, "xaccel"), (nginx, "nginx"))
        for server, url in ((server, urls[name]) for server, name in ready):
            server.wait_ready(lambda url=url: answers(url), timeout=60)
        if verify:  # the bytes each way serves are the file's (smoke size only: hashing 1 GiB in Python is slow)
            for name, url in urls.items():
                got, headers = fetch_sha256(url, session=None if name == "nginx" else session)
                if got != sha256:
                    raise BenchError(f"{name} served bytes with sha256 {got}, expected {sha256}")
                # nginx must pass the app's headers on with the file it serves for X-Accel-Redirect.
                if name != "nginx" and (
                    headers.get("x-content-sha256") != sha256
                    or headers.get("etag") != f'"sha256:{sha256}"'
                    or headers.get("content-disposition") != 'attachment; filename="bench-download.csv"'
                ):
                    raise BenchError(f"{name} lost the download headers: {headers}")
                if name != "nginx":  # a resume with If-Range, answered by Django or by nginx
                    status, body = fetch_range(url, session=session, first=10, last=19, if_range=headers["etag"])
                    with open(cached, "rb") as handle:
                        handle.seek(10)
                        expected = handle.read(10)
                    if (status, body) != (206, expected):
                        raise BenchError(f"{name} answered a ranged request with {status} and {len(body)} bytes")
                    # A stale copy (another ETag): the whole file, as Django logs it (a full download).
                    stale = '"sha256:' + "0" * 64 + '"'
                    status, body = fetch_range(url, session=session, first=10, last=19, if_range=stale)
                    if (status, len(body)) != (200, size):
                        raise BenchError(f"{name} answered a stale If-Range with {status} and {len(body)} bytes")

        workers = {"django": worker_pid(django_web.process.pid), "django_read": worker_pid(read_web.process.pid)}
        rss_before = {name: rss_kib(pid) for name, pid in workers.items()}
        samplers = {name: RssSampler(pid) for name, pid in workers.items()}
        for sampler in samplers.values():
            sampler.start()
        timings: dict[str, list[float]] = {name: [] for name in urls}
        timeout = max(60.0, size / (20 * MB))
        try:
            for number in range(1, rounds + 1):
                for name, url in urls.items():
                    result = curl(url, session=None if name == "nginx" else session, timeout=timeout)
                    if result["status"] != 200 or result["bytes"] != size:
                        raise BenchError(f"{name}: status {result['status']}, {result['bytes']} of {size} bytes")
                    timings[name].append(size / result["seconds"] / MB)
                log(f"round {number}: " + ", ".join(f"{name} {timings[name][-1]:.0f} MB/s" for name in urls))
        finally:
            rss_peak = {name: sampler.stop() for name, sampler in samplers.items()}
        rss_after = {name: rss_kib(pid) for name, pid in workers.items()}
        for server in servers:
            server.check_alive()
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    from exchange.models import DownloadLog

    logged = {
        mode: DownloadLog.objects.filter(mode=mode, completed=True, bytes_sent=size).count()
        for mode in ("django", "xaccel")
    }
    medians = {name: statistics.median(values) for name, values in timings.items()}
    ratios = {
        "xaccel_over_nginx": round(medians["xaccel"] / medians["nginx"], 3),
        "django_over_nginx": round(medians["django"] / medians["nginx"], 3),
    }
    rss_peak = {name: max(rss_peak[name], rss_after[name]) for name in workers}  # the last sample may precede the end
    growth = {name: round(max(0, rss_peak[name] - rss_before[name]) / 1024, 1) for name in workers}
    growth_mb = max(growth.values())  # the goal holds for Django streaming either way
    return {
        "bench": "download",
        "size_mb": round(size / 1024**2, 1),
        "rounds": rounds,
        "nginx_mb_s": round(medians["nginx"], 1),
        "xaccel_mb_s": round(medians["xaccel"], 1),
        "django_mb_s": round(medians["django"], 1),
        "django_read_mb_s": round(medians["django_read"], 1),
        "mb_s_rounds": {name: [round(v, 1) for v in values] for name, values in timings.items()},
        "rss_before_mb": {name: round(kib / 1024, 1) for name, kib in rss_before.items()},
        "rss_peak_mb": {name: round(kib / 1024, 1) for name, kib in rss_peak.items()},
        "rss_after_mb": {name: round(kib / 1024, 1) for name, kib in rss_after.items()},
        "rss_growth_mb": growth_mb,
        "rss_growth_by_server_mb": growth,
        "downloads_logged_complete": logged,
        "verified_sha256": verify,
        "server": (
            "gunicorn gthread 1 worker x 4 threads (django: sendfile; django_read: --no-sendfile, 1 MiB reads); "
            "nginx 1 worker; client curl -o /dev/null"
        ),
        "goals_met": {
            "xaccel_ge_0.9x_nginx": ratios["xaccel_over_nginx"] >= 0.9,
            "django_ge_0.5x_nginx": ratios["django_over_nginx"] >= 0.5,
            "rss_growth_le_20mb": growth_mb <= 20,
        },
        "ratios": ratios,
        "other_ratios": {"django_read_over_nginx": round(medians["django_read"] / medians["nginx"], 3)},
        "machine": f"{cores()} cores",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=f"a {SMOKE_SIZE // 1024**2} MiB file, 1 round")
    parser.add_argument("--size-mb", type=int, default=None, help=f"file size in MiB (default {FULL_SIZE >> 20})")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    size = args.size_mb * 1024**2 if args.size_mb else (SMOKE_SIZE if args.smoke else FULL_SIZE)
    rounds = args.rounds or (1 if args.smoke else 3)
    if not 1024**2 <= size <= 16 * 1024**3 or not 1 <= rounds <= 20:
        parser.error("--size-mb must be 1..16384 and --rounds 1..20")
    started = time.monotonic()
    result = run(
        size=size,
        rounds=rounds,
        database_url=os.environ.get("BENCH_DOWNLOAD_DATABASE_URL", DEFAULT_DATABASE_URL),
        redis_url=os.environ.get("BENCH_DOWNLOAD_REDIS_URL", DEFAULT_REDIS_URL),
        verify=size <= 64 * 1024**2,
    )
    result["smoke"] = bool(args.smoke)
    log(f"done in {time.monotonic() - started:.0f}s")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"failed: {exc}")
        sys.exit(1)
