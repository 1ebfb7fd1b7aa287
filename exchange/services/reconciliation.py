"""Reconciliation: the ledger against the payment gateway's own records (read-only, rendered on demand).

Sandbox: every PAYMENT entry must have a completed SandboxCheckoutSession of
the order with the same amount and currency, and every completed payment
session must have its PAYMENT entry; every PAYOUT_SENT entry must have the
SandboxTransfer made under its payout's idempotency key (same id as the
payout's gateway reference, amount and currency) and every transfer its
entry. The sandbox keeps no refund records of its own (its refund ids are
derived from the idempotency key), so REFUND entries are checked against that
derivation for refunds the exchange itself asked for.

Stripe: the platform's balance transactions (listed through the SDK,
auto-paging, from ``since``) are matched to PAYMENT entries by payment intent
(``Order.gateway_payment_id``), to PAYOUT_SENT entries by transfer id
(``Payout.gateway_reference``) and to REFUND entries by refund id. Stripe's
bank payouts, fees and other types are not ledger events and are ignored.

A difference names its reference on both sides; an empty difference list
means the two agree.
"""

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time

import stripe
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from exchange.choices import AccountKind, JournalKind, SandboxSessionStatus
from exchange.models import JournalEntry, Posting, Refund, SandboxCheckoutSession, SandboxTransfer

MISSING_IN_LEDGER = "missing_in_ledger"
MISSING_AT_GATEWAY = "missing_at_gateway"
AMOUNT_MISMATCH = "amount_mismatch"
REFERENCE_MISMATCH = "reference_mismatch"  # same payout, different transfer ids on the two sides


@dataclass(frozen=True)
class Difference:
    kind: str  # one of the constants above
    what: str  # payment, payout, refund
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
    if ledger is None:
        report.differences.append(Difference(MISSING_IN_LEDGER, what, reference, "", _money(*gateway)))
    elif gateway is None:
        report.differences.append(Difference(MISSING_AT_GATEWAY, what, reference, _money(*ledger), ""))
    elif (ledger[0], ledger[1].upper()) != (gateway[0], gateway[1].upper()):
        report.differences.append(Difference(AMOUNT_MISMATCH, what, reference, _money(*ledger), _money(*gateway)))
    else:
        report.matched += 1


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

    # Refunds the exchange asked the sandbox for carry the id the sandbox derives from their key.
    refunds = _ledger_entries(kind=JournalKind.REFUND, since=since).filter(order__gateway="sandbox")
    refunded = _entry_amounts(refunds, account_kind=AccountKind.GATEWAY_CLEARING, sign=-1)
    entry_by_refund = {
        int(key.split(":", 1)[1]): entry_id
        for entry_id, key in refunds.values_list("pk", "idempotency_key")
        if key.startswith("refund:")
    }
    checked = 0
    for refund in Refund.objects.filter(pk__in=list(entry_by_refund)).exclude(source="gateway").order_by("pk"):
        if not refund.gateway_refund_id:
            continue  # a free order's refund never reached the gateway
        expected = "re_sbx_" + hashlib.sha256(refund.idempotency_key.encode()).hexdigest()[:24]
        ledger = refunded.get(entry_by_refund[refund.pk])
        gateway = (refund.amount, refund.currency) if refund.gateway_refund_id == expected else None
        _compare(report, what="refund", reference=refund.gateway_refund_id, ledger=ledger, gateway=gateway)
        checked += 1
    report.notes.append(
        "The sandbox keeps no refund records: refunds the exchange requested are checked against the refund id "
        f"the sandbox derives from their key ({checked} checked); refunds it reported itself cannot be."
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


def _reconcile_stripe(report: ReconciliationReport, since: datetime | None) -> None:
    gateway_payments: dict[str, tuple[int, str]] = defaultdict(lambda: (0, ""))
    gateway_transfers: dict[str, tuple[int, str]] = {}
    gateway_refunds: dict[str, tuple[int, str]] = {}
    ignored = 0
    for resource in _stripe_balance_transactions(since):
        txn = resource.to_dict()  # plain dicts, nested objects included (the SDK's objects are not dicts)
        source = txn.get("source")
        expanded = source if isinstance(source, dict) else {}
        source_id = expanded.get("id") if expanded else source
        amount, currency = int(txn["amount"]), str(txn["currency"]).upper()
        if txn["type"] in ("charge", "payment"):
            intent = expanded.get("payment_intent") or source_id
            total, _ = gateway_payments[intent]
            gateway_payments[intent] = (total + amount, currency)
        elif txn["type"] == "transfer":
            gateway_transfers[source_id] = (-amount, currency)  # money leaving the platform is negative
        elif txn["type"] in ("refund", "payment_refund"):
            gateway_refunds[source_id] = (-amount, currency)
        else:
            ignored += 1
    payments = _ledger_entries(kind=JournalKind.PAYMENT, since=since).filter(order__gateway="stripe")
    paid = _entry_amounts(payments, account_kind=AccountKind.GATEWAY_CLEARING, sign=1)
    ledger_payments = {
        intent or f"order {order_id} (no payment intent)": paid.get(entry_id)
        for entry_id, order_id, intent in payments.values_list("pk", "order_id", "order__gateway_payment_id")
    }
    sent = _ledger_entries(kind=JournalKind.PAYOUT_SENT, since=since).filter(payout__gateway="stripe")
    sent_amounts = _entry_amounts(sent, account_kind=AccountKind.PAYOUTS_PENDING, sign=1)
    ledger_transfers = {
        reference or f"payout {payout_id} (no transfer id)": sent_amounts.get(entry_id)
        for entry_id, payout_id, reference in sent.values_list("pk", "payout_id", "payout__gateway_reference")
    }
    refunds = _ledger_entries(kind=JournalKind.REFUND, since=since).filter(order__gateway="stripe")
    refund_amounts = _entry_amounts(refunds, account_kind=AccountKind.GATEWAY_CLEARING, sign=-1)
    refund_ids = {
        f"refund:{r.pk}": r.gateway_refund_id
        for r in Refund.objects.filter(
            pk__in=[
                k.split(":", 1)[1] for k in refunds.values_list("idempotency_key", flat=True) if k.startswith("refund:")
            ]
        )
    }
    ledger_refunds = {
        refund_ids.get(key) or key: refund_amounts.get(entry_id)
        for entry_id, key in refunds.values_list("pk", "idempotency_key")
    }
    for what, ledger_side, gateway_side in (
        ("payment", ledger_payments, dict(gateway_payments)),
        ("payout", ledger_transfers, gateway_transfers),
        ("refund", ledger_refunds, gateway_refunds),
    ):
        for reference in sorted(set(ledger_side) | set(gateway_side)):
            _compare(
                report,
                what=what,
                reference=reference,
                ledger=ledger_side.get(reference),
                gateway=gateway_side.get(reference),
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
