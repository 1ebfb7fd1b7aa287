"""The metered data API: rows of purchased files read by DuckDB, with filters, cursors, formats and quotas.

Files are made through the real upload service and profiler; purchases go
through the sandbox gateway's signed events (tasks eager, on commit); quotas
run on the test Redis.
"""

import csv
import datetime
import io
import json
import tempfile
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb
import pytest
import redis
import time_machine
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.services import api_key_create
from exchange.choices import DeliveryStatus, OrderStatus
from exchange.models import Delivery, Entitlement, Order, UsageRecord
from exchange.services.entitlements import entitlement_revoke
from exchange.services.usage import month_start, seconds_to_next_month
from listings.models import Category, Listing
from listings.profiling import datafile_profile_run
from listings.services import (
    listing_approve,
    listing_create,
    listing_submit,
    pricing_plan_create,
    pricing_plan_set,
    version_upload,
)
from tests.exchange.helpers import approve_in_sandbox
from tests.factories import FULL_CHECKLIST

pytestmark = pytest.mark.django_db

CITIES = ["Guiyang", "Shanghai", "Beijing", "Shenzhen", "Chengdu"]
ROWS = [(i, CITIES[i % 5], i * 0.5, datetime.date(2024, 1, i)) for i in range(1, 26)]


def _csv_bytes() -> bytes:
    lines = ["id,city,score,day"] + [f"{i},{c},{s},{d.isoformat()}" for i, c, s, d in ROWS]
    return ("\n".join(lines) + "\n").encode()


def _jsonl_bytes() -> bytes:
    return "".join(
        json.dumps({"id": i, "city": c, "score": s, "day": d.isoformat()}) + "\n" for i, c, s, d in ROWS
    ).encode()


def _parquet_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as directory, duckdb.connect() as db:
        path = Path(directory) / "rows.parquet"
        db.execute("CREATE TABLE t (id BIGINT, city VARCHAR, score DOUBLE, day DATE)")
        db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", ROWS)
        db.execute(f"COPY (SELECT * FROM t ORDER BY id) TO '{path}' (FORMAT parquet)")
        return path.read_bytes()


UPLOADS = {
    "csv": ("rows.csv", _csv_bytes),
    "jsonl": ("rows.jsonl", _jsonl_bytes),
    "parquet": ("rows.parquet", _parquet_bytes),
}
METERED_CALL = {"kind": "metered", "amount": 5, "metered_unit": "call", "free_units_per_month": 2}


def make_data_listing(*, merchant, owner, reviewer, fmt="csv", plans=(), title="City scores", upload=None) -> Listing:
    """A published listing whose one file is ``ROWS`` in ``fmt`` (or ``upload``: name, bytes), built by the services."""
    name, content = UPLOADS[fmt] if upload is None else (upload[0], lambda: upload[1])
    category, _ = Category.objects.get_or_create(slug="government", defaults={"name": "Government"})
    listing = listing_create(merchant=merchant, actor=owner, title=title, summary="Scores by city", category=category)
    upload = SimpleUploadedFile(name, content(), content_type="application/octet-stream")
    version = version_upload(listing=listing, actor=owner, uploaded_file=upload)
    for data_file in version.files.all():
        datafile_profile_run(data_file_pk=data_file.pk)
    pricing_plan_set(listing=listing, actor=owner, amount=1234, currency="CNY")
    for plan in plans:
        pricing_plan_create(listing=listing, actor=owner, currency="CNY", **plan)
    listing_submit(listing=listing, actor=owner)
    listing_approve(listing=listing, reviewer=reviewer, checklist=FULL_CHECKLIST, notes="Reviewed in tests.")
    listing.refresh_from_db()
    return listing


def purchase(client, buyer, listing, capture, *, kind="one_time") -> Order:
    """Buy ``listing`` on its ``kind`` plan through the sandbox; the order comes back paid."""
    client.force_login(buyer)
    plan = listing.plans.get(kind=kind, is_active=True)
    with capture(execute=True):
        client.post(
            reverse("exchange:order_buy", args=[listing.slug]),
            {"accept_licence": "1", "token": "6f1c2a9e-2fa1-11d2-883f-0016d3cca427", "plan": plan.pk},
        )
        order = Order.objects.get(plan=plan, buyer=buyer)
        if order.status == OrderStatus.PENDING_PAYMENT:
            approve_in_sandbox(client, order.checkout_url)
    client.logout()
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    return order


def data_file_of(listing):
    return listing.versions.get().files.get()


def rows_url(data_file, **params) -> str:
    url = reverse("data_api:file_rows", args=[data_file.pk])
    if params:
        url += "?" + urlencode(params)
    return url


