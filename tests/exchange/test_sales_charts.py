"""The merchant console's sales charts: SQL aggregation per day and product, geometry, and the page."""

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.urls import reverse
from django.utils import timezone

from exchange.choices import OrderStatus
from exchange.models import Order
from exchange.sales_charts import (
    DEFAULT_WINDOW,
    SalesPoint,
    WindowError,
    day_chart,
    fold_top,
    nice_step,
    parse_window,
    proceeds_after_fee,
    product_chart,
    sales_charts_build,
    sales_per_day,
    sales_per_product,
    sales_window,
    short_amount,
    ticks_for,
)
from exchange.services.refunds import order_refund
from tests.exchange.helpers import approve_in_sandbox, buy
from tests.factories import make_listing

pytestmark = pytest.mark.django_db

SHANGHAI = ZoneInfo("Asia/Shanghai")  # UTC+8 all year: local midnight is 16:00 UTC the day before
# Noon in Shanghai on 2026-11-27: the 7-day window is 2026-11-21 .. 2026-11-27, local days.
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=SHANGHAI)
SALES_URL = reverse("exchange:sales")


def sale(listing, buyer, *, amount, paid_at, currency="CNY", status=OrderStatus.PAID, refunded=0, service_fee=0):
    """An order row in ``status`` as the trade would have left it (test data: status set directly)."""
    return Order.objects.create(
        buyer=buyer,
        listing=listing,
        plan=listing.plans.first(),
        merchant=listing.merchant,
        amount=amount,
        currency=currency,
        service_fee=service_fee,
        status=status,
        paid_at=paid_at,
        refunded_amount=refunded,
        idempotency_key=str(uuid.uuid4()),
        gateway="sandbox",
    )


@pytest.fixture
def second_listing(merchant, merchant_user, staff):
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title="Bus ridership")


@pytest.fixture
def foreign_listing(other_merchant_user, staff):
    from merchants.selectors import merchant_for_user

    other = merchant_for_user(user=other_merchant_user)
    return make_listing(merchant=other, owner=other_merchant_user, reviewer=staff, title="Port traffic")


def _by_day(points):
    return {p.day.isoformat(): (p.gross_minor, p.refunded_minor, p.orders) for p in points if p.orders}


# --- the window ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "days"), [(None, 30), ("", 30), ("7", 7), ("30", 30), (" 90 ", 90)])
def test_window_accepts_the_three_choices_and_defaults_to_30(raw, days):
    assert parse_window(raw) == days
    assert DEFAULT_WINDOW == 30


@pytest.mark.parametrize("raw", ["0", "1", "31", "365", "-7", "abc", "7.0", "1e3"])
def test_window_refuses_anything_else_with_a_clear_message(raw):
    with pytest.raises(WindowError) as caught:
        parse_window(raw)
    assert str(caught.value) == f"The window must be one of 7, 30, 90 days; “{raw}” is not one of them."


def test_window_is_local_days_ending_today():
    with timezone.override(SHANGHAI):
        window = sales_window(days=7, now=NOW)
    assert (window.first_day, window.last_day) == (date(2026, 11, 21), date(2026, 11, 27))
    assert window.since == datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
    assert window.until == datetime(2026, 11, 27, 16, 0, tzinfo=UTC)
    assert len(window.dates) == 7 and window.dates[-1] == date(2026, 11, 27)


# --- aggregation -----------------------------------------------------------------------------------------------


