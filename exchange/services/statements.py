"""Merchant statements: what the exchange owed a merchant, and why, over a period (read-only).

Everything is read from the merchant's payable ledger account. Ledger amounts
are debits positive, so the statement flips the sign: a positive balance is
what the exchange owes the merchant; a negative one is what the merchant owes
(a refund or dispute after the money was paid out, netted by the next payout).

Each journal entry that touches the merchant's payable account is one line
with three figures, ``net == gross - fee``:

* net: the change to what the merchant is owed (minus the payable leg);
* gross: the money movement behind it (the sale's gross out of escrow, the
  refund or dispute leaving through the gateway, the payout);
* fee: the platform's share, derived as gross - net, so a refund after
  settlement shows the returned fee share as a negative fee.

Payouts: ``payouts`` is what was set aside for payouts in the period (their
PAYOUT_CREATED entries); a payout the gateway refused comes back to what the
merchant is owed (PAYOUT_RETURNED) and shows as ``payouts_returned``, a
negative figure under the payouts, so ``payouts + payouts_returned`` is what
actually left, and matches the payouts sent when each payout is created and
sent (or refused) within the period.

Totals: opening + sales - fees - refunds - disputes - (payouts + payouts_returned)
+ other == closing, checked against the database's own balance at the period
end on every build; the payouts and the returned payouts are also checked
against the Payout rows whose PAYOUT_CREATED and PAYOUT_RETURNED entries fall
in the period.
"""

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from django.db.models import Count, Sum
from django.utils import timezone

from common.money import format_minor
from exchange.choices import MERCHANT_ACCOUNT_KINDS, AccountKind, JournalKind, PayoutStatus
from exchange.models import JournalEntry, LedgerAccount, Payout, Posting

MAX_PERIOD_DAYS = 366
LINE_CHUNK = 500
# Which leg carries an entry's gross money movement, by entry kind.
_GROSS_LEG = {
    JournalKind.SALE: AccountKind.ESCROW_HELD,
    JournalKind.REFUND: AccountKind.GATEWAY_CLEARING,
    JournalKind.DISPUTE: AccountKind.GATEWAY_CLEARING,
    JournalKind.DISPUTE_WON: AccountKind.GATEWAY_CLEARING,
}


class StatementPeriodError(ValueError):
    """The requested period is not a valid statement period; the message says why."""


class StatementImbalance(RuntimeError):
    """The statement's figures do not add up: the ledger or this module is wrong. Never shown as a statement."""


