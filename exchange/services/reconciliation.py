"""Reconciliation: the ledger against the payment gateway's own records (read-only, rendered on demand).

Sandbox: every PAYMENT entry must have a completed SandboxCheckoutSession of
the order with the same amount and currency, and every completed payment
session must have its PAYMENT entry; every PAYOUT_SENT entry must have the
SandboxTransfer made under its payout's idempotency key (same id as the
payout's gateway reference, amount and currency) and every transfer its
entry. Every REFUND entry must have the SandboxRefund its refund's gateway
refund id names (same amount and currency), whether the exchange asked for the
refund or the sandbox made it on its own and reported it, and every
SandboxRefund its entry. Refunds the exchange created before the sandbox kept
refund records (its migration's time, ``SandboxRefund.records_since``) and
that have none are not differences: they are counted in a note, unchecked
(no records are made up for them). Every DISPUTE entry must have the
SandboxDispute its dispute's gateway dispute id names, withdrawing the same
amount and currency, and every DISPUTE_WON entry the same record closed as
won, giving that amount back; every dispute record (but one that withdrew
nothing, the charge being refunded already) must have its DISPUTE entry, and
every record closed as won its DISPUTE_WON entry. Disputes the exchange
recorded before the sandbox kept dispute records
(``SandboxDispute.records_since``) and that have none are counted in a note,
unchecked, like such refunds.

Stripe: the platform's balance transactions (listed through the SDK,
auto-paging, source expanded) are matched to PAYMENT entries by payment intent
(``Order.gateway_payment_id``), to PAYOUT_SENT entries by transfer id
(``Payout.gateway_reference``), to REFUND entries by refund id, and, as
``adjustment`` transactions whose source is a dispute (withdrawn negative,
reinstated positive), to DISPUTE and DISPUTE_WON entries by dispute id. The
balance transaction's own amount is in the platform's balance currency
(converted at its ``exchange_rate``); the ledger books the original, so the
comparison uses the expanded source's amount and currency. Stripe's bank
payouts, fees and other types are not ledger events and are ignored.

The Stripe window: both sides are read from ``since`` less
STRIPE_WINDOW_MARGIN (the ledger also by every reference Stripe listed), so a
movement Stripe recorded just before ``since`` and the ledger booked just
after it is matched rather than reported missing; a reference is reported
when either side of it falls from ``since`` on, and left out when both lie
before.

A difference names its reference on both sides; an empty difference list
means the two agree.
"""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import stripe
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from exchange.choices import AccountKind, JournalKind, SandboxSessionStatus
from exchange.models import (
    Dispute,
    JournalEntry,
    Posting,
    Refund,
    SandboxCheckoutSession,
    SandboxDispute,
    SandboxRefund,
    SandboxTransfer,
)

MISSING_IN_LEDGER = "missing_in_ledger"
MISSING_AT_GATEWAY = "missing_at_gateway"
AMOUNT_MISMATCH = "amount_mismatch"
REFERENCE_MISMATCH = "reference_mismatch"  # same payout, different transfer ids on the two sides

# What a difference is about, in report order.
_WHATS = ("payment", "payout", "refund", "dispute", "dispute_won")
# How long before ``since`` Stripe's side of a movement the ledger booked from ``since`` on may lie: the webhook
# telling the exchange about it can arrive that late (Stripe retries a failed delivery for up to three days).
STRIPE_WINDOW_MARGIN = timedelta(days=3)


@dataclass(frozen=True)
class Difference:
    kind: str  # one of the constants above
    what: str  # payment, payout, refund, dispute, dispute_won
    reference: str  # the gateway's id, or the ledger's key when the gateway has nothing
    ledger: str  # what the ledger says ("" when missing)
    gateway: str  # what the gateway says ("" when missing)

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.what} {self.reference}: ledger [{self.ledger or '-'}] gateway [{self.gateway or '-'}]"
        )


@dataclass
class ReconciliationReport:
    gateway: str
    since: datetime | None
    matched: int = 0
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _money(amount: int, currency: str) -> str:
    return f"{amount} {currency.upper()}"


def _ledger_entries(*, kind: str, since: datetime | None):
    entries = JournalEntry.objects.filter(kind=kind)
    if since is not None:
        entries = entries.filter(created_at__gte=since)
    return entries


