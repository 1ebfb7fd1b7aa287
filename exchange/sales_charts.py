"""The merchant console's sales charts: revenue per day and per product, drawn as server-side SVG.

What counts as a sale: an order that was paid, whatever became of it later (paid, delivered, settled,
partially refunded, refunded, disputed); orders never paid (pending, declined, cancelled, expired) do not.
A sale belongs to the day it was paid (``Order.paid_at``) in the active time zone.

Revenue is **net**: the order's amount (what the buyer paid, buyer service fee included) less
``Order.refunded_amount`` (refunds made or under way; a refund that fails gives its amount back).
A fully refunded order still counts as an order, with a net of zero. An open dispute is not deducted;
a lost one refunds the whole amount and is. The merchant's proceeds after the platform's fees are
computed per order by the same function settlement uses (``fees.order_split`` on what is still held),
so for a settled order they are exactly what was booked to the merchant.

Amounts are integers in minor units and never cross currencies: every series is one currency's.

The aggregation is two GROUP BY queries (per day, per product) plus one pass over the window's
orders for the fee split; the geometry functions are pure, so the template only loops over bars,
ticks and labels.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.translation import gettext

from common.money import CURRENCY_EXPONENT, CURRENCY_SYMBOL, format_minor
from exchange.choices import OrderStatus
from exchange.models import Order
from exchange.services.fees import FeeSchedule, order_split, with_fee_category

WINDOW_CHOICES = (7, 30, 90)
DEFAULT_WINDOW = 30
TOP_PRODUCTS = 10

# Every status an order can reach once paid (see ORDER_TRANSITIONS): the order was a sale.
SOLD_STATUSES = (
    OrderStatus.PAID,
    OrderStatus.DELIVERED,
    OrderStatus.SETTLED,
    OrderStatus.PARTIALLY_REFUNDED,
    OrderStatus.REFUNDED,
    OrderStatus.DISPUTED,
)


class WindowError(ValueError):
    """The requested window is not one of WINDOW_CHOICES; the message says what is accepted."""


# --- the window -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SalesWindow:
    """The last ``days`` local days, today included: ``first_day`` .. ``last_day`` in ``tz``."""

    days: int
    first_day: date
    last_day: date
    since: datetime  # aware: midnight starting first_day in tz
    until: datetime  # aware: midnight after last_day in tz (excluded)

    @property
    def dates(self) -> list[date]:
        return [self.first_day + timedelta(days=n) for n in range(self.days)]


def parse_window(raw: str | None) -> int:
    """The ``?days=`` parameter as a number of days; absent or empty means DEFAULT_WINDOW.

    Raises WindowError for anything but one of WINDOW_CHOICES.
    """
    if raw is None or raw == "":
        return DEFAULT_WINDOW
    try:
        days = int(raw.strip())
    except ValueError:
        days = None
    if days not in WINDOW_CHOICES:
        raise WindowError(_window_message(raw))
    return days


def _window_message(value) -> str:
    return gettext("The window must be one of %(choices)s days; “%(value)s” is not one of them.") % {
        "choices": ", ".join(str(days) for days in WINDOW_CHOICES),
        "value": str(value)[:20],
    }


def sales_window(*, days: int, now: datetime | None = None) -> SalesWindow:
    """The window of ``days`` local days ending today, in the active time zone."""
    if days not in WINDOW_CHOICES:
        raise WindowError(_window_message(days))
    tz = timezone.get_current_timezone()
    today = timezone.localtime(now or timezone.now(), tz).date()
    first_day = today - timedelta(days=days - 1)
    return SalesWindow(
        days=days,
        first_day=first_day,
        last_day=today,
        since=datetime.combine(first_day, time.min, tzinfo=tz),
        until=datetime.combine(today + timedelta(days=1), time.min, tzinfo=tz),
    )


# --- aggregation ------------------------------------------------------------------------------------------------


class _NetAmounts:
    """Gross, refunded and net amounts of one currency, for people (the dataclasses below carry the fields)."""

    currency: str
    gross_minor: int
    refunded_minor: int

    @property
    def net_minor(self) -> int:
        return self.gross_minor - self.refunded_minor

    @property
    def net_display(self) -> str:
        return format_minor(self.net_minor, self.currency)

    @property
    def gross_display(self) -> str:
        return format_minor(self.gross_minor, self.currency)

    @property
    def refunded_display(self) -> str:
        return format_minor(self.refunded_minor, self.currency)


@dataclass(frozen=True)
class SalesPoint(_NetAmounts):
    """One bar's worth of sales in one currency: a day (``day``) or a product (``slug``, ``title``)."""

    currency: str
    gross_minor: int
    refunded_minor: int
    orders: int
    day: date | None = None
    slug: str = ""
    title: str = ""
    others: int = 0  # on the folded "other products" row: how many products it holds

    @property
    def net_short(self) -> str:
        """The net amount as an axis or bar label (symbol, no currency code)."""
        return short_amount(self.net_minor, self.currency)

    @property
    def key(self) -> str:
        """The day as YYYY-MM-DD, or the product's slug ("" on the others row)."""
        return self.day.isoformat() if self.day else self.slug


