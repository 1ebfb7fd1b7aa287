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
from collections import defaultdict
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from exchange.choices import AccountKind
from exchange.models import JournalEntry, LedgerAccount, LedgerChainHead, Posting

GENESIS_HASH = "0" * 64


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
    """Recompute the hash chain and every entry's balance; report the first break."""
    prev = GENESIS_HASH
    checked = 0
    expected_sequence = 1
    entries = JournalEntry.objects.order_by("sequence").prefetch_related("postings__account")
    for entry in entries.iterator(chunk_size=chunk_size):
        legs = [(p.account.code, p.amount, p.currency) for p in entry.postings.all()]
        totals: dict[str, int] = defaultdict(int)
        for _, amount, currency in legs:
            totals[currency] += amount
        if entry.sequence != expected_sequence:
            return VerifyResult(False, checked, entry.sequence, f"sequence gap: expected {expected_sequence}")
        if any(totals.values()) or len(legs) < 2:
            return VerifyResult(False, checked, entry.sequence, f"entry does not balance: {dict(totals)}")
        if entry.prev_hash != prev:
            return VerifyResult(False, checked, entry.sequence, "previous-hash link is broken")
        canonical = _canonical(
            sequence=entry.sequence,
            idempotency_key=entry.idempotency_key,
            kind=entry.kind,
            order_id=entry.order_id,
            payout_id=entry.payout_id,
            created_at=entry.created_at,
            legs=legs,
        )
        if entry_hash(prev_hash=prev, canonical=canonical) != entry.entry_hash:
            return VerifyResult(False, checked, entry.sequence, "content does not match its hash")
        prev = entry.entry_hash
        checked += 1
        expected_sequence += 1
    head = LedgerChainHead.objects.filter(pk=1).first()
    if head and (head.sequence != checked or (checked and head.entry_hash != prev)):
        return VerifyResult(False, checked, checked + 1, "entries are missing after the last verified one")
    return VerifyResult(True, checked, None, f"{checked} entries verified")
