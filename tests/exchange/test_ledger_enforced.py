"""The ledger's rules enforced by PostgreSQL itself (migrations 0009, 0011), and ledger_verify's reports.

Writes that bypass ``journal_post`` are raw SQL on purpose: the database must
refuse them on its own. Tampering disables the append-only triggers for those
statements only (the test database user is a superuser), as an attacker with
the database owner's rights could.

Entry sequences come from a PostgreSQL sequence that a test's rollback does
not rewind, so tests name entries by the rows they posted; block sequences
restart at 1 in every test (they follow the chain head, which is rolled back).
"""

import contextlib
import io
import logging
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from exchange.choices import AccountKind, JournalKind
from exchange.models import JournalEntry, LedgerAccount, LedgerBlock, LedgerChainHead, LedgerVerification, Posting
from exchange.services import ledger as ledger_service
from exchange.services.ledger import (
    GENESIS_HASH,
    EntrySpec,
    account_get,
    block_hash,
    entry_hash,
    journal_post,
    journal_post_many,
    ledger_verify,
    ledger_verify_record,
)
from exchange.tasks import ledger_verify_scheduled

pytestmark = pytest.mark.django_db

APPEND_ONLY = "the ledger is append-only; post a reversing entry"
LEDGER_TABLES = ("exchange_posting", "exchange_journalentry", "exchange_ledgerblock")


def _accounts():
    return account_get(kind=AccountKind.GATEWAY_CLEARING), account_get(kind=AccountKind.ESCROW_HELD)


def _post(n: int, amount: int = 100) -> JournalEntry:
    """One journal_post: a block of one entry."""
    clearing, escrow = _accounts()
    entry, _ = journal_post(
        idempotency_key=f"enforced:{n}",
        kind=JournalKind.PAYMENT,
        postings=[(clearing, amount, "CNY"), (escrow, -amount, "CNY")],
    )
    return entry


def _post_blocks(*sizes: int) -> list[list[JournalEntry]]:
    """One journal_post_many per size: block #k holds sizes[k-1] entries; the n-th entry overall moves 100 + n."""
    clearing, escrow = _accounts()
    blocks, n = [], 0
    for size in sizes:
        specs = []
        for _ in range(size):
            n += 1
            legs = [(clearing, 100 + n, "CNY"), (escrow, -(100 + n), "CNY")]
            specs.append(EntrySpec(f"enforced:{n}", JournalKind.PAYMENT, legs))
        blocks.append([entry for entry, _ in journal_post_many(specs)])
    return blocks


def _ledger_rows():
    """Everything stored in the ledger, to compare before and after a refused write."""
    blocks = list(
        LedgerBlock.objects.order_by("sequence").values_list(
            "id", "sequence", "entry_count", "root_hash", "created_at", "prev_hash", "block_hash"
        )
    )
    entries = list(
        JournalEntry.objects.order_by("sequence").values_list(
            "sequence", "block_id", "position", "idempotency_key", "kind", "memo", "prev_hash", "entry_hash"
        )
    )
    postings = list(Posting.objects.order_by("pk").values_list("pk", "entry_id", "account_id", "amount", "currency"))
    head = LedgerChainHead.objects.filter(pk=1).values_list("sequence", "block_hash").first()
    return blocks, entries, postings, head