def key_for(user, scopes=("data",)) -> str:
    return api_key_create(user=user, name="tests", scopes=list(scopes))[1]


def call(url, key, client=None):
    return (client or Client()).get(url, HTTP_AUTHORIZATION=f"Api-Key {key}")


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _redis():
    return redis.Redis.from_url(settings.REDIS_URL)


def usage_keys() -> list[bytes]:
    return sorted(_redis().keys("dx:usage:*"))


@pytest.fixture
def csv_listing(merchant, merchant_user, staff):
    return make_data_listing(merchant=merchant, owner=merchant_user, reviewer=staff, plans=[METERED_CALL])


@pytest.fixture
def bought(client, buyer, csv_listing, django_capture_on_commit_callbacks):
    """The buyer's one-time purchase of the CSV listing and an API key with the data scope."""
    order = purchase(client, buyer, csv_listing, django_capture_on_commit_callbacks)
    return {"order": order, "file": data_file_of(csv_listing), "key": key_for(buyer)}


# --- rows, formats and filters --------------------------------------------------------


def test_profile_types_the_api_casts_to(bought):
    assert [(c["name"], c["type"]) for c in bought["file"].columns] == [
        ("id", "BIGINT"),
        ("city", "VARCHAR"),
        ("score", "DOUBLE"),
        ("day", "DATE"),
    ]


def test_json_page_is_exact(bought):
    response = call(rows_url(bought["file"], columns="id,city,day", id__lte=2), bought["key"])
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "columns": ["id", "city", "day"],
        "rows": [[1, "Shanghai", "2024-01-01"], [2, "Beijing", "2024-01-02"]],
        "next": None,
        "row_count": 2,
    }
    record = UsageRecord.objects.get()
    assert (record.status_code, record.rows, record.bytes, record.units, record.channel) == (
        200,
        2,
        len(response.content),
        0,  # a one-time purchase is not metered
        "api",
    )
    assert (record.buyer_id, record.file_id, record.api_key.name, record.ip_address) == (
        bought["order"].buyer_id,
        bought["file"].pk,
        "tests",
        "127.0.0.1",
    )


def test_csv_and_ndjson_bodies_are_exact_with_a_link_to_the_next_page(bought):
    url = rows_url(bought["file"], columns="id,score", id__gte=24, limit=1, format="csv")
    response = call(url, bought["key"])
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert b"".join(response.streaming_content) == b"id,score\r\n24,12.0\r\n"
    next_url = response["Link"].removeprefix("<").removesuffix('>; rel="next"')
    second = call(relative(next_url), bought["key"])
    assert b"".join(second.streaming_content) == b"id,score\r\n25,12.5\r\n"
    assert not second.has_header("Link")

    response = call(rows_url(bought["file"], city="Chengdu", id__lt=10, format="ndjson"), bought["key"])
    assert response["Content-Type"] == "application/x-ndjson"
    assert b"".join(response.streaming_content) == (
        b'{"id":4,"city":"Chengdu","score":2.0,"day":"2024-01-04"}\n'
        b'{"id":9,"city":"Chengdu","score":4.5,"day":"2024-01-09"}\n'
    )
    assert list(UsageRecord.objects.order_by("pk").values_list("rows", "status_code")) == [
        (1, 200),
        (1, 200),
        (2, 200),
    ]


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({"id": "7"}, [7]),
        ({"id__gte": "23"}, [23, 24, 25]),
        ({"id__gt": "23"}, [24, 25]),
        ({"id__lte": "2"}, [1, 2]),
        ({"id__lt": "2"}, [1]),
        ({"city": "Guiyang"}, [5, 10, 15, 20, 25]),
        ({"city": "Guiyang", "id__gt": "10", "id__lt": "25"}, [15, 20]),
        ({"score__gte": "11.75"}, [24, 25]),
        ({"day__lt": "2024-01-03"}, [1, 2]),
        ({"city": "Guiyang'; DROP TABLE t; --"}, []),  # bound as a value, never SQL
    ],
)
def test_each_filter_operator(bought, params, ids):
    response = call(rows_url(bought["file"], columns="id", **params), bought["key"])
    assert response.status_code == 200
    assert response.json()["rows"] == [[i] for i in ids]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_files_are_served_alike(
    client, buyer, merchant, merchant_user, staff, fmt, django_capture_on_commit_callbacks
):
    listing = make_data_listing(merchant=merchant, owner=merchant_user, reviewer=staff, fmt=fmt)
    purchase(client, buyer, listing, django_capture_on_commit_callbacks)
    data_file, key = data_file_of(listing), key_for(buyer)
    assert data_file.format == fmt
    response = call(rows_url(data_file, columns="id,city,score,day", id__gt=3, day__lte="2024-01-05"), key)
    assert response.status_code == 200
    assert response.json() == {
        "columns": ["id", "city", "score", "day"],
        "rows": [[4, "Chengdu", 2.0, "2024-01-04"], [5, "Guiyang", 2.5, "2024-01-05"]],
        "next": None,
        "row_count": 2,
    }


