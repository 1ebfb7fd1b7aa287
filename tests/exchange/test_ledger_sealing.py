"""Migration 0021 and what goes with it: reversing entries name their original, sealing a block checks it, accounts
keep their identity, and ledger_verify sees postings outside every entry and accounts that changed identity.

Raw SQL here is deliberate, as in test_ledger_enforced: the database must refuse such writes on its own.
"""

import threading

import pytest
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, connections, transaction

from exchange.choices import AccountKind, JournalKind
from exchange.models import JournalEntry, LedgerAccount, LedgerVerification, Posting
from exchange.services import ledger as ledger_service
from exchange.services.ledger import (
    EntrySpec,
    NotAReversal,
    account_get,
    block_append,
    journal_entries_write,
    journal_post,
    journal_reverse,
    ledger_verify,
)
from tests.exchange.test_ledger_enforced import (
    _accounts,
    _insert_block,
    _insert_entry,
    _insert_posting,
    _ledger_rows,
    _outcome,
    _post,
    _raw,
    _tamper,
)
from tests.factories import UserFactory, make_merchant

pytestmark = pytest.mark.django_db


def _legs(entry: JournalEntry) -> list[tuple[int, int, str]]:
    return sorted(entry.postings.values_list("account_id", "amount", "currency"))


# Reversing entries -------------------------------------------------------------------------------------------------


def test_a_reversal_negates_every_leg_names_its_original_and_verifies():
    original = _post(1, amount=250)
    reversal, created = journal_reverse(
        entry=original, idempotency_key="reverse:1", kind=JournalKind.DISPUTE_WON, memo="posted in error"
    )
    assert created and reversal.reverses == original and original.reversed_by == reversal
    assert _legs(reversal) == sorted((account, -amount, currency) for account, amount, currency in _legs(original))
    assert ledger_verify().ok
    # A replay under the same key writes nothing and returns the first reversal.
    before = _ledger_rows()
    again, created = journal_reverse(entry=original, idempotency_key="reverse:1", kind=JournalKind.DISPUTE_WON)
    assert (again, created) == (reversal, False)
    assert _ledger_rows() == before


def test_an_entry_is_reversed_once_and_a_second_reversal_changes_nothing():
    original = _post(1)
    journal_reverse(entry=original, idempotency_key="reverse:a", kind=JournalKind.DISPUTE_WON)
    before = _ledger_rows()
    with pytest.raises(NotAReversal, match=rf"Entry #{original.sequence} is reversed already \(by reverse:a\)"):
        journal_reverse(entry=original, idempotency_key="reverse:b", kind=JournalKind.DISPUTE_WON)
    assert _ledger_rows() == before


def test_postings_that_do_not_negate_the_original_cannot_name_it_and_change_nothing():
    original = _post(1, amount=100)
    clearing, escrow = _accounts()
    before = _ledger_rows()
    with pytest.raises(NotAReversal, match=rf"does not negate entry #{original.sequence} leg for leg"):
        journal_post(
            idempotency_key="half-reversal",
            kind=JournalKind.DISPUTE_WON,
            postings=[(clearing, -60, "CNY"), (escrow, 60, "CNY")],
            reverses=original,
        )
    assert _ledger_rows() == before


def test_the_reversal_link_is_covered_by_the_entry_hash():
    first, second = _post(1), _post(2)
    reversal, _ = journal_reverse(entry=first, idempotency_key="reverse:1", kind=JournalKind.DISPUTE_WON)
    _tamper(("UPDATE exchange_journalentry SET reverses_id = %s WHERE id = %s", [second.pk, reversal.pk]))
    result = ledger_verify()
    assert (result.ok, result.first_break) == (False, reversal.sequence)
    assert "content does not match its hash" in result.message


# Sealing a block checks its entries --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_posting_slipped_in_after_the_early_checks_is_refused_when_the_block_is_sealed():
    """block_append runs the deferred balance checks before it takes the chain head's lock; a posting added after
    them must not reach the chain unchecked."""
    clearing, escrow = _accounts()
    before = _ledger_rows()
    with pytest.raises(DatabaseError) as refused, transaction.atomic():
        pending = journal_entries_write(
            [EntrySpec("sealed:1", JournalKind.PAYMENT, [(clearing, 5, "CNY"), (escrow, -5, "CNY")])]
        )
        _raw("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")  # as block_append does, early
        (entry,) = pending.entries
        _insert_posting(entry.pk, clearing, 1000)
        block_append(pending)
    assert f"ledger: journal entry #{entry.sequence} (sealed:1) does not balance: postings sum to CNY 1000" in str(
        refused.value
    )
    assert _ledger_rows() == before


@pytest.mark.parametrize(
    ("entry_count", "positions", "message"),
    [
        (2, [1], "is sealed with 2 entries but 1 are written under it (positions 1 to 1)"),
        (1, [1, 2], "is sealed with 1 entries but 2 are written under it (positions 1 to 2)"),
        (2, [2, 3], "is sealed with 2 entries but 2 are written under it (positions 2 to 3)"),
    ],
)
def test_a_block_sealed_with_the_wrong_entries_is_refused(entry_count, positions, message):
    clearing, escrow = _accounts()
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('exchange_ledgerblock', 'id'))")
        block_id = cursor.fetchone()[0]
    with pytest.raises(DatabaseError) as refused, transaction.atomic():
        for position in positions:
            entry_id, _ = _insert_entry(f"seal:{position}", block_id=block_id, position=position)
            _insert_posting(entry_id, clearing, 9)
            _insert_posting(entry_id, escrow, -9)
        _insert_block(block_id, entry_count=entry_count)
    assert message in str(refused.value)
    assert not JournalEntry.objects.filter(block_id=block_id).exists()