def _raw(sql: str, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _flush_deferred():
    _raw("SET CONSTRAINTS ALL IMMEDIATE")
    _raw("SET CONSTRAINTS ALL DEFERRED")


@contextlib.contextmanager
def _append_only_disabled():
    """The ledger tables' append-only triggers off, as the database owner could; on again afterwards."""
    # ALTER TABLE refuses while this transaction has deferred checks pending on the table (the balance triggers,
    # and the foreign keys of rows both inserted and updated here): run them now, as a commit would, first.
    _flush_deferred()
    for table in LEDGER_TABLES:
        _raw(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    _raw("ALTER TABLE exchange_posting DISABLE TRIGGER exchange_posting_checked")  # postings for sealed entries too
    _raw("ALTER TABLE exchange_ledgerblock DISABLE TRIGGER exchange_ledgerblock_sealed")  # blocks of any content
    try:
        yield
    finally:
        _flush_deferred()
        for table in LEDGER_TABLES:
            _raw(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")
        _raw("ALTER TABLE exchange_posting ENABLE TRIGGER exchange_posting_checked")
        _raw("ALTER TABLE exchange_ledgerblock ENABLE TRIGGER exchange_ledgerblock_sealed")


def _tamper(*statements):
    """Run raw statements (SQL, or (SQL, params)) with the append-only triggers off."""
    with _append_only_disabled():
        for statement in statements:
            sql, params = (statement, ()) if isinstance(statement, str) else statement
            _raw(sql, params)


def _block_id() -> int:
    """A block id taken as the service takes it; the block row itself comes last (``_insert_block``)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('exchange_ledgerblock', 'id'))")
        return cursor.fetchone()[0]


def _insert_block(block_id: int, entry_count: int = 1) -> int:
    """The block row ``block_id``, written straight into the table after the last stored one (it seals its
    entries, as the service's last step does); returns its sequence."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(sequence), 0) + 1 FROM exchange_ledgerblock")
        sequence = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO exchange_ledgerblock (id, sequence, entry_count, root_hash, created_at, prev_hash, block_hash)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [block_id, sequence, entry_count, "r" * 64, timezone.now(), GENESIS_HASH, f"{sequence:064x}"],
        )
        return sequence


def _next_sequence() -> int:
    """An entry sequence number taken as the service takes it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('exchange_journal_sequence')")
        return cursor.fetchone()[0]


def _insert_entry(
    key: str,
    *,
    block_id: int,
    position: int = 1,
    prev_hash: str = GENESIS_HASH,
    digest=None,
    created_at=None,
    sequence=None,
) -> tuple[int, int]:
    """A journal entry (no postings) written straight into the table, numbered like the service's; (id, sequence)."""
    sequence = sequence or _next_sequence()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO exchange_journalentry"
            " (sequence, block_id, position, idempotency_key, kind, memo, created_at, prev_hash, entry_hash)"
            " VALUES (%s, %s, %s, %s, %s, '', %s, %s, %s) RETURNING id",
            [
                sequence,
                block_id,
                position,
                key,
                JournalKind.PAYMENT,
                created_at or timezone.now(),
                prev_hash,
                digest or f"{sequence:064x}",
            ],
        )
        return cursor.fetchone()[0], sequence


def _insert_posting(entry_id: int, account, amount: int, currency: str = "CNY"):
    _raw(
        "INSERT INTO exchange_posting (entry_id, account_id, amount, currency) VALUES (%s, %s, %s, %s)",
        [entry_id, account.pk, amount, currency],
    )


def _check_now():
    """Fire the deferred balance triggers now, as COMMIT would, inside the test's transaction."""
    _raw("SET CONSTRAINTS ALL IMMEDIATE")


def _hash_as_the_service_does(*, sequence, key, kind, created_at, legs, prev_hash) -> str:
    canonical = ledger_service._canonical(
        sequence=sequence,
        idempotency_key=key,
        kind=kind,
        order_id=None,
        payout_id=None,
        created_at=created_at,
        legs=legs,
    )
    return entry_hash(prev_hash=prev_hash, canonical=canonical)


def _forge(entry: JournalEntry, key: str = "forged") -> str:
    """Rewrite ``entry``'s key and store a hash recomputed for the new content, as a careful forger would."""
    entry.refresh_from_db()
    legs = [(p.account.code, p.amount, p.currency) for p in entry.postings.select_related("account")]
    forged = _hash_as_the_service_does(
        sequence=entry.sequence,
        key=key,
        kind=entry.kind,
        created_at=entry.created_at,
        legs=legs,
        prev_hash=entry.prev_hash,
    )
    _tamper(
        (
            "UPDATE exchange_journalentry SET idempotency_key = %s, entry_hash = %s WHERE id = %s",
            [key, forged, entry.pk],
        )
    )
    return forged


def _outcome(result):
    return result.ok, result.first_break, result.first_break_block, result.entries_checked, result.message


# Append-only ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE exchange_journalentry SET memo = 'rewritten' WHERE id = %(entry)s",
        "UPDATE exchange_journalentry SET entry_hash = repeat('f', 64) WHERE id = %(entry)s",
        "UPDATE exchange_journalentry SET position = 2 WHERE id = %(entry)s",
        "DELETE FROM exchange_journalentry WHERE id = %(entry)s",
        "UPDATE exchange_posting SET amount = amount * 2 WHERE entry_id = %(entry)s",
        "DELETE FROM exchange_posting WHERE entry_id = %(entry)s",
        "UPDATE exchange_ledgerblock SET entry_count = entry_count + 1 WHERE sequence = 2",
        "UPDATE exchange_ledgerblock SET root_hash = repeat('f', 64), block_hash = repeat('f', 64) WHERE sequence = 2",
        "UPDATE exchange_ledgerblock SET sequence = 9 WHERE sequence = 3",
        "DELETE FROM exchange_ledgerblock WHERE sequence = 2",
    ],
)
def test_raw_update_or_delete_of_posted_rows_fails_in_the_database(sql):
    second = [_post(n) for n in range(1, 4)][1]
    before = _ledger_rows()

    with pytest.raises(ProgrammingError, match=APPEND_ONLY), transaction.atomic():
        _raw(sql, {"entry": second.pk})

    assert _ledger_rows() == before
    assert len(before[0]) == 3 and len(before[1]) == 3
    assert ledger_verify().ok


@pytest.mark.parametrize(
    ("sql", "operation", "table"),
    [
        ("DELETE FROM exchange_posting", "DELETE", "exchange_posting"),
        ("UPDATE exchange_journalentry SET kind = 'refund'", "UPDATE", "exchange_journalentry"),
        ("UPDATE exchange_ledgerblock SET created_at = now()", "UPDATE", "exchange_ledgerblock"),
        ("DELETE FROM exchange_ledgerblock", "DELETE", "exchange_ledgerblock"),
    ],
)
def test_the_refusal_names_the_operation_and_table(sql, operation, table):
    _post(1)
    before = _ledger_rows()
    with pytest.raises(ProgrammingError) as refused, transaction.atomic():
        _raw(sql)
    assert f"ledger: {operation} on {table} refused: {APPEND_ONLY}" in str(refused.value)
    assert _ledger_rows() == before
    assert (LedgerBlock.objects.count(), JournalEntry.objects.count(), Posting.objects.count()) == (1, 1, 2)