def test_cursor_pages_return_every_row_exactly_once(bought):
    seen, url, pages = [], rows_url(bought["file"], columns="id", limit=7), 0
    while url:
        body = call(url, bought["key"]).json()
        seen += [row[0] for row in body["rows"]]
        url = body["next"] and relative(body["next"])
        pages += 1
    assert seen == list(range(1, 26))
    assert pages == 4
    # And with a filter: the offset counts matching rows.
    seen, url = [], rows_url(bought["file"], columns="id", city="Shanghai", limit=2)
    while url:
        body = call(url, bought["key"]).json()
        seen += [row[0] for row in body["rows"]]
        url = body["next"] and relative(body["next"])
    assert seen == [1, 6, 11, 16, 21]


def test_a_cursor_cannot_be_tampered_with_or_replayed_on_other_filters(bought):
    body = call(rows_url(bought["file"], columns="id", limit=5), bought["key"]).json()
    cursor = parse_qs(urlsplit(body["next"]).query)["cursor"][0]
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    response = call(rows_url(bought["file"], columns="id", limit=5, cursor=tampered), bought["key"])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_cursor"
    replayed = call(rows_url(bought["file"], columns="id,city", limit=5, cursor=cursor), bought["key"])
    assert replayed.status_code == 400
    assert replayed.json()["error"]["code"] == "bad_cursor"
    # The same shape with another page size or format is fine.
    same = call(rows_url(bought["file"], columns="id", limit=2, cursor=cursor), bought["key"])
    assert same.json()["rows"] == [[6], [7]]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"columns": "id,nope"}, "unknown_column"),
        ({"columns": "id,id"}, "duplicate_column"),
        ({"nope": "1"}, "unknown_column"),
        ({"id__between": "1"}, "unknown_operator"),
        ({"id": "one"}, "bad_value"),
        ({"id__gte": "1.5"}, "bad_value"),
        ({"score__lt": "nan"}, "bad_value"),
        ({"day": "2024-13-01"}, "bad_value"),
        ({"limit": "0"}, "bad_limit"),
        ({"limit": "5001"}, "bad_limit"),
        ({"limit": "ten"}, "bad_limit"),
        ({"format": "xml"}, "bad_format"),
        ({"cursor": "garbage"}, "bad_cursor"),
    ],
)
def test_bad_input_is_refused_with_a_code_and_consumes_nothing(
    client, buyer, csv_listing, django_capture_on_commit_callbacks, params, code
):
    # Metered, so a consumed quota would show in Redis.
    purchase(client, buyer, csv_listing, django_capture_on_commit_callbacks, kind="metered")
    data_file, key = data_file_of(csv_listing), key_for(buyer)
    response = call(rows_url(data_file, **params), key)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert list(UsageRecord.objects.values_list("status_code", "rows", "units")) == [(400, 0, 0)]
    assert usage_keys() == []  # neither the rate limit nor the monthly cap moved
    assert Delivery.objects.get().status == DeliveryStatus.READY  # a refusal confirms nothing


# --- who may read ----------------------------------------------------------------------


def test_strangers_revoked_entitlements_and_other_buyers_keys_get_404_and_nothing_is_recorded(
    bought, other_buyer, client, csv_listing, django_capture_on_commit_callbacks
):
    url = rows_url(bought["file"])
    stranger = call(url, key_for(other_buyer))
    assert stranger.status_code == 404
    assert stranger.json() == {"error": {"code": "not_found", "message": "No such file among your purchases."}}
    assert call(rows_url(bought["file"]).replace(str(bought["file"].pk), "999999"), bought["key"]).status_code == 404
    entitlement = Entitlement.objects.get(order=bought["order"])
    entitlement_revoke(entitlement_pk=entitlement.pk, reason="refunded in a test")
    assert call(url, bought["key"]).status_code == 404
    # The 404 cannot be attributed to an entitlement without revealing one: no record, no counters.
    assert UsageRecord.objects.count() == 0
    assert usage_keys() == []
    assert Order.objects.get(pk=bought["order"].pk).status == OrderStatus.PAID