@dataclass(frozen=True)
class CurrencyTotals(_NetAmounts):
    """A currency's totals over the window."""

    currency: str
    gross_minor: int
    refunded_minor: int
    orders: int
    proceeds_minor: int  # the merchant's share after the platform's fees

    @property
    def proceeds_display(self) -> str:
        return format_minor(self.proceeds_minor, self.currency)


def _sold(*, merchant, window: SalesWindow):
    return Order.objects.filter(
        merchant=merchant, status__in=SOLD_STATUSES, paid_at__gte=window.since, paid_at__lt=window.until
    ).order_by()


def sales_per_day(*, merchant, window: SalesWindow) -> dict[str, list[SalesPoint]]:
    """Per currency, one point per day of the window (days without sales are zeros), oldest first.

    One query: GROUP BY the local paid date and the currency. Only currencies with a sale appear.
    """
    tz = timezone.get_current_timezone()
    rows = (
        _sold(merchant=merchant, window=window)
        .annotate(day=TruncDate("paid_at", tzinfo=tz))
        .values("day", "currency")
        .annotate(gross=Sum("amount"), refunded=Sum("refunded_amount"), orders=Count("pk"))
    )
    found: dict[str, dict[date, dict]] = defaultdict(dict)
    for row in rows:
        found[row["currency"]][row["day"]] = row
    series = {}
    for currency in sorted(found):
        by_day = found[currency]
        series[currency] = [
            SalesPoint(
                currency=currency,
                day=day,
                gross_minor=by_day[day]["gross"] if day in by_day else 0,
                refunded_minor=by_day[day]["refunded"] if day in by_day else 0,
                orders=by_day[day]["orders"] if day in by_day else 0,
            )
            for day in window.dates
        ]
    return series


def sales_per_product(*, merchant, window: SalesWindow) -> dict[str, list[SalesPoint]]:
    """Per currency, one point per product sold in the window, highest net revenue first (then title).

    One query: GROUP BY the listing and the currency.
    """
    rows = (
        _sold(merchant=merchant, window=window)
        .values("currency", "listing_id", slug=F("listing__slug"), title=F("listing__title"))
        .annotate(gross=Sum("amount"), refunded=Sum("refunded_amount"), orders=Count("pk"))
    )
    series: dict[str, list[SalesPoint]] = defaultdict(list)
    for row in rows:
        series[row["currency"]].append(
            SalesPoint(
                currency=row["currency"],
                slug=row["slug"],
                title=row["title"],
                gross_minor=row["gross"],
                refunded_minor=row["refunded"],
                orders=row["orders"],
            )
        )
    return {
        currency: sorted(points, key=lambda p: (-p.net_minor, -p.gross_minor, p.title, p.slug))
        for currency, points in sorted(series.items())
    }