def test_orm_update_is_refused_too():
    entry = _post(1)
    with pytest.raises(ProgrammingError, match=APPEND_ONLY), transaction.atomic():
        JournalEntry.objects.filter(pk=entry.pk).update(memo="edited through the ORM")
    with pytest.raises(ProgrammingError, match=APPEND_ONLY), transaction.atomic():
        LedgerBlock.objects.filter(pk=entry.block_id).update(entry_count=2)
    assert JournalEntry.objects.get(pk=entry.pk).memo == ""
    assert LedgerBlock.objects.get(pk=entry.block_id).entry_count == 1


# Balance, checked by deferred constraint triggers ------------------------------------------------------------------


def test_unbalanced_postings_inserted_raw_are_refused_at_the_check_and_leave_nothing():
    _post(1)
    clearing, escrow = _accounts()
    before = _ledger_rows()

    with pytest.raises(ProgrammingError) as refused, transaction.atomic():
        block_id = _block_id()
        entry_id, sequence = _insert_entry("raw:2", block_id=block_id)
        _insert_posting(entry_id, clearing, 101)
        _insert_posting(entry_id, escrow, -100)
        _check_now()

    assert f"ledger: journal entry #{sequence} (raw:2) does not balance: postings sum to CNY 1 instead of zero" in str(
        refused.value
    )
    assert _ledger_rows() == before


def test_each_currency_must_balance_on_its_own():
    clearing, escrow = _accounts()
    with pytest.raises(ProgrammingError) as refused, transaction.atomic():
        block_id = _block_id()
        entry_id, sequence = _insert_entry("raw:fx", block_id=block_id)
        _insert_posting(entry_id, clearing, 5, "CNY")
        _insert_posting(entry_id, escrow, -5, "USD")
        _check_now()
    assert (
        f"ledger: journal entry #{sequence} (raw:fx) does not balance: postings sum to CNY 5, USD -5 instead of zero"
        in str(refused.value)
    )
    assert not LedgerBlock.objects.exists() and not JournalEntry.objects.exists() and not Posting.objects.exists()


@pytest.mark.parametrize("legs", [0, 1])
def test_an_entry_with_fewer_than_two_postings_is_refused(legs):
    clearing, _ = _accounts()
    with pytest.raises(ProgrammingError) as refused, transaction.atomic():
        block_id = _block_id()
        entry_id, sequence = _insert_entry("raw:short", block_id=block_id)
        for _ in range(legs):
            _insert_posting(entry_id, clearing, 7)
        _check_now()
    assert (
        f"ledger: journal entry #{sequence} (raw:short) has {legs} posting(s); an entry needs at least two"
        " that sum to zero" in str(refused.value)
    )
    assert not LedgerBlock.objects.exists() and not JournalEntry.objects.exists() and not Posting.objects.exists()


def test_a_balanced_raw_entry_passes_the_database_check():
    """The triggers refuse imbalance, not raw SQL as such (the chain is ledger_verify's job)."""
    clearing, escrow = _accounts()
    with transaction.atomic():
        block_id = _block_id()
        entry_id, _ = _insert_entry("raw:balanced", block_id=block_id)
        _insert_posting(entry_id, clearing, 40)
        _insert_posting(entry_id, escrow, -40)
        block_sequence = _insert_block(block_id)
        _check_now()
    assert block_sequence == 1
    assert list(Posting.objects.filter(entry_id=entry_id).values_list("amount", flat=True)) == [40, -40]


@pytest.mark.django_db(transaction=True)
def test_unbalanced_entry_fails_at_commit_not_before():
    clearing, escrow = _accounts()
    reached_commit = False
    with pytest.raises(ProgrammingError) as refused, transaction.atomic():
        block_id = _block_id()
        entry_id, sequence = _insert_entry("raw:commit", block_id=block_id)
        _insert_posting(entry_id, clearing, 10)
        _insert_posting(entry_id, escrow, -7)
        reached_commit = True  # every statement above succeeded; only COMMIT refuses
    assert reached_commit
    assert (
        f"ledger: journal entry #{sequence} (raw:commit) does not balance: postings sum to CNY 3 instead of zero"
        in str(refused.value)
    )
    assert not LedgerBlock.objects.exists() and not JournalEntry.objects.exists() and not Posting.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("legs", [[5], [5, -5]], ids=["unbalanced", "balanced pair"])
def test_a_posting_added_later_to_a_sealed_entry_is_refused_balanced_or_not(legs):
    entry = _post(1)
    clearing, escrow = _accounts()
    before = _ledger_rows()
    with pytest.raises(ProgrammingError) as refused, transaction.atomic():
        values = ", ".join(["(%s, %s, %s, 'CNY')"] * len(legs))
        rows = zip((clearing, escrow), legs, strict=False)  # one leg, or both
        params = [value for account, amount in rows for value in (entry.pk, account.pk, amount)]
        _raw(f"INSERT INTO exchange_posting (entry_id, account_id, amount, currency) VALUES {values}", params)
    assert (
        f"ledger: journal entry #{entry.sequence} is sealed in block {entry.block_id}: it takes no more postings;"
        " post a correcting entry" in str(refused.value)
    )
    assert _ledger_rows() == before


