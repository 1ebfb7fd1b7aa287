"""The ledger's rules enforced by PostgreSQL itself (migration 0009), and ledger_verify's reports.

Writes that bypass ``journal_post`` are raw SQL on purpose: the database must
refuse them on its own. Tampering disables the append-only trigger for that
one statement only (the test database user is a superuser), as an attacker
with the database owner's rights could.
"""

import contextlib
import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import ProgrammingError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from exchange.choices import AccountKind, JournalKind
from exchange.models import JournalEntry, LedgerChainHead, LedgerVerification, Posting
from exchange.services.ledger import (
    EntrySpec,
    account_get,
    journal_post,
    journal_post_many,
    ledger_verify,
    ledger_verify_record,
)
from exchange.tasks import ledger_verify_scheduled

pytestmark = pytest.mark.django_db

APPEND_ONLY = "the ledger is append-only; post a reversing entry"


def _accounts():
    return account_get(kind=AccountKind.GATEWAY_CLEARING), account_get(kind=AccountKind.ESCROW_HELD)


def _post(n: int, amount: int = 100) -> JournalEntry:
    clearing, escrow = _accounts()
    entry, _ = journal_post(
        idempotency_key=f"enforced:{n}",
        kind=JournalKind.PAYMENT,
        postings=[(clearing, amount, "CNY"), (escrow, -amount, "CNY")],
    )
    return entry


def _ledger_rows():
    """Everything stored in the ledger, to compare before and after a refused write."""
    entries = list(
        JournalEntry.objects.order_by("sequence").values_list("sequence", "idempotency_key", "kind", "entry_hash")
    )
    postings = list(Posting.objects.order_by("pk").values_list("pk", "entry_id", "account_id", "amount", "currency"))
    head = LedgerChainHead.objects.filter(pk=1).values_list("sequence", "entry_hash").first()
    return entries, postings, head


