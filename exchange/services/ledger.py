"""The double-entry ledger: balanced, append-only, hash-chained journal entries.

Sign convention: a posting's amount is positive for a debit and negative for a
credit, in integer minor units; the postings of an entry sum to zero per
currency. Each entry stores sha256(previous entry hash || canonical content),
so changing any stored entry breaks the chain from that entry on.

Every write locks the chain head row, which orders all ledger writers one
after another. That is simple and correct; batching entries under one chained
root so settlement workers can write in parallel is the settlement issue's
job (DESIGN.md §5.5).
"""

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from exchange.choices import AccountKind
from exchange.models import JournalEntry, LedgerAccount, LedgerChainHead, LedgerVerification, Posting

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Who may ask for a stored verification (LedgerVerification.trigger).
VERIFICATION_TRIGGERS = ("command", "admin", "schedule")


class UnbalancedEntry(ValueError):
    pass


def account_get(*, kind: str, merchant=None) -> LedgerAccount:
    """The ledger account of ``kind`` (per merchant for merchant accounts), created on first use."""
    if kind == AccountKind.MERCHANT_PAYABLE:
        if merchant is None:
            raise ValueError("merchant_payable accounts belong to a merchant")
        code, name = f"{kind}:{merchant.pk}", f"Payable to {merchant.name}"
    else:
        code, name = kind, AccountKind(kind).label
    account, _ = LedgerAccount.objects.get_or_create(
        code=code, defaults={"kind": kind, "merchant": merchant, "name": name}
    )
    return account