def _entry_amounts(entries, *, account_kind: str, sign: int) -> dict[int, tuple[int, str]]:
    """(amount, currency) of each entry's leg on ``account_kind``, as a positive figure (``sign`` flips it)."""
    rows = (
        Posting.objects.filter(entry__in=entries, account__kind=account_kind)
        .values_list("entry_id", "amount", "currency")
        .order_by("entry_id")
    )
    amounts: dict[int, tuple[int, str]] = {}
    for entry_id, amount, currency in rows:
        total, _ = amounts.get(entry_id, (0, currency))
        amounts[entry_id] = (total + sign * amount, currency)
    return amounts


def _compare(report, *, what, reference, ledger: tuple[int, str] | None, gateway: tuple[int, str] | None):
    """Add the difference between the two sides to ``report``, if any; else count a match."""
    if ledger is None:
        report.differences.append(Difference(MISSING_IN_LEDGER, what, reference, "", _money(*gateway)))
    elif gateway is None:
        report.differences.append(Difference(MISSING_AT_GATEWAY, what, reference, _money(*ledger), ""))
    elif (ledger[0], ledger[1].upper()) != (gateway[0], gateway[1].upper()):
        report.differences.append(Difference(AMOUNT_MISMATCH, what, reference, _money(*ledger), _money(*gateway)))
    else:
        report.matched += 1


def _refund_booked(gateway_refund_id: str) -> bool:
    """Whether the ledger holds a REFUND entry (of any date) of a refund naming ``gateway_refund_id``."""
    pks = Refund.objects.filter(gateway_refund_id=gateway_refund_id).values_list("pk", flat=True)
    return JournalEntry.objects.filter(
        kind=JournalKind.REFUND, idempotency_key__in=[f"refund:{pk}" for pk in pks]
    ).exists()