def test_sales_per_day_groups_by_local_day_and_currency_and_counts_only_paid_orders(
    merchant, published_listing, second_listing, foreign_listing, buyer
):
    utc = UTC
    # The local-day boundary: 15:59:59 UTC is still the 26th in Shanghai, 16:00 UTC is already the 27th.
    sale(published_listing, buyer, amount=1000, paid_at=datetime(2026, 11, 26, 15, 59, 59, tzinfo=utc))
    sale(second_listing, buyer, amount=2500, paid_at=datetime(2026, 11, 26, 16, 0, tzinfo=utc))
    sale(published_listing, buyer, amount=500, paid_at=datetime(2026, 11, 27, 3, 0, tzinfo=utc))
    # Later states of a paid order still count; refunds are deducted from the net.
    sale(
        second_listing,
        buyer,
        amount=5000,
        refunded=2000,
        status=OrderStatus.PARTIALLY_REFUNDED,
        paid_at=datetime(2026, 11, 24, 2, 0, tzinfo=utc),
    )
    sale(
        published_listing,
        buyer,
        amount=800,
        refunded=800,
        status=OrderStatus.REFUNDED,
        paid_at=datetime(2026, 11, 24, 3, 0, tzinfo=utc),
    )
    for status in (OrderStatus.DELIVERED, OrderStatus.SETTLED, OrderStatus.DISPUTED):
        sale(published_listing, buyer, amount=100, status=status, paid_at=datetime(2026, 11, 23, 1, 0, tzinfo=utc))
    # Another currency is its own series, never added to CNY.
    sale(published_listing, buyer, amount=999, currency="USD", paid_at=datetime(2026, 11, 26, 16, 30, tzinfo=utc))
    # Not sales: never paid, declined (even with a stray paid_at), before the window, another merchant's.
    sale(published_listing, buyer, amount=7000, status=OrderStatus.PENDING_PAYMENT, paid_at=None)
    sale(
        published_listing,
        buyer,
        amount=7100,
        status=OrderStatus.DECLINED,
        paid_at=datetime(2026, 11, 25, 1, 0, tzinfo=utc),
    )
    sale(published_listing, buyer, amount=7200, paid_at=datetime(2026, 11, 20, 15, 59, 59, tzinfo=utc))  # 20th local
    sale(foreign_listing, buyer, amount=7300, paid_at=datetime(2026, 11, 26, 17, 0, tzinfo=utc))
    # The first instant of the window is in it.
    sale(published_listing, buyer, amount=300, paid_at=datetime(2026, 11, 20, 16, 0, tzinfo=utc))  # 21st 00:00 local

    with timezone.override(SHANGHAI):
        window = sales_window(days=7, now=NOW)
        series = sales_per_day(merchant=merchant, window=window)

    assert list(series) == ["CNY", "USD"]
    assert [p.day for p in series["CNY"]] == window.dates  # every day of the window, zeros included
    assert _by_day(series["CNY"]) == {
        "2026-11-21": (300, 0, 1),
        "2026-11-23": (300, 0, 3),
        "2026-11-24": (5800, 2800, 2),
        "2026-11-26": (1000, 0, 1),
        "2026-11-27": (3000, 0, 2),
    }
    assert [p.net_minor for p in series["CNY"]] == [300, 0, 300, 3000, 0, 1000, 3000]
    assert [(p.gross_minor, p.orders) for p in series["CNY"] if p.day == date(2026, 11, 22)] == [(0, 0)]
    assert _by_day(series["USD"]) == {"2026-11-27": (999, 0, 1)}
    assert sum(p.orders for p in series["USD"]) == 1

    # In UTC the same payments fall on other days: the active time zone decides.
    with timezone.override(UTC):
        utc_series = sales_per_day(merchant=merchant, window=sales_window(days=7, now=NOW))
    assert _by_day(utc_series["CNY"])["2026-11-26"] == (3500, 0, 2)
    assert "2026-11-21" not in _by_day(utc_series["CNY"])  # 16:00 UTC on the 20th is outside a UTC window


def test_sales_per_product_ranks_by_net_revenue_per_currency(
    merchant, published_listing, second_listing, foreign_listing, buyer
):
    paid = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
    sale(published_listing, buyer, amount=1000, paid_at=paid)
    sale(published_listing, buyer, amount=1500, paid_at=paid, refunded=500, status=OrderStatus.PARTIALLY_REFUNDED)
    sale(second_listing, buyer, amount=4000, paid_at=paid)
    sale(second_listing, buyer, amount=250, currency="EUR", paid_at=paid)
    sale(second_listing, buyer, amount=9999, status=OrderStatus.CANCELLED, paid_at=None)
    sale(foreign_listing, buyer, amount=8000, paid_at=paid)

    with timezone.override(SHANGHAI):
        series = sales_per_product(merchant=merchant, window=sales_window(days=7, now=NOW))

    assert list(series) == ["CNY", "EUR"]
    assert [(p.slug, p.title, p.gross_minor, p.refunded_minor, p.net_minor, p.orders) for p in series["CNY"]] == [
        (second_listing.slug, "Bus ridership", 4000, 0, 4000, 1),
        (published_listing.slug, "City populations", 2500, 500, 2000, 2),
    ]
    assert [(p.slug, p.net_minor) for p in series["EUR"]] == [(second_listing.slug, 250)]


def test_fold_top_keeps_ten_products_and_sums_the_rest():
    points = [
        SalesPoint(currency="CNY", slug=f"p{n}", title=f"P{n}", gross_minor=1000 - n, refunded_minor=n, orders=n + 1)
        for n in range(13)
    ]
    folded = fold_top(points)
    assert [p.slug for p in folded[:10]] == [f"p{n}" for n in range(10)]
    others = folded[10]
    assert (others.slug, others.others, others.orders) == ("", 3, 11 + 12 + 13)
    assert (others.gross_minor, others.refunded_minor) == (990 + 989 + 988, 10 + 11 + 12)
    assert fold_top(points[:10]) == points[:10]