@pytest.mark.parametrize("missing", ["entry", "account"])
def test_a_posting_naming_a_missing_entry_or_account_is_refused_and_leaves_nothing(missing):
    entry = _post(1)
    clearing, escrow = _accounts()
    before = _ledger_rows()
    with transaction.atomic():
        block_id = _block_id()
        entry_id, _ = _insert_entry("raw:missing", block_id=block_id)
        named = {"entry": (entry_id + 1000, clearing.pk), "account": (entry_id, escrow.pk + 1000)}[missing]
        with pytest.raises(IntegrityError) as refused, transaction.atomic():
            _insert_posting(named[0], type("Account", (), {"pk": named[1]}), 5)
        transaction.set_rollback(True)
    wanted = {
        "entry": f"ledger: a posting names journal entry {entry_id + 1000}, which does not exist",
        "account": f"ledger: a posting names ledger account {escrow.pk + 1000}, which does not exist",
    }[missing]
    assert wanted in str(refused.value)
    assert _ledger_rows() == before and entry.postings.count() == 2


def test_an_account_with_postings_cannot_be_deleted_one_without_can():
    _post(1)
    clearing, _ = _accounts()
    unused = account_get(kind=AccountKind.PLATFORM_REVENUE)
    has_postings = r"ledger: account \d+ \(gateway_clearing\) has postings"
    with pytest.raises(IntegrityError, match=has_postings), transaction.atomic():
        _raw("DELETE FROM exchange_ledgeraccount WHERE id = %s", [clearing.pk])
    assert LedgerAccount.objects.filter(pk=clearing.pk).exists()
    _raw("DELETE FROM exchange_ledgeraccount WHERE id = %s", [unused.pk])
    assert not LedgerAccount.objects.filter(pk=unused.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_journal_post_many_commits_a_large_batch_through_the_triggers():
    clearing, escrow = _accounts()
    specs = [
        EntrySpec(f"batch:{i}", JournalKind.PAYMENT, [(clearing, 100 + i, "CNY"), (escrow, -(100 + i), "CNY")])
        for i in range(300)
    ]
    results = journal_post_many(specs)
    assert [created for _, created in results] == [True] * 300
    assert JournalEntry.objects.count() == 300 and Posting.objects.count() == 600
    block = LedgerBlock.objects.get()
    assert (block.sequence, block.entry_count, block.root_hash) == (1, 300, results[-1][0].entry_hash)
    assert list(block.entries.order_by("sequence").values_list("position", flat=True)) == list(range(1, 301))
    # A page holds at least one whole block, so a block larger than the chunk is still verified.
    result = ledger_verify(chunk_size=64)
    assert _outcome(result) == (True, None, None, 300, "300 entries in 1 blocks verified, balanced in 1 currencies")


# ledger_verify: the first break, exactly --------------------------------------------------------------------------


def test_a_tampered_amount_is_reported_at_exactly_that_entry():
    blocks = _post_blocks(2, 1, 3, 1)
    target = blocks[2][1]  # the 5th entry: block #3, position 2
    _tamper(
        (
            "UPDATE exchange_posting SET amount = amount + 1"
            " WHERE id = (SELECT min(id) FROM exchange_posting WHERE entry_id = %s)",
            [target.pk],
        )
    )
    for chunk_size in (2000, 3, 1):  # the break is found the same across page boundaries
        assert _outcome(ledger_verify(chunk_size=chunk_size)) == (
            False,
            target.sequence,
            3,
            4,
            f"block #3, entry #{target.sequence} does not balance: 2 postings, off by {{'CNY': 1}}",
        )


def test_a_tampered_but_balanced_entry_is_reported_by_its_hash():
    blocks = _post_blocks(1, 1, 3)
    target = blocks[2][0]
    _tamper(("UPDATE exchange_posting SET amount = amount * 2 WHERE entry_id = %s", [target.pk]))
    assert _outcome(ledger_verify(chunk_size=2)) == (
        False,
        target.sequence,
        3,
        2,
        f"block #3, entry #{target.sequence}: content does not match its hash",
    )


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE exchange_journalentry SET kind = 'refund' WHERE id = %s", ": content does not match its hash"),
        ("UPDATE exchange_journalentry SET idempotency_key = 'x' WHERE id = %s", ": content does not match its hash"),
        ("UPDATE exchange_journalentry SET memo = 'rewritten' WHERE id = %s", ": content does not match its hash"),
        (
            "UPDATE exchange_journalentry SET created_at = created_at + interval '1 second' WHERE id = %s",
            ": content does not match its hash",
        ),
        (
            "UPDATE exchange_journalentry SET prev_hash = repeat('a', 64) WHERE id = %s",
            ": previous-hash link is broken",
        ),
        ("DELETE FROM exchange_posting WHERE entry_id = %s", " does not balance: 0 postings, off by {}"),
    ],
)
def test_tampered_entry_fields_are_reported_at_that_entry(sql, message):
    blocks = _post_blocks(2, 3, 1)
    target = blocks[1][1]  # block #2, position 2: its prev_hash is an inner link, not the genesis hash
    _tamper((sql, [target.pk]))
    assert _outcome(ledger_verify()) == (
        False,
        target.sequence,
        2,
        3,
        f"block #2, entry #{target.sequence}{message}",
    )