def test_keys_without_the_data_scope_and_anonymous_callers_are_refused(bought, buyer):
    read_only = key_for(buyer, scopes=("read",))
    response = call(rows_url(bought["file"]), read_only)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    anonymous = Client().get(rows_url(bought["file"]))
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == 'Api-Key realm="api"'
    assert UsageRecord.objects.count() == 0


def test_the_browser_session_reads_rows_too(bought, buyer, client):
    client.force_login(buyer)
    response = client.get(rows_url(bought["file"], columns="id", limit=1))
    assert response.json()["rows"] == [[1]]
    assert UsageRecord.objects.get().api_key is None


def test_the_first_successful_call_confirms_the_delivery_and_releases_escrow(bought):
    delivery = Delivery.objects.get(entitlement__order=bought["order"])
    assert delivery.status == DeliveryStatus.READY
    assert call(rows_url(bought["file"], limit=1), bought["key"]).status_code == 200
    delivery.refresh_from_db()
    assert (delivery.status, delivery.confirmed_by, delivery.download_count) == (
        DeliveryStatus.CONFIRMED,
        "api_call",
        0,
    )
    order = Order.objects.get(pk=bought["order"].pk)
    assert order.status == OrderStatus.DELIVERED
    confirmed_at = delivery.confirmed_at
    assert call(rows_url(bought["file"], limit=1), bought["key"]).status_code == 200
    delivery.refresh_from_db()
    assert delivery.confirmed_at == confirmed_at  # later calls keep the first confirmation


# --- quotas ----------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_to_the_next_minute(bought, settings):
    settings.DATA_API_RATE_PER_MINUTE = 3
    url = rows_url(bought["file"], limit=1)
    with time_machine.travel(datetime.datetime(2030, 5, 6, 12, 0, 15, tzinfo=datetime.UTC), tick=False):
        assert [call(url, bought["key"]).status_code for _ in range(3)] == [200, 200, 200]
        refused = call(url, bought["key"])
        assert refused.status_code == 429
        assert refused["Retry-After"] == "45"
        assert refused.json() == {
            "error": {"code": "rate_limited", "message": "More than 3 calls in a minute; retry in 45 seconds."}
        }
    with time_machine.travel(datetime.datetime(2030, 5, 6, 12, 1, 0, tzinfo=datetime.UTC), tick=False):
        assert call(url, bought["key"]).status_code == 200  # a new minute
    assert list(UsageRecord.objects.order_by("pk").values_list("status_code", "rows")) == [
        (200, 1),
        (200, 1),
        (200, 1),
        (429, 0),
        (200, 1),
    ]


def test_monthly_cap_refuses_beyond_it_until_next_month(
    client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks
):
    listing = make_data_listing(
        merchant=merchant, owner=merchant_user, reviewer=staff, plans=[{**METERED_CALL, "monthly_cap_units": 2}]
    )
    purchase(client, buyer, listing, django_capture_on_commit_callbacks, kind="metered")
    data_file, key = data_file_of(listing), key_for(buyer)
    moment = datetime.datetime(2030, 5, 31, 23, 59, 0, tzinfo=datetime.UTC)
    with time_machine.travel(moment, tick=False):
        assert [call(rows_url(data_file, limit=1), key).status_code for _ in range(2)] == [200, 200]
        refused = call(rows_url(data_file, limit=1), key)
        assert refused.status_code == 429
        assert refused["Retry-After"] == "60"
        assert refused.json()["error"]["code"] == "quota_exceeded"
    with time_machine.travel(datetime.datetime(2030, 6, 1, 0, 0, 5, tzinfo=datetime.UTC), tick=False):
        assert call(rows_url(data_file, limit=1), key).status_code == 200
    assert list(UsageRecord.objects.order_by("pk").values_list("status_code", "units")) == [
        (200, 1),
        (200, 1),
        (429, 0),
        (200, 1),
    ]


def test_thousand_row_units_are_reserved_for_the_page_and_the_rest_refunded(
    client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks
):
    plan = {"kind": "metered", "amount": 40, "metered_unit": "thousand_rows", "monthly_cap_units": 3}
    listing = make_data_listing(merchant=merchant, owner=merchant_user, reviewer=staff, plans=[plan])
    order = purchase(client, buyer, listing, django_capture_on_commit_callbacks, kind="metered")
    data_file, key = data_file_of(listing), key_for(buyer)
    entitlement = Entitlement.objects.get(order=order)
    counter = f"dx:usage:month:{entitlement.pk}:{month_start(datetime.datetime.now(datetime.UTC)):%Y%m}"
    # 5000 rows asked: 5 units wanted, 3 granted (the cap), 25 rows read: 1 unit kept, 2 refunded.
    response = call(rows_url(data_file, columns="id", limit=5000), key)
    assert response.json()["row_count"] == 25
    assert int(_redis().get(counter)) == 1
    # Zero rows read cost nothing.
    assert call(rows_url(data_file, id__gt=100), key).json()["row_count"] == 0
    assert int(_redis().get(counter)) == 1
    assert list(UsageRecord.objects.order_by("pk").values_list("rows", "units")) == [(25, 1), (0, 0)]