def test_proceeds_after_fee_use_the_fee_schedule_on_what_is_still_held(merchant, published_listing, buyer, settings):
    settings.PLATFORM_FEE_BPS = 1000  # 10 %, rounded half up per order
    paid = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
    sale(published_listing, buyer, amount=1235, paid_at=paid)  # fee 123.5 -> 124, merchant 1111
    sale(published_listing, buyer, amount=2000, refunded=1000, paid_at=paid, status=OrderStatus.PARTIALLY_REFUNDED)
    sale(published_listing, buyer, amount=500, refunded=500, paid_at=paid, status=OrderStatus.REFUNDED)
    # The buyer service fee goes to the platform whole; the commission is on the rest: 1000 - 100 - 90.
    sale(published_listing, buyer, amount=1000, service_fee=100, paid_at=paid)
    sale(published_listing, buyer, amount=700, currency="USD", paid_at=paid)  # fee 70
    with timezone.override(SHANGHAI):
        proceeds = proceeds_after_fee(merchant=merchant, window=sales_window(days=7, now=NOW))
    assert proceeds == {"CNY": 1111 + 900 + 810, "USD": 630}


def test_the_charts_cost_a_fixed_number_of_queries(
    merchant, published_listing, second_listing, buyer, django_assert_num_queries
):
    for n in range(6):
        sale(published_listing if n % 2 else second_listing, buyer, amount=100 + n, paid_at=NOW - timedelta(days=n))
    with timezone.override(SHANGHAI), django_assert_num_queries(4):  # per day, per product, fee rules, orders
        charts = sales_charts_build(merchant=merchant, days=7, now=NOW)
    (totals,) = charts.totals
    assert (totals.currency, totals.gross_minor, totals.orders) == ("CNY", 615, 6)


# --- geometry --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_minor", "step"), [(1, 1), (7, 2), (100, 25), (150, 50), (12000, 5000), (99999, 25000), (400000, 100000)]
)
def test_nice_step_rounds_to_one_two_two_and_a_half_or_five(max_minor, step):
    assert nice_step(max_minor) == step


def test_ticks_and_labels():
    assert ticks_for(12000, "CNY") == [0, 5000, 10000]
    assert ticks_for(0, "CNY") == [0]
    assert [short_amount(v, "CNY") for v in (0, 5000, 12550, 120000000)] == ["¥0", "¥50", "¥125.50", "¥1,200,000"]
    assert short_amount(999, "USD") == "$9.99"


def _day_points(nets):
    return [
        SalesPoint(currency="CNY", day=date(2026, 11, 21) + timedelta(days=n), gross_minor=net, refunded_minor=0,
                   orders=1 if net else 0)
        for n, net in enumerate(nets)
    ]  # fmt: skip


def test_day_chart_tallest_bar_fills_the_plot_and_zero_days_are_flat():
    chart = day_chart(_day_points([3000, 0, 12000, 6000, 0, 0, 1500]))
    plot_height = chart.bottom - chart.top
    assert chart.view_box == "0 0 720 260"
    assert len(chart.bars) == 7
    tallest = chart.bars[2]
    assert (tallest.height, tallest.y) == (plot_height, chart.top)
    assert chart.bars[3].height == plot_height / 2 and chart.bars[3].y == chart.top + plot_height / 2
    assert chart.bars[1].height == 0 and chart.bars[1].y == chart.bottom
    assert [bar.point.key for bar in chart.bars] == [f"2026-11-{d}" for d in range(21, 28)]
    # Bars sit side by side in equal slots, in date order, inside the plot.
    assert all(a.x < b.x for a, b in zip(chart.bars, chart.bars[1:], strict=False))
    assert chart.bars[0].x >= chart.left and chart.bars[-1].x + chart.bars[-1].width <= chart.right
    # Gridlines at the nice step, measured from the baseline.
    assert [(t.value_minor, t.label) for t in chart.ticks] == [(0, "¥0"), (5000, "¥50"), (10000, "¥100")]
    assert chart.ticks[0].y1 == chart.bottom
    assert chart.ticks[2].y1 == round(chart.bottom - plot_height * 10000 / 12000, 2)
    assert [label.text for label in chart.axis_labels] == [f"11-{d}" for d in range(21, 28)]