def test_the_memo_is_hashed_and_entries_hashed_before_it_was_still_check():
    entry = _post_blocks(1)[0][0]
    entry.refresh_from_db()
    content = {
        "sequence": entry.sequence,
        "idempotency_key": entry.idempotency_key,
        "kind": entry.kind,
        "order_id": None,
        "payout_id": None,
        "created_at": entry.created_at,
        "legs": [(p.account.code, p.amount, p.currency) for p in entry.postings.select_related("account")],
        "reverses_id": None,
    }
    with_memo = entry_hash(prev_hash=GENESIS_HASH, canonical=ledger_service._canonical(memo="", **content))
    without = entry_hash(prev_hash=GENESIS_HASH, canonical=ledger_service._canonical(**content))
    assert entry.entry_hash == with_memo != without  # written now: the memo (empty here) is covered
    matches = ledger_service._hash_matches
    assert matches(stored=with_memo, prev_hash=GENESIS_HASH, memo="", **content)
    assert not matches(stored=with_memo, prev_hash=GENESIS_HASH, memo="rewritten", **content)
    # An entry hashed before the memo was covered still checks, whatever its memo says.
    assert matches(stored=without, prev_hash=GENESIS_HASH, memo="anything", **content)
    assert not matches(stored=without, prev_hash=GENESIS_HASH, memo="", **{**content, "kind": "refund"})


def test_a_ledger_written_partly_before_the_memo_was_hashed_verifies_and_catches_a_new_memo_rewritten(monkeypatch):
    canonical = ledger_service._canonical
    with monkeypatch.context() as earlier_release:  # hashed as before: no memo
        earlier_release.setattr(
            ledger_service, "_canonical", lambda memo=None, **content: canonical(memo=None, **content)
        )
        old = _post_blocks(2, 1)  # blocks #1 and #2
    clearing, escrow = _accounts()
    described, _ = journal_post(  # block #3, as written now
        idempotency_key="enforced:described",
        kind=JournalKind.PAYMENT,
        postings=[(clearing, 7, "CNY"), (escrow, -7, "CNY")],
        memo="payment for order R-1",
    )
    verified = ledger_verify()
    assert (verified.ok, verified.entries_checked) == (True, 4)
    # An old entry's memo was not hashed: rewriting it alone goes unseen (the README says so).
    _tamper(("UPDATE exchange_journalentry SET memo = 'rewritten' WHERE id = %s", [old[0][1].pk]))
    assert ledger_verify().ok
    # A new one's is: rewriting it is reported at exactly that entry.
    _tamper(("UPDATE exchange_journalentry SET memo = 'a gift' WHERE id = %s", [described.pk]))
    assert _outcome(ledger_verify()) == (
        False,
        described.sequence,
        3,
        3,
        f"block #3, entry #{described.sequence}: content does not match its hash",
    )


@pytest.mark.parametrize(
    ("block_number", "position", "message", "checked"),
    [
        (2, 2, "block #2: the entry at position 2 is missing", 3),
        (2, 1, "block #2: the entry at position 1 is missing", 2),
        (2, 3, "block #2 holds 2 entries but was sealed with 3", 4),
        (3, 1, "block #3 holds 0 entries but was sealed with 1", 5),
    ],
)
def test_a_deleted_entry_is_reported_at_its_block(block_number, position, message, checked):
    blocks = _post_blocks(2, 3, 1)
    target = blocks[block_number - 1][position - 1]
    _tamper(
        ("DELETE FROM exchange_posting WHERE entry_id = %s", [target.pk]),
        ("DELETE FROM exchange_journalentry WHERE id = %s", [target.pk]),
    )
    assert _outcome(ledger_verify()) == (False, None, block_number, checked, message)


def test_an_extra_entry_inserted_into_a_block_is_reported_at_that_block():
    """A forger with the owner's rights appends a 4th entry to block #2 (sealed with 3), hashed as the service would."""
    blocks = _post_blocks(2, 3, 1)
    last = blocks[1][-1]
    clearing, escrow = _accounts()
    created_at = timezone.now()
    with transaction.atomic():
        sequence = _next_sequence()
        legs = [(clearing.code, 7, "CNY"), (escrow.code, -7, "CNY")]
        digest = _hash_as_the_service_does(
            sequence=sequence,
            key="raw:extra",
            kind=JournalKind.PAYMENT,
            created_at=created_at,
            legs=legs,
            prev_hash=last.entry_hash,
        )
        entry_id, inserted_sequence = _insert_entry(
            "raw:extra",
            block_id=last.block_id,
            position=4,
            prev_hash=last.entry_hash,
            digest=digest,
            created_at=created_at,
            sequence=sequence,
        )
        # Its block is sealed, so the database refuses the postings unless its owner turns the check off.
        _raw("ALTER TABLE exchange_posting DISABLE TRIGGER exchange_posting_checked")
        _insert_posting(entry_id, clearing, 7)
        _insert_posting(entry_id, escrow, -7)
        _raw("ALTER TABLE exchange_posting ENABLE TRIGGER exchange_posting_checked")
        _check_now()  # balanced: the deferred entry check accepts it
    assert inserted_sequence == sequence
    # The extra entry passes every entry check (so it is counted); the block's sealed count gives it away.
    assert _outcome(ledger_verify()) == (False, None, 2, 6, "block #2 holds 4 entries but was sealed with 3")


