"""Metering of the data API: rate limits, monthly caps, the usage record and the monthly aggregate.

Quotas live in Redis counters, checked and moved in one atomic step by a Lua
script, so concurrent requests can never overshoot a cap:

- the rate limit: calls per API key (or per signed-in user) per clock minute,
  ``settings.DATA_API_RATE_PER_MINUTE``;
- the monthly cap of a metered plan: ``plan.monthly_cap_units`` units per
  entitlement per calendar month (UTC). A unit is a call, or a thousand rows
  (rounded up per call) per ``plan.metered_unit``. Row units are reserved for
  the page asked for before the query and the unused part refunded after.

A month's counter that Redis does not hold (first call of the month, a Redis
restarted without persistence, a flushed database) is seeded from the usage
records of that month, so losing Redis never resets what a buyer has used.

If Redis cannot be reached, metered caps fail closed (``MeteringUnavailable``:
the API answers 503) while the rate limit fails open (logged): an unmetered
buyer keeps access, nobody is served beyond a paid cap. Without REDIS_URL (the
embedded default) there is no Redis: rate limits are off and metered plans
answer 503.

Every API call that reached an entitlement (served, refused by a quota, or
refused as bad input) writes a UsageRecord: the access log. The beat task
``usage_aggregate`` folds the records of a month into UsageMonthly, the
billing basis.
"""

import datetime
import logging
import math
import threading
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone

from exchange.choices import UsageChannel
from exchange.models import Entitlement, UsageMonthly, UsageRecord
from listings.choices import MeteredUnit, PlanKind

log = logging.getLogger(__name__)

ROWS_PER_UNIT = 1000
_KEY_NS = "dx:usage"

# KEYS[1]: the counter. ARGV: amount wanted, cap (-1: none), ttl seconds, least acceptable amount.
# Grants min(amount, cap - used) when that is at least the least acceptable amount, else nothing.
# Returns {granted, used after}, or {-1, 0} when the counter does not exist yet (the caller seeds it).
_RESERVE = """
local used = redis.call('GET', KEYS[1])
if not used then return {-1, 0} end
used = tonumber(used)
local want, cap, least = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local grant = want
if cap >= 0 and used + grant > cap then grant = cap - used end
if grant < least then return {0, used} end
used = redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {grant, used}
"""


class QuotaExceeded(Exception):
    """A call refused by a quota; ``code`` is ``rate_limited`` or ``quota_exceeded``."""

    def __init__(self, code: str, message: str, retry_after: int):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


class MeteringUnavailable(Exception):
    """Redis cannot be reached (or is not configured) and a metered cap must be enforced."""


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _redis() -> redis.Redis | None:
    """One client (and connection pool) per REDIS_URL; None when no Redis is configured."""
    url = settings.REDIS_URL
    if not url:
        return None
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
                client._exchange_reserve = client.register_script(_RESERVE)
                _clients[url] = client
    return client


# --- time windows -------------------------------------------------------------


def month_start(moment: datetime.datetime) -> datetime.date:
    moment = moment.astimezone(datetime.UTC)
    return datetime.date(moment.year, moment.month, 1)


