"""Usage: the monthly aggregate (billing basis), the buyer's and the merchant's usage pages, the usage API."""

import datetime

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from exchange.data_api.selectors import buyer_usage, merchant_usage
from exchange.models import Delivery, DownloadLog, Entitlement, UsageMonthly, UsageRecord
from exchange.services.usage import usage_aggregate, usage_aggregate_month, usage_record_create
from exchange.tasks import usage_aggregate as usage_aggregate_task
from tests.exchange.test_data_api import (
    METERED_CALL,
    call,
    data_file_of,
    key_for,
    make_data_listing,
    purchase,
    rows_url,
)

pytestmark = pytest.mark.django_db

MAY = datetime.datetime(2030, 5, 10, 8, 0, tzinfo=datetime.UTC)


@pytest.fixture
def metered(client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks):
    """The buyer's metered purchase (5 per call, 2 calls free a month) of a CSV product."""
    listing = make_data_listing(merchant=merchant, owner=merchant_user, reviewer=staff, plans=[METERED_CALL])
    order = purchase(client, buyer, listing, django_capture_on_commit_callbacks, kind="metered")
    return {
        "listing": listing,
        "entitlement": Entitlement.objects.get(order=order),
        "file": data_file_of(listing),
        "key": key_for(buyer),
    }


def _record(entitlement, *, at, status_code=200, rows=10, size=100, units=1, ip="203.0.113.9"):
    with time_machine.travel(at, tick=False):
        return usage_record_create(
            entitlement=entitlement,
            file_pk=None,
            api_key_pk=None,
            rows=rows,
            bytes_sent=size,
            units=units,
            status_code=status_code,
            duration_ms=3,
            ip_address=ip,
        )


def _months():
    return list(
        UsageMonthly.objects.order_by("month").values_list(
            "month", "calls", "rows", "bytes", "units", "billable_units", "amount", "currency"
        )
    )


def test_aggregation_is_exact_and_idempotent(metered):
    entitlement = metered["entitlement"]
    for hour in range(3):
        _record(entitlement, at=MAY + datetime.timedelta(hours=hour))
    _record(entitlement, at=MAY, status_code=429, rows=0, size=90, units=0)  # refused: no call, no units
    _record(entitlement, at=MAY, status_code=400, rows=0, size=80, units=0)
    _record(entitlement, at=datetime.datetime(2030, 4, 30, 23, 59, 59, tzinfo=datetime.UTC))  # April
    _record(entitlement, at=datetime.datetime(2030, 6, 1, 0, 0, 0, tzinfo=datetime.UTC))  # June
    assert usage_aggregate_month(month=datetime.date(2030, 5, 1)) == 1
    may = (datetime.date(2030, 5, 1), 3, 30, 300, 3, 1, 5, "CNY")  # 3 units, 2 free: 1 billed at 5
    assert _months() == [may]
    first_updated = UsageMonthly.objects.get().updated_at
    assert usage_aggregate_month(month=datetime.date(2030, 5, 1)) == 1
    assert _months() == [may]
    assert UsageMonthly.objects.get().updated_at >= first_updated
    # A new record changes the month on the next run, in place.
    _record(entitlement, at=MAY + datetime.timedelta(days=1), rows=5, size=50)
    usage_aggregate_month(month=datetime.date(2030, 5, 1))
    assert _months() == [(datetime.date(2030, 5, 1), 4, 35, 350, 4, 2, 10, "CNY")]
    row = UsageMonthly.objects.get()
    assert (row.listing_id, row.merchant_id) == (metered["listing"].pk, metered["listing"].merchant_id)


def test_the_beat_task_does_this_month_and_on_the_first_day_the_previous_one(metered):
    entitlement = metered["entitlement"]
    _record(entitlement, at=datetime.datetime(2030, 5, 31, 23, 0, tzinfo=datetime.UTC))
    _record(entitlement, at=datetime.datetime(2030, 6, 1, 0, 30, tzinfo=datetime.UTC))
    with time_machine.travel(datetime.datetime(2030, 6, 1, 1, 5, tzinfo=datetime.UTC), tick=False):
        assert usage_aggregate_task.delay().get() == {"2030-06": 1, "2030-05": 1}
    assert [m[:2] for m in _months()] == [(datetime.date(2030, 5, 1), 1), (datetime.date(2030, 6, 1), 1)]
    UsageMonthly.objects.all().delete()
    assert usage_aggregate(now=datetime.datetime(2030, 6, 2, 0, 5, tzinfo=datetime.UTC)) == {"2030-06": 1}
    assert [m[:2] for m in _months()] == [(datetime.date(2030, 6, 1), 1)]


def test_a_one_time_purchase_is_recorded_but_never_billed(
    client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks
):
    listing = make_data_listing(merchant=merchant, owner=merchant_user, reviewer=staff)
    order = purchase(client, buyer, listing, django_capture_on_commit_callbacks)
    _record(Entitlement.objects.get(order=order), at=MAY, units=0)
    usage_aggregate_month(month=datetime.date(2030, 5, 1))
    assert _months() == [(datetime.date(2030, 5, 1), 1, 10, 100, 0, 0, 0, "CNY")]