def test_day_chart_labels_at_most_eight_dates_on_a_long_window():
    chart = day_chart(_day_points([100] * 90))
    assert len(chart.bars) == 90
    assert len(chart.axis_labels) <= 8 and chart.axis_labels[0].text == "11-21"
    assert all(bar.height == chart.bottom - chart.top for bar in chart.bars)


def test_product_chart_top_product_spans_the_plot():
    points = [
        SalesPoint(currency="CNY", slug="a", title="A" * 40, gross_minor=8000, refunded_minor=0, orders=4),
        SalesPoint(currency="CNY", slug="b", title="B", gross_minor=2500, refunded_minor=500, orders=2),
    ]
    chart = product_chart(points)
    plot_width = chart.right - chart.left
    assert [bar.width for bar in chart.bars] == [plot_width, plot_width / 4]
    assert all(bar.x == chart.left for bar in chart.bars)
    assert chart.bars[0].y < chart.bars[1].y
    assert chart.bars[0].label == "A" * 27 + "…"  # clipped; the tooltip and the table carry the whole title
    assert [(t.value_minor, t.x1) for t in chart.ticks] == [(0, chart.left), (2000, chart.left + plot_width / 4),
                                                            (4000, chart.left + plot_width / 2),
                                                            (6000, chart.left + plot_width * 3 / 4),
                                                            (8000, chart.right)]  # fmt: skip


# --- the page --------------------------------------------------------------------------------------------------


def _figures(html: str) -> dict[str, str]:
    """The charts' figures by ``data-chart/currency``, each one's HTML."""
    return {
        f"{kind}/{currency}": body
        for kind, currency, body in re.findall(
            r'<figure class="chart" data-chart="([a-z-]+)" data-currency="([A-Z]{3})">(.*?)</figure>', html, re.S
        )
    }


def _section(html: str) -> str:
    return re.search(r'<section class="card sales-charts".*?</section>', html, re.S).group(0)


def test_page_shows_both_charts_with_data_attributes(
    client, merchant_user, merchant, published_listing, second_listing, buyer, settings
):
    settings.TIME_ZONE = "Asia/Shanghai"
    now = timezone.now()
    paid = now - timedelta(minutes=5)
    today = timezone.localdate(paid, SHANGHAI)
    sale(published_listing, buyer, amount=12000, paid_at=paid)
    sale(published_listing, buyer, amount=3000, paid_at=paid)
    sale(second_listing, buyer, amount=5000, paid_at=now - timedelta(days=2))
    sale(second_listing, buyer, amount=650, currency="USD", paid_at=now - timedelta(days=1))
    client.force_login(merchant_user)

    response = client.get(SALES_URL)

    assert response.status_code == 200
    html = response.content.decode()
    figures = _figures(html)
    assert sorted(figures) == [
        "sales-per-day/CNY",
        "sales-per-day/USD",
        "sales-per-product/CNY",
        "sales-per-product/USD",
    ]
    per_day = figures["sales-per-day/CNY"]
    assert per_day.count("<rect ") == 30
    assert 'role="img"' in per_day and 'viewBox="0 0 720 260"' in per_day and 'width="100%"' in per_day
    assert '<title id="sales-day-CNY-title">' in per_day and '<desc id="sales-day-CNY-desc">' in per_day
    assert f'data-date="{today.isoformat()}" data-amount-minor="15000" data-orders="2">' in per_day
    assert f"<title>{today.isoformat()}: ¥150.00 CNY, 2 orders</title>" in per_day
    two_days_ago = (today - timedelta(days=2)).isoformat()
    assert f'data-date="{two_days_ago}" data-amount-minor="5000" data-orders="1">' in per_day
    assert f"<title>{two_days_ago}: ¥50.00 CNY, 1 order</title>" in per_day
    assert f'data-date="{(today - timedelta(days=29)).isoformat()}" data-amount-minor="0"' in per_day
    per_product = figures["sales-per-product/CNY"]
    assert re.findall(r'data-product="([^"]+)" data-amount-minor="(\d+)"', per_product) == [
        (published_listing.slug, "15000"),
        (second_listing.slug, "5000"),
    ]
    assert "<title>City populations: ¥150.00 CNY, 2 orders</title>" in per_product
    assert re.findall(r'data-product="([^"]+)" data-amount-minor="(\d+)"', figures["sales-per-product/USD"]) == [
        (second_listing.slug, "650")
    ]
    section = _section(html)
    assert "style=" not in section and "<script" not in section  # the CSP allows neither
    assert 'aria-current="page">30 days</a>' in section
    assert "Net revenue: what buyers paid, less refunds" in section
    assert '<details class="chart-data">' in section


