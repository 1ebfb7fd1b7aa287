import contextlib

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from common.money import MoneyError, percentage_of, to_minor
from exchange.choices import AccountKind, JournalKind
from exchange.models import JournalEntry, Posting
from exchange.services.ledger import UnbalancedEntry, account_get, journal_post, ledger_verify

pytestmark = pytest.mark.django_db


def _post(n: int, amount: int = 100):
    clearing, escrow = account_get(kind=AccountKind.GATEWAY_CLEARING), account_get(kind=AccountKind.ESCROW_HELD)
    return journal_post(
        idempotency_key=f"test:{n}",
        kind=JournalKind.PAYMENT,
        postings=[(clearing, amount, "CNY"), (escrow, -amount, "CNY")],
    )


def test_entries_chain_and_replays_post_nothing():
    first, created = _post(1)
    second, _ = _post(2)
    again, created_again = _post(1)
    assert created and not created_again and again.pk == first.pk
    assert second.prev_hash == first.entry_hash
    assert JournalEntry.objects.count() == 2 and Posting.objects.count() == 4
    assert ledger_verify().ok


def test_unbalanced_entry_is_refused_and_writes_nothing():
    clearing = account_get(kind=AccountKind.GATEWAY_CLEARING)
    escrow = account_get(kind=AccountKind.ESCROW_HELD)
    with pytest.raises(UnbalancedEntry):
        journal_post(
            idempotency_key="bad", kind=JournalKind.PAYMENT, postings=[(clearing, 5, "CNY"), (escrow, -4, "CNY")]
        )
    with pytest.raises(UnbalancedEntry):
        journal_post(
            idempotency_key="bad2", kind=JournalKind.PAYMENT, postings=[(clearing, 5, "CNY"), (escrow, -5, "USD")]
        )
    assert JournalEntry.objects.count() == 0 and Posting.objects.count() == 0


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
    for n in range(1, 6):
        _post(n, amount=100 + n)
    target = JournalEntry.objects.get(sequence=3)
    with _append_only_disabled("exchange_posting"), connection.cursor() as cursor:
        cursor.execute("UPDATE exchange_posting SET amount = amount * 2 WHERE entry_id = %s", [target.pk])
    result = ledger_verify()
    assert not result.ok and result.first_break == 3
    with pytest.raises(CommandError, match="#3"):
        call_command("ledger_verify")


def test_rewritten_memo_and_hash_still_breaks_the_chain_after_it():
    for n in range(1, 4):
        _post(n)
    with _append_only_disabled("exchange_journalentry"), connection.cursor() as cursor:
        cursor.execute("UPDATE exchange_journalentry SET entry_hash = %s WHERE sequence = 2", ["f" * 64])
    result = ledger_verify()
    assert not result.ok and result.first_break == 2


@pytest.mark.parametrize(
    ("amount", "bps", "fee"), [(1234, 1000, 123), (5, 1000, 1), (4, 1000, 0), (1, 5000, 1), (0, 1000, 0)]
)
def test_fee_rounds_half_up(amount, bps, fee):
    assert percentage_of(amount, bps) == fee


@pytest.mark.parametrize("bad", ["-1", "abc", "1.001", "inf"])
def test_to_minor_refuses_bad_amounts(bad):
    with pytest.raises(MoneyError):
        to_minor(bad, "CNY")
