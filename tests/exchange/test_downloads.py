"""Signed downloads: every refusal changes nothing; ranges, HEAD and headers; the X-Accel-Redirect mode."""

import base64
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import time_machine
from django.core.files.storage import default_storage
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import RequestFactory
from django.urls import resolve, reverse

from exchange.choices import DeliveryStatus, EntitlementStatus, OrderStatus
from exchange.models import Delivery, DownloadLog, Entitlement, Order
from exchange.services.downloads import (
    UnsafeStoragePath,
    download_link_make,
    download_log_finish,
    download_log_start,
    storage_local_path,
    storage_name_check,
)
from exchange.services.refunds import order_refund
from exchange.serving import ByteRange, RangeNotSatisfiable, range_parse
from listings.choices import VersionAccess
from listings.models import DataFile
from listings.profiling import datafile_profile_run
from listings.services import version_publish, version_upload
from tests.exchange.helpers import approve_in_sandbox, buy, read_stream, rows_being_referenced
from tests.factories import csv_upload, make_listing

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
# Long enough for several chunks and interesting ranges; a valid CSV so the real upload accepts it.
CONTENT = b"city,year,population\n" + b"".join(f"City{n:03d},2024,{1000 + n}\n".encode() for n in range(40))
SIZE = len(CONTENT)
SHA = hashlib.sha256(CONTENT).hexdigest()
ETAG = f'"sha256:{SHA}"'

_OUR_HEADERS = {
    "Content-Type",
    "Content-Length",
    "Content-Disposition",
    "X-Content-SHA256",
    "ETag",
    "Accept-Ranges",
    "Repr-Digest",
    "Digest",
    "Cache-Control",
    "X-Content-Type-Options",
}


@pytest.fixture
def listing(merchant, merchant_user, staff):
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, content=CONTENT)


@pytest.fixture
def purchase(client, buyer, listing, django_capture_on_commit_callbacks):
    """The buyer's paid order for ``listing``; the buyer is logged in. Returns (order, delivery, file, link)."""
    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    delivery = Delivery.objects.get(entitlement__order=order)
    data_file = delivery.version.files.get()
    assert (order.status, delivery.status) == (OrderStatus.PAID, DeliveryStatus.READY)
    return order, delivery, data_file, download_link_make(delivery=delivery, file=data_file, user=buyer)


def _unchanged(order, delivery):
    """Nothing was logged as downloaded, the delivery is not confirmed and the order is where it was."""
    status = Order.objects.get(pk=order.pk).status
    assert DownloadLog.objects.filter(completed=True).count() == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.download_count, delivery.confirmed_at) == (DeliveryStatus.READY, 0, None)
    assert status == order.status


def _served_without_client(link, user):
    """The download view's response as a WSGI server gets it (no test-client wrapper around its stream)."""
    request = RequestFactory().get(link)
    request.user = user
    match = resolve(link)
    return match.func(request, *match.args, **match.kwargs)


def _server_closes(response):
    """Close a response half-way, as a WSGI server does when its client went away.

    Closing a response signals the end of the request, which would close the test's database
    connection; the test client keeps it open the same way.
    """
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def _confirmed(order, delivery):
    delivery.refresh_from_db()
    order.refresh_from_db()
    assert (delivery.status, delivery.download_count, delivery.confirmed_by) == (
        DeliveryStatus.CONFIRMED,
        1,
        "download",
    )
    assert order.status == OrderStatus.DELIVERED


# --- pure helpers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=10-19", ByteRange(10, 19)),
        ("bytes=90-", ByteRange(90, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-500", ByteRange(0, 99)),  # a suffix longer than the file is the whole file
        ("bytes=95-500", ByteRange(95, 99)),  # a last position past the end is clamped
        ("BYTES=0-0", ByteRange(0, 0)),
        (" bytes=1-2 ", ByteRange(1, 2)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("bytes=9-3", None),  # backwards
        ("bytes=abc", None),
        ("bytes=", None),
        ("bytes=-", None),
        ("items=0-5", None),
        ("bytes=1 - 2", None),
        ("bytes=" + "9" * 25 + "-", None),  # absurd numbers are malformed, not huge
    ],
)
def test_range_parse(header, expected):
    assert range_parse(header, 100) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100)])