@pytest.mark.parametrize(
    ("statements", "message", "checked"),
    [
        (
            [
                "DELETE FROM exchange_posting WHERE entry_id IN (SELECT e.id FROM exchange_journalentry e"
                " JOIN exchange_ledgerblock b ON b.id = e.block_id WHERE b.sequence = 2)",
                "DELETE FROM exchange_journalentry WHERE block_id = (SELECT id FROM exchange_ledgerblock"
                " WHERE sequence = 2)",
                "DELETE FROM exchange_ledgerblock WHERE sequence = 2",
            ],
            "block #2 is missing (next is #3)",
            2,
        ),
        (["UPDATE exchange_ledgerblock SET sequence = 7 WHERE sequence = 2"], "block #2 is missing (next is #3)", 2),
        (
            ["UPDATE exchange_ledgerblock SET entry_count = 2 WHERE sequence = 2"],
            "block #2 holds 3 entries but was sealed with 2",
            5,
        ),
        (
            ["UPDATE exchange_ledgerblock SET entry_count = 4 WHERE sequence = 2"],
            "block #2 holds 3 entries but was sealed with 4",
            5,
        ),
        (
            ["UPDATE exchange_ledgerblock SET prev_hash = repeat('a', 64) WHERE sequence = 2"],
            "block #2: previous-block link is broken",
            2,
        ),
        (
            ["UPDATE exchange_ledgerblock SET root_hash = repeat('a', 64) WHERE sequence = 2"],
            "block #2: its root is not its last entry's hash",
            5,
        ),
        (
            ["UPDATE exchange_ledgerblock SET created_at = created_at + interval '1 second' WHERE sequence = 2"],
            "block #2: header does not match its hash",
            5,
        ),
        (
            ["UPDATE exchange_ledgerblock SET block_hash = repeat('a', 64) WHERE sequence = 2"],
            "block #2: header does not match its hash",
            5,
        ),
    ],
)
def test_a_tampered_block_row_is_reported_at_that_block(statements, message, checked):
    _post_blocks(2, 3, 1)
    _tamper(*statements)
    for chunk_size in (2000, 1):
        assert _outcome(ledger_verify(chunk_size=chunk_size)) == (False, None, 2, checked, message)


def test_a_rewritten_hash_breaks_the_link_of_the_next_entry():
    """Rewriting an entry and its own hash consistently still breaks the chain where the next entry links to it."""
    blocks = _post_blocks(2, 3, 1)
    target, following = blocks[1][1], blocks[1][2]
    _tamper(("UPDATE exchange_journalentry SET entry_hash = repeat('f', 64) WHERE id = %s", [target.pk]))
    assert _outcome(ledger_verify()) == (
        False,
        target.sequence,
        2,
        3,
        f"block #2, entry #{target.sequence}: content does not match its hash",
    )
    _forge(target)
    assert _outcome(ledger_verify()) == (
        False,
        following.sequence,
        2,
        4,
        f"block #2, entry #{following.sequence}: previous-hash link is broken",
    )


@pytest.mark.parametrize(
    ("rewrites", "message", "break_block"),
    [
        ((), "block #2: its root is not its last entry's hash", 2),
        (("root",), "block #2: header does not match its hash", 2),
        (("root", "hash"), "block #3: previous-block link is broken", 3),
    ],
)
def test_a_forged_last_entry_is_caught_by_its_block_or_the_next(rewrites, message, break_block):
    """However far a forger rewrites a block consistently, the next link up the chain breaks."""
    blocks = _post_blocks(2, 3, 1)
    forged = _forge(blocks[1][-1])
    block = LedgerBlock.objects.get(sequence=2)
    if "root" in rewrites:
        _tamper(("UPDATE exchange_ledgerblock SET root_hash = %s WHERE id = %s", [forged, block.pk]))
    if "hash" in rewrites:
        digest = block_hash(
            prev_hash=block.prev_hash,
            sequence=2,
            entry_count=3,
            root_hash=forged,
            created_at=block.created_at,
        )
        _tamper(("UPDATE exchange_ledgerblock SET block_hash = %s WHERE id = %s", [digest, block.pk]))
    assert _outcome(ledger_verify()) == (False, None, break_block, 5, message)


def test_a_forged_last_block_is_caught_at_the_chain_head():
    blocks = _post_blocks(2, 3, 1)
    forged = _forge(blocks[2][0])
    block = LedgerBlock.objects.get(sequence=3)
    digest = block_hash(
        prev_hash=block.prev_hash, sequence=3, entry_count=1, root_hash=forged, created_at=block.created_at
    )
    _tamper(
        ("UPDATE exchange_ledgerblock SET root_hash = %s, block_hash = %s WHERE id = %s", [forged, digest, block.pk])
    )
    assert _outcome(ledger_verify()) == (False, None, 3, 6, "the chain head's hash is not block #3's")


def test_a_chain_head_ahead_of_the_blocks_is_reported():
    for n in range(1, 4):
        _post(n)
    LedgerChainHead.objects.filter(pk=1).update(sequence=4)
    assert _outcome(ledger_verify()) == (False, None, 4, 3, "the chain head is block #4 but the blocks end at #3")


def test_a_missing_chain_head_is_reported():
    _post(1)
    LedgerChainHead.objects.filter(pk=1).delete()
    assert _outcome(ledger_verify()) == (False, None, None, 0, "entries exist but the chain head is missing")


def test_a_raw_block_is_not_verified_until_the_head_reaches_it():
    """Rows appended past the head are outside the walk; moving the head onto a bogus block exposes it."""
    _post(1)
    clearing, escrow = _accounts()
    with transaction.atomic():
        block_id = _block_id()
        entry_id, _ = _insert_entry("raw:beyond", block_id=block_id)
        _insert_posting(entry_id, clearing, 9)
        _insert_posting(entry_id, escrow, -9)
        block_sequence = _insert_block(block_id)
    assert block_sequence == 2
    assert _outcome(ledger_verify()) == (
        True,
        None,
        None,
        1,
        "1 entries in 1 blocks verified, balanced in 1 currencies",
    )
    LedgerChainHead.objects.filter(pk=1).update(sequence=2)
    assert _outcome(ledger_verify()) == (False, None, 2, 1, "block #2: previous-block link is broken")