def _canonical(*, sequence, idempotency_key, kind, order_id, payout_id, created_at, legs) -> bytes:
    document = {
        "sequence": sequence,
        "key": idempotency_key,
        "kind": kind,
        "order": order_id,
        "payout": payout_id,
        "created_at": created_at.isoformat(),
        "postings": sorted([code, amount, currency] for code, amount, currency in legs),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def entry_hash(*, prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


def _lock_head() -> LedgerChainHead:
    head = LedgerChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        try:
            with transaction.atomic():
                LedgerChainHead.objects.create(pk=1)
        except IntegrityError:
            pass  # another writer created it first
        head = LedgerChainHead.objects.select_for_update().get(pk=1)
    return head


@dataclass(frozen=True)
class EntrySpec:
    """One journal entry to post with ``journal_post_many``."""

    idempotency_key: str
    kind: str
    postings: list[tuple[LedgerAccount, int, str]]
    order: object = None
    payout: object = None
    memo: str = ""


def journal_post(
    *,
    idempotency_key: str,
    kind: str,
    postings: list[tuple[LedgerAccount, int, str]],
    order=None,
    payout=None,
    memo: str = "",
) -> tuple[JournalEntry, bool]:
    """Post a balanced entry once per ``idempotency_key``; return (entry, created).

    A repeat with a known key returns the first entry and writes nothing.
    Raises UnbalancedEntry if the postings do not sum to zero per currency or
    there are fewer than two non-zero legs.
    """
    spec = EntrySpec(idempotency_key, kind, postings, order=order, payout=payout, memo=memo)
    return journal_post_many([spec])[0]


def _balanced_legs(spec: EntrySpec) -> list[tuple[LedgerAccount, int, str]]:
    legs = [(account, amount, currency) for account, amount, currency in spec.postings if amount != 0]
    totals: dict[str, int] = defaultdict(int)
    for _, amount, currency in legs:
        totals[currency] += amount
    if len(legs) < 2 or any(totals.values()):
        raise UnbalancedEntry(f"Entry {spec.idempotency_key} does not balance: {dict(totals)}")
    return legs


def journal_post_many(specs: list[EntrySpec]) -> list[tuple[JournalEntry, bool]]:
    """Post several balanced entries, chained in order, each once per idempotency key; all or none.

    ``journal_post``'s rules for each entry; every entry is checked before
    anything is written. The chain head is locked once and the entries and
    their postings are inserted in one statement each, so a batch costs the
    same handful of queries as a single entry. Returns (entry, created) in the
    order of ``specs``; a key seen earlier in the same batch counts as a repeat.
    """
    legs_by_spec = [_balanced_legs(spec) for spec in specs]
    if not specs:
        return []
    with transaction.atomic():
        head = _lock_head()
        keys = [spec.idempotency_key for spec in specs]
        existing = {entry.idempotency_key: entry for entry in JournalEntry.objects.filter(idempotency_key__in=keys)}
        created_at = timezone.now()
        sequence, prev_hash = head.sequence, head.entry_hash
        new_entries: list[JournalEntry] = []
        new_legs: list[list[tuple[LedgerAccount, int, str]]] = []
        results: list[tuple[str, JournalEntry | None]] = []
        for spec, legs in zip(specs, legs_by_spec, strict=True):
            if spec.idempotency_key in existing:
                results.append((spec.idempotency_key, None))
                continue
            sequence += 1
            canonical = _canonical(
                sequence=sequence,
                idempotency_key=spec.idempotency_key,
                kind=spec.kind,
                order_id=spec.order.pk if spec.order else None,
                payout_id=spec.payout.pk if spec.payout else None,
                created_at=created_at,
                legs=[(account.code, amount, currency) for account, amount, currency in legs],
            )
            digest = entry_hash(prev_hash=prev_hash, canonical=canonical)
            entry = JournalEntry(
                sequence=sequence,
                idempotency_key=spec.idempotency_key,
                kind=spec.kind,
                order=spec.order,
                payout=spec.payout,
                memo=spec.memo[:300],
                created_at=created_at,
                prev_hash=prev_hash,
                entry_hash=digest,
            )
            existing[spec.idempotency_key] = entry
            new_entries.append(entry)
            new_legs.append(legs)
            results.append((spec.idempotency_key, entry))
            prev_hash = digest
        if new_entries:
            JournalEntry.objects.bulk_create(new_entries)
            Posting.objects.bulk_create(
                [
                    Posting(entry=entry, account=account, amount=amount, currency=currency)
                    for entry, legs in zip(new_entries, new_legs, strict=True)
                    for account, amount, currency in legs
                ]
            )
            head.sequence, head.entry_hash = sequence, prev_hash
            head.save(update_fields=["sequence", "entry_hash"])
    return [(entry, True) if entry is not None else (existing[key], False) for key, entry in results]


def account_balance(*, account: LedgerAccount, currency: str) -> int:
    return Posting.objects.filter(account=account, currency=currency).aggregate(s=Sum("amount"))["s"] or 0


@dataclass
class VerifyResult:
    ok: bool
    entries_checked: int
    first_break: int | None = None
    message: str = ""


def ledger_verify(*, chunk_size: int = 2000) -> VerifyResult:
    """Recompute the hash chain and every balance; report the first break.

    Walks the entries in sequence order up to the chain head as it stood when
    the check began (entries appended meanwhile are left for the next run),
    in keyset-paged chunks of ``chunk_size`` entries with their postings, so
    memory stays bounded by the chunk whatever the ledger's size. For each
    entry, in this order: its sequence follows the previous one, it has at
    least two postings summing to zero per currency, its ``prev_hash`` is the
    previous entry's hash, and its stored hash matches its recomputed content.
    The first entry failing any of these is ``first_break``. Afterwards the
    last entry must be the chain head, and the whole ledger (one aggregate over
    every posting up to the head) must sum to zero per currency.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    head = LedgerChainHead.objects.filter(pk=1).values("sequence", "entry_hash").first()
    limit = head["sequence"] if head else None
    prev = GENESIS_HASH
    checked = 0
    last_sequence = 0
    totals: dict[str, int] = defaultdict(int)
    fields = ("id", "sequence", "idempotency_key", "kind", "order_id", "payout_id", "created_at", "prev_hash")
    while True:
        page = JournalEntry.objects.filter(sequence__gt=last_sequence).order_by("sequence")
        if limit is not None:
            page = page.filter(sequence__lte=limit)
        entries = list(page.values_list(*fields, "entry_hash")[:chunk_size])
        if not entries:
            break
        legs_by_entry: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
        # The chunk's postings by sequence range (a join) rather than an IN list of thousands of entry ids.
        postings = Posting.objects.filter(
            entry__sequence__gt=last_sequence, entry__sequence__lte=entries[-1][1]
        ).order_by("pk")
        for entry_id, code, amount, currency in postings.values_list("entry_id", "account__code", "amount", "currency"):
            legs_by_entry[entry_id].append((code, amount, currency))
        for entry_id, sequence, key, kind, order_id, payout_id, created_at, prev_hash, stored_hash in entries:
            legs = legs_by_entry.get(entry_id, [])
            entry_totals: dict[str, int] = defaultdict(int)
            for _, amount, currency in legs:
                entry_totals[currency] += amount
            if sequence != checked + 1:
                # The break is the missing entry, not the one found after the gap.
                return VerifyResult(
                    False, checked, checked + 1, f"entry #{checked + 1} is missing (next is #{sequence})"
                )
            if len(legs) < 2 or any(entry_totals.values()):
                imbalance = {currency: total for currency, total in entry_totals.items() if total}
                return VerifyResult(
                    False, checked, sequence, f"entry does not balance: {len(legs)} postings, off by {imbalance}"
                )
            if prev_hash != prev:
                return VerifyResult(False, checked, sequence, "previous-hash link is broken")
            canonical = _canonical(
                sequence=sequence,
                idempotency_key=key,
                kind=kind,
                order_id=order_id,
                payout_id=payout_id,
                created_at=created_at,
                legs=legs,
            )
            if entry_hash(prev_hash=prev, canonical=canonical) != stored_hash:
                return VerifyResult(False, checked, sequence, "content does not match its hash")
            for currency, total in entry_totals.items():
                totals[currency] += total
            prev = stored_hash
            checked += 1
        last_sequence = entries[-1][1]
    if head is None:
        if checked:
            return VerifyResult(False, checked, None, "entries exist but the chain head is missing")
        return VerifyResult(True, 0, None, "0 entries verified (the ledger is empty)")
    if head["sequence"] != checked or (checked and head["entry_hash"] != prev):
        return VerifyResult(
            False, checked, checked + 1, f"the chain head is #{head['sequence']} but the entries end at #{checked}"
        )
    # Independent of the per-entry walk: the database's own sum over every posting up to the head.
    ledger_sums = (
        Posting.objects.filter(entry__sequence__lte=head["sequence"])
        .values("currency")
        .annotate(total=Sum("amount"))
        .exclude(total=0)
    )
    off = {row["currency"]: row["total"] for row in ledger_sums}
    if off or any(totals.values()):
        return VerifyResult(False, checked, None, f"the ledger does not sum to zero per currency: {off}")
    return VerifyResult(True, checked, None, f"{checked} entries verified, balanced in {len(totals)} currencies")


def ledger_verify_record(*, trigger: str) -> LedgerVerification:
    """Run ``ledger_verify`` and store its outcome as a LedgerVerification; return the row.

    ``trigger`` says who asked: one of VERIFICATION_TRIGGERS (ValueError
    otherwise, nothing stored). The row is created before the walk starts, so a
    run that dies midway leaves a row with ``finished_at`` empty and ``ok``
    False. A break is logged at ERROR level (the exchange's alerting).
    """
    if trigger not in VERIFICATION_TRIGGERS:
        raise ValueError(f"trigger must be one of {', '.join(VERIFICATION_TRIGGERS)}, not {trigger!r}")
    record = LedgerVerification.objects.create(trigger=trigger, ok=False, message="running")
    result = ledger_verify()
    record.ok = result.ok
    record.entries_checked = result.entries_checked
    record.first_break_sequence = result.first_break
    record.message = result.message
    record.finished_at = timezone.now()
    record.save(update_fields=["ok", "entries_checked", "first_break_sequence", "message", "finished_at"])
    if not result.ok:
        logger.error(
            "ledger verification %s found a break at entry #%s: %s", record.pk, result.first_break, result.message
        )
    return record