def test_range_parse_unsatisfiable(header, size):
    with pytest.raises(RangeNotSatisfiable):
        range_parse(header, size)


def test_any_range_of_an_empty_file_is_unsatisfiable():
    for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        with pytest.raises(RangeNotSatisfiable):
            range_parse(header, 0)


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../secret.csv", "datasets/../../secret.csv", "datasets/./a.csv", "datasets//a.csv",
     "datasets/a.csv/", "datasets\\a.csv", "datasets/a\x00.csv", "datasets/a\n.csv", ".."],
)  # fmt: skip
def test_storage_names_that_are_not_plain_relative_paths_are_refused(name):
    with pytest.raises(UnsafeStoragePath):
        storage_name_check(name)


def test_a_symbolic_link_out_of_the_storage_is_refused(_private_storage, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"secret\n")
    (_private_storage / "datasets").mkdir()
    os.symlink(outside, _private_storage / "datasets" / "link.csv")
    with pytest.raises(UnsafeStoragePath, match="outside the storage root"):
        storage_local_path("datasets/link.csv")
    assert storage_local_path("datasets/plain.csv") == (_private_storage / "datasets" / "plain.csv").resolve()


# --- a full download ------------------------------------------------------------------------------------------


def test_full_download_sends_every_byte_with_its_headers_logs_and_confirms(client, buyer, purchase):
    order, delivery, data_file, link = purchase
    response = client.get(link, HTTP_USER_AGENT="curl/8.5", REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 200
    digest = base64.b64encode(bytes.fromhex(SHA)).decode()
    assert {name: response.get(name) for name in _OUR_HEADERS} == {
        "Content-Type": "text/csv",
        "Content-Length": str(SIZE),
        "Content-Disposition": 'attachment; filename="data.csv"',
        "X-Content-SHA256": SHA,
        "ETag": ETAG,
        "Accept-Ranges": "bytes",
        "Repr-Digest": f"sha-256=:{digest}:",
        "Digest": f"sha-256={digest}",
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    assert read_stream(response) == CONTENT
    log = DownloadLog.objects.get()
    assert (log.bytes_sent, log.completed, log.range_start, log.range_end, log.mode) == (
        SIZE,
        True,
        None,
        None,
        "django",
    )
    assert (log.user_id, log.ip_address, log.user_agent, log.file_id) == (
        buyer.pk,
        "203.0.113.7",
        "curl/8.5",
        data_file.pk,
    )
    assert log.finished_at is not None
    _confirmed(order, delivery)


def test_a_second_complete_download_counts_but_confirms_once(client, purchase):
    order, delivery, _, link = purchase
    assert read_stream(client.get(link)) == CONTENT
    first_confirmed_at = Delivery.objects.get(pk=delivery.pk).confirmed_at
    assert read_stream(client.get(link)) == CONTENT
    delivery.refresh_from_db()
    assert (delivery.download_count, delivery.confirmed_at) == (2, first_confirmed_at)
    assert list(DownloadLog.objects.values_list("completed", flat=True)) == [True, True]
    assert order.history.filter(to_status=OrderStatus.DELIVERED).count() == 1


def test_small_chunks_stream_the_same_bytes(client, purchase, monkeypatch):
    monkeypatch.setattr("exchange.views.DOWNLOAD_CHUNK", 7)
    order, delivery, _, link = purchase
    response = client.get(link)
    chunks = list(response.streaming_content)  # the test client closes the response at the end
    assert b"".join(chunks) == CONTENT
    assert {len(chunk) for chunk in chunks[:-1]} == {7}
    assert DownloadLog.objects.get().bytes_sent == SIZE
    _confirmed(order, delivery)


def test_a_broken_download_is_logged_partial_and_a_resume_completes_it(client, buyer, purchase, monkeypatch):
    monkeypatch.setattr("exchange.views.DOWNLOAD_CHUNK", 16)
    order, delivery, _, link = purchase
    response = _served_without_client(link, buyer)
    assert response.status_code == 200
    stream = response.streaming_content
    received = next(stream) + next(stream)  # the client takes two chunks and goes away
    _server_closes(response)
    # Only what the server had written before asking for more counts as sent: the first chunk.
    broken = DownloadLog.objects.get()
    assert (broken.bytes_sent, broken.completed, received) == (16, False, CONTENT[:32])
    _unchanged(order, delivery)

    resumed = client.get(link, HTTP_RANGE="bytes=16-")
    assert resumed.status_code == 206
    assert resumed["Content-Range"] == f"bytes 16-{SIZE - 1}/{SIZE}"
    assert read_stream(resumed) == CONTENT[16:]
    last = DownloadLog.objects.order_by("-pk").first()
    assert (last.range_start, last.range_end, last.bytes_sent, last.completed) == (16, SIZE - 1, SIZE - 16, True)
    _confirmed(order, delivery)


def test_a_tail_range_alone_does_not_complete_a_download(client, purchase):
    order, delivery, _, link = purchase
    response = client.get(link, HTTP_RANGE="bytes=-10")
    assert (response.status_code, read_stream(response)) == (206, CONTENT[-10:])
    assert DownloadLog.objects.get().completed is False
    _unchanged(order, delivery)


def test_download_log_finish_twice_changes_nothing(client, purchase):
    _, delivery, _, link = purchase
    read_stream(client.get(link))
    log = DownloadLog.objects.get()
    assert download_log_finish(log_pk=log.pk, bytes_sent=3) is True
    log.refresh_from_db()
    assert (log.bytes_sent, log.completed) == (SIZE, True)
    assert Delivery.objects.get(pk=delivery.pk).download_count == 1


@pytest.mark.django_db(transaction=True)
def test_finishing_a_download_does_not_wait_for_another_download_being_logged(client, purchase):
    """Regression (make bench-load, 160+ users): finishing one download locked its log, the file (through the
    join) and the delivery FOR UPDATE, while another download's log INSERT held KEY SHARE locks on the same delivery
    and file (its foreign keys) and waited for the other: PostgreSQL broke the deadlock with a 500.

    Now finishing takes FOR NO KEY UPDATE on the log and the delivery only, which KEY SHARE does not block.
    """
    _, delivery, data_file, _ = purchase
    log = download_log_start(delivery=delivery, file=data_file, user=delivery.entitlement.buyer, ip_address=None)
    # Another request, in the middle of inserting its DownloadLog row (its foreign keys' locks).
    with rows_being_referenced(("exchange_delivery", delivery.pk), ("listings_datafile", data_file.pk)):
        assert download_log_finish(log_pk=log.pk, bytes_sent=data_file.size) is True
    delivery.refresh_from_db()
    assert (delivery.status, delivery.download_count) == (DeliveryStatus.CONFIRMED, 1)


# --- ranges ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=20-59", 20, 59), ("bytes=-15", SIZE - 15, SIZE - 1), ("bytes=100-", 100, SIZE - 1)],
)
def test_a_single_range_gets_206_with_exactly_those_bytes(client, purchase, header, start, end):
    order, delivery, _, link = purchase
    response = client.get(link, HTTP_RANGE=header)
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert response["Content-Length"] == str(end - start + 1)
    assert response["ETag"] == ETAG and response["X-Content-SHA256"] == SHA
    assert "Digest" not in response  # it would describe the whole file, not this part
    assert read_stream(response) == CONTENT[start : end + 1]
    log = DownloadLog.objects.get()
    assert (log.range_start, log.range_end, log.bytes_sent, log.completed) == (start, end, end - start + 1, False)
    _unchanged(order, delivery)


def test_an_open_range_from_zero_is_a_complete_download(client, purchase):
    order, delivery, _, link = purchase
    response = client.get(link, HTTP_RANGE="bytes=0-")
    assert (response.status_code, read_stream(response)) == (206, CONTENT)
    assert DownloadLog.objects.get().completed is True
    _confirmed(order, delivery)


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
def test_an_unsatisfiable_range_gets_416_and_changes_nothing(client, purchase, header):
    order, delivery, _, link = purchase
    response = client.get(link, HTTP_RANGE=header)
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"
    assert response.content == b""
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-3", "bytes=abc", "lines=1-2"])
def test_several_or_malformed_ranges_get_the_whole_file(client, purchase, header):
    order, delivery, _, link = purchase
    response = client.get(link, HTTP_RANGE=header)
    assert response.status_code == 200 and "Content-Range" not in response
    assert read_stream(response) == CONTENT
    _confirmed(order, delivery)


def test_if_range_with_our_etag_honours_the_range(client, purchase):
    *_, link = purchase
    response = client.get(link, HTTP_RANGE="bytes=0-4", HTTP_IF_RANGE=ETAG)
    assert (response.status_code, read_stream(response)) == (206, CONTENT[:5])


@pytest.mark.parametrize("if_range", ['"sha256:' + "0" * 64 + '"', f"W/{ETAG}", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_if_range_that_does_not_match_gets_the_whole_file(client, purchase, if_range):
    order, delivery, _, link = purchase
    response = client.get(link, HTTP_RANGE="bytes=0-4", HTTP_IF_RANGE=if_range)
    assert response.status_code == 200
    assert read_stream(response) == CONTENT
    assert DownloadLog.objects.get().range_start is None
    _confirmed(order, delivery)


# --- HEAD -----------------------------------------------------------------------------------------------------


def test_head_sends_the_headers_only_and_logs_nothing(client, purchase):
    order, delivery, _, link = purchase
    response = client.head(link)
    assert response.status_code == 200
    assert response.content == b""
    assert (response["Content-Length"], response["ETag"], response["X-Content-SHA256"]) == (str(SIZE), ETAG, SHA)
    assert (response["Accept-Ranges"], response["Content-Disposition"]) == ("bytes", 'attachment; filename="data.csv"')
    ranged = client.head(link, HTTP_RANGE="bytes=5-9")
    assert (ranged.status_code, ranged["Content-Range"], ranged["Content-Length"]) == (206, f"bytes 5-9/{SIZE}", "5")
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


def test_other_methods_are_refused(client, purchase):
    order, delivery, _, link = purchase
    assert client.post(link).status_code == 405
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


# --- refusals -------------------------------------------------------------------------------------------------


def _refused(response, text: str) -> None:
    assert response.status_code == 403
    body = response.content.decode()
    assert text in body
    assert reverse("exchange:library") in body  # the way back to fresh links


def test_tampered_token_is_refused(client, purchase):
    order, delivery, _, link = purchase
    token = link.rstrip("/").rsplit("/", 1)[1]
    for bad in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), token.replace(":", ".", 1), "x" * 40):
        _refused(client.get(reverse("exchange:download", args=[bad])), "not valid")
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


def test_expired_link_is_refused(client, purchase, settings):
    order, delivery, _, link = purchase
    with time_machine.travel(time.time() + settings.DOWNLOAD_LINK_TTL_SECONDS + 1, tick=False):
        _refused(client.get(link), "expired")
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


def test_another_buyers_link_or_session_is_refused(client, buyer, other_buyer, purchase):
    order, delivery, data_file, link = purchase
    client.force_login(other_buyer)
    _refused(client.get(link), "not valid")  # the buyer's link, another buyer's session
    minted = download_link_make(delivery=delivery, file=data_file, user=other_buyer)
    _refused(client.get(minted), "not valid")  # a link for the other buyer to a delivery not theirs
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


def test_access_ends_with_a_full_refund(client, buyer, staff, purchase):
    order, delivery, _, link = purchase
    order_refund(order=order, amount=order.amount, reason="wrong product", actor=staff)
    order.refresh_from_db()
    assert (order.status, Entitlement.objects.get(order=order).status) == (
        OrderStatus.REFUNDED,
        EntitlementStatus.REVOKED,
    )
    status = Delivery.objects.get(pk=delivery.pk).status
    _refused(client.get(link), "has ended")
    assert DownloadLog.objects.count() == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.download_count, Order.objects.get(pk=order.pk).status) == (
        status,
        0,
        OrderStatus.REFUNDED,
    )