def test_blocks_appended_during_the_walk_are_left_for_the_next_run(monkeypatch):
    """A writer appending while the check runs is not a break: the walk stops at the head it started from."""
    for n in range(1, 4):
        _post(n)
    walk = ledger_service._block_pages
    clearing, escrow = _accounts()

    def walk_while_a_writer_appends(**kwargs):
        for number, page in enumerate(walk(**kwargs)):
            if number == 0:
                journal_post_many(
                    [
                        EntrySpec(f"late:{i}", JournalKind.PAYMENT, [(clearing, 1, "CNY"), (escrow, -1, "CNY")])
                        for i in (1, 2)
                    ]
                )
            yield page

    monkeypatch.setattr(ledger_service, "_block_pages", walk_while_a_writer_appends)
    result = ledger_verify(chunk_size=1)
    assert _outcome(result) == (True, None, None, 3, "3 entries in 3 blocks verified, balanced in 1 currencies")
    assert LedgerChainHead.objects.get(pk=1).sequence == 4
    monkeypatch.undo()
    assert _outcome(ledger_verify()) == (
        True,
        None,
        None,
        5,
        "5 entries in 4 blocks verified, balanced in 1 currencies",
    )


def test_an_empty_and_a_healthy_ledger_verify():
    assert _outcome(ledger_verify()) == (True, None, None, 0, "0 entries verified (the ledger is empty)")
    clearing, escrow = _accounts()
    journal_post(
        idempotency_key="fx",
        kind=JournalKind.PAYMENT,
        postings=[(clearing, 5, "CNY"), (escrow, -5, "CNY"), (clearing, 3, "USD"), (escrow, -3, "USD")],
    )
    _post(10)
    _post_blocks(3)
    assert _outcome(ledger_verify(chunk_size=1)) == (
        True,
        None,
        None,
        5,
        "5 entries in 3 blocks verified, balanced in 2 currencies",
    )


def test_bad_chunk_size_is_refused():
    _post(1)
    with pytest.raises(ValueError, match=r"^chunk_size must be at least 1$"):
        ledger_verify(chunk_size=0)
    assert not LedgerVerification.objects.exists()


# Stored verifications: service, command, task, admin --------------------------------------------------------------


def test_ledger_verify_record_stores_the_outcome():
    for n in range(1, 4):
        _post(n)
    record = ledger_verify_record(trigger="command")
    record.refresh_from_db()
    assert (
        record.ok,
        record.entries_checked,
        record.first_break_sequence,
        record.first_break_block,
        record.trigger,
    ) == (
        True,
        3,
        None,
        None,
        "command",
    )
    assert record.finished_at is not None and record.finished_at >= record.started_at
    assert record.message == "3 entries in 3 blocks verified, balanced in 1 currencies"


def test_ledger_verify_record_stores_a_break_and_logs_it(caplog):
    blocks = _post_blocks(1, 2)
    target = blocks[1][1]
    _tamper(("UPDATE exchange_journalentry SET kind = 'refund' WHERE id = %s", [target.pk]))
    with caplog.at_level(logging.ERROR, logger="exchange.services.ledger"):
        record = ledger_verify_record(trigger="schedule")
    record.refresh_from_db()
    message = f"block #2, entry #{target.sequence}: content does not match its hash"
    assert (record.ok, record.entries_checked, record.first_break_sequence, record.first_break_block) == (
        False,
        2,
        target.sequence,
        2,
    )
    assert (record.message, record.break_location) == (message, f"entry #{target.sequence} in block #2")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == "exchange.services.ledger"] == [
        (
            "exchange.services.ledger",
            logging.ERROR,
            f"ledger verification {record.pk} found a break at entry #{target.sequence} in block #2: {message}",
        )
    ]


@pytest.mark.parametrize(
    ("sequence", "block", "location"),
    [(12, 3, "entry #12 in block #3"), (None, 3, "block #3"), (None, None, "the ledger as a whole")],
)
def test_break_location_names_the_entry_the_block_or_the_ledger(sequence, block, location):
    record = LedgerVerification(ok=False, first_break_sequence=sequence, first_break_block=block)
    assert record.break_location == location


def test_ledger_verify_record_refuses_an_unknown_trigger_and_stores_nothing():
    with pytest.raises(ValueError, match=r"^trigger must be one of command, admin, schedule, not 'cron'$"):
        ledger_verify_record(trigger="cron")
    assert not LedgerVerification.objects.exists()


def test_command_prints_one_line_and_records_a_success():
    for n in range(1, 4):
        _post(n)
    out = io.StringIO()
    call_command("ledger_verify", stdout=out)
    lines = out.getvalue().splitlines()
    record = LedgerVerification.objects.get()
    assert len(lines) == 1
    assert re.fullmatch(
        r"Ledger OK: 3 entries in 3 blocks verified, balanced in 1 currencies"
        rf" in \d+\.\d\ds \(verification {record.pk}\)\.",
        lines[0],
    )
    assert (record.ok, record.entries_checked, record.trigger) == (True, 3, "command")