@dataclass(frozen=True)
class Period:
    """Calendar days ``first`` to ``last``, both included, in the site's time zone."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.first, time.min))

    @property
    def end(self) -> datetime:
        """The first instant after the period (exclusive bound)."""
        return timezone.make_aware(datetime.combine(self.last + timedelta(days=1), time.min))


def _parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise StatementPeriodError(f"'{name}' must be a date written YYYY-MM-DD, not {value[:40]!r}.") from None


# The calendar ends at 9999-12-31: a period must end (and its month's end must fall) before then.
LAST_DAY = date(9999, 12, 1)


def statement_period(*, params: Mapping[str, str], today: date | None = None) -> Period:
    """The period asked for by ``from``/``to`` (YYYY-MM-DD, inclusive), default the current calendar month.

    Only one bound given: the other defaults to the start or end of that
    bound's month. Raises StatementPeriodError for a malformed date, ``from``
    after ``to``, or a period longer than MAX_PERIOD_DAYS days.
    """
    today = today or timezone.localdate()
    raw_from, raw_to = (params.get("from") or "").strip(), (params.get("to") or "").strip()
    first = _parse_day(raw_from, "from") if raw_from else None
    last = _parse_day(raw_to, "to") if raw_to else None
    for day in (first, last):
        if day is not None and day >= LAST_DAY:  # the month's end and the day after must exist
            raise StatementPeriodError(f"'from' and 'to' must be days before {LAST_DAY.isoformat()}.")
    anchor = first or last or today
    month_start = anchor.replace(day=1)
    month_end = (month_start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    first = first or (last.replace(day=1) if last else month_start)
    last = last or month_end
    if first > last:
        raise StatementPeriodError(f"'from' ({first}) is after 'to' ({last}).")
    days = (last - first).days + 1
    if days > MAX_PERIOD_DAYS:
        raise StatementPeriodError(f"A statement covers at most {MAX_PERIOD_DAYS} days; {first} to {last} is {days}.")
    return Period(first, last)


@dataclass(frozen=True)
class StatementLine:
    at: datetime
    sequence: int
    kind: str
    kind_label: str
    reference: str  # the order's reference, or "payout <pk>"
    currency: str
    gross: int
    fee: int
    net: int

    def formatted(self, amount: int) -> str:
        return format_minor(amount, self.currency)

    @property
    def gross_display(self) -> str:
        return self.formatted(self.gross)

    @property
    def fee_display(self) -> str:
        return self.formatted(self.fee)

    @property
    def net_display(self) -> str:
        return self.formatted(self.net)


@dataclass
class CurrencyTotals:
    currency: str
    opening: int = 0
    sales: int = 0
    fees: int = 0
    refunds: int = 0
    disputes: int = 0
    payouts: int = 0
    payouts_returned: int = 0  # refused by the gateway and owed again: negative, under the payouts
    other: int = 0
    closing: int = 0
    payouts_sent: int = 0  # Payout rows sent in the period (the gateway side of ``payouts``)
    lines: int = 0

    def figures(self) -> list[tuple[str, str, int, str]]:
        """(key, label, minor units, formatted) in statement order, for pages and CSV."""
        rows = [
            ("opening", "Opening balance", self.opening),
            ("sales", "Sales (gross)", self.sales),
            ("fees", "Platform fees", self.fees),
            ("refunds", "Refunds after settlement", self.refunds),
            ("disputes", "Disputes after settlement (net of disputes won)", self.disputes),
            ("payouts", "Payouts", self.payouts),
            ("payouts_returned", "Payouts returned by the gateway (owed again)", self.payouts_returned),
            ("other", "Other adjustments", self.other),
            ("closing", "Closing balance", self.closing),
            ("payouts_sent", "Payouts sent in the period", self.payouts_sent),
        ]
        return [(key, label, amount, format_minor(amount, self.currency)) for key, label, amount in rows]


@dataclass
class Statement:
    merchant: object
    period: Period
    totals: list[CurrencyTotals] = field(default_factory=list)


def _payable_accounts(merchant) -> list[LedgerAccount]:
    # Both of the merchant's accounts: the statement shows its net position (owed less owed back).
    return list(LedgerAccount.objects.filter(kind__in=MERCHANT_ACCOUNT_KINDS, merchant=merchant))


def _payable_postings(accounts, period: Period):
    # Netting moves money between the merchant's own two accounts: its position does not change, no line.
    return Posting.objects.filter(
        account__in=accounts, entry__created_at__gte=period.start, entry__created_at__lt=period.end
    ).exclude(entry__kind=JournalKind.RECEIVABLE_NETTED)


def _payouts_by_entry(merchant, period: Period, kind: str) -> dict[str, int]:
    """The amounts, per currency, of the merchant's payouts whose ``kind`` entry falls in ``period``."""
    return dict(
        Payout.objects.filter(
            merchant=merchant,
            journal_entries__kind=kind,
            journal_entries__created_at__gte=period.start,
            journal_entries__created_at__lt=period.end,
        )
        .values_list("currency")
        .annotate(s=Sum("amount"))
    )