def test_a_version_the_licence_no_longer_covers_is_refused(client, buyer, merchant_user, listing, purchase):
    order, delivery, _, link = purchase
    Entitlement.objects.filter(pk=delivery.entitlement_id).update(version_access=VersionAccess.LATEST)
    newer = version_upload(listing=listing, actor=merchant_user, uploaded_file=csv_upload(CONTENT + b"Extra,2025,1\n"))
    for data_file in newer.files.all():
        datafile_profile_run(data_file_pk=data_file.pk)
    version_publish(version=newer, actor=merchant_user)
    _refused(client.get(link), "no longer covers version v1")
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


@pytest.mark.parametrize("status", [DeliveryStatus.PENDING, DeliveryStatus.FAILED, DeliveryStatus.WITHDRAWN])
def test_a_delivery_that_is_not_ready_is_refused(client, purchase, status):
    order, delivery, _, link = purchase
    Delivery.objects.filter(pk=delivery.pk).update(status=status)
    response = client.get(link)
    assert response.status_code == 403
    assert DownloadLog.objects.count() == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.download_count, Order.objects.get(pk=order.pk).status) == (
        status,
        0,
        order.status,
    )


def test_a_file_not_in_the_delivered_version_is_refused(client, buyer, merchant, merchant_user, staff, purchase):
    order, delivery, _, _ = purchase
    other = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title="Other data")
    foreign_file = DataFile.objects.get(version__listing=other)
    _refused(client.get(download_link_make(delivery=delivery, file=foreign_file, user=buyer)), "not valid")
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