def _raw(sql: str, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@contextlib.contextmanager
def _append_only_disabled(table: str):
    # ALTER TABLE refuses while this transaction has deferred checks pending on the table (the balance triggers,
    # and the foreign keys of rows both inserted and updated here): run them now, as a commit would, first.
    _flush_deferred()
    _raw(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    try:
        yield
    finally:
        _flush_deferred()
        _raw(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")


def _flush_deferred():
    _raw("SET CONSTRAINTS ALL IMMEDIATE")
    _raw("SET CONSTRAINTS ALL DEFERRED")


def _insert_entry(sequence: int, key: str) -> int:
    """A journal entry written straight into the table (no postings); returns its id."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO exchange_journalentry"
            " (sequence, idempotency_key, kind, memo, created_at, prev_hash, entry_hash)"
            " VALUES (%s, %s, %s, '', %s, %s, %s) RETURNING id",
            [sequence, key, JournalKind.PAYMENT, timezone.now(), "0" * 64, f"{sequence:064x}"],
        )
        return cursor.fetchone()[0]


def _insert_posting(entry_id: int, account, amount: int, currency: str = "CNY"):
    _raw(
        "INSERT INTO exchange_posting (entry_id, account_id, amount, currency) VALUES (%s, %s, %s, %s)",
        [entry_id, account.pk, amount, currency],
    )


def _check_now():
    """Fire the deferred balance triggers now, as COMMIT would, inside the test's transaction."""
    _raw("SET CONSTRAINTS ALL IMMEDIATE")


# Append-only ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE exchange_journalentry SET memo = 'rewritten' WHERE sequence = 2",
        "UPDATE exchange_journalentry SET entry_hash = repeat('f', 64) WHERE sequence = 2",
        "DELETE FROM exchange_journalentry WHERE sequence = 2",
        "UPDATE exchange_posting SET amount = amount * 2 WHERE entry_id = (SELECT id FROM exchange_journalentry"
        " WHERE sequence = 2)",
        "DELETE FROM exchange_posting WHERE entry_id = (SELECT id FROM exchange_journalentry WHERE sequence = 2)",
    ],
)
def test_raw_update_or_delete_of_posted_rows_fails_in_the_database(sql):
    for n in range(1, 4):
        _post(n)
    before = _ledger_rows()

    with pytest.raises(ProgrammingError, match=APPEND_ONLY), transaction.atomic():
        _raw(sql)

    assert _ledger_rows() == before
    assert ledger_verify().ok


def test_the_refusal_names_the_operation_and_table():
    _post(1)
    with pytest.raises(ProgrammingError) as refused, transaction.atomic():
        _raw("DELETE FROM exchange_posting")
    assert f"DELETE on exchange_posting refused: {APPEND_ONLY}" in str(refused.value)
    assert Posting.objects.count() == 2


def test_orm_update_is_refused_too():
    entry = _post(1)
    with pytest.raises(ProgrammingError, match=APPEND_ONLY), transaction.atomic():
        JournalEntry.objects.filter(pk=entry.pk).update(memo="edited through the ORM")
    assert JournalEntry.objects.get(pk=entry.pk).memo == ""


# Balance, checked by deferred constraint triggers ------------------------------------------------------------------


def test_unbalanced_postings_inserted_raw_are_refused_at_the_check_and_leave_nothing():
    _post(1)
    clearing, escrow = _accounts()
    before = _ledger_rows()

    with (
        pytest.raises(ProgrammingError, match=r"journal entry #2 \(raw:2\) does not balance: .*CNY 1"),
        transaction.atomic(),
    ):
        entry_id = _insert_entry(2, "raw:2")
        _insert_posting(entry_id, clearing, 101)
        _insert_posting(entry_id, escrow, -100)
        _check_now()

    assert _ledger_rows() == before


def test_each_currency_must_balance_on_its_own():
    clearing, escrow = _accounts()
    with pytest.raises(ProgrammingError, match=r"does not balance: .*CNY 5, USD -5"), transaction.atomic():
        entry_id = _insert_entry(1, "raw:fx")
        _insert_posting(entry_id, clearing, 5, "CNY")
        _insert_posting(entry_id, escrow, -5, "USD")
        _check_now()
    assert not JournalEntry.objects.exists() and not Posting.objects.exists()


@pytest.mark.parametrize("legs", [0, 1])
def test_an_entry_with_fewer_than_two_postings_is_refused(legs):
    clearing, _ = _accounts()
    with (
        pytest.raises(ProgrammingError, match=rf"journal entry #1 \(raw:short\) has {legs} posting\(s\)"),
        transaction.atomic(),
    ):
        entry_id = _insert_entry(1, "raw:short")
        for _ in range(legs):
            _insert_posting(entry_id, clearing, 7)
        _check_now()
    assert not JournalEntry.objects.exists() and not Posting.objects.exists()


def test_a_balanced_raw_entry_passes_the_database_check():
    """The triggers refuse imbalance, not raw SQL as such (the chain is ledger_verify's job)."""
    clearing, escrow = _accounts()
    with transaction.atomic():
        entry_id = _insert_entry(1, "raw:balanced")
        _insert_posting(entry_id, clearing, 40)
        _insert_posting(entry_id, escrow, -40)
        _check_now()
    assert Posting.objects.filter(entry_id=entry_id).count() == 2


@pytest.mark.django_db(transaction=True)
def test_unbalanced_entry_fails_at_commit_not_before():
    clearing, escrow = _accounts()
    reached_commit = False
    with (
        pytest.raises(ProgrammingError, match=r"journal entry #1 \(raw:commit\) does not balance: .*CNY 3"),
        transaction.atomic(),
    ):
        entry_id = _insert_entry(1, "raw:commit")
        _insert_posting(entry_id, clearing, 10)
        _insert_posting(entry_id, escrow, -7)
        reached_commit = True  # every statement above succeeded; only COMMIT refuses
    assert reached_commit
    assert not JournalEntry.objects.exists() and not Posting.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_postings_added_later_to_a_committed_entry_are_refused_at_commit():
    entry = _post(1)
    clearing, _ = _accounts()
    before = _ledger_rows()
    with (
        pytest.raises(ProgrammingError, match=r"journal entry #1 \(enforced:1\) does not balance: .*CNY 5"),
        transaction.atomic(),
    ):
        _insert_posting(entry.pk, clearing, 5)
    assert _ledger_rows() == before


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
    result = ledger_verify(chunk_size=64)
    assert (result.ok, result.entries_checked, result.first_break) == (True, 300, None)


# ledger_verify: the first break, exactly --------------------------------------------------------------------------


def test_a_tampered_amount_is_reported_at_exactly_that_entry():
    for n in range(1, 8):
        _post(n, amount=100 + n)
    with _append_only_disabled("exchange_posting"):
        _raw(
            "UPDATE exchange_posting SET amount = amount + 1 WHERE id = (SELECT min(p.id) FROM exchange_posting p"
            " JOIN exchange_journalentry e ON e.id = p.entry_id WHERE e.sequence = 5)"
        )
    for chunk_size in (2000, 3, 1):  # the break is found the same across chunk boundaries
        result = ledger_verify(chunk_size=chunk_size)
        assert (result.ok, result.first_break, result.entries_checked) == (False, 5, 4)
        assert result.message == "entry does not balance: 2 postings, off by {'CNY': 1}"


def test_a_tampered_but_balanced_entry_is_reported_by_its_hash():
    for n in range(1, 6):
        _post(n)
    with _append_only_disabled("exchange_posting"):
        _raw(
            "UPDATE exchange_posting SET amount = amount * 2"
            " WHERE entry_id = (SELECT id FROM exchange_journalentry WHERE sequence = 3)"
        )
    result = ledger_verify(chunk_size=2)
    assert (result.ok, result.first_break, result.message) == (False, 3, "content does not match its hash")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE exchange_journalentry SET kind = 'refund' WHERE sequence = 4", "content does not match its hash"),
        (
            "UPDATE exchange_journalentry SET idempotency_key = 'x' WHERE sequence = 4",
            "content does not match its hash",
        ),
        (
            "UPDATE exchange_journalentry SET prev_hash = repeat('a', 64) WHERE sequence = 4",
            "previous-hash link is broken",
        ),
        (
            "DELETE FROM exchange_posting WHERE entry_id = (SELECT id FROM exchange_journalentry WHERE sequence = 4)",
            "entry does not balance: 0 postings, off by {}",
        ),
    ],
)
def test_tampered_entry_fields_are_reported_at_that_entry(sql, message):
    for n in range(1, 7):
        _post(n)
    table = "exchange_posting" if "exchange_posting" in sql else "exchange_journalentry"
    with _append_only_disabled(table):
        _raw(sql)
    result = ledger_verify()
    assert (result.ok, result.first_break, result.entries_checked, result.message) == (False, 4, 3, message)