def test_command_fails_naming_the_tampered_entry_and_its_block_and_records_it():
    entries = [_post(n, amount=10 * n) for n in range(1, 6)]
    target = entries[1]
    _tamper(("UPDATE exchange_posting SET amount = amount * 3 WHERE entry_id = %s", [target.pk]))
    with pytest.raises(CommandError) as failed:
        call_command("ledger_verify", stdout=io.StringIO())
    record = LedgerVerification.objects.get()
    assert str(failed.value) == (
        f"Ledger BROKEN at entry #{target.sequence} in block #2: block #2, entry #{target.sequence}: content does not"
        f" match its hash (1 entries verified before it; verification {record.pk})."
    )
    assert (record.ok, record.first_break_sequence, record.first_break_block, record.entries_checked) == (
        False,
        target.sequence,
        2,
        1,
    )
    assert record.trigger == "command"


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (
            "UPDATE exchange_ledgerblock SET entry_count = 5 WHERE sequence = 2",
            "Ledger BROKEN at block #2: block #2 holds 1 entries but was sealed with 5 (2 entries verified before it",
        ),
        (
            "DELETE FROM exchange_ledgerchainhead",
            "Ledger BROKEN at the ledger as a whole: entries exist but the chain head is missing"
            " (0 entries verified before it",
        ),
    ],
)
def test_command_names_a_block_or_the_whole_ledger_when_no_entry_is_at_fault(tamper, expected):
    for n in range(1, 4):
        _post(n)
    _tamper(tamper)
    with pytest.raises(CommandError) as failed:
        call_command("ledger_verify", stdout=io.StringIO())
    record = LedgerVerification.objects.get()
    assert str(failed.value) == f"{expected}; verification {record.pk})."
    assert (record.ok, record.first_break_sequence) == (False, None)


def test_command_exits_with_status_1_on_a_break():
    entry = _post(1)
    _tamper(("UPDATE exchange_journalentry SET kind = 'refund' WHERE id = %s", [entry.pk]))
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        # run_from_argv is the path `manage.py ledger_verify` takes: a CommandError becomes stderr and exit 1.
        from exchange.management.commands.ledger_verify import Command

        Command(stdout=io.StringIO(), stderr=err).run_from_argv(["manage.py", "ledger_verify"])
    assert exited.value.code == 1
    assert (
        f"Ledger BROKEN at entry #{entry.sequence} in block #1: block #1, entry #{entry.sequence}: content does not"
        " match its hash" in err.getvalue()
    )


def test_scheduled_task_records_a_verification():
    _post(1)
    summary = ledger_verify_scheduled.delay().get()
    record = LedgerVerification.objects.get()
    assert summary == {
        "verification": record.pk,
        "ok": True,
        "entries_checked": 1,
        "first_break_sequence": None,
        "first_break_block": None,
    }
    assert record.trigger == "schedule"


def test_admin_shows_the_latest_verification_and_runs_one(client, staff):
    entries = [_post(n) for n in range(1, 3)]
    client.force_login(staff)
    changelist = reverse("admin:exchange_ledgerverification_changelist")
    page = client.get(changelist)
    assert page.status_code == 200
    assert "The ledger has not been verified yet." in page.content.decode()

    response = client.post(reverse("admin:exchange_ledgerverification_verify"))
    assert response.status_code == 302 and response.url == changelist
    record = LedgerVerification.objects.get()
    assert (record.ok, record.entries_checked, record.trigger) == (True, 2, "admin")

    target = entries[1]
    _tamper(("UPDATE exchange_journalentry SET kind = 'refund' WHERE id = %s", [target.pk]))
    page = client.post(reverse("admin:exchange_ledgerverification_verify"), follow=True)
    html = page.content.decode()
    where = f"entry #{target.sequence} in block #2"
    # The message, then the latest-verification summary.
    assert f"Ledger BROKEN at {where}: block #2, entry #{target.sequence}: content does not match its hash" in html
    assert f"first break at {where}" in html
    broken = LedgerVerification.objects.filter(ok=False, trigger="admin")
    assert list(broken.values_list("first_break_sequence", "first_break_block")) == [(target.sequence, 2)]


def test_admin_verify_refuses_get_and_non_staff(client, staff, buyer):
    url = reverse("admin:exchange_ledgerverification_verify")
    client.force_login(staff)
    assert client.get(url).status_code == 405
    client.force_login(buyer)
    response = client.post(url)
    assert response.status_code == 302 and "/login/" in response.url
    assert not LedgerVerification.objects.exists()


def test_journal_entry_admin_action_records_a_verification(client, staff):
    entry = _post(1)
    client.force_login(staff)
    response = client.post(
        reverse("admin:exchange_journalentry_changelist"),
        {"action": "verify_ledger", "_selected_action": [entry.pk]},
        follow=True,
    )
    assert "Ledger OK: 1 entries in 1 blocks verified, balanced in 1 currencies." in response.content.decode()
    assert LedgerVerification.objects.get().trigger == "admin"


def test_an_entry_naming_a_block_that_does_not_exist_is_reported():
    """Entries name their block without a foreign key (it is inserted last): the verifier finds a stray one."""
    _post(1)
    _post(2)
    clearing, escrow = _accounts()
    entry_id, sequence = _insert_entry("stray", block_id=999_999)
    _insert_posting(entry_id, clearing, 5)
    _insert_posting(entry_id, escrow, -5)
    _check_now()
    assert _outcome(ledger_verify()) == (
        False,
        sequence,
        None,
        2,
        f"entry #{sequence} names block id 999999, which does not exist",
    )