def fold_top(points: list[SalesPoint], *, limit: int = TOP_PRODUCTS) -> list[SalesPoint]:
    """The first ``limit`` points (already ranked), then one "others" point summing the rest, if any."""
    if len(points) <= limit:
        return list(points)
    rest = points[limit:]
    others = SalesPoint(
        currency=points[0].currency,
        gross_minor=sum(p.gross_minor for p in rest),
        refunded_minor=sum(p.refunded_minor for p in rest),
        orders=sum(p.orders for p in rest),
        others=len(rest),
    )
    return [*points[:limit], others]


def proceeds_after_fee(*, merchant, window: SalesWindow) -> dict[str, int]:
    """Per currency, the merchant's share of what the window's sales still hold, after the platform's fees.

    Fees depend on the rule in force when each order was paid and round per order (half up, see
    ``fees``), so they cannot be summed in SQL; this reads the window's orders once, with the fee
    schedule loaded once (``FeeSchedule``), and splits each with ``order_split`` as settlement does.
    """
    orders = with_fee_category(
        _sold(merchant=merchant, window=window).only(
            "pk",
            "merchant_id",
            "amount",
            "service_fee",
            "refunded_amount",
            "currency",
            "paid_at",
            "created_at",
            "commission_bps",  # fixed when paid (fees.commission_bps_for reads it first)
        )
    )
    schedule = FeeSchedule.load()
    totals: dict[str, int] = defaultdict(int)
    for order in orders.iterator(chunk_size=2000):
        held = order.amount - order.refunded_amount
        if held:
            totals[order.currency] += order_split(order, held=held, schedule=schedule)[1]
    return dict(totals)


# --- geometry --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """A bar in viewBox units, with what its tooltip and data attributes say."""

    x: float
    y: float
    width: float
    height: float
    point: SalesPoint
    label: str  # the day (YYYY-MM-DD) or the product's title; "" on the others row
    label_x: float = 0.0  # where the product's name and value are written (horizontal chart)
    label_y: float = 0.0
    value_x: float = 0.0


@dataclass(frozen=True)
class Tick:
    """A gridline at ``value_minor``: the line from (x1, y1) to (x2, y2) and its label's anchor.

    ``position`` is where the value falls on the value axis (y for columns, x for horizontal bars).
    """

    value_minor: int
    position: float
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    label_x: float
    label_y: float


@dataclass(frozen=True)
class AxisLabel:
    x: float
    y: float
    text: str


@dataclass
class Chart:
    """Everything the template draws for one series: a viewBox, the plot box, bars, ticks, labels."""

    kind: str  # "sales-per-day" or "sales-per-product"
    currency: str
    width: float
    height: float
    left: float
    top: float
    right: float
    bottom: float
    bars: list[Bar] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    axis_labels: list[AxisLabel] = field(default_factory=list)
    points: list[SalesPoint] = field(default_factory=list)

    @property
    def view_box(self) -> str:
        return f"0 0 {_num(self.width)} {_num(self.height)}"

    @property
    def max_minor(self) -> int:
        return max((p.net_minor for p in self.points), default=0)

    @property
    def total_display(self) -> str:
        return format_minor(sum(p.net_minor for p in self.points), self.currency)

    @property
    def orders(self) -> int:
        return sum(p.orders for p in self.points)