def test_a_lost_counter_is_seeded_from_the_records(
    client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks
):
    listing = make_data_listing(
        merchant=merchant, owner=merchant_user, reviewer=staff, plans=[{**METERED_CALL, "monthly_cap_units": 2}]
    )
    purchase(client, buyer, listing, django_capture_on_commit_callbacks, kind="metered")
    data_file, key = data_file_of(listing), key_for(buyer)
    assert call(rows_url(data_file, limit=1), key).status_code == 200
    _redis().flushdb()  # Redis restarted without its data
    assert call(rows_url(data_file, limit=1), key).status_code == 200
    assert call(rows_url(data_file, limit=1), key).status_code == 429


@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_never_exceed_the_monthly_cap(categories, buyer, merchant, merchant_user, staff):
    listing = make_data_listing(
        merchant=merchant, owner=merchant_user, reviewer=staff, plans=[{**METERED_CALL, "monthly_cap_units": 5}]
    )
    client = Client()
    client.force_login(buyer)
    plan = listing.plans.get(kind="metered")
    client.post(
        reverse("exchange:order_buy", args=[listing.slug]),
        {"accept_licence": "1", "token": "7d2e0c11-2fa1-11d2-883f-0016d3cca427", "plan": plan.pk},
    )
    order = Order.objects.get(plan=plan)
    if order.status == OrderStatus.PENDING_PAYMENT:
        approve_in_sandbox(client, order.checkout_url)
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PAID
    data_file, key = data_file_of(listing), key_for(buyer)
    url = rows_url(data_file, limit=1)
    statuses, barrier = [], threading.Barrier(20)

    def worker():
        try:
            barrier.wait()
            statuses.append(call(url, key).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 5 + [429] * 15
    assert UsageRecord.objects.filter(status_code=200).count() == 5
    assert UsageRecord.objects.filter(status_code=429, units=0).count() == 15


def test_metered_calls_fail_closed_when_redis_is_down_and_unmetered_ones_go_on(
    bought, client, buyer, merchant, merchant_user, staff, settings, django_capture_on_commit_callbacks
):
    listing = make_data_listing(
        merchant=merchant, owner=merchant_user, reviewer=staff, plans=[METERED_CALL], title="Metered scores"
    )
    purchase(client, buyer, listing, django_capture_on_commit_callbacks, kind="metered")
    metered_file = data_file_of(listing)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    refused = call(rows_url(metered_file), bought["key"])
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "metering_unavailable"
    assert call(rows_url(bought["file"], limit=1), bought["key"]).status_code == 200
    assert list(UsageRecord.objects.order_by("pk").values_list("file_id", "status_code", "rows")) == [
        (metered_file.pk, 503, 0),
        (bought["file"].pk, 200, 1),
    ]


def test_retry_after_to_next_month_is_computed_in_utc():
    moment = datetime.datetime(2030, 12, 31, 23, 0, 0, tzinfo=datetime.UTC)
    assert seconds_to_next_month(moment) == 3600
    assert month_start(moment) == datetime.date(2030, 12, 1)


def test_csv_body_parses_back_to_the_rows(bought):
    response = call(rows_url(bought["file"], format="csv", limit=25), bought["key"])
    parsed = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert parsed[0] == ["id", "city", "score", "day"]
    assert parsed[1:] == [[str(i), c, str(s), d.isoformat()] for i, c, s, d in ROWS]


def test_text_that_is_not_utf8_is_read_from_a_cached_utf8_copy(
    client, buyer, merchant, merchant_user, staff, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.DATA_API_CACHE_DIR = tmp_path / "cache"
    content = "城市,人口\n贵阳,6400000\n上海,24870000\n".encode("gb18030")
    listing = make_data_listing(merchant=merchant, owner=merchant_user, reviewer=staff, upload=("城市.csv", content))
    purchase(client, buyer, listing, django_capture_on_commit_callbacks)
    data_file, key = data_file_of(listing), key_for(buyer)
    assert data_file.encoding == "gb18030"
    for _ in range(2):
        response = call(rows_url(data_file, 人口__gt="10000000"), key)
        assert response.json()["rows"] == [["上海", 24870000]]
    # One copy per file content, made once.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{data_file.sha256}.utf8"]
