"""The double-entry ledger: balanced, append-only journal entries, hashed into chained blocks.

Sign convention: a posting's amount is positive for a debit and negative for a
credit, in integer minor units; the postings of an entry sum to zero per
currency.

Hashing (DESIGN.md §5.5): the entries one call writes form a block. Inside the
block, entry n stores sha256(hash of entry n-1 || its canonical content), entry
1 starting from the genesis hash; the last entry's hash is the block's root.
Blocks are chained: each stores sha256(previous block's hash || its header).
Changing, adding or removing any stored entry breaks its own hash, its block's
root or its block's count, and ``ledger_verify`` names it.

Writers build, number (a PostgreSQL sequence) and insert their entries in
parallel; only appending the block takes the chain head's row lock, as the
transaction's last statement, so settlement workers overlap everything but a
one-row insert and the commit.
"""

import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from common.canonical import canonical_json
from common.db import rows_copy
from exchange.choices import AccountKind
from exchange.models import JournalEntry, LedgerAccount, LedgerBlock, LedgerChainHead, LedgerVerification, Posting

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Who may ask for a stored verification (LedgerVerification.trigger).
VERIFICATION_TRIGGERS = ("command", "admin", "schedule")


class UnbalancedEntry(ValueError):
    pass


class NotAReversal(ValueError):
    """An entry that names another as the one it reverses does not negate it leg for leg, or it is reversed already."""


MERCHANT_ACCOUNT_NAMES = {
    AccountKind.MERCHANT_PAYABLE: "Payable to {}",
    AccountKind.MERCHANT_RECEIVABLE: "Receivable from {}",
}


def account_get(*, kind: str, merchant=None) -> LedgerAccount:
    """The ledger account of ``kind`` (per merchant for merchant accounts), created on first use."""
    if kind in MERCHANT_ACCOUNT_NAMES:
        if merchant is None:
            raise ValueError(f"{kind} accounts belong to a merchant")
        code, name = f"{kind}:{merchant.pk}", MERCHANT_ACCOUNT_NAMES[kind].format(merchant.name)
    else:
        code, name = kind, AccountKind(kind).label
    account, _ = LedgerAccount.objects.get_or_create(
        code=code, defaults={"kind": kind, "merchant": merchant, "name": name}
    )
    return account


def merchant_accounts(*, kind: str, merchants: dict[int, str]) -> dict[int, LedgerAccount]:
    """``account_get`` for many merchants at once (``merchants``: name by pk): their accounts of ``kind`` by merchant
    pk, missing ones created."""
    if kind not in MERCHANT_ACCOUNT_NAMES:
        raise ValueError(f"{kind} is not a merchant account kind")
    by_code = {f"{kind}:{pk}": (pk, name) for pk, name in merchants.items()}
    found = {account.merchant_id: account for account in LedgerAccount.objects.filter(code__any_of=list(by_code))}
    missing = [
        LedgerAccount(code=code, kind=kind, merchant_id=pk, name=MERCHANT_ACCOUNT_NAMES[kind].format(name))
        for code, (pk, name) in by_code.items()
        if pk not in found
    ]
    if missing:
        LedgerAccount.objects.bulk_create(missing, ignore_conflicts=True)  # a concurrent writer may create one too
        found = {account.merchant_id: account for account in LedgerAccount.objects.filter(code__any_of=list(by_code))}
    return found


def _canonical(
    *, sequence, idempotency_key, kind, order_id, payout_id, created_at, legs, reverses_id=None, memo=None
) -> bytes:
    """An entry's canonical content, which its hash covers.

    Entries written since the memo was covered carry ``memo`` (its stored,
    truncated text; empty included); entries written before hash without it
    (``memo=None``) and still check: see ``_hash_matches``.
    """
    document = {
        "sequence": sequence,
        "key": idempotency_key,
        "kind": kind,
        "order": order_id,
        "payout": payout_id,
        "created_at": created_at.isoformat(),
        "postings": sorted([code, amount, currency] for code, amount, currency in legs),
    }
    if reverses_id is not None:  # only a reversal has the key, so every entry hashed before it existed still checks
        document["reverses"] = reverses_id
    if memo is not None:
        document["memo"] = memo
    return canonical_json(document, ascii_only=True)