def _num(value: float) -> str:
    """A coordinate as SVG wants it: '.' decimals, at most two, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _r(value: float) -> float:
    return round(value, 2)


def nice_step(max_minor: int, *, target: int = 4) -> int:
    """A rounded gridline step (1, 2, 2.5 or 5 times a power of ten minor units) giving about ``target`` lines."""
    if max_minor <= 0:
        return 1
    raw = max_minor / target
    power = 1
    while power * 10 <= raw:
        power *= 10
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * power
        if step >= raw and step == int(step):
            return int(step)
    return 10 * power  # unreachable: 10 * power > raw always


def ticks_for(max_minor: int, currency: str) -> list[int]:
    """The gridline values: 0, step, 2 step, ... up to ``max_minor`` (the tallest bar is the top of the plot)."""
    if max_minor <= 0:
        return [0]
    step = nice_step(max_minor)
    return list(range(0, max_minor + 1, step))


def short_amount(amount_minor: int, currency: str) -> str:
    """An axis label: the symbol and the major amount, without decimals when they are zeros (¥1,200 / ¥12.50)."""
    exponent = CURRENCY_EXPONENT.get(currency, 2)
    symbol = CURRENCY_SYMBOL.get(currency, "")
    major, minor = divmod(amount_minor, 10**exponent)
    if minor == 0:
        return f"{symbol}{major:,}"
    return f"{symbol}{major:,}.{minor:0{exponent}d}"


# Column chart (per day): a 720 by 260 viewBox; the left margin holds the amounts, the bottom the dates.
DAY_WIDTH, DAY_HEIGHT = 720.0, 260.0
DAY_MARGINS = {"left": 72.0, "top": 12.0, "right": 8.0, "bottom": 32.0}
DAY_BAR_FILL = 0.7  # share of a day's slot the bar covers
MAX_DATE_LABELS = 8


def day_chart(points: list[SalesPoint]) -> Chart:
    """Columns for a per-day series: the highest net day reaches the top of the plot; zero days have no height."""
    currency = points[0].currency if points else ""
    chart = Chart(
        kind="sales-per-day",
        currency=currency,
        width=DAY_WIDTH,
        height=DAY_HEIGHT,
        left=DAY_MARGINS["left"],
        top=DAY_MARGINS["top"],
        right=DAY_WIDTH - DAY_MARGINS["right"],
        bottom=DAY_HEIGHT - DAY_MARGINS["bottom"],
        points=list(points),
    )
    if not points:
        return chart
    plot_w, plot_h = chart.right - chart.left, chart.bottom - chart.top
    top_value = chart.max_minor
    slot = plot_w / len(points)
    bar_w = slot * DAY_BAR_FILL
    every = -(-len(points) // MAX_DATE_LABELS)  # label every n-th day so at most MAX_DATE_LABELS fit
    for index, point in enumerate(points):
        net = max(point.net_minor, 0)
        height = plot_h * net / top_value if top_value > 0 else 0.0
        x = chart.left + slot * index + (slot - bar_w) / 2
        chart.bars.append(
            Bar(x=_r(x), y=_r(chart.bottom - height), width=_r(bar_w), height=_r(height), point=point, label=point.key)
        )
        if index % every == 0:
            chart.axis_labels.append(
                AxisLabel(
                    x=_r(chart.left + slot * index + slot / 2),
                    y=_r(chart.bottom + 20),
                    text=point.day.strftime("%m-%d"),
                )
            )
    for value in ticks_for(top_value, currency):
        y = chart.bottom - (plot_h * value / top_value if top_value > 0 else 0)
        y = _r(y)
        chart.ticks.append(
            Tick(
                value_minor=value,
                position=y,
                label=short_amount(value, currency),
                x1=chart.left,
                y1=y,
                x2=chart.right,
                y2=y,
                label_x=chart.left - 6,
                label_y=_r(y + 4),
            )
        )
    return chart


# Horizontal bars (per product): rows of fixed height, so the viewBox grows with the number of products.
PRODUCT_WIDTH = 720.0
PRODUCT_MARGINS = {"left": 200.0, "top": 8.0, "right": 110.0, "bottom": 28.0}
PRODUCT_ROW, PRODUCT_BAR = 30.0, 20.0
PRODUCT_TITLE_CHARS = 28


def _clip(text: str, limit: int = PRODUCT_TITLE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def product_chart(points: list[SalesPoint]) -> Chart:
    """Horizontal bars for a per-product series (folded by :func:`fold_top`); the top product spans the plot."""
    currency = points[0].currency if points else ""
    height = PRODUCT_MARGINS["top"] + PRODUCT_ROW * max(len(points), 1) + PRODUCT_MARGINS["bottom"]
    chart = Chart(
        kind="sales-per-product",
        currency=currency,
        width=PRODUCT_WIDTH,
        height=height,
        left=PRODUCT_MARGINS["left"],
        top=PRODUCT_MARGINS["top"],
        right=PRODUCT_WIDTH - PRODUCT_MARGINS["right"],
        bottom=height - PRODUCT_MARGINS["bottom"],
        points=list(points),
    )
    if not points:
        return chart
    plot_w = chart.right - chart.left
    top_value = chart.max_minor
    for index, point in enumerate(points):
        net = max(point.net_minor, 0)
        width = plot_w * net / top_value if top_value > 0 else 0.0
        y = chart.top + PRODUCT_ROW * index + (PRODUCT_ROW - PRODUCT_BAR) / 2
        chart.bars.append(
            Bar(
                x=_r(chart.left),
                y=_r(y),
                width=_r(width),
                height=PRODUCT_BAR,
                point=point,
                label=_clip(point.title) if point.slug else "",
                label_x=_r(chart.left - 8),
                label_y=_r(y + PRODUCT_BAR / 2 + 5),
                value_x=_r(chart.left + width + 6),
            )
        )
    for value in ticks_for(top_value, currency):
        x = chart.left + (plot_w * value / top_value if top_value > 0 else 0)
        x = _r(x)
        chart.ticks.append(
            Tick(
                value_minor=value,
                position=x,
                label=short_amount(value, currency),
                x1=x,
                y1=chart.top,
                x2=x,
                y2=chart.bottom,
                label_x=x,
                label_y=chart.bottom + 18,
            )
        )
    return chart


# --- the page -------------------------------------------------------------------------------------------------


@dataclass
class SalesCharts:
    """The charts' part of the sales page: the window, per-currency totals and charts, or the error."""

    days: int
    window_choices: tuple[int, ...] = WINDOW_CHOICES
    window: SalesWindow | None = None
    totals: list[CurrencyTotals] = field(default_factory=list)
    day_charts: list[Chart] = field(default_factory=list)
    product_charts: list[Chart] = field(default_factory=list)
    error: str = ""

    @property
    def status_code(self) -> int:
        return 400 if self.error else 200

    @property
    def is_empty(self) -> bool:
        return not self.error and not self.day_charts