@pytest.mark.parametrize(
    "stored_name", ["../outside.csv", "/etc/passwd", "datasets/../../outside.csv", "datasets\\a.csv"]
)
def test_a_stored_path_out_of_the_storage_is_refused(client, purchase, stored_name, _private_storage, caplog):
    order, delivery, data_file, link = purchase
    (_private_storage.parent / "outside.csv").write_bytes(b"not for sale\n")
    DataFile.objects.filter(pk=data_file.pk).update(file=stored_name)
    _refused(client.get(link), "cannot be served")
    assert "unsafe storage name" in caplog.text
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


def test_a_stored_symbolic_link_out_of_the_storage_is_refused(client, purchase, _private_storage, tmp_path):
    order, delivery, data_file, link = purchase
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"not for sale\n")
    os.symlink(outside, _private_storage / "datasets" / "link.csv")
    DataFile.objects.filter(pk=data_file.pk).update(file="datasets/link.csv")
    _refused(client.get(link), "cannot be served")
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


def test_anonymous_is_sent_to_log_in(client, purchase):
    order, delivery, _, link = purchase
    client.logout()
    response = client.get(link)
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


# --- X-Accel-Redirect -----------------------------------------------------------------------------------------


def test_xaccel_hands_the_file_to_nginx_and_a_full_get_confirms(client, purchase, settings):
    settings.DOWNLOAD_SERVING = "xaccel"
    order, delivery, data_file, link = purchase
    response = client.get(link, REMOTE_ADDR="198.51.100.4")
    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == "/_protected/" + data_file.file.name
    assert response.content == b""
    assert (response["Content-Type"], response["Content-Disposition"]) == (
        "text/csv",
        'attachment; filename="data.csv"',
    )
    assert (response["X-Content-SHA256"], response["ETag"], response["Accept-Ranges"]) == (SHA, ETAG, "bytes")
    assert response["Cache-Control"] == "private, no-store"
    log = DownloadLog.objects.get()
    assert (log.mode, log.bytes_sent, log.completed, log.range_start, log.ip_address) == (
        "xaccel",
        SIZE,
        True,
        None,
        "198.51.100.4",
    )
    _confirmed(order, delivery)