def test_the_buyer_sees_this_month_live_and_earlier_months(metered, buyer, client, django_assert_num_queries):
    url = rows_url(metered["file"], columns="id", limit=3)
    responses = [call(url, metered["key"]) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    call(rows_url(metered["file"], nope="1"), metered["key"])  # refused
    _record(metered["entitlement"], at=datetime.datetime(2020, 1, 15, tzinfo=datetime.UTC), rows=7, units=1)
    usage_aggregate_month(month=datetime.date(2020, 1, 1))
    with django_assert_num_queries(3):  # entitlements, this month, earlier months (Redis for the live units)
        buyer_usage(user=buyer)
    client.force_login(buyer)
    response = client.get(reverse("usage:buyer"))
    assert response.status_code == 200
    usage = response.context["usage"]
    assert len(usage) == 1
    item = usage[0]
    size = sum(len(r.content) for r in responses)
    assert (item.calls, item.refused, item.rows, item.bytes, item.units, item.live_units) == (3, 1, 9, size, 3, 3)
    assert (item.free_units, item.cap_units) == (2, None)
    assert [(m.month, m.units) for m in item.months] == []  # 2020 is older than the twelve months shown
    # The API gives the same figures.
    body = Client().get(reverse("data_api:usage"), HTTP_AUTHORIZATION=f"Api-Key {metered['key']}").json()
    assert body["results"][0]["this_month"] == {
        "calls": 3,
        "refused": 1,
        "rows": 9,
        "bytes": size,
        "units": 3,
        "live_units": 3,
    }
    assert body["results"][0]["plan"] == {"kind": "metered", "metered_unit": "call"}
    assert body["results"][0]["free_units_per_month"] == 2


def test_the_buyer_page_lists_last_months_from_the_aggregate(metered, buyer, client):
    now = datetime.datetime.now(datetime.UTC)
    last_month = (now.replace(day=1) - datetime.timedelta(days=1)).replace(day=15)
    for _ in range(3):
        _record(metered["entitlement"], at=last_month)
    usage_aggregate_month(month=last_month.date().replace(day=1))
    client.force_login(buyer)
    response = client.get(reverse("usage:buyer"))
    months = response.context["usage"][0].months
    assert [(m.month, m.calls, m.units, m.billable_units, m.amount) for m in months] == [
        (last_month.date().replace(day=1), 3, 3, 1, 5)
    ]
    assert "1 billable units, ¥0.05 CNY" in response.content.decode()


def test_the_usage_api_needs_a_read_or_data_scope(metered, buyer):
    trade_only = key_for(buyer, scopes=("trade",))
    response = Client().get(reverse("data_api:usage"), HTTP_AUTHORIZATION=f"Api-Key {trade_only}")
    assert response.status_code == 403
    assert Client().get(reverse("data_api:usage")).status_code == 401


def test_the_merchant_sees_aggregates_only(
    metered, buyer, other_buyer, merchant_user, client, django_assert_num_queries, django_capture_on_commit_callbacks
):
    purchase(Client(), other_buyer, metered["listing"], django_capture_on_commit_callbacks, kind="metered")
    other_key = key_for(other_buyer)
    for key in (metered["key"], metered["key"], other_key):
        assert call(rows_url(metered["file"], columns="id", limit=2), key).status_code == 200
    delivery = Delivery.objects.filter(entitlement=metered["entitlement"]).first()
    DownloadLog.objects.create(
        delivery=delivery, file=metered["file"], user=buyer, bytes_sent=500, completed=True, ip_address="198.51.100.7"
    )
    DownloadLog.objects.create(delivery=delivery, file=metered["file"], user=buyer, bytes_sent=100, completed=False)
    with time_machine.travel(datetime.datetime.now(datetime.UTC), tick=False):
        usage_aggregate()
    merchant = metered["listing"].merchant
    with django_assert_num_queries(4):  # API calls per day and per month, downloads per day and per month
        merchant_usage(merchant=merchant)
    client.force_login(merchant_user)
    response = client.get(reverse("usage:merchant"))
    assert response.status_code == 200
    today = datetime.datetime.now(datetime.UTC).date()
    sizes = sum(UsageRecord.objects.values_list("bytes", flat=True))
    assert [
        (r["day"], r["listing__title"], r["calls"], r["rows"], r["bytes"], r["buyers"])
        for r in response.context["api_daily"]
    ] == [(today, "City scores", 3, 6, sizes, 2)]
    assert [(r["calls"], r["units"], r["amount"], r["buyers"]) for r in response.context["api_monthly"]] == [
        (3, 3, 0, 2)  # each buyer is within their 2 free calls
    ]
    assert [(r["downloads"], r["completed"], r["bytes"], r["buyers"]) for r in response.context["downloads_daily"]] == [
        (2, 1, 600, 1)
    ]
    assert [(r["month"], r["downloads"]) for r in response.context["downloads_monthly"]] == [(today.replace(day=1), 2)]
    html = response.content.decode()
    for private in ("buyer@example.com", "other-buyer@example.com", "127.0.0.1", "198.51.100.7"):
        assert private not in html


def test_the_merchant_page_is_404_for_non_merchants_and_login_protected(buyer, client):
    assert client.get(reverse("usage:merchant")).status_code == 302
    client.force_login(buyer)
    assert client.get(reverse("usage:merchant")).status_code == 404


def test_page_queries_do_not_grow_with_purchases(
    client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    for title in ("First scores", "Second scores"):
        listing = make_data_listing(
            merchant=merchant, owner=merchant_user, reviewer=staff, title=title, plans=[METERED_CALL]
        )
        order = purchase(client, buyer, listing, django_capture_on_commit_callbacks, kind="metered")
        _record(Entitlement.objects.get(order=order), at=datetime.datetime.now(datetime.UTC))
        usage_aggregate()
        pages = []
        for user, name in ((buyer, "usage:buyer"), (merchant_user, "usage:merchant")):
            client.force_login(user)
            client.get(reverse(name))
            with CaptureQueriesContext(connection) as queries:
                assert client.get(reverse(name)).status_code == 200
            pages.append(len(queries))
        counts.append(pages)
    assert counts[0] == counts[1]
