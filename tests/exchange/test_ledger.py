"""The ledger service: balanced entries, once per key, hashed into chained blocks (DESIGN.md §5.5)."""

import contextlib

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from common.money import MoneyError, percentage_of, to_minor
from exchange.choices import AccountKind, JournalKind
from exchange.models import JournalEntry, LedgerBlock, LedgerChainHead, Posting
from exchange.services.ledger import (
    GENESIS_HASH,
    EntrySpec,
    UnbalancedEntry,
    account_get,
    block_hash,
    journal_post,
    journal_post_many,
    ledger_verify,
)

pytestmark = pytest.mark.django_db


def _accounts():
    return account_get(kind=AccountKind.GATEWAY_CLEARING), account_get(kind=AccountKind.ESCROW_HELD)


def _post(n: int, amount: int = 100):
    clearing, escrow = _accounts()
    return journal_post(
        idempotency_key=f"test:{n}",
        kind=JournalKind.PAYMENT,
        postings=[(clearing, amount, "CNY"), (escrow, -amount, "CNY")],
    )


def _specs(prefix: str, count: int, amount: int = 100) -> list[EntrySpec]:
    clearing, escrow = _accounts()
    return [
        EntrySpec(f"{prefix}:{i}", JournalKind.PAYMENT, [(clearing, amount + i, "CNY"), (escrow, -(amount + i), "CNY")])
        for i in range(1, count + 1)
    ]


def _head():
    return LedgerChainHead.objects.filter(pk=1).values_list("sequence", "block_hash").first()


def test_entries_chain_and_replays_post_nothing():
    first, created = _post(1)
    second, _ = _post(2)
    again, created_again = _post(1)
    assert created and not created_again and again.pk == first.pk
    # One journal_post, one block of one entry; the blocks (not the entries) link to each other.
    block_1, block_2 = LedgerBlock.objects.order_by("sequence")
    assert (block_1.sequence, block_1.entry_count, block_2.sequence, block_2.entry_count) == (1, 1, 2, 1)
    assert (first.block_id, first.position, second.block_id, second.position) == (block_1.pk, 1, block_2.pk, 1)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == GENESIS_HASH
    assert (block_1.root_hash, block_2.root_hash) == (first.entry_hash, second.entry_hash)
    assert (block_1.prev_hash, block_2.prev_hash) == (GENESIS_HASH, block_1.block_hash)
    assert second.sequence > first.sequence
    assert JournalEntry.objects.count() == 2 and Posting.objects.count() == 4 and LedgerBlock.objects.count() == 2
    assert _head() == (2, block_2.block_hash)
    result = ledger_verify()
    assert (result.ok, result.entries_checked, result.message) == (
        True,
        2,
        "2 entries in 2 blocks verified, balanced in 1 currencies",
    )


def test_two_batches_write_two_chained_blocks():
    first_batch = journal_post_many(_specs("batch-a", 3))
    second_batch = journal_post_many(_specs("batch-b", 2))
    assert [created for _, created in first_batch + second_batch] == [True] * 5
    block_1, block_2 = LedgerBlock.objects.order_by("sequence")
    assert (block_1.sequence, block_1.entry_count, block_2.sequence, block_2.entry_count) == (1, 3, 2, 2)
    assert block_1.prev_hash == GENESIS_HASH and block_2.prev_hash == block_1.block_hash

    for block, batch in ((block_1, first_batch), (block_2, second_batch)):
        entries = [entry for entry, _ in batch]
        stored = list(block.entries.order_by("position"))
        assert [entry.pk for entry in stored] == [entry.pk for entry in entries]
        assert [entry.position for entry in stored] == list(range(1, len(entries) + 1))
        # Inside a block: the first entry starts from the genesis hash, each next one from the one before.
        assert [entry.prev_hash for entry in stored] == [GENESIS_HASH] + [entry.entry_hash for entry in stored[:-1]]
        assert block.root_hash == stored[-1].entry_hash
        assert block.block_hash == block_hash(
            prev_hash=block.prev_hash,
            sequence=block.sequence,
            entry_count=block.entry_count,
            root_hash=block.root_hash,
            created_at=block.created_at,
        )

    # Sequences are unique and increasing in the order of blocks and positions (gaps allowed).
    ordered = list(JournalEntry.objects.order_by("block__sequence", "position").values_list("sequence", flat=True))
    assert ordered == sorted(ordered) and len(set(ordered)) == 5
    assert max(entry.sequence for entry, _ in first_batch) < min(entry.sequence for entry, _ in second_batch)
    assert _head() == (2, block_2.block_hash)
    result = ledger_verify()
    assert (result.ok, result.entries_checked, result.message) == (
        True,
        5,
        "5 entries in 2 blocks verified, balanced in 1 currencies",
    )