def test_xaccel_range_is_left_to_nginx_and_confirms_nothing(client, purchase, settings):
    settings.DOWNLOAD_SERVING = "xaccel"
    settings.DOWNLOAD_XACCEL_PREFIX = "/internal/files/"
    order, delivery, data_file, link = purchase
    response = client.get(link, HTTP_RANGE="bytes=10-19")
    assert response.status_code == 200  # nginx turns it into the 206
    assert response["X-Accel-Redirect"] == "/internal/files/" + data_file.file.name
    assert "Content-Range" not in response
    log = DownloadLog.objects.get()
    assert (log.mode, log.range_start, log.range_end, log.bytes_sent, log.completed) == ("xaccel", 10, 19, 0, False)
    _unchanged(order, delivery)


def test_xaccel_head_and_refusals_never_reach_nginx(client, other_buyer, purchase, settings):
    settings.DOWNLOAD_SERVING = "xaccel"
    order, delivery, _, link = purchase
    head = client.head(link)
    assert head.status_code == 200 and "X-Accel-Redirect" not in head
    assert head["Content-Length"] == str(SIZE)
    client.force_login(other_buyer)
    refused = client.get(link)
    assert refused.status_code == 403 and "X-Accel-Redirect" not in refused
    assert DownloadLog.objects.count() == 0
    _unchanged(order, delivery)


