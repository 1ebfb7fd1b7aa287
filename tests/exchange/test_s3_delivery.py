"""Files in S3: the real upload and profiling write and read through django-storages, and a download is a
302 to a short-lived presigned URL. Against moto's real HTTP S3 server, started here on loopback."""

import hashlib
import socket
import time
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
import time_machine
from moto.server import ThreadedMotoServer

from exchange.choices import DeliveryStatus, OrderStatus
from exchange.models import Delivery, DownloadLog, Order
from exchange.services.downloads import download_link_make
from listings.choices import ProfileStatus
from tests.exchange.helpers import approve_in_sandbox, buy
from tests.factories import make_listing

pytestmark = pytest.mark.django_db

BUCKET = "exchange-private"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing-key", "aws_secret_access_key": "testing-secret"}
CONTENT = b"city,year,population\n" + b"".join(f"S3City{n:03d},2024,{2000 + n}\n".encode() for n in range(30))
SHA = hashlib.sha256(CONTENT).hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, settings):
    """A fresh private bucket, the default storage pointed at it and downloads served from it."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION, **CREDENTIALS)
    client.create_bucket(Bucket=BUCKET)
    settings.STORAGE_BACKEND = "s3"
    settings.DOWNLOAD_SERVING = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "default_acl": "private",
                "querystring_auth": False,
                "file_overwrite": False,
                "endpoint_url": s3_endpoint,
                "region_name": REGION,
                "signature_version": "s3v4",
                "access_key": CREDENTIALS["aws_access_key_id"],
                "secret_key": CREDENTIALS["aws_secret_access_key"],
            },
        },
    }
    yield client
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    for item in listed:
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def purchase(s3, client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks):
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, content=CONTENT)
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    delivery = Delivery.objects.get(entitlement__order=order)
    data_file = delivery.version.files.get()
    return order, delivery, data_file, download_link_make(delivery=delivery, file=data_file, user=buyer)


def test_upload_and_profiling_work_through_s3(s3, purchase):
    *_, data_file, _ = purchase
    stored = s3.get_object(Bucket=BUCKET, Key=data_file.file.name)
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == SHA == data_file.sha256
    assert (data_file.profile_status, data_file.row_count, data_file.size) == (ProfileStatus.DONE, 30, len(CONTENT))
    assert [c["name"] for c in data_file.columns] == ["city", "year", "population"]


def test_download_redirects_to_a_presigned_url_that_serves_the_exact_bytes(client, purchase, settings):
    order, delivery, _, link = purchase
    started = time.time()
    response = client.get(link)
    assert response.status_code == 302
    assert (response["X-Content-SHA256"], response["Cache-Control"]) == (SHA, "private, no-store")
    location = response["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == [str(settings.DOWNLOAD_PRESIGNED_TTL_SECONDS)] == ["60"]
    signed_at = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")) - time.timezone
    assert started - 2 <= signed_at <= time.time() + 1
    assert query["response-content-disposition"] == ['attachment; filename="data.csv"']
    assert query["response-content-type"] == ["text/csv"]

    fetched = requests.get(location, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == CONTENT and hashlib.sha256(fetched.content).hexdigest() == SHA
    assert fetched.headers["Content-Disposition"] == 'attachment; filename="data.csv"'
    assert fetched.headers["Content-Type"] == "text/csv"
    ranged = requests.get(location, headers={"Range": "bytes=0-9"}, timeout=10)
    assert (ranged.status_code, ranged.content) == (206, CONTENT[:10])

    log = DownloadLog.objects.get()
    assert (log.mode, log.bytes_sent, log.completed, log.range_start) == ("s3", len(CONTENT), True, None)
    delivery.refresh_from_db()
    order.refresh_from_db()
    assert (delivery.status, order.status) == (DeliveryStatus.CONFIRMED, OrderStatus.DELIVERED)


def test_the_object_is_private_without_a_signature(s3_endpoint, purchase):
    *_, data_file, _ = purchase
    plain = requests.get(f"{s3_endpoint}/{BUCKET}/{data_file.file.name}", timeout=10)
    assert plain.status_code == 403
    assert CONTENT not in plain.content


def test_the_presigned_lifetime_is_the_setting(client, purchase, settings):
    settings.DOWNLOAD_PRESIGNED_TTL_SECONDS = 5
    *_, link = purchase
    query = parse_qs(urlsplit(client.get(link)["Location"]).query)
    assert query["X-Amz-Expires"] == ["5"]


def test_refusals_never_redirect_to_s3(client, other_buyer, purchase, settings):
    order, delivery, _, link = purchase
    with time_machine.travel(time.time() + settings.DOWNLOAD_LINK_TTL_SECONDS + 1, tick=False):
        expired = client.get(link)
    client.force_login(other_buyer)
    foreign = client.get(link)
    for response in (expired, foreign):
        assert response.status_code == 403 and "Location" not in response
    assert DownloadLog.objects.count() == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.download_count, Order.objects.get(pk=order.pk).status) == (
        DeliveryStatus.READY,
        0,
        OrderStatus.PAID,
    )


def test_head_is_answered_by_the_exchange_without_a_redirect(client, purchase):
    _, delivery, _, link = purchase
    response = client.head(link)
    assert (response.status_code, response["Content-Length"], response["ETag"]) == (
        200,
        str(len(CONTENT)),
        f'"sha256:{SHA}"',
    )
    assert "Location" not in response
    assert DownloadLog.objects.count() == 0
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.READY