def statement_build(*, merchant, period: Period) -> Statement:
    """The merchant's statement totals for ``period``, one CurrencyTotals per currency ever booked.

    Raises StatementImbalance if opening + movements differs from the balance
    the database sums at the period end, or if the payouts booked (or
    returned) differ from the Payout rows whose creation (or return) entry
    falls in the period.
    """
    accounts = _payable_accounts(merchant)
    statement = Statement(merchant=merchant, period=period)
    if not accounts:
        return statement
    before = Posting.objects.filter(account__in=accounts)
    opening = dict(before.filter(entry__created_at__lt=period.start).values_list("currency").annotate(s=Sum("amount")))
    closing = dict(before.filter(entry__created_at__lt=period.end).values_list("currency").annotate(s=Sum("amount")))
    in_period = _payable_postings(accounts, period)
    # Every leg of the period's entries touching this merchant's payable, summed by entry kind and account kind.
    legs = (
        Posting.objects.filter(entry__in=in_period.values("entry_id"))
        .values_list("currency", "entry__kind", "account__kind", "account__merchant_id")
        .annotate(s=Sum("amount"))
    )
    net: dict[tuple[str, str], int] = defaultdict(int)
    gross: dict[tuple[str, str], int] = defaultdict(int)
    for currency, kind, account_kind, account_merchant, amount in legs:
        if account_kind in MERCHANT_ACCOUNT_KINDS and account_merchant == merchant.pk:
            net[currency, kind] -= amount
        elif _GROSS_LEG.get(kind) == account_kind:
            gross[currency, kind] += amount
    line_counts = dict(in_period.values_list("currency").annotate(n=Count("entry_id", distinct=True)))
    sent = dict(
        Payout.objects.filter(
            merchant=merchant, status=PayoutStatus.SENT, sent_at__gte=period.start, sent_at__lt=period.end
        )
        .values_list("currency")
        .annotate(s=Sum("amount"))
    )
    booked = _payouts_by_entry(merchant, period, JournalKind.PAYOUT_CREATED)
    returned = _payouts_by_entry(merchant, period, JournalKind.PAYOUT_RETURNED)
    for currency in sorted(set(opening) | set(closing)):
        t = CurrencyTotals(currency=currency, opening=-(opening.get(currency) or 0))
        t.closing = -(closing.get(currency) or 0)
        t.lines = line_counts.get(currency, 0)
        t.payouts_sent = sent.get(currency, 0)
        for (cur, kind), movement in net.items():
            if cur != currency:
                continue
            if kind in _GROSS_LEG:
                kind_gross = gross[cur, kind]
                t.fees += kind_gross - movement
                if kind == JournalKind.SALE:
                    t.sales += kind_gross
                elif kind == JournalKind.REFUND:
                    t.refunds -= kind_gross
                else:
                    t.disputes -= kind_gross
            elif kind == JournalKind.PAYOUT_CREATED:
                t.payouts -= movement
            elif kind == JournalKind.PAYOUT_RETURNED:
                t.payouts_returned -= movement  # the movement is positive (owed again): negative under the payouts
            else:
                t.other += movement
        computed = t.opening + t.sales - t.fees - t.refunds - t.disputes - (t.payouts + t.payouts_returned) + t.other
        if computed != t.closing:
            raise StatementImbalance(
                f"{merchant} {currency} {period.first}..{period.last}: opening + movements = {computed}, "
                f"but the ledger's balance at the period end is {t.closing}."
            )
        if t.payouts != booked.get(currency, 0):
            raise StatementImbalance(
                f"{merchant} {currency}: payouts booked {t.payouts} differ from payout rows {booked.get(currency, 0)}."
            )
        if -t.payouts_returned != returned.get(currency, 0):
            raise StatementImbalance(
                f"{merchant} {currency}: payouts returned {-t.payouts_returned} differ from returned payout rows "
                f"{returned.get(currency, 0)}."
            )
        statement.totals.append(t)
    return statement