def test_xaccel_quotes_unusual_characters_in_the_storage_name(client, purchase, settings, _private_storage):
    settings.DOWNLOAD_SERVING = "xaccel"
    *_, data_file, link = purchase
    name = "datasets/odd name%#?.csv"
    default_storage.save(name, open(default_storage.path(data_file.file.name), "rb"))  # noqa: SIM115
    DataFile.objects.filter(pk=data_file.pk).update(file=name)
    assert client.get(link)["X-Accel-Redirect"] == "/_protected/datasets/odd%20name%25%23%3F.csv"


# --- settings fail loudly -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DOWNLOAD_SERVING": "s3"}, "DOWNLOAD_SERVING=s3 needs STORAGE_BACKEND=s3"),
        ({"DOWNLOAD_SERVING": "nginx"}, "DOWNLOAD_SERVING must be one of"),
        ({"DOWNLOAD_XACCEL_PREFIX": "_protected"}, "DOWNLOAD_XACCEL_PREFIX must start and end with '/'"),
        ({"DOWNLOAD_PRESIGNED_TTL_SECONDS": "0"}, "DOWNLOAD_PRESIGNED_TTL_SECONDS must be >= 1"),
        ({"STORAGE_BACKEND": "s3"}, "STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME"),
        ({"STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "b", "AWS_ACCESS_KEY_ID": "k"}, "must be set together"),
        (
            {"STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "b", "DOWNLOAD_SERVING": "xaccel"},
            "DOWNLOAD_SERVING=xaccel needs STORAGE_BACKEND=local",
        ),
    ],
)
def test_bad_delivery_settings_refuse_to_start(tmp_path, env, message):
    code = "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='exchange.settings'; django.setup()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"EXCHANGE_VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert message in done.stderr
