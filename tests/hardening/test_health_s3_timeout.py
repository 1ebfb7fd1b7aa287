"""The storage health check against S3 is bounded: 2-second timeouts and no retry, whatever botocore's defaults
(60 s to connect, 60 s per read, retries). Against moto's real HTTP S3 server and a loopback socket that accepts
connections and never answers."""

import socket
import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError
from moto.server import ThreadedMotoServer

from exchange import health
from exchange.settings import _s3_storage

pytestmark = pytest.mark.django_db

BUCKET = "exchange-health"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing-key", "aws_secret_access_key": "testing-secret"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_storage_settings(endpoint: str, client_config: Config | None = None) -> dict:
    options = {
        "bucket_name": BUCKET,
        "default_acl": "private",
        "querystring_auth": False,
        "file_overwrite": False,
        "endpoint_url": endpoint,
        "region_name": REGION,
        "signature_version": "s3v4",
        "access_key": CREDENTIALS["aws_access_key_id"],
        "secret_key": CREDENTIALS["aws_secret_access_key"],
    }
    if client_config is not None:
        options["client_config"] = client_config
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


@pytest.fixture
def silent_endpoint():
    """An S3 endpoint on loopback that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join(timeout=2)
    for conn in accepted:
        conn.close()
    server.close()


def test_storage_probe_fails_within_three_seconds_when_s3_never_answers(client, settings, silent_endpoint, caplog):
    endpoint, accepted = silent_endpoint
    # The storage as production configures it would wait up to 30 s per read and retry 3 times.
    slow = Config(signature_version="s3v4", connect_timeout=5, read_timeout=30, retries={"max_attempts": 3})
    settings.STORAGES = {**settings.STORAGES, "default": s3_storage_settings(endpoint, slow)}
    from django.core.files.storage import storages

    # Building the boto3 client (loading its service model) is a one-off cost per process, not the probe's wait.
    assert health.probe_storage(storages["default"]).connection is not None
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        health.check_storage()
    elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed
    assert len(accepted) == 1  # one attempt, no retry
    # And /healthz answers 503 in about the same time, naming only the exception's class.
    started = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - started < 3.5
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == "failed: ReadTimeoutError"
    assert endpoint.split("//")[1] not in response.content.decode()


def test_the_probe_client_has_short_timeouts_and_the_storage_keeps_its_own(settings):
    from django.core.files.storage import storages

    slow = Config(signature_version="s3v4", connect_timeout=5, read_timeout=30, retries={"max_attempts": 3})
    settings.STORAGES = {**settings.STORAGES, "default": s3_storage_settings("http://127.0.0.1:9", slow)}
    storage = storages["default"]
    probe = health.probe_storage(storage)
    assert probe is not storage
    assert health.probe_storage(storage) is probe  # built once per storage
    config = probe.client_config
    assert (config.connect_timeout, config.read_timeout) == (2, 2)
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert config.signature_version == "s3v4"  # kept from the storage's own config
    assert (probe.bucket_name, probe.endpoint_url) == (storage.bucket_name, storage.endpoint_url)
    assert (storage.client_config.connect_timeout, storage.client_config.read_timeout) == (5, 30)


def test_the_probe_passes_against_a_real_s3_server(client, settings):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)
        s3.create_bucket(Bucket=BUCKET)
        settings.STORAGES = {**settings.STORAGES, "default": s3_storage_settings(endpoint)}
        response = client.get("/healthz")
        assert response.status_code == 200, response.content
        assert response.json()["checks"]["storage"] == "ok"
        assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0  # the probe object was deleted
    finally:
        server.stop()


def test_local_storage_is_probed_as_it_is(settings):
    from django.core.files.storage import storages

    assert health.probe_storage(storages["default"]) is storages["default"]


def test_s3_storage_settings_bound_every_request(monkeypatch):
    """STORAGE_BACKEND=s3: the storage's client waits S3_CONNECT_TIMEOUT / S3_READ_TIMEOUT (5 s / 30 s by
    default, not botocore's 60 s) and retries S3_MAX_RETRIES times; the signature version survives client_config."""
    monkeypatch.setenv("AWS_STORAGE_BUCKET_NAME", "bucket")
    for name in ("S3_CONNECT_TIMEOUT", "S3_READ_TIMEOUT", "S3_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    config = _s3_storage()["OPTIONS"]["client_config"]
    assert (config.connect_timeout, config.read_timeout, config.signature_version) == (5, 30, "s3v4")
    assert config.retries == {"max_attempts": 3, "mode": "standard"}

    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("S3_READ_TIMEOUT", "120")
    monkeypatch.setenv("S3_MAX_RETRIES", "0")
    config = _s3_storage()["OPTIONS"]["client_config"]
    assert (config.connect_timeout, config.read_timeout, config.retries["max_attempts"]) == (3, 120, 0)

    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("S3_READ_TIMEOUT", "0")
    with pytest.raises(ImproperlyConfigured, match="S3_READ_TIMEOUT must be >= 1, got 0"):
        _s3_storage()