def next_month(month: datetime.date) -> datetime.date:
    return datetime.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _month_bounds(month: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    start = datetime.datetime(month.year, month.month, 1, tzinfo=datetime.UTC)
    end_day = next_month(month)
    return start, datetime.datetime(end_day.year, end_day.month, 1, tzinfo=datetime.UTC)


def seconds_to_next_minute(now: datetime.datetime) -> int:
    return 60 - now.second


def seconds_to_next_month(now: datetime.datetime) -> int:
    _, end = _month_bounds(month_start(now))
    return max(1, math.ceil((end - now).total_seconds()))


# --- quotas -----------------------------------------------------------------------


def plan_is_metered(entitlement: Entitlement) -> bool:
    plan = entitlement.plan
    return plan is not None and plan.kind == PlanKind.METERED


def units_for(entitlement: Entitlement, *, rows: int) -> int:
    """Billable units of one successful call: 1 (per-call plans), ceil(rows / 1000), or 0 (unmetered)."""
    if not plan_is_metered(entitlement):
        return 0
    if entitlement.plan.metered_unit == MeteredUnit.THOUSAND_ROWS:
        return math.ceil(rows / ROWS_PER_UNIT)
    return 1


def _month_key(entitlement_pk: int, month: datetime.date) -> str:
    return f"{_KEY_NS}:month:{entitlement_pk}:{month:%Y%m}"


def rate_limit_take(*, subject: str, now: datetime.datetime | None = None, limit: int | None = None) -> None:
    """Count one call for ``subject`` (``key:<pk>``, ``user:<pk>``, or another namespace's) this minute.

    Raises QuotaExceeded(``rate_limited``) beyond ``limit`` calls (default
    ``DATA_API_RATE_PER_MINUTE``); a refused call is not counted. Fails open
    when Redis is unreachable.
    """
    client = _redis()
    if client is None:
        return
    now = now or timezone.now()
    window = int(now.timestamp()) // 60
    key = f"{_KEY_NS}:rate:{subject}:{window}"
    limit = settings.DATA_API_RATE_PER_MINUTE if limit is None else limit
    try:
        granted, _ = client._exchange_reserve(keys=[key], args=[1, limit, 120, 1])
        if granted == -1:
            client.set(key, 0, ex=120, nx=True)
            granted, _ = client._exchange_reserve(keys=[key], args=[1, limit, 120, 1])
    except redis.RedisError:
        log.warning("Redis unreachable: the data API rate limit is not enforced for this call")
        return
    if granted < 1:
        wait = seconds_to_next_minute(now)
        raise QuotaExceeded(
            "rate_limited", f"More than {limit} calls in a minute; retry in {wait} seconds.", retry_after=wait
        )


@dataclass
class Reservation:
    """Units held against an entitlement's monthly cap for one call; ``units`` 0 when nothing is capped."""

    entitlement_pk: int
    month: datetime.date
    units: int
    counted: bool  # whether a Redis counter holds these units (metered plans)


def _month_used_from_records(entitlement_pk: int, month: datetime.date) -> int:
    start, end = _month_bounds(month)
    total = UsageRecord.objects.filter(
        entitlement_id=entitlement_pk, created_at__gte=start, created_at__lt=end
    ).aggregate(units=Sum("units"))["units"]
    return total or 0


def quota_reserve(*, entitlement: Entitlement, rows_wanted: int, now: datetime.datetime | None = None) -> Reservation:
    """Hold the units a call may use against the entitlement's monthly cap, atomically.

    Unmetered plans hold nothing. Per-call plans hold 1 unit; thousand-row
    plans hold ceil(rows_wanted / 1000), or fewer when fewer remain under the
    cap (the caller then reads at most ``units * 1000`` rows). Metered plans
    without a cap are counted too (the live usage the buyer sees).

    Raises QuotaExceeded(``quota_exceeded``, Retry-After to the first of next
    month UTC) when not a unit remains, MeteringUnavailable when Redis is not
    there to count.
    """
    now = now or timezone.now()
    month = month_start(now)
    if not plan_is_metered(entitlement):
        return Reservation(entitlement.pk, month, 0, counted=False)
    plan = entitlement.plan
    want = math.ceil(rows_wanted / ROWS_PER_UNIT) if plan.metered_unit == MeteredUnit.THOUSAND_ROWS else 1
    want = max(want, 1)
    cap = -1 if plan.monthly_cap_units is None else plan.monthly_cap_units
    client = _redis()
    if client is None:
        raise MeteringUnavailable("Metered access needs the usage counter service (Redis), which is not configured.")
    key = _month_key(entitlement.pk, month)
    ttl = seconds_to_next_month(now) + 3 * 86400
    try:
        granted, _ = client._exchange_reserve(keys=[key], args=[want, cap, ttl, 1])
        if granted == -1:
            # Seed from the durable records; SET NX lets concurrent seeders agree on one value.
            client.set(key, _month_used_from_records(entitlement.pk, month), ex=ttl, nx=True)
            granted, _ = client._exchange_reserve(keys=[key], args=[want, cap, ttl, 1])
    except redis.RedisError as exc:
        log.warning("Redis unreachable: metered data API calls are refused until it is back (%s)", type(exc).__name__)
        raise MeteringUnavailable("The usage counter service is unavailable; metered access is paused.") from None
    if granted < 1:
        wait = seconds_to_next_month(now)
        raise QuotaExceeded(
            "quota_exceeded",
            f"This month's cap of {cap} units for this plan is used up; it resets on the first of next month (UTC).",
            retry_after=wait,
        )
    return Reservation(entitlement.pk, month, int(granted), counted=True)


def quota_settle(*, reservation: Reservation, units_used: int) -> None:
    """Give back the reserved units a call did not use (all of them for a failed call)."""
    unused = reservation.units - units_used
    if not reservation.counted or unused <= 0:
        return
    client = _redis()
    try:
        client.decrby(_month_key(reservation.entitlement_pk, reservation.month), unused)
    except redis.RedisError:
        # The month's records stay right; the live counter over-counts until it is re-seeded.
        log.warning("Redis unreachable: %s unused metered units not refunded to the live counter", unused)


def month_units_live(*, entitlement_pks: list[int], now: datetime.datetime | None = None) -> dict[int, int | None]:
    """The live counters of this month per entitlement (None where Redis holds none or is unreachable)."""
    client = _redis()
    if client is None or not entitlement_pks:
        return dict.fromkeys(entitlement_pks)
    month = month_start(now or timezone.now())
    try:
        values = client.mget([_month_key(pk, month) for pk in entitlement_pks])
    except redis.RedisError:
        return dict.fromkeys(entitlement_pks)
    return {pk: None if value is None else int(value) for pk, value in zip(entitlement_pks, values, strict=True)}


# --- the record ---------------------------------------------------------------------


def usage_record_create(
    *,
    entitlement: Entitlement,
    file_pk: int | None,
    api_key_pk: int | None,
    rows: int,
    bytes_sent: int,
    units: int,
    status_code: int,
    duration_ms: int,
    ip_address: str | None,
    channel: str = UsageChannel.API,
) -> UsageRecord:
    return UsageRecord.objects.create(
        channel=channel,
        buyer_id=entitlement.buyer_id,
        entitlement=entitlement,
        listing_id=entitlement.listing_id,
        file_id=file_pk,
        api_key_id=api_key_pk,
        rows=rows,
        bytes=bytes_sent,
        units=units,
        status_code=status_code,
        duration_ms=max(0, duration_ms),
        ip_address=ip_address,
    )


# --- the monthly aggregate ------------------------------------------------------------------

SERVED = Q(status_code__gte=200, status_code__lt=300)


def usage_aggregate_month(*, month: datetime.date) -> int:
    """Recompute UsageMonthly for every entitlement with records in ``month``; return how many rows were written.

    One GROUP BY over the month's records, then one upsert (unique entitlement
    and month), so running it twice gives the same rows. ``calls``, ``rows``
    and ``bytes`` count served calls only; ``units`` are the recorded units;
    ``billable_units = max(0, units - plan.free_units_per_month)`` and, for
    metered plans, ``amount = billable_units * plan.amount`` in the plan's
    currency (0 otherwise).
    """
    start, end = _month_bounds(month)
    groups = (
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .values(
            "entitlement_id",
            "listing_id",
            "listing__merchant_id",
            "entitlement__plan__kind",
            "entitlement__plan__amount",
            "entitlement__plan__currency",
            "entitlement__plan__free_units_per_month",
        )
        .annotate(
            calls=Count("pk", filter=SERVED & Q(channel=UsageChannel.API)),
            rows_sum=Sum("rows", filter=SERVED, default=0),
            bytes_sum=Sum("bytes", filter=SERVED, default=0),
            units_sum=Sum("units", default=0),
        )
        .order_by()
    )
    months = []
    for group in groups:
        metered = group["entitlement__plan__kind"] == PlanKind.METERED
        free = group["entitlement__plan__free_units_per_month"] or 0
        billable = max(0, group["units_sum"] - free) if metered else 0
        months.append(
            UsageMonthly(
                entitlement_id=group["entitlement_id"],
                listing_id=group["listing_id"],
                merchant_id=group["listing__merchant_id"],
                month=month,
                calls=group["calls"],
                rows=group["rows_sum"],
                bytes=group["bytes_sum"],
                units=group["units_sum"],
                billable_units=billable,
                amount=billable * (group["entitlement__plan__amount"] or 0) if metered else 0,
                currency=group["entitlement__plan__currency"] or "",
            )
        )
    UsageMonthly.objects.bulk_create(
        months,
        update_conflicts=True,
        unique_fields=["entitlement", "month"],
        update_fields=["calls", "rows", "bytes", "units", "billable_units", "amount", "currency", "updated_at"],
    )
    return len(months)


def usage_aggregate(*, now: datetime.datetime | None = None) -> dict[str, int]:
    """The beat task's work: this month, and during the first day of a month the previous one too."""
    now = (now or timezone.now()).astimezone(datetime.UTC)
    month = month_start(now)
    done = {f"{month:%Y-%m}": usage_aggregate_month(month=month)}
    if now.day == 1:
        previous = month_start(
            datetime.datetime(month.year, month.month, 1, tzinfo=datetime.UTC) - datetime.timedelta(days=1)
        )
        done[f"{previous:%Y-%m}"] = usage_aggregate_month(month=previous)
    return done
