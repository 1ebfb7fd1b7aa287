"""Usage as the buyer and the merchant see it.

The buyer sees their own entitlements: this month from the usage records
(live) and the Redis counter the cap is enforced on, earlier months from
UsageMonthly. The merchant sees aggregates per product only (counts, rows,
bytes, distinct buyers) of API calls and downloads: never a buyer's identity
or address. Admins read the full records in the Django admin.
"""

import datetime
from dataclasses import dataclass, field

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate, TruncMonth
from django.utils import timezone

from exchange.choices import UsageChannel
from exchange.models import DownloadLog, Entitlement, UsageMonthly, UsageRecord
from exchange.services.usage import SERVED, month_start, month_units_live, plan_is_metered

MERCHANT_DAYS = 30
MERCHANT_MONTHS = 12
BUYER_MONTHS = 12


@dataclass
class EntitlementUsage:
    entitlement: Entitlement
    calls: int = 0
    refused: int = 0
    rows: int = 0
    bytes: int = 0
    units: int = 0
    live_units: int | None = None  # the counter the cap is enforced on (metered plans)
    metered: bool = False
    free_units: int = 0
    cap_units: int | None = None
    months: list[UsageMonthly] = field(default_factory=list)

    def as_dict(self) -> dict:
        plan = self.entitlement.plan
        return {
            "entitlement": self.entitlement.pk,
            "listing": {"slug": self.entitlement.listing.slug, "title": self.entitlement.listing.title},
            "plan": None if plan is None else {"kind": plan.kind, "metered_unit": plan.metered_unit or None},
            "free_units_per_month": self.free_units,
            "monthly_cap_units": self.cap_units,
            "this_month": {
                "calls": self.calls,
                "refused": self.refused,
                "rows": self.rows,
                "bytes": self.bytes,
                "units": self.units,
                "live_units": self.live_units,
            },
            "months": [
                {
                    "month": f"{m.month:%Y-%m}",
                    "calls": m.calls,
                    "rows": m.rows,
                    "bytes": m.bytes,
                    "units": m.units,
                    "billable_units": m.billable_units,
                    "amount": m.amount,
                    "currency": m.currency,
                }
                for m in self.months
            ],
        }


def buyer_usage(*, user, now: datetime.datetime | None = None, limit: int = 100) -> list[EntitlementUsage]:
    """The buyer's ``limit`` newest entitlements with their usage; three queries whatever their number."""
    now = now or timezone.now()
    start = datetime.datetime.combine(month_start(now), datetime.time(), tzinfo=datetime.UTC)
    entitlements = list(
        Entitlement.objects.filter(buyer=user).select_related("listing", "plan").order_by("-granted_at", "-pk")[:limit]
    )
    usage = {
        e.pk: EntitlementUsage(
            entitlement=e,
            metered=plan_is_metered(e),
            free_units=e.plan.free_units_per_month if plan_is_metered(e) else 0,
            cap_units=e.plan.monthly_cap_units if plan_is_metered(e) else None,
        )
        for e in entitlements
    }
    if not usage:
        return []
    this_month = (
        UsageRecord.objects.filter(entitlement_id__in=list(usage), created_at__gte=start)
        .values("entitlement_id")
        .annotate(
            calls=Count("pk", filter=SERVED & Q(channel=UsageChannel.API)),
            refused=Count("pk", filter=~SERVED),
            rows_sum=Sum("rows", filter=SERVED, default=0),
            bytes_sum=Sum("bytes", filter=SERVED, default=0),
            units_sum=Sum("units", default=0),
        )
        .order_by()
    )
    for row in this_month:
        item = usage[row["entitlement_id"]]
        item.calls, item.refused, item.rows = row["calls"], row["refused"], row["rows_sum"]
        item.bytes, item.units = row["bytes_sum"], row["units_sum"]
    earliest = month_start(now - datetime.timedelta(days=31 * BUYER_MONTHS))
    for month in UsageMonthly.objects.filter(
        entitlement_id__in=list(usage), month__gte=earliest, month__lt=month_start(now)
    ).order_by("-month", "pk"):
        usage[month.entitlement_id].months.append(month)
    metered = [pk for pk, item in usage.items() if item.metered]
    for pk, value in month_units_live(entitlement_pks=metered, now=now).items():
        usage[pk].live_units = value
    return list(usage.values())


def merchant_usage(*, merchant, now: datetime.datetime | None = None) -> dict:
    """The merchant's products' API calls and downloads, per product per day (30 days) and per month (12).

    API calls per day come from the usage records (live); per month from
    UsageMonthly (as of the last hourly aggregation, with the billed amount).
    Downloads come from the download log. Four queries.
    """
    now = now or timezone.now()
    since_day = now - datetime.timedelta(days=MERCHANT_DAYS)
    since_month = month_start(now - datetime.timedelta(days=31 * (MERCHANT_MONTHS - 1)))
    since_month_at = datetime.datetime.combine(since_month, datetime.time(), tzinfo=datetime.UTC)
    api_daily = list(
        UsageRecord.objects.filter(
            SERVED, listing__merchant=merchant, channel=UsageChannel.API, created_at__gte=since_day
        )
        .annotate(day=TruncDate("created_at", tzinfo=datetime.UTC))
        .values("listing_id", "listing__title", "day")
        .annotate(
            calls=Count("pk"),
            rows=Sum("rows", default=0),
            bytes=Sum("bytes", default=0),
            buyers=Count("buyer_id", distinct=True),
        )
        .order_by("-day", "listing__title", "listing_id")
    )
    api_monthly = list(
        UsageMonthly.objects.filter(merchant=merchant, month__gte=since_month)
        .values("listing_id", "listing__title", "month", "currency")
        .annotate(
            calls=Sum("calls"),
            rows=Sum("rows"),
            bytes=Sum("bytes"),
            units=Sum("units"),
            amount=Sum("amount"),
            buyers=Count("entitlement__buyer_id", distinct=True),
        )
        .order_by("-month", "listing__title", "listing_id")
    )
    downloads = DownloadLog.objects.filter(file__version__listing__merchant=merchant)
    aggregates = {
        "downloads": Count("pk"),
        "completed": Count("pk", filter=Q(completed=True)),
        "bytes": Sum("bytes_sent", default=0),
        "buyers": Count("user_id", distinct=True),
    }
    downloads_daily = list(
        downloads.filter(started_at__gte=since_day)
        .annotate(day=TruncDate("started_at", tzinfo=datetime.UTC))
        .values("file__version__listing_id", "file__version__listing__title", "day")
        .annotate(**aggregates)
        .order_by("-day", "file__version__listing__title", "file__version__listing_id")
    )
    downloads_monthly = list(
        downloads.filter(started_at__gte=since_month_at)
        .annotate(month=TruncMonth("started_at", tzinfo=datetime.UTC))
        .values("file__version__listing_id", "file__version__listing__title", "month")
        .annotate(**aggregates)
        .order_by("-month", "file__version__listing__title", "file__version__listing_id")
    )
    return {
        "api_daily": api_daily,
        "api_monthly": api_monthly,
        "downloads_daily": [_listing_keys(row) for row in downloads_daily],
        "downloads_monthly": [_listing_keys(row) for row in downloads_monthly],
    }


def _listing_keys(row: dict) -> dict:
    row["listing_id"] = row.pop("file__version__listing_id")
    row["listing__title"] = row.pop("file__version__listing__title")
    if isinstance(row.get("month"), datetime.datetime):
        row["month"] = row["month"].date()
    return row