def test_a_batch_repeating_only_known_keys_writes_no_block():
    journal_post_many(_specs("replay", 2))
    before = (_head(), LedgerBlock.objects.count(), JournalEntry.objects.count(), Posting.objects.count())
    again = journal_post_many(_specs("replay", 2))
    assert [created for _, created in again] == [False, False]
    assert (_head(), LedgerBlock.objects.count(), JournalEntry.objects.count(), Posting.objects.count()) == before
    assert before[1:] == (1, 2, 4)


def test_unbalanced_entry_is_refused_and_writes_nothing():
    clearing, escrow = _accounts()
    head = _head()
    with pytest.raises(UnbalancedEntry, match=r"Entry bad does not balance: \{'CNY': 1\}"):
        journal_post(
            idempotency_key="bad", kind=JournalKind.PAYMENT, postings=[(clearing, 5, "CNY"), (escrow, -4, "CNY")]
        )
    with pytest.raises(UnbalancedEntry, match=r"Entry bad2 does not balance: \{'CNY': 5, 'USD': -5\}"):
        journal_post(
            idempotency_key="bad2", kind=JournalKind.PAYMENT, postings=[(clearing, 5, "CNY"), (escrow, -5, "USD")]
        )
    assert JournalEntry.objects.count() == 0 and Posting.objects.count() == 0 and LedgerBlock.objects.count() == 0
    assert _head() == head


def test_one_unbalanced_entry_refuses_the_whole_batch():
    _post(1)
    before = (_head(), LedgerBlock.objects.count(), JournalEntry.objects.count(), Posting.objects.count())
    clearing, escrow = _accounts()
    specs = [
        *_specs("mixed", 2),
        EntrySpec("mixed:bad", JournalKind.PAYMENT, [(clearing, 3, "CNY"), (escrow, -2, "CNY")]),
    ]
    with pytest.raises(UnbalancedEntry, match=r"Entry mixed:bad does not balance: \{'CNY': 1\}"):
        journal_post_many(specs)
    assert (_head(), LedgerBlock.objects.count(), JournalEntry.objects.count(), Posting.objects.count()) == before
    assert before[1:] == (1, 1, 2)
    assert not JournalEntry.objects.filter(idempotency_key__startswith="mixed:").exists()


@contextlib.contextmanager
def _append_only_disabled(table):
    """Tamper as the database owner could: the append-only trigger (migration 0009) off for one statement."""
    with connection.cursor() as cursor:
        # ALTER TABLE refuses while deferred checks are pending on the table: run them now (they pass).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
        cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")


def test_tampering_is_reported_at_that_entry():
    entries = [_post(n, amount=100 + n)[0] for n in range(1, 6)]
    target = entries[2]
    with _append_only_disabled("exchange_posting"), connection.cursor() as cursor:
        cursor.execute("UPDATE exchange_posting SET amount = amount * 2 WHERE entry_id = %s", [target.pk])
    result = ledger_verify()
    assert (result.ok, result.first_break, result.first_break_block, result.entries_checked) == (
        False,
        target.sequence,
        3,
        2,
    )
    assert result.message == f"block #3, entry #{target.sequence}: content does not match its hash"
    with pytest.raises(CommandError, match=f"^Ledger BROKEN at entry #{target.sequence} in block #3: "):
        call_command("ledger_verify")


def test_rewritten_hash_breaks_the_chain_at_that_entry():
    _, (second, _), _ = journal_post_many(_specs("chain", 3))
    with _append_only_disabled("exchange_journalentry"), connection.cursor() as cursor:
        cursor.execute("UPDATE exchange_journalentry SET entry_hash = %s WHERE id = %s", ["f" * 64, second.pk])
    result = ledger_verify()
    assert (result.ok, result.first_break, result.first_break_block, result.entries_checked, result.message) == (
        False,
        second.sequence,
        1,
        1,
        f"block #1, entry #{second.sequence}: content does not match its hash",
    )


@pytest.mark.parametrize(
    ("amount", "bps", "fee"), [(1234, 1000, 123), (5, 1000, 1), (4, 1000, 0), (1, 5000, 1), (0, 1000, 0)]
)
def test_fee_rounds_half_up(amount, bps, fee):
    assert percentage_of(amount, bps) == fee


@pytest.mark.parametrize("bad", ["-1", "abc", "1.001", "inf"])
def test_to_minor_refuses_bad_amounts(bad):
    with pytest.raises(MoneyError):
        to_minor(bad, "CNY")