def test_a_block_whose_entry_has_one_posting_is_refused_at_sealing():
    clearing, _ = _accounts()
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('exchange_ledgerblock', 'id'))")
        block_id = cursor.fetchone()[0]
    with pytest.raises(DatabaseError) as refused, transaction.atomic():
        entry_id, sequence = _insert_entry("seal:short", block_id=block_id)
        _insert_posting(entry_id, clearing, 9)
        _insert_block(block_id)
    assert f"journal entry #{sequence} (seal:short) has 1 posting(s)" in str(refused.value)
    assert not JournalEntry.objects.filter(block_id=block_id).exists()


# Accounts keep their identity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "assignment", ["kind = 'merchant_receivable'", "code = 'platform_revenue'", "merchant_id = %(merchant)s"]
)
def test_an_account_code_kind_or_merchant_cannot_change_its_name_can(assignment):
    merchant = make_merchant(UserFactory(), name="Identity Data")
    payable = account_get(kind=AccountKind.MERCHANT_PAYABLE, merchant=merchant)
    other = make_merchant(UserFactory(), name="Other Data")
    refused = pytest.raises(IntegrityError, match="keeps its code, kind and merchant; only its name can change")
    with refused, transaction.atomic():
        _raw(
            f"UPDATE exchange_ledgeraccount SET {assignment} WHERE id = %(id)s",
            {"id": payable.pk, "merchant": other.pk},
        )
    stored = LedgerAccount.objects.get(pk=payable.pk)
    assert (stored.code, stored.kind, stored.merchant_id) == (payable.code, payable.kind, merchant.pk)
    LedgerAccount.objects.filter(pk=payable.pk).update(name="Payable to Identity Data Ltd")
    assert LedgerAccount.objects.get(pk=payable.pk).name == "Payable to Identity Data Ltd"


def test_verify_reports_an_account_moved_to_another_merchant():
    merchant = make_merchant(UserFactory(), name="Moved Data")
    other = make_merchant(UserFactory(), name="Receiving Data")
    payable = account_get(kind=AccountKind.MERCHANT_PAYABLE, merchant=merchant)
    clearing = account_get(kind=AccountKind.GATEWAY_CLEARING)
    journal_post(
        idempotency_key="moved:1", kind=JournalKind.PAYMENT, postings=[(clearing, 70, "CNY"), (payable, -70, "CNY")]
    )
    assert ledger_verify().ok
    _raw("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE waits for no deferred check of this transaction
    _raw("ALTER TABLE exchange_ledgeraccount DISABLE TRIGGER exchange_ledgeraccount_identity")
    _raw("UPDATE exchange_ledgeraccount SET merchant_id = %s WHERE id = %s", [other.pk, payable.pk])
    _raw("ALTER TABLE exchange_ledgeraccount ENABLE TRIGGER exchange_ledgeraccount_identity")
    assert _outcome(ledger_verify()) == (
        False,
        None,
        None,
        1,
        f"ledger account {payable.pk} ({payable.code}) is recorded as kind merchant_payable, merchant {other.pk}:"
        " not its code",
    )


def test_verify_reports_a_posting_whose_entry_does_not_exist():
    _post(1)
    clearing, _ = _accounts()
    _tamper(
        (
            "INSERT INTO exchange_posting (entry_id, account_id, amount, currency) VALUES (%s, %s, %s, 'CNY')",
            [987_654_321, clearing.pk, 50_000],
        ),
    )
    orphan = Posting.objects.get(entry_id=987_654_321)
    assert _outcome(ledger_verify()) == (
        False,
        None,
        None,
        1,
        f"posting {orphan.pk} (CNY 50000) names journal entry id 987654321, which does not exist",
    )


def test_the_break_location_of_an_entry_outside_every_block_names_the_entry_only():
    assert LedgerVerification(ok=False, first_break_sequence=12, first_break_block=None).break_location == "entry #12"


# Replays racing each other ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_writers_posting_the_same_key_at_once_get_one_entry(monkeypatch):
    """The second writer's insert waits for the first's commit, hits the key, and resolves to the first's entry."""
    clearing, escrow = _accounts()
    first_inserted, results, errors = threading.Event(), {}, []
    release = threading.Event()
    original_write = ledger_service.journal_entries_write

    def post(name):
        close_old_connections()
        try:
            results[name] = journal_post(
                idempotency_key="race:1",
                kind=JournalKind.PAYMENT,
                postings=[(clearing, 30, "CNY"), (escrow, -30, "CNY")],
            )
        except Exception as exc:  # any failure fails the test below
            errors.append(exc)
        finally:
            connections.close_all()

    def slow_write(specs):
        pending = original_write(specs)
        if threading.current_thread().name == "first" and pending.entries:
            first_inserted.set()
            release.wait(10)  # hold the uncommitted key while the second writer looks it up and inserts
        return pending

    monkeypatch.setattr(ledger_service, "journal_entries_write", slow_write)
    first = threading.Thread(target=post, args=("first",), name="first")
    second = threading.Thread(target=post, args=("second",), name="second")
    first.start()
    assert first_inserted.wait(10)
    second.start()
    second.join(1.5)  # it is waiting on the first writer's key
    assert second.is_alive()
    release.set()
    first.join(10)
    second.join(10)
    assert not errors
    (entry_first, created_first), (entry_second, created_second) = results["first"], results["second"]
    assert (created_first, created_second) == (True, False)
    assert entry_first.pk == entry_second.pk
    assert JournalEntry.objects.filter(idempotency_key="race:1").count() == 1
    assert ledger_verify().ok