def test_a_deleted_entry_is_reported_at_its_sequence():
    for n in range(1, 6):
        _post(n)
    with _append_only_disabled("exchange_posting"), _append_only_disabled("exchange_journalentry"):
        _raw("DELETE FROM exchange_posting WHERE entry_id = (SELECT id FROM exchange_journalentry WHERE sequence = 3)")
        _raw("DELETE FROM exchange_journalentry WHERE sequence = 3")
    result = ledger_verify()
    assert (result.ok, result.first_break, result.message) == (False, 3, "entry #3 is missing (next is #4)")


def test_a_rewritten_hash_breaks_the_link_of_the_next_entry():
    """Rewriting an entry and its own hash consistently still breaks the chain where the next entry links to it."""
    for n in range(1, 5):
        _post(n)
    with _append_only_disabled("exchange_journalentry"):
        _raw("UPDATE exchange_journalentry SET entry_hash = repeat('f', 64) WHERE sequence = 2")
    assert ledger_verify().first_break == 2
    with _append_only_disabled("exchange_journalentry"):
        # Forge entry 2's memo-free content consistently: a new hash computed the way the service does.
        entry = JournalEntry.objects.get(sequence=2)
        from exchange.services.ledger import _canonical, entry_hash

        legs = [(p.account.code, p.amount, p.currency) for p in entry.postings.select_related("account")]
        canonical = _canonical(
            sequence=2,
            idempotency_key="forged",
            kind=entry.kind,
            order_id=None,
            payout_id=None,
            created_at=entry.created_at,
            legs=legs,
        )
        forged = entry_hash(prev_hash=entry.prev_hash, canonical=canonical)
        _raw(
            "UPDATE exchange_journalentry SET idempotency_key = 'forged', entry_hash = %s WHERE sequence = 2", [forged]
        )
    result = ledger_verify()
    assert (result.ok, result.first_break, result.message) == (False, 3, "previous-hash link is broken")


def test_a_chain_head_ahead_of_the_entries_is_reported():
    for n in range(1, 4):
        _post(n)
    LedgerChainHead.objects.filter(pk=1).update(sequence=4)
    result = ledger_verify()
    assert (result.ok, result.first_break, result.entries_checked) == (False, 4, 3)
    assert result.message == "the chain head is #4 but the entries end at #3"


def test_entries_after_the_head_read_at_the_start_are_left_for_the_next_run():
    """A writer appending while the check runs is not a break: the walk stops at the head it started from."""
    for n in range(1, 4):
        _post(n)
    head = LedgerChainHead.objects.get(pk=1)
    clearing, escrow = _accounts()
    journal_post(idempotency_key="late", kind=JournalKind.PAYMENT, postings=[(clearing, 1, "CNY"), (escrow, -1, "CNY")])
    # Put the head back where a verification that began before "late" committed would have read it.
    LedgerChainHead.objects.filter(pk=1).update(sequence=head.sequence, entry_hash=head.entry_hash)
    result = ledger_verify()
    assert (result.ok, result.entries_checked) == (True, 3)