def test_a_real_purchase_and_refund_show_up_net_with_the_proceeds(
    client, buyer, staff, merchant_user, published_listing, django_capture_on_commit_callbacks, settings
):
    settings.PLATFORM_FEE_BPS = 1000
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    with django_capture_on_commit_callbacks(execute=True):
        order_refund(order=order, amount=234, reason="Part of the rows were missing", actor=staff)

    client.force_login(merchant_user)
    html = client.get(SALES_URL + "?days=7").content.decode()

    today = timezone.localdate().isoformat()
    per_day = _figures(html)["sales-per-day/CNY"]
    assert per_day.count("<rect ") == 7
    assert f'data-date="{today}" data-amount-minor="1000" data-orders="1">' in per_day
    section = _section(html)
    assert '<dd data-amount-minor="1000">¥10.00 CNY</dd>' in section  # net: 1234 paid - 234 refunded
    assert '<dd data-amount-minor="900">¥9.00 CNY</dd>' in section  # proceeds: 1000 less the 10 % fee
    assert "¥2.34 CNY" in section  # the refunded column
    assert 'aria-current="page">7 days</a>' in section


def test_empty_state(client, merchant_user, merchant, published_listing, buyer):
    sale(published_listing, buyer, amount=500, status=OrderStatus.PENDING_PAYMENT, paid_at=None)
    sale(published_listing, buyer, amount=600, paid_at=timezone.now() - timedelta(days=40))
    client.force_login(merchant_user)
    response = client.get(SALES_URL)
    assert response.status_code == 200
    section = _section(response.content.decode())
    assert "No sales in the last 30 days." in section
    assert "<figure" not in section and "<svg" not in section
    html = client.get(SALES_URL + "?days=90").content.decode()
    assert 'data-date="' in html and "No sales in the last" not in html  # 40 days ago is within 90


def test_another_merchants_sales_never_appear(
    client, merchant_user, published_listing, foreign_listing, other_merchant_user, buyer
):
    now = timezone.now()
    sale(published_listing, buyer, amount=1111, paid_at=now - timedelta(hours=1))
    sale(foreign_listing, buyer, amount=98765, paid_at=now - timedelta(hours=1))
    sale(foreign_listing, buyer, amount=4321, currency="USD", paid_at=now - timedelta(hours=1))

    client.force_login(merchant_user)
    html = client.get(SALES_URL).content.decode()
    assert sorted(_figures(html)) == ["sales-per-day/CNY", "sales-per-product/CNY"]
    section = _section(html)
    assert foreign_listing.slug not in section and "Port traffic" not in section
    assert "98765" not in section and "987.65" not in section and "USD" not in section

    client.force_login(other_merchant_user)
    section = _section(client.get(SALES_URL).content.decode())
    assert published_listing.slug not in section and "1111" not in section and "11.11" not in section
    assert re.findall(r'data-product="([^"]+)" data-amount-minor="(\d+)"', section) == [
        (foreign_listing.slug, "98765"),
        (foreign_listing.slug, "4321"),  # its USD sales, in their own chart
    ]


def test_non_merchants_are_refused(client, buyer, published_listing):
    sale(published_listing, buyer, amount=1000, paid_at=timezone.now())
    anonymous = client.get(SALES_URL)
    assert anonymous.status_code == 302 and anonymous.url.startswith("/accounts/login/")
    client.force_login(buyer)
    response = client.get(SALES_URL)
    assert response.status_code == 404
    assert b"data-chart" not in response.content


@pytest.mark.parametrize("days", ["365", "abc", "0", "-30"])
def test_bad_window_is_a_400_with_the_message_and_no_data(client, merchant_user, published_listing, buyer, days):
    order = sale(published_listing, buyer, amount=1000, paid_at=timezone.now())
    before = list(Order.objects.values_list("pk", "status", "amount", "refunded_amount"))
    client.force_login(merchant_user)

    response = client.get(SALES_URL, {"days": days})

    assert response.status_code == 400
    section = _section(response.content.decode())
    assert f"The window must be one of 7, 30, 90 days; “{days}” is not one of them." in section
    assert 'role="alert"' in section and "<figure" not in section
    assert "aria-current" not in section  # no window is selected; the links offer the valid ones
    assert all(f'href="?days={d}"' in section for d in (7, 30, 90))
    assert list(Order.objects.values_list("pk", "status", "amount", "refunded_amount")) == before
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PAID