def _reconcile_sandbox(report: ReconciliationReport, since: datetime | None) -> None:
    # Payments: the ledger's PAYMENT entries of sandbox orders against the sessions the buyers completed.
    # Subscription renewals are paid by invoices the sandbox does not keep, so they cannot be checked here.
    renewal = Q(order__idempotency_key__startswith="invoice:")
    payments = _ledger_entries(kind=JournalKind.PAYMENT, since=since).filter(order__gateway="sandbox")
    renewals = payments.filter(renewal).count()
    payments = payments.exclude(renewal)
    paid = _entry_amounts(payments, account_kind=AccountKind.GATEWAY_CLEARING, sign=1)
    ledger_by_order = {
        public_id: (session_id or f"order {order_id}", paid.get(entry_id))
        for entry_id, order_id, public_id, session_id in payments.values_list(
            "pk", "order_id", "order__public_id", "order__gateway_session_id"
        )
    }
    sessions = SandboxCheckoutSession.objects.filter(status=SandboxSessionStatus.COMPLETE, amount__gt=0).exclude(
        mode="setup"
    )
    # In scope: sessions completed from ``since`` on, and the sessions of every payment booked from then on.
    in_scope = sessions.filter(order_public_id__in=list(ledger_by_order))
    if since is not None:
        booked_before = JournalEntry.objects.filter(kind=JournalKind.PAYMENT, created_at__lt=since).values(
            "order__public_id"
        )
        in_scope = in_scope | sessions.filter(created_at__gte=since).exclude(order_public_id__in=booked_before)
    else:
        in_scope = sessions
    gateway_by_order = {s.order_public_id: (s.id, (s.amount, s.currency)) for s in in_scope}
    for public_id in sorted(set(ledger_by_order) | set(gateway_by_order), key=str):
        ledger_ref, ledger = ledger_by_order.get(public_id, ("", None))
        gateway_ref, gateway = gateway_by_order.get(public_id, ("", None))
        _compare(report, what="payment", reference=gateway_ref or ledger_ref, ledger=ledger, gateway=gateway)
    if renewals:
        report.notes.append(f"{renewals} subscription renewal payment(s) not checked: the sandbox keeps no invoices.")

    # Payouts: PAYOUT_SENT entries against the transfers, joined on the payout's idempotency key.
    sent = _ledger_entries(kind=JournalKind.PAYOUT_SENT, since=since).filter(payout__gateway="sandbox")
    sent_amounts = _entry_amounts(sent, account_kind=AccountKind.PAYOUTS_PENDING, sign=1)
    ledger_by_key = {
        key: (reference, sent_amounts.get(entry_id))
        for entry_id, key, reference in sent.values_list("pk", "payout__idempotency_key", "payout__gateway_reference")
    }
    transfers = SandboxTransfer.objects.all()
    if since is not None:
        transfers = transfers.filter(Q(created_at__gte=since) | Q(idempotency_key__in=list(ledger_by_key)))
    gateway_by_key = {t.idempotency_key: (t.id, (t.amount, t.currency)) for t in transfers}
    for key in sorted(set(ledger_by_key) | set(gateway_by_key)):
        reference, ledger = ledger_by_key.get(key, ("", None))
        transfer_id, gateway = gateway_by_key.get(key, ("", None))
        if (
            ledger is None
            and since is not None
            and JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout__idempotency_key=key).exists()
        ):
            continue  # booked before ``since``: outside this report
        if ledger is not None and gateway is not None and reference != transfer_id:
            report.differences.append(
                Difference(REFERENCE_MISMATCH, "payout", key, f"transfer {reference}", f"transfer {transfer_id}")
            )
            continue
        _compare(
            report,
            what="payout",
            reference=transfer_id or f"{key} ({reference or 'no transfer id'})",
            ledger=ledger,
            gateway=gateway,
        )

    # Refunds: REFUND entries against the sandbox's refund records, joined on the refund's gateway refund id (the
    # one the sandbox returned to the exchange's request, or named in its own report of a refund it made).
    refunds = _ledger_entries(kind=JournalKind.REFUND, since=since).filter(order__gateway="sandbox")
    refunded = _entry_amounts(refunds, account_kind=AccountKind.GATEWAY_CLEARING, sign=-1)
    entry_by_refund = {
        pk: entry_id for entry_id, key in refunds.values_list("pk", "idempotency_key") if (pk := _key_pk(key, "refund"))
    }
    ledger_by_id: dict[str, tuple[int, str]] = {}
    created_by_id: dict[str, datetime] = {}  # when the exchange created the (first) refund naming the id
    for refund in Refund.objects.filter(pk__in=list(entry_by_refund)).order_by("pk"):
        refund_id = refund.gateway_refund_id
        if not refund_id:
            continue  # a free order's refund never reached the gateway
        amount, currency = refunded.get(entry_by_refund[refund.pk], (0, refund.currency))
        total, _ = ledger_by_id.get(refund_id, (0, currency))
        ledger_by_id[refund_id] = (total + amount, currency)
        created_by_id[refund_id] = min(refund.created_at, created_by_id.get(refund_id, refund.created_at))
    records = SandboxRefund.objects.all()
    if since is not None:
        records = records.filter(Q(created_at__gte=since) | Q(id__in=list(ledger_by_id)))
    gateway_by_id = {r.id: (r.amount, r.currency) for r in records}
    records_since = SandboxRefund.records_since()
    unrecorded = 0
    for refund_id in sorted(set(ledger_by_id) | set(gateway_by_id)):
        ledger, gateway = ledger_by_id.get(refund_id), gateway_by_id.get(refund_id)
        if ledger is None and since is not None and _refund_booked(refund_id):
            continue  # booked before ``since``: outside this report
        if (
            gateway is None
            and refund_id.startswith("re_sbx_")
            and records_since is not None
            and created_by_id[refund_id] < records_since
        ):
            unrecorded += 1  # made before the sandbox kept refund records: it cannot say
            continue
        _compare(report, what="refund", reference=refund_id, ledger=ledger, gateway=gateway)
    if unrecorded:
        report.notes.append(f"{unrecorded} refund(s) made before the sandbox kept refund records were not checked.")

    _reconcile_sandbox_disputes(report, since)


def _dispute_entries(kind: str, since: datetime | None) -> dict[str, tuple[int, str]]:
    """The ledger's ``kind`` (DISPUTE or DISPUTE_WON) entries of sandbox orders booked from ``since`` on, as the
    amount they moved on gateway clearing (withdrawn, or given back), by the dispute's gateway id."""
    prefix, sign = ("dispute", -1) if kind == JournalKind.DISPUTE else ("dispute_won", 1)
    entries = _ledger_entries(kind=kind, since=since).filter(order__gateway="sandbox")
    amounts = _entry_amounts(entries, account_kind=AccountKind.GATEWAY_CLEARING, sign=sign)
    entry_by_dispute = {
        pk: entry_id for entry_id, key in entries.values_list("pk", "idempotency_key") if (pk := _key_pk(key, prefix))
    }
    by_id: dict[str, tuple[int, str]] = {}
    for pk, dispute_id, currency in Dispute.objects.filter(pk__in=list(entry_by_dispute)).values_list(
        "pk", "gateway_dispute_id", "currency"
    ):
        by_id[dispute_id] = amounts.get(entry_by_dispute[pk], (0, currency))
    return by_id


