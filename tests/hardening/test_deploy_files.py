"""The deployment files (deploy/) agree with the code: every queue has a worker, one beat, real modules (issue 9)."""

import importlib
import re
import shlex
import shutil
import subprocess

import pytest
from django.conf import settings

from tests.hardening.conftest import BASE_DIR

DEPLOY = BASE_DIR / "deploy"
QUEUES = {"delivery", "settlement", "default", "notifications"}


def routed_queues() -> set[str]:
    return {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {settings.CELERY_TASK_DEFAULT_QUEUE}


def worker_queues(argv: list[str]) -> list[str]:
    return argv[argv.index("-Q") + 1].split(",")


def assert_celery_app_and_wsgi_exist(argv: list[str]) -> None:
    if argv[0].endswith("gunicorn"):
        module, attribute = argv[1].split(":")
        assert attribute in vars(importlib.import_module(module))
    else:
        assert argv[0].endswith("celery") and argv[1:3] == ["-A", "exchange"]
        assert importlib.import_module("exchange.celery").app.main == "exchange"


def test_the_settings_route_to_exactly_the_four_queues():
    assert routed_queues() == QUEUES


def test_procfile():
    processes = dict(line.split(": ", 1) for line in (DEPLOY / "Procfile").read_text().splitlines() if line.strip())
    assert set(processes) == {
        "web",
        "worker-delivery",
        "worker-settlement",
        "worker-default",
        "worker-notifications",
        "beat",
    }
    for name, command in processes.items():
        argv = shlex.split(command)
        assert_celery_app_and_wsgi_exist(argv)
        if name.startswith("worker-"):
            assert argv[3] == "worker"
            assert worker_queues(argv) == [name.removeprefix("worker-")]
    assert shlex.split(processes["web"])[1] == "exchange.wsgi:application"
    assert shlex.split(processes["beat"])[3:4] == ["beat"]
    assert sum(" beat" in command for command in processes.values()) == 1


def test_systemd_units():
    units = {path.name: path.read_text() for path in (DEPLOY / "systemd").glob("*.service")}
    assert set(units) == {"exchange-web.service", "exchange-worker@.service", "exchange-beat.service"}

    def exec_start(text: str) -> list[str]:
        joined = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.M | re.S).group(1).replace("\\\n", " ")
        return shlex.split(joined)

    web = exec_start(units["exchange-web.service"])
    assert web[0] == "/srv/exchange/.venv/bin/gunicorn" and web[1] == "exchange.wsgi:application"
    assert web[web.index("--bind") + 1] == "127.0.0.1:8000"
    worker = exec_start(units["exchange-worker@.service"])
    assert worker[:4] == ["/srv/exchange/.venv/bin/celery", "-A", "exchange", "worker"]
    assert worker_queues(worker) == ["%i"]
    beat = exec_start(units["exchange-beat.service"])
    assert beat == ["/srv/exchange/.venv/bin/celery", "-A", "exchange", "beat", "--loglevel", "INFO"]
    assert "EXACTLY ONE beat" in units["exchange-beat.service"]
    for argv in (web, worker, beat):
        assert_celery_app_and_wsgi_exist([argv[0].rsplit("/", 1)[1], *argv[1:]])
    for text in units.values():
        assert "EnvironmentFile=/etc/exchange/env" in text
        assert "SECRET" not in text.upper().replace("SECRETS", "")


def test_compose_file():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    assert services["minio"]["image"].startswith("minio/minio")
    workers = {name: service for name, service in services.items() if name.startswith("worker-")}
    assert {queue for service in workers.values() for queue in worker_queues(service["command"])} == QUEUES
    assert {name.removeprefix("worker-") for name in workers} == QUEUES
    beats = [name for name, service in services.items() if "beat" in service.get("command", [])]
    assert beats == ["beat"]
    assert services["beat"]["deploy"] == {"replicas": 1}
    for name in ("web", *workers, "beat"):
        service = services[name]
        assert service["environment"]["DJANGO_ENV"] == "production"
        assert service["environment"]["DJANGO_SECRET_KEY_FILE"] == "/run/secrets/django_secret_key"
        assert_celery_app_and_wsgi_exist(service["command"])
    assert "http://127.0.0.1:8000/healthz" in services["web"]["healthcheck"]["test"]
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "python", "-m", "exchange.health"]
    assert services["release"]["command"][-1] == (
        "python manage.py migrate --noinput && python manage.py collectstatic --noinput"
    )
    assert services["nginx"]["network_mode"] == "service:web"
    assert "./nginx/exchange.conf:/etc/nginx/conf.d/default.conf:ro" in services["nginx"]["volumes"]
    assert set(compose["secrets"]) == {"django_secret_key", "exchange_signing_key.pem", "minio_password"}
    # Every value that is secret comes from a file, none is written into the file itself.
    environment = services["web"]["environment"]
    assert not {"DJANGO_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "STRIPE_SECRET_KEY"} & set(environment)


def test_env_example_names_what_production_needs_and_no_secrets():
    names = dict(
        line.split("=", 1)
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for required in ("DJANGO_ENV", "DJANGO_SECRET_KEY_FILE", "DJANGO_ALLOWED_HOSTS", "SITE_URL", "DATABASE_URL"):
        assert required in names
    assert names["DJANGO_ENV"] == "production"
    assert names["EXCHANGE_SIGNING_KEY_FILE"] == "/etc/exchange/signing_key.pem"
    assert names["DOWNLOAD_XACCEL_PREFIX"] == settings.DOWNLOAD_XACCEL_PREFIX
    assert not {"DJANGO_SECRET_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "AWS_SECRET_ACCESS_KEY"} & set(names)


def test_nginx_has_the_internal_location_xaccel_points_into():
    conf = (DEPLOY / "nginx" / "exchange.conf").read_text()
    block = re.search(r"location " + re.escape(settings.DOWNLOAD_XACCEL_PREFIX) + r" \{(.*?)\n    \}", conf, re.S)
    assert block is not None
    assert "internal;" in block.group(1)
    assert "alias /srv/exchange/var/private/;" in block.group(1)
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in conf
    assert settings.SECURE_REDIRECT_EXEMPT == [r"^healthz$"]
    assert "location = /healthz {" in conf


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_site(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "exchange.example.org")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    site = (DEPLOY / "nginx" / "exchange.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/exchange.example.org/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/letsencrypt/live/exchange.example.org/privkey.pem", str(tmp_path / "key.pem"))
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10).stderr
    if tuple(int(part) for part in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version).groups()) < (1, 25, 1):
        # The site is written for nginx >= 1.25.1 (`http2 on;`); older ones spell it on the listen line.
        site = site.replace("    http2 on;\n", "").replace(" 443 ssl;", " 443 ssl http2;")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