def _hash_matches(*, stored: str, prev_hash: str, memo: str, **content) -> bool:
    """Whether ``stored`` is the hash of this content after ``prev_hash``: with its memo (every entry written
    since the memo was covered), or else without it (the entries written before).

    Accepting the older form loses nothing for newer entries: their stored hash
    covers the memo, so once the memo is changed neither form gives that hash
    back, and a forger who rewrites the hash instead breaks the next entry's
    link and the block's root, as for any other field.
    """
    if entry_hash(prev_hash=prev_hash, canonical=_canonical(memo=memo, **content)) == stored:
        return True
    return entry_hash(prev_hash=prev_hash, canonical=_canonical(**content)) == stored


def entry_hash(*, prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


def _entry_content(entry: JournalEntry) -> dict:
    """A stored entry's hashed fields but the memo, read with its postings now (one query)."""
    return {
        "sequence": entry.sequence,
        "idempotency_key": entry.idempotency_key,
        "kind": entry.kind,
        "order_id": entry.order_id,
        "payout_id": entry.payout_id,
        "created_at": entry.created_at,
        "legs": list(Posting.objects.filter(entry=entry).values_list("account__code", "amount", "currency")),
        "reverses_id": entry.reverses_id,
    }


def entry_rehash(entry: JournalEntry, *, prev_hash: str | None = None) -> str:
    """The hash a stored ``entry`` would be given now (memo covered) after ``prev_hash`` (its own stored link by
    default): what a forger rewriting the chain would store. One query."""
    canonical = _canonical(memo=entry.memo, **_entry_content(entry))
    return entry_hash(prev_hash=entry.prev_hash if prev_hash is None else prev_hash, canonical=canonical)


def entry_hash_checks(entry: JournalEntry) -> bool:
    """Whether a stored ``entry`` still matches its own stored hash (its content, postings and memo). One query."""
    return _hash_matches(stored=entry.entry_hash, prev_hash=entry.prev_hash, memo=entry.memo, **_entry_content(entry))


def block_hash(*, prev_hash: str, sequence: int, entry_count: int, root_hash: str, created_at) -> str:
    """A block's hash: sha256(previous block's hash || canonical header)."""
    header = json.dumps(
        {"sequence": sequence, "entries": entry_count, "root": root_hash, "created_at": created_at.isoformat()},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return hashlib.sha256(prev_hash.encode() + header).hexdigest()


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
    reverses: object = None  # the JournalEntry this one negates leg for leg (journal_reverse)


def journal_post(
    *,
    idempotency_key: str,
    kind: str,
    postings: list[tuple[LedgerAccount, int, str]],
    order=None,
    payout=None,
    memo: str = "",
    reverses=None,
) -> tuple[JournalEntry, bool]:
    """Post a balanced entry once per ``idempotency_key``; return (entry, created).

    A repeat with a known key returns the first entry and writes nothing.
    Raises UnbalancedEntry if the postings do not sum to zero per currency or
    there are fewer than two non-zero legs, and NotAReversal if ``reverses``
    names an entry these postings do not negate leg for leg, or one reversed
    already.
    """
    spec = EntrySpec(idempotency_key, kind, postings, order=order, payout=payout, memo=memo, reverses=reverses)
    return journal_post_many([spec])[0]


def journal_reverse(
    *, entry: JournalEntry, idempotency_key: str, kind: str, memo: str = "", order=None, payout=None
) -> tuple[JournalEntry, bool]:
    """Post the exact reverse of ``entry`` (each of its legs negated) as a ``kind`` entry naming it; once.

    The ledger is append-only: a correction is this reversing entry, and the
    original stays as it was. An entry is reversed at most once
    (NotAReversal for a second reversal under another key; the same key is a
    repeat and returns the first).
    """
    legs = [
        (posting.account, -posting.amount, posting.currency)
        for posting in entry.postings.select_related("account").order_by("pk")
    ]
    return journal_post(
        idempotency_key=idempotency_key,
        kind=kind,
        postings=legs,
        order=order,
        payout=payout,
        memo=memo,
        reverses=entry,
    )


def _check_reversals(fresh: list[tuple[EntrySpec, list]]) -> None:
    """NotAReversal unless each reversing spec negates its original leg for leg and the original is not reversed."""
    reversing = [(spec, legs) for spec, legs in fresh if spec.reverses is not None]
    if not reversing:
        return
    originals = {spec.reverses.pk for spec, _ in reversing}
    legs_of: dict[int, Counter] = defaultdict(Counter)
    for entry_id, account_id, amount, currency in Posting.objects.filter(entry_id__in=originals).values_list(
        "entry_id", "account_id", "amount", "currency"
    ):
        legs_of[entry_id][(account_id, -amount, currency)] += 1
    taken = dict(JournalEntry.objects.filter(reverses_id__in=originals).values_list("reverses_id", "idempotency_key"))
    seen: set[int] = set()
    for spec, legs in reversing:
        original = spec.reverses
        if original.pk in taken or original.pk in seen:
            raise NotAReversal(
                f"Entry #{original.sequence} is reversed already (by {taken.get(original.pk, spec.idempotency_key)})."
            )
        seen.add(original.pk)
        if Counter((account.pk, amount, currency) for account, amount, currency in legs) != legs_of[original.pk]:
            raise NotAReversal(
                f"Entry {spec.idempotency_key} does not negate entry #{original.sequence} leg for leg,"
                " so it cannot name it as the entry it reverses."
            )


def _balanced_legs(spec: EntrySpec) -> list[tuple[LedgerAccount, int, str]]:
    legs = [(account, amount, currency) for account, amount, currency in spec.postings if amount != 0]
    totals: dict[str, int] = defaultdict(int)
    for _, amount, currency in legs:
        totals[currency] += amount
    if len(legs) < 2 or any(totals.values()):
        raise UnbalancedEntry(f"Entry {spec.idempotency_key} does not balance: {dict(totals)}")
    return legs


def _allocate(count: int) -> tuple[int, list[tuple[int, int]]]:
    """A block id and ``count`` (entry id, entry sequence) pairs, taken without any lock (PostgreSQL sequences).

    Elsewhere (the embedded SQLite default, one writer at a time) they follow
    the largest ones stored.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('exchange_ledgerblock', 'id')),"
                " nextval(pg_get_serial_sequence('exchange_journalentry', 'id')),"
                " nextval('exchange_journal_sequence') FROM generate_series(1, %s)",
                [count],
            )
            rows = cursor.fetchall()
        # One block id is enough: the others drawn by this statement are simply never used.
        return rows[0][0], sorted((entry_id, sequence) for _, entry_id, sequence in rows)
    block_id = (LedgerBlock.objects.aggregate(m=Max("id"))["m"] or 0) + 1
    last_id = JournalEntry.objects.aggregate(m=Max("id"))["m"] or 0
    last = JournalEntry.objects.aggregate(m=Max("sequence"))["m"] or 0
    return block_id, [(last_id + n, last + n) for n in range(1, count + 1)]


ENTRY_COLUMNS = (
    "id",
    "sequence",
    "block_id",
    "position",
    "idempotency_key",
    "kind",
    "order_id",
    "payout_id",
    "memo",
    "created_at",
    "prev_hash",
    "entry_hash",
    "reverses_id",
)


@dataclass
class PendingBlock:
    """Entries written by ``journal_entries_write`` whose block is not appended to the chain yet."""

    block_id: int | None
    entries: list[JournalEntry] = field(default_factory=list)
    results: list[tuple[JournalEntry, bool]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Ledger rows this block writes: its entries and their postings."""
        return len(self.entries) + sum(len(entry._legs) for entry in self.entries)


def journal_entries_write(specs: list[EntrySpec]) -> PendingBlock:
    """Insert the new entries of ``specs`` and their postings; the caller must ``block_append`` before commit.

    Must run inside a transaction. Each entry is checked first (UnbalancedEntry,
    nothing written); a key already stored, or seen earlier in ``specs``, is a
    repeat and writes nothing. The entries are numbered, hashed inside their
    block and inserted in one statement each for entries and postings, with no
    lock held, so several writers can do this at the same time.
    """
    legs_by_spec = [_balanced_legs(spec) for spec in specs]
    keys = [spec.idempotency_key for spec in specs]
    existing = {entry.idempotency_key: entry for entry in JournalEntry.objects.filter(idempotency_key__any_of=keys)}
    fresh = []
    for spec, legs in zip(specs, legs_by_spec, strict=True):
        if spec.idempotency_key not in existing:
            existing[spec.idempotency_key] = None  # later repeats in the same batch resolve to this entry
            fresh.append((spec, legs))
    if not fresh:
        return PendingBlock(None, [], [(existing[key], False) for key in keys])
    _check_reversals(fresh)
    block_id, numbers = _allocate(len(fresh))
    created_at = timezone.now()
    prev_hash = GENESIS_HASH
    entries = []
    for position, ((spec, legs), (entry_id, sequence)) in enumerate(zip(fresh, numbers, strict=True), start=1):
        memo = spec.memo[:300]
        canonical = _canonical(
            sequence=sequence,
            idempotency_key=spec.idempotency_key,
            kind=spec.kind,
            order_id=spec.order.pk if spec.order else None,
            payout_id=spec.payout.pk if spec.payout else None,
            created_at=created_at,
            legs=[(account.code, amount, currency) for account, amount, currency in legs],
            reverses_id=spec.reverses.pk if spec.reverses is not None else None,
            memo=memo,
        )
        digest = entry_hash(prev_hash=prev_hash, canonical=canonical)
        entry = JournalEntry(
            id=entry_id,
            sequence=sequence,
            block_id=block_id,
            position=position,
            idempotency_key=spec.idempotency_key,
            kind=spec.kind,
            order=spec.order,
            payout=spec.payout,
            memo=memo,
            reverses=spec.reverses,
            created_at=created_at,
            prev_hash=prev_hash,
            entry_hash=digest,
        )
        entry._legs = legs
        existing[spec.idempotency_key] = entry
        entries.append(entry)
        prev_hash = digest
    rows_copy(
        JournalEntry,
        ENTRY_COLUMNS,
        [tuple(getattr(entry, column) for column in ENTRY_COLUMNS) for entry in entries],
    )
    rows_copy(
        Posting,
        ("entry_id", "account_id", "amount", "currency"),
        [(entry.id, account.pk, amount, currency) for entry in entries for account, amount, currency in entry._legs],
    )
    new = {id(entry) for entry in entries}
    results, seen = [], set()
    for key in keys:
        entry = existing[key]
        created = id(entry) in new and key not in seen
        seen.add(key)
        results.append((entry, created))
    return PendingBlock(block_id, entries, results)


def block_append(pending: PendingBlock) -> LedgerBlock | None:
    """Append ``pending``'s block to the chain; call it last in the transaction that wrote the entries.

    The checks deferred to the commit (the ledger's balance triggers and the
    transaction's foreign keys) run first (SET CONSTRAINTS IMMEDIATE), outside
    the lock; then the chain head is locked, the block row inserted after it
    and the head moved. The entries name their block by id without a foreign
    key (it is inserted last), and ``ledger_verify`` finds any entry whose
    block does not exist. The lock is held from here to the commit, so nothing
    slow should follow this call.
    """
    if not pending.entries:
        return None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Every check deferred to the commit (the ledger's balance triggers, the foreign keys of all the
            # transaction's rows) runs now, outside the lock; DEFERRED again for whatever the caller does next.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
    head = _lock_head()
    sequence, created_at, root = head.sequence + 1, timezone.now(), pending.entries[-1].entry_hash
    count = len(pending.entries)
    digest = block_hash(
        prev_hash=head.block_hash, sequence=sequence, entry_count=count, root_hash=root, created_at=created_at
    )
    block = LedgerBlock.objects.create(
        id=pending.block_id,
        sequence=sequence,
        entry_count=count,
        root_hash=root,
        created_at=created_at,
        prev_hash=head.block_hash,
        block_hash=digest,
    )
    head.sequence, head.block_hash = sequence, digest
    head.save(update_fields=["sequence", "block_hash"])
    return block


def journal_post_many(specs: list[EntrySpec]) -> list[tuple[JournalEntry, bool]]:
    """Post several balanced entries as one block, each once per idempotency key; all or none.

    ``journal_post``'s rules for each entry; every entry is checked before
    anything is written. Returns (entry, created) in the order of ``specs``; a
    key seen earlier in the same batch counts as a repeat.
    """
    if not specs:
        return []
    try:
        with transaction.atomic():
            pending = journal_entries_write(specs)
            block_append(pending)
    except IntegrityError as exc:
        if not _key_taken_meanwhile(exc):
            raise
        # Another writer inserted one of these keys after our look-up and committed while our insert waited on the
        # key's index entry. Everything of ours was rolled back (to the savepoint); written again, that key is a
        # repeat and resolves to the other writer's entry, as a replay would.
        with transaction.atomic():
            pending = journal_entries_write(specs)
            block_append(pending)
    return pending.results


def _key_taken_meanwhile(exc: IntegrityError) -> bool:
    diag = getattr(exc.__cause__, "diag", None)
    return "idempotency_key" in (getattr(diag, "constraint_name", None) or "")


def account_balance(*, account: LedgerAccount, currency: str) -> int:
    return Posting.objects.filter(account=account, currency=currency).aggregate(s=Sum("amount"))["s"] or 0


@dataclass
class VerifyResult:
    ok: bool
    entries_checked: int
    first_break: int | None = None  # the entry's sequence, when one entry is at fault
    message: str = ""
    first_break_block: int | None = None  # the block's sequence, when the break is in (or of) a block


def _block_pages(*, limit: int, chunk_size: int):
    """Blocks up to sequence ``limit`` in order, in pages of about ``chunk_size`` entries (at least one block)."""
    last = 0
    header = ("sequence", "entry_count", "root_hash", "created_at", "prev_hash", "block_hash")
    while True:
        candidates = list(
            LedgerBlock.objects.filter(sequence__gt=last, sequence__lte=limit)
            .order_by("sequence")
            .values_list(*header)[:500]
        )
        if not candidates:
            return
        page, entries = [], 0
        for block in candidates:
            if page and entries + block[1] > chunk_size:
                break
            page.append(block)
            entries += block[1]
        yield page
        last = page[-1][0]


def ledger_verify(*, chunk_size: int = 2000) -> VerifyResult:
    """Recompute every entry's hash, every block's root and link, and every balance; report the first break.

    Walks the blocks in sequence order up to the chain head as it stood when
    the check began (blocks appended meanwhile are left for the next run), a
    page of about ``chunk_size`` entries at a time with their postings, so
    memory stays bounded whatever the ledger's size. For each block, in this
    order: its sequence follows the previous one and its ``prev_hash`` is that
    block's hash; then for each of its entries by position: the position
    follows the previous one, the entry has at least two postings summing to
    zero per currency, its ``prev_hash`` is the previous entry's hash (the
    genesis hash for the first), and its stored hash matches its recomputed
    content. Then the block holds exactly ``entry_count`` entries, its root is
    its last entry's hash and its own hash matches its header. The first
    failure is reported: ``first_break`` names the entry (its sequence) when
    one entry is at fault, ``first_break_block`` the block. Afterwards the last
    block must be the chain head, and the whole ledger (one aggregate over every
    posting in those blocks) must sum to zero per currency.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    head = LedgerChainHead.objects.filter(pk=1).values("sequence", "block_hash").first()
    limit = head["sequence"] if head else 0
    prev_block, blocks_checked, checked = GENESIS_HASH, 0, 0
    totals: dict[str, int] = defaultdict(int)
    fields = (
        "id",
        "sequence",
        "idempotency_key",
        "kind",
        "order_id",
        "payout_id",
        "created_at",
        "prev_hash",
        "reverses_id",
        "memo",
    )

    def broken(message, *, entry=None, block=None):
        return VerifyResult(False, checked, entry, message, first_break_block=block)

    for page in _block_pages(limit=limit, chunk_size=chunk_size):
        low, high = page[0][0], page[-1][0]
        entries_by_block: dict[int, list] = defaultdict(list)
        rows = (
            JournalEntry.objects.filter(block__sequence__gte=low, block__sequence__lte=high)
            .order_by("block__sequence", "position")
            .values_list("block__sequence", "position", *fields, "entry_hash")
        )
        for row in rows:
            entries_by_block[row[0]].append(row[1:])
        legs_by_entry: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
        # The page's postings by block range (a join) rather than an IN list of thousands of entry ids.
        postings = Posting.objects.filter(entry__block__sequence__gte=low, entry__block__sequence__lte=high)
        for entry_id, code, amount, currency in postings.order_by("pk").values_list(
            "entry_id", "account__code", "amount", "currency"
        ):
            legs_by_entry[entry_id].append((code, amount, currency))
        for block_sequence, entry_count, root_hash, block_created, block_prev, stored_block_hash in page:
            if block_sequence != blocks_checked + 1:
                return broken(
                    f"block #{blocks_checked + 1} is missing (next is #{block_sequence})", block=blocks_checked + 1
                )
            if block_prev != prev_block:
                return broken(f"block #{block_sequence}: previous-block link is broken", block=block_sequence)
            prev = GENESIS_HASH
            entries = entries_by_block.get(block_sequence, [])
            for number, row in enumerate(entries, start=1):
                (
                    position,
                    entry_id,
                    sequence,
                    key,
                    kind,
                    order_id,
                    payout_id,
                    created_at,
                    prev_hash,
                    reverses_id,
                    memo,
                    stored,
                ) = row
                where = f"block #{block_sequence}, entry #{sequence}"
                if position != number:
                    return broken(
                        f"block #{block_sequence}: the entry at position {number} is missing", block=block_sequence
                    )
                legs = legs_by_entry.get(entry_id, [])
                entry_totals: dict[str, int] = defaultdict(int)
                for _, amount, currency in legs:
                    entry_totals[currency] += amount
                if len(legs) < 2 or any(entry_totals.values()):
                    imbalance = {currency: total for currency, total in entry_totals.items() if total}
                    return broken(
                        f"{where} does not balance: {len(legs)} postings, off by {imbalance}",
                        entry=sequence,
                        block=block_sequence,
                    )
                if prev_hash != prev:
                    return broken(f"{where}: previous-hash link is broken", entry=sequence, block=block_sequence)
                if not _hash_matches(
                    stored=stored,
                    prev_hash=prev,
                    memo=memo,
                    sequence=sequence,
                    idempotency_key=key,
                    kind=kind,
                    order_id=order_id,
                    payout_id=payout_id,
                    created_at=created_at,
                    legs=legs,
                    reverses_id=reverses_id,
                ):
                    return broken(f"{where}: content does not match its hash", entry=sequence, block=block_sequence)
                for currency, total in entry_totals.items():
                    totals[currency] += total
                prev = stored
                checked += 1
            if len(entries) != entry_count:
                return broken(
                    f"block #{block_sequence} holds {len(entries)} entries but was sealed with {entry_count}",
                    block=block_sequence,
                )
            if prev != root_hash:
                return broken(f"block #{block_sequence}: its root is not its last entry's hash", block=block_sequence)
            digest = block_hash(
                prev_hash=block_prev,
                sequence=block_sequence,
                entry_count=entry_count,
                root_hash=root_hash,
                created_at=block_created,
            )
            if digest != stored_block_hash:
                return broken(f"block #{block_sequence}: header does not match its hash", block=block_sequence)
            prev_block = stored_block_hash
            blocks_checked += 1
    if head is None or head["sequence"] == 0:
        if blocks_checked or JournalEntry.objects.exists():
            return broken("entries exist but the chain head is missing")
        return VerifyResult(True, 0, None, "0 entries verified (the ledger is empty)")
    if head["sequence"] != blocks_checked:
        return broken(
            f"the chain head is block #{head['sequence']} but the blocks end at #{blocks_checked}",
            block=blocks_checked + 1,
        )
    if head["block_hash"] != prev_block:
        return broken(f"the chain head's hash is not block #{blocks_checked}'s", block=blocks_checked)
    # Entries name their block without a foreign key (block_append): one naming no block is outside the chain.
    stray = (
        JournalEntry.objects.exclude(block_id__in=LedgerBlock.objects.values("id"))
        .order_by("sequence")
        .values_list("sequence", "block_id")
        .first()
    )
    if stray:
        return broken(f"entry #{stray[0]} names block id {stray[1]}, which does not exist", entry=stray[0])
    # A posting whose entry does not exist is in no block, but balances and payouts would count it.
    orphan = (
        Posting.objects.exclude(entry_id__in=JournalEntry.objects.values("id"))
        .order_by("pk")
        .values_list("pk", "entry_id", "amount", "currency")
        .first()
    )
    if orphan:
        return broken(
            f"posting {orphan[0]} ({orphan[3]} {orphan[2]}) names journal entry id {orphan[1]}, which does not exist"
        )
    identity = _account_identity_break()
    if identity:
        return broken(identity)
    reversal = _reversal_break(limit)
    if reversal:
        return broken(reversal[1], entry=reversal[0])
    # Independent of the walk: the database's own sum over every posting in the verified blocks.
    ledger_sums = (
        Posting.objects.filter(entry__block__sequence__lte=head["sequence"])
        .values("currency")
        .annotate(total=Sum("amount"))
        .exclude(total=0)
    )
    off = {row["currency"]: row["total"] for row in ledger_sums}
    if off or any(totals.values()):
        return broken(f"the ledger does not sum to zero per currency: {off}")
    return VerifyResult(
        True,
        checked,
        None,
        f"{checked} entries in {blocks_checked} blocks verified, balanced in {len(totals)} currencies",
    )


def _account_identity_break() -> str | None:
    """The first account whose kind or merchant disagrees with its code (which the entries' hashes cover), if any.

    A merchant's account is coded ``<kind>:<merchant pk>`` and the others by
    their kind alone (``account_get``); payouts and statements read the kind
    and the merchant, so an account moved to another merchant or kind would
    move money without breaking a single hash.
    """
    for pk, code, kind, merchant_id in LedgerAccount.objects.order_by("pk").values_list(
        "pk", "code", "kind", "merchant_id"
    ):
        expected = f"{kind}:{merchant_id}" if kind in MERCHANT_ACCOUNT_NAMES else kind
        if code != expected or (kind not in MERCHANT_ACCOUNT_NAMES and merchant_id is not None):
            return f"ledger account {pk} ({code}) is recorded as kind {kind}, merchant {merchant_id}: not its code"
    return None


def _reversal_break(limit: int) -> tuple[int, str] | None:
    """(sequence, message) of the first reversal in blocks up to ``limit`` that does not negate its original."""
    pairs = list(
        JournalEntry.objects.filter(reverses__isnull=False, block__sequence__lte=limit)
        .order_by("sequence")
        .values_list("id", "sequence", "reverses_id", "reverses__sequence")
    )
    if not pairs:
        return None
    legs: dict[int, Counter] = defaultdict(Counter)
    wanted = {entry_id for entry_id, _, _, _ in pairs} | {original for _, _, original, _ in pairs}
    for entry_id, account_id, amount, currency in Posting.objects.filter(entry_id__in=wanted).values_list(
        "entry_id", "account_id", "amount", "currency"
    ):
        legs[entry_id][(account_id, amount, currency)] += 1
    for entry_id, sequence, original, original_sequence in pairs:
        negated = Counter(
            {(account, -amount, currency): n for (account, amount, currency), n in legs[original].items()}
        )
        if legs[entry_id] != negated:
            return (
                sequence,
                f"entry #{sequence} names entry #{original_sequence} as the one it reverses but does not negate it",
            )
    return None


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
    record.first_break_block = result.first_break_block
    record.message = result.message
    record.finished_at = timezone.now()
    record.save(
        update_fields=["ok", "entries_checked", "first_break_sequence", "first_break_block", "message", "finished_at"]
    )
    if not result.ok:
        logger.error("ledger verification %s found a break at %s: %s", record.pk, record.break_location, result.message)
    return record