def _dispute_booked(kind: str, gateway_dispute_id: str) -> bool:
    """Whether the ledger holds a ``kind`` entry (of any date) of the dispute ``gateway_dispute_id``."""
    prefix = "dispute" if kind == JournalKind.DISPUTE else "dispute_won"
    pks = Dispute.objects.filter(gateway_dispute_id=gateway_dispute_id).values_list("pk", flat=True)
    return JournalEntry.objects.filter(kind=kind, idempotency_key__in=[f"{prefix}:{pk}" for pk in pks]).exists()


def _reconcile_sandbox_disputes(report: ReconciliationReport, since: datetime | None) -> None:
    """DISPUTE entries against the sandbox's dispute records (the amount it withdrew), and DISPUTE_WON entries
    against the records it closed as won (the same amount given back), joined on the gateway dispute id."""
    records_since = SandboxDispute.records_since()
    unrecorded: set[str] = set()
    for kind, what in ((JournalKind.DISPUTE, "dispute"), (JournalKind.DISPUTE_WON, "dispute_won")):
        ledger_by_id = _dispute_entries(kind, since)
        records = SandboxDispute.objects.all()
        if kind == JournalKind.DISPUTE_WON:
            records = records.filter(status="won")
        if since is not None:
            moved = Q(created_at__gte=since) if kind == JournalKind.DISPUTE else Q(closed_at__gte=since)
            records = records.filter(moved | Q(id__in=list(ledger_by_id)))
        gateway_by_id = {r.id: (r.amount, r.currency) for r in records}
        opened_at = dict(
            Dispute.objects.filter(gateway_dispute_id__in=list(ledger_by_id)).values_list(
                "gateway_dispute_id", "created_at"
            )
        )
        for dispute_id in sorted(set(ledger_by_id) | set(gateway_by_id)):
            ledger, gateway = ledger_by_id.get(dispute_id), gateway_by_id.get(dispute_id)
            if ledger is None and (gateway[0] == 0 or (since is not None and _dispute_booked(kind, dispute_id))):
                continue  # nothing withdrawn (all of it refunded before), or booked before ``since``
            if gateway is None and records_since is not None and opened_at[dispute_id] < records_since:
                unrecorded.add(dispute_id)  # opened before the sandbox kept dispute records: it cannot say
                continue
            _compare(report, what=what, reference=dispute_id, ledger=ledger, gateway=gateway)
    if unrecorded:
        report.notes.append(
            f"{len(unrecorded)} dispute(s) opened before the sandbox kept dispute records were not checked."
        )


def _stripe_balance_transactions(since: datetime | None):
    client = stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
    )
    params: dict = {"limit": 100, "expand": ["data.source"]}
    if since is not None:
        params["created"] = {"gte": int(since.timestamp())}
    return client.v1.balance_transactions.list(params=params).auto_paging_iter()


@dataclass
class _Record:
    """One side's figure for a reference: amount (positive), currency, and when that side recorded it."""

    amount: int
    currency: str
    at: datetime

    def add(self, amount: int, at: datetime) -> None:
        self.amount += amount
        self.at = min(self.at, at)

    @property
    def money(self) -> tuple[int, str]:
        return self.amount, self.currency


def _original_money(txn: dict, source: dict) -> tuple[int, str]:
    """What the balance transaction moved in the source's own currency, as a positive amount.

    The balance transaction's ``amount`` and ``currency`` are in the platform's
    balance currency (converted at ``exchange_rate`` when the charge, refund,
    transfer or dispute was in another currency); the ledger books the
    original, which the expanded source object carries. A charge counts what
    was captured. Without an expanded source, the balance figures are all
    there is.
    """
    if "amount" in source and source.get("currency"):
        amount = source.get("amount_captured") or source["amount"]
        return abs(int(amount)), str(source["currency"]).upper()
    return abs(int(txn["amount"])), str(txn["currency"]).upper()


def _record(side: dict[str, _Record], reference: str, money: tuple[int, str], at: datetime) -> None:
    if reference in side:
        side[reference].add(money[0], at)
    else:
        side[reference] = _Record(money[0], money[1], at)