def _lines_for(entries: list[JournalEntry], *, merchant_pk: int, currency: str | None = None) -> list[StatementLine]:
    """Statement lines for ``entries`` (with order and payout selected), one query for all their legs."""
    by_entry: dict[int, list[tuple[str, int | None, int, str]]] = defaultdict(list)
    legs = Posting.objects.filter(entry__in=[e.pk for e in entries]).values_list(
        "entry_id", "account__kind", "account__merchant_id", "amount", "currency"
    )
    for entry_id, account_kind, account_merchant, amount, cur in legs:
        by_entry[entry_id].append((account_kind, account_merchant, amount, cur))
    lines = []
    for entry in entries:
        currencies = sorted(
            {
                cur
                for kind, owner, _, cur in by_entry[entry.pk]
                if kind in MERCHANT_ACCOUNT_KINDS and owner == merchant_pk
            }
        )
        for cur in currencies:
            if currency and cur != currency:
                continue
            net = -sum(
                amount
                for kind, owner, amount, c in by_entry[entry.pk]
                if c == cur and kind in MERCHANT_ACCOUNT_KINDS and owner == merchant_pk
            )
            gross_kind = _GROSS_LEG.get(entry.kind)
            gross = (
                sum(amount for kind, _, amount, c in by_entry[entry.pk] if c == cur and kind == gross_kind)
                if gross_kind
                else net
            )
            if entry.order_id:
                reference = entry.order.reference
            elif entry.payout_id:
                reference = f"payout {entry.payout_id}"
            else:
                reference = ""
            lines.append(
                StatementLine(
                    at=entry.created_at,
                    sequence=entry.sequence,
                    kind=entry.kind,
                    kind_label=JournalKind(entry.kind).label if entry.kind in JournalKind.values else entry.kind,
                    reference=reference,
                    currency=cur,
                    gross=gross,
                    fee=gross - net,
                    net=net,
                )
            )
    return lines


def statement_entries(*, merchant, period: Period):
    """The period's journal entries moving ``merchant``'s position (payable, receivable), in ledger order."""
    entry_ids = _payable_postings(_payable_accounts(merchant), period).values("entry_id")
    return JournalEntry.objects.filter(pk__in=entry_ids).select_related("order", "payout").order_by("sequence")


def statement_lines_for_page(*, merchant, entries) -> list[StatementLine]:
    """Lines for one page of ``statement_entries``."""
    return _lines_for(list(entries), merchant_pk=merchant.pk)


def statement_lines(*, merchant, period: Period) -> Iterator[StatementLine]:
    """Every line of the period, in ledger order, read in chunks of LINE_CHUNK entries (bounded memory)."""
    entries = statement_entries(merchant=merchant, period=period)
    last = 0
    while True:
        chunk = list(entries.filter(sequence__gt=last)[:LINE_CHUNK])
        if not chunk:
            return
        yield from _lines_for(chunk, merchant_pk=merchant.pk)
        last = chunk[-1].sequence


CSV_HEADER = [
    "date",
    "sequence",
    "kind",
    "reference",
    "currency",
    "gross_minor",
    "fee_minor",
    "net_minor",
    "gross",
    "fee",
    "net",
]


def statement_csv_rows(*, merchant, period: Period) -> Iterator[list[str]]:
    """The CSV rows: header, one row per line, a blank row, then the totals per currency.

    Amounts appear twice: integer minor units (for machines) and formatted
    (for people). Totals rows put the figure in ``net_minor``/``net``.
    """
    statement = statement_build(merchant=merchant, period=period)
    yield CSV_HEADER
    for line in statement_lines(merchant=merchant, period=period):
        yield [
            line.at.astimezone(timezone.get_current_timezone()).isoformat(timespec="seconds"),
            str(line.sequence),
            line.kind,
            line.reference,
            line.currency,
            str(line.gross),
            str(line.fee),
            str(line.net),
            line.formatted(line.gross),
            line.formatted(line.fee),
            line.formatted(line.net),
        ]
    yield []
    for totals in statement.totals:
        for key, _, amount, formatted in totals.figures():
            yield [
                f"{period.first}..{period.last}",
                "",
                f"total:{key}",
                "",
                totals.currency,
                "",
                "",
                str(amount),
                "",
                "",
                formatted,
            ]