def sales_charts_build(*, merchant, days: int, now: datetime | None = None) -> SalesCharts:
    """The charts for ``merchant``'s sales over the last ``days`` local days (one of WINDOW_CHOICES)."""
    window = sales_window(days=days, now=now)
    per_day = sales_per_day(merchant=merchant, window=window)
    per_product = sales_per_product(merchant=merchant, window=window)
    proceeds = proceeds_after_fee(merchant=merchant, window=window) if per_day else {}
    totals = [
        CurrencyTotals(
            currency=currency,
            gross_minor=sum(p.gross_minor for p in points),
            refunded_minor=sum(p.refunded_minor for p in points),
            orders=sum(p.orders for p in points),
            proceeds_minor=proceeds.get(currency, 0),
        )
        for currency, points in per_day.items()
    ]
    return SalesCharts(
        days=days,
        window=window,
        totals=totals,
        day_charts=[day_chart(points) for points in per_day.values()],
        product_charts=[product_chart(fold_top(per_product.get(currency, []))) for currency in per_day],
    )


def sales_charts_for_request(*, merchant, params) -> SalesCharts:
    """The charts for the window asked in ``params`` (a QueryDict); a bad ``days`` gives an error and no data."""
    try:
        days = parse_window(params.get("days"))
    except WindowError as exc:
        return SalesCharts(days=DEFAULT_WINDOW, error=str(exc))
    return sales_charts_build(merchant=merchant, days=days)