def _stripe_gateway_side(since: datetime | None) -> tuple[dict[str, dict[str, _Record]], int]:
    """The balance transactions from ``since`` on, by what they are and their reference; and how many were ignored.

    Payments by payment intent, payouts by transfer id, refunds by refund id,
    disputes (funds withdrawn) and disputes won (funds reinstated) by dispute
    id: Stripe books both as ``adjustment`` transactions whose source is the
    dispute, withdrawn negative and reinstated positive. A dispute counts its
    amount once per direction however many transactions Stripe splits it into.
    """
    sides: dict[str, dict[str, _Record]] = {what: {} for what in _WHATS}
    ignored = 0
    for resource in _stripe_balance_transactions(since):
        txn = resource.to_dict()  # plain dicts, nested objects included (the SDK's objects are not dicts)
        source = txn.get("source")
        expanded = source if isinstance(source, dict) else {}
        source_id = str(expanded.get("id") if expanded else source)
        at = datetime.fromtimestamp(int(txn["created"]), tz=UTC)
        money = _original_money(txn, expanded)
        kind = txn["type"]
        if kind in ("charge", "payment"):
            intent = expanded.get("payment_intent")
            intent = intent.get("id") if isinstance(intent, dict) else intent
            _record(sides["payment"], str(intent or source_id), money, at)
        elif kind == "transfer":
            _record(sides["payout"], source_id, money, at)
        elif kind in ("refund", "payment_refund"):
            _record(sides["refund"], source_id, money, at)
        elif kind == "adjustment" and (expanded.get("object") == "dispute" or source_id.startswith("dp_")):
            what = "dispute" if int(txn["amount"]) < 0 else "dispute_won"
            if source_id in sides[what]:
                sides[what][source_id].at = min(sides[what][source_id].at, at)  # another part of the same movement
            else:
                sides[what][source_id] = _Record(money[0], money[1], at)
        else:
            ignored += 1
    return sides, ignored


def _key_pk(key: str, prefix: str) -> int | None:
    """The row pk in a ledger idempotency key ``<prefix>:<pk>`` (``refund:12``, ``dispute:3``), else None."""
    head, _, tail = key.partition(":")
    return int(tail) if head == prefix and tail.isdigit() else None


def _ledger_side(entries, *, sign: int, reference_of) -> dict[str, _Record]:
    """``entries``' gateway clearing legs (times ``sign``) summed by the reference ``reference_of(entry)`` names."""
    entries = list(entries)
    amounts = _entry_amounts([e.pk for e in entries], account_kind=AccountKind.GATEWAY_CLEARING, sign=sign)
    side: dict[str, _Record] = {}
    for entry in entries:
        amount, currency = amounts.get(entry.pk, (0, ""))
        _record(side, reference_of(entry), (amount, currency), entry.created_at)
    return side


