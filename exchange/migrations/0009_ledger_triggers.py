"""PostgreSQL enforces the ledger's two rules itself, not only the Python services.

1. Balance: every journal entry has at least two postings and they sum to zero
   per currency. Checked by deferred constraint triggers at COMMIT (an entry's
   postings are inserted in a statement after the entry's own, so a per-statement
   check would see half an entry). The entry trigger catches an entry committed
   with no postings at all; the posting trigger catches postings added later to
   an entry that was already committed. An entry inserted together with its
   postings is therefore checked 1 + (number of postings) times at commit; each
   check is one index scan of the entry's few postings (exchange_posting.entry_id
   is indexed), which is cheap enough not to need de-duplication state that a
   session could forge.
2. Append-only: UPDATE and DELETE on journal entries and postings are refused;
   corrections are reversing entries. TRUNCATE stays allowed because test
   databases are flushed with it (and only a table owner can run it).

Other database vendors (the embedded SQLite default) migrate without the
triggers; the services' own checks still apply there.
"""

from django.db import migrations

FORWARD_SQL = r"""
CREATE FUNCTION exchange_ledger_entry_check(p_entry_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_legs bigint;
    v_imbalance text;
    v_sequence bigint;
    v_key text;
BEGIN
    -- One index scan of the entry's postings answers both questions; the entry row is read only to name a failure.
    SELECT coalesce(sum(legs), 0),
           string_agg(currency || ' ' || total::text, ', ' ORDER BY currency) FILTER (WHERE total <> 0)
      INTO v_legs, v_imbalance
      FROM (
          SELECT currency, sum(amount) AS total, count(*) AS legs
            FROM exchange_posting WHERE entry_id = p_entry_id GROUP BY currency
      ) AS per_currency;
    IF v_legs >= 2 AND v_imbalance IS NULL THEN
        RETURN;
    END IF;
    SELECT sequence, idempotency_key INTO v_sequence, v_key FROM exchange_journalentry WHERE id = p_entry_id;
    IF v_legs < 2 THEN
        RAISE EXCEPTION 'ledger: journal entry #% (%) has % posting(s); an entry needs at least two that sum to zero',
            v_sequence, v_key, v_legs
            USING HINT = 'post the entry through exchange.services.ledger.journal_post';
    END IF;
    RAISE EXCEPTION 'ledger: journal entry #% (%) does not balance: postings sum to % instead of zero',
        v_sequence, v_key, v_imbalance
        USING HINT = 'post the entry through exchange.services.ledger.journal_post';
END;
$$;

CREATE FUNCTION exchange_ledger_entry_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM exchange_ledger_entry_check(NEW.id);
    RETURN NULL;
END;
$$;

CREATE FUNCTION exchange_ledger_posting_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM exchange_ledger_entry_check(NEW.entry_id);
    RETURN NULL;
END;
$$;

CREATE FUNCTION exchange_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: % on % refused: the ledger is append-only; post a reversing entry', TG_OP, TG_TABLE_NAME;
END;
$$;

CREATE CONSTRAINT TRIGGER exchange_journalentry_balanced
    AFTER INSERT ON exchange_journalentry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION exchange_ledger_entry_balanced();

CREATE CONSTRAINT TRIGGER exchange_posting_balanced
    AFTER INSERT ON exchange_posting
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION exchange_ledger_posting_balanced();

CREATE TRIGGER exchange_journalentry_append_only
    BEFORE UPDATE OR DELETE ON exchange_journalentry
    FOR EACH ROW EXECUTE FUNCTION exchange_ledger_append_only();

CREATE TRIGGER exchange_posting_append_only
    BEFORE UPDATE OR DELETE ON exchange_posting
    FOR EACH ROW EXECUTE FUNCTION exchange_ledger_append_only();
"""

REVERSE_SQL = r"""
DROP TRIGGER IF EXISTS exchange_posting_append_only ON exchange_posting;
DROP TRIGGER IF EXISTS exchange_journalentry_append_only ON exchange_journalentry;
DROP TRIGGER IF EXISTS exchange_posting_balanced ON exchange_posting;
DROP TRIGGER IF EXISTS exchange_journalentry_balanced ON exchange_journalentry;
DROP FUNCTION IF EXISTS exchange_ledger_append_only();
DROP FUNCTION IF EXISTS exchange_ledger_posting_balanced();
DROP FUNCTION IF EXISTS exchange_ledger_entry_balanced();
DROP FUNCTION IF EXISTS exchange_ledger_entry_check(bigint);
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            # params=None: no placeholder parsing, so the plpgsql "%" formats pass through untouched.
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("exchange", "0008_certificates_verifications"),
    ]

    operations = [
        migrations.RunPython(_on_postgresql(FORWARD_SQL), _on_postgresql(REVERSE_SQL), elidable=False),
    ]