def test_an_empty_and_a_healthy_ledger_verify():
    assert (ledger_verify().ok, ledger_verify().entries_checked) == (True, 0)
    clearing, escrow = _accounts()
    journal_post(
        idempotency_key="fx",
        kind=JournalKind.PAYMENT,
        postings=[(clearing, 5, "CNY"), (escrow, -5, "CNY"), (clearing, 3, "USD"), (escrow, -3, "USD")],
    )
    _post(2)
    result = ledger_verify(chunk_size=1)
    assert (result.ok, result.entries_checked, result.message) == (
        True,
        2,
        "2 entries verified, balanced in 2 currencies",
    )


def test_bad_chunk_size_is_refused():
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        ledger_verify(chunk_size=0)


# Stored verifications: service, command, task, admin --------------------------------------------------------------


def test_ledger_verify_record_stores_the_outcome():
    for n in range(1, 4):
        _post(n)
    record = ledger_verify_record(trigger="command")
    record.refresh_from_db()
    assert (record.ok, record.entries_checked, record.first_break_sequence, record.trigger) == (
        True,
        3,
        None,
        "command",
    )
    assert record.finished_at is not None and record.finished_at >= record.started_at
    assert record.message == "3 entries verified, balanced in 1 currencies"


def test_ledger_verify_record_refuses_an_unknown_trigger_and_stores_nothing():
    with pytest.raises(ValueError, match="trigger must be one of command, admin, schedule, not 'cron'"):
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
    assert lines[0].startswith("Ledger OK: 3 entries verified, balanced in 1 currencies in ")
    assert lines[0].endswith(f"(verification {record.pk}).")
    assert (record.ok, record.entries_checked, record.trigger) == (True, 3, "command")


def test_command_fails_naming_the_tampered_sequence_and_records_it():
    for n in range(1, 6):
        _post(n, amount=10 * n)
    with _append_only_disabled("exchange_posting"):
        _raw(
            "UPDATE exchange_posting SET amount = amount * 3"
            " WHERE entry_id = (SELECT id FROM exchange_journalentry WHERE sequence = 2)"
        )
    with pytest.raises(CommandError) as failed:
        call_command("ledger_verify", stdout=io.StringIO())
    record = LedgerVerification.objects.get()
    assert str(failed.value) == (
        "Ledger BROKEN at entry #2: content does not match its hash "
        f"(1 entries verified before it; verification {record.pk})."
    )
    assert (record.ok, record.first_break_sequence, record.entries_checked, record.trigger) == (False, 2, 1, "command")


def test_command_exits_with_status_1_on_a_break():
    _post(1)
    with _append_only_disabled("exchange_journalentry"):
        _raw("UPDATE exchange_journalentry SET kind = 'refund' WHERE sequence = 1")
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        # run_from_argv is the path `manage.py ledger_verify` takes: a CommandError becomes stderr and exit 1.
        from exchange.management.commands.ledger_verify import Command

        Command(stdout=io.StringIO(), stderr=err).run_from_argv(["manage.py", "ledger_verify"])
    assert exited.value.code == 1
    assert "Ledger BROKEN at entry #1: content does not match its hash" in err.getvalue()


def test_scheduled_task_records_a_verification():
    _post(1)
    summary = ledger_verify_scheduled.delay().get()
    record = LedgerVerification.objects.get()
    assert summary == {"verification": record.pk, "ok": True, "entries_checked": 1, "first_break_sequence": None}
    assert record.trigger == "schedule"


def test_admin_shows_the_latest_verification_and_runs_one(client, staff):
    for n in range(1, 3):
        _post(n)
    client.force_login(staff)
    changelist = reverse("admin:exchange_ledgerverification_changelist")
    page = client.get(changelist)
    assert page.status_code == 200
    assert "The ledger has not been verified yet." in page.content.decode()

    response = client.post(reverse("admin:exchange_ledgerverification_verify"))
    assert response.status_code == 302 and response.url == changelist
    record = LedgerVerification.objects.get()
    assert (record.ok, record.entries_checked, record.trigger) == (True, 2, "admin")

    with _append_only_disabled("exchange_journalentry"):
        _raw("UPDATE exchange_journalentry SET kind = 'refund' WHERE sequence = 2")
    page = client.post(reverse("admin:exchange_ledgerverification_verify"), follow=True)
    html = page.content.decode()
    assert "Ledger BROKEN at entry #2: content does not match its hash" in html  # the message
    assert "first break at entry #2" in html  # the latest-verification summary
    assert LedgerVerification.objects.filter(ok=False, first_break_sequence=2, trigger="admin").count() == 1


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
    assert "Ledger OK: 1 entries verified" in response.content.decode()
    assert LedgerVerification.objects.get().trigger == "admin"