def _stripe_ledger_side(
    lower: datetime | None, gateway: dict[str, dict[str, _Record]]
) -> dict[str, dict[str, _Record]]:
    """The ledger's Stripe entries booked from ``lower`` on, plus those (of any date) naming a reference the
    gateway listed, by what they are and their gateway reference (or the ledger's key when it has none)."""

    def entries(kind: str, named: Q):
        qs = JournalEntry.objects.filter(kind=kind)
        qs = (
            qs.filter(payout__gateway="stripe")
            if kind == JournalKind.PAYOUT_SENT
            else qs.filter(order__gateway="stripe")
        )
        if lower is not None:
            qs = qs.filter(Q(created_at__gte=lower) | named)
        return qs.select_related("order", "payout").order_by("sequence")

    payments = entries(JournalKind.PAYMENT, Q(order__gateway_payment_id__in=list(gateway["payment"])))
    payouts = entries(JournalKind.PAYOUT_SENT, Q(payout__gateway_reference__in=list(gateway["payout"])))
    refund_keys = {
        f"refund:{pk}": ref
        for pk, ref in Refund.objects.filter(gateway_refund_id__in=list(gateway["refund"])).values_list(
            "pk", "gateway_refund_id"
        )
    }
    disputes = dict(
        Dispute.objects.filter(
            gateway_dispute_id__in=list(gateway["dispute"]) + list(gateway["dispute_won"])
        ).values_list("pk", "gateway_dispute_id")
    )
    refunds = list(entries(JournalKind.REFUND, Q(idempotency_key__in=list(refund_keys))))
    # Refunds booked from ``lower`` on but not listed by the gateway still need their refund id.
    unnamed = [_key_pk(e.idempotency_key, "refund") for e in refunds if e.idempotency_key not in refund_keys]
    unnamed = [pk for pk in unnamed if pk]
    refund_keys.update(
        (f"refund:{pk}", ref)
        for pk, ref in Refund.objects.filter(pk__in=unnamed).values_list("pk", "gateway_refund_id")
    )
    opened = list(entries(JournalKind.DISPUTE, Q(idempotency_key__in=[f"dispute:{pk}" for pk in disputes])))
    won = list(entries(JournalKind.DISPUTE_WON, Q(idempotency_key__in=[f"dispute_won:{pk}" for pk in disputes])))
    keys = [_key_pk(e.idempotency_key, "dispute") for e in opened] + [
        _key_pk(e.idempotency_key, "dispute_won") for e in won
    ]
    disputes.update(Dispute.objects.filter(pk__in=[pk for pk in keys if pk]).values_list("pk", "gateway_dispute_id"))

    def dispute_id(entry):
        pk = _key_pk(entry.idempotency_key, "dispute") or _key_pk(entry.idempotency_key, "dispute_won")
        return disputes.get(pk) or entry.idempotency_key

    return {
        "payment": _ledger_side(
            payments,
            sign=1,
            reference_of=lambda e: e.order.gateway_payment_id or f"order {e.order_id} (no payment intent)",
        ),
        "payout": _ledger_side(
            payouts,
            sign=-1,
            reference_of=lambda e: e.payout.gateway_reference or f"payout {e.payout_id} (no transfer id)",
        ),
        "refund": _ledger_side(
            refunds, sign=-1, reference_of=lambda e: refund_keys.get(e.idempotency_key) or e.idempotency_key
        ),
        "dispute": _ledger_side(opened, sign=-1, reference_of=dispute_id),
        "dispute_won": _ledger_side(won, sign=1, reference_of=dispute_id),
    }


def _reconcile_stripe(report: ReconciliationReport, since: datetime | None) -> None:
    # Both sides are read from ``since`` less a margin, and the ledger also by the references Stripe listed, so
    # a movement Stripe recorded just before ``since`` and the ledger just after it is matched, not missing.
    # Only references with a side in the window are reported.
    lower = since - STRIPE_WINDOW_MARGIN if since is not None else None
    gateway, ignored = _stripe_gateway_side(lower)
    ledger = _stripe_ledger_side(lower, gateway)
    for what in _WHATS:
        for reference in sorted(set(ledger[what]) | set(gateway[what])):
            ours, theirs = ledger[what].get(reference), gateway[what].get(reference)
            if since is not None and all(side is None or side.at < since for side in (ours, theirs)):
                continue  # wholly before the window: an earlier report's
            _compare(
                report,
                what=what,
                reference=reference,
                ledger=ours.money if ours else None,
                gateway=theirs.money if theirs else None,
            )
    if ignored:
        report.notes.append(f"{ignored} Stripe balance transactions of other types (fees, bank payouts) ignored.")


def reconciliation_since(value: str | None) -> datetime | None:
    """``value`` (YYYY-MM-DD, or empty for no bound) as the start of that day in the site's time zone.

    Raises ValueError with a message fit for the user when it is not such a date.
    """
    value = (value or "").strip()
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'since' must be a date written YYYY-MM-DD, not {value[:40]!r}.") from None
    return timezone.make_aware(datetime.combine(day, time.min))


def reconciliation_report(*, gateway: str | None = None, since: datetime | None = None) -> ReconciliationReport:
    """Compare the ledger with ``gateway``'s records (default: settings.PAYMENT_GATEWAY) from ``since`` on.

    Raises ValueError for a gateway this report does not know. Stripe errors
    (stripe.StripeError) propagate: a report that could not read the gateway
    must not look clean.
    """
    name = gateway or settings.PAYMENT_GATEWAY
    report = ReconciliationReport(gateway=name, since=since)
    if name == "sandbox":
        _reconcile_sandbox(report, since)
    elif name == "stripe":
        _reconcile_stripe(report, since)
    else:
        raise ValueError(f"Reconciliation knows the sandbox and stripe gateways, not {name!r}.")
    return report


__all__ = [
    "AMOUNT_MISMATCH",
    "MISSING_AT_GATEWAY",
    "MISSING_IN_LEDGER",
    "REFERENCE_MISMATCH",
    "Difference",
    "ReconciliationReport",
    "reconciliation_report",
    "reconciliation_since",
]
