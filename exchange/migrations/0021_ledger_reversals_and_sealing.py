"""Reversing entries name the entry they reverse; sealing a block checks its entries; accounts keep their identity.

1. ``JournalEntry.reverses``: a correction that negates every leg of an earlier
   entry (a dispute won, a payout the gateway refused) names that entry, at most
   one reversal per entry (unique). The link is covered by the entry's hash.
2. A block is checked as it is sealed (a BEFORE INSERT trigger on
   ``exchange_ledgerblock``): it must hold exactly ``entry_count`` entries at
   positions 1..entry_count, and each of them must have at least two postings
   summing to zero per currency. Writers run the deferred balance checks early
   (``SET CONSTRAINTS ALL IMMEDIATE`` in ``ledger.block_append``, outside the
   chain head's lock); a posting added after that and before the block was
   sealed went unchecked. Once sealed, an entry takes no posting (0018), so
   every entry is checked at the moment it can no longer change.
3. A ledger account's code, kind and merchant cannot change (a BEFORE UPDATE
   trigger): its postings are hashed by code, and payouts and statements read
   kind and merchant. Its name (a label) can.

Other database vendors (the embedded SQLite default) get the column only.
"""

import django.db.models.deletion
from django.db import migrations, models

FORWARD_SQL = r"""
CREATE FUNCTION exchange_ledger_block_sealed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
    v_first bigint;
    v_last bigint;
    v_bad bigint;
BEGIN
    SELECT count(*), min(position), max(position) INTO v_count, v_first, v_last
      FROM exchange_journalentry WHERE block_id = NEW.id;
    -- Positions are unique per block (journal_entry_block_position), so these three pin them to 1..entry_count.
    IF v_count <> NEW.entry_count OR (v_count > 0 AND (v_first <> 1 OR v_last <> NEW.entry_count)) THEN
        RAISE EXCEPTION 'ledger: block #% is sealed with % entries but % are written under it (positions % to %)',
            NEW.sequence, NEW.entry_count, v_count, coalesce(v_first, 0), coalesce(v_last, 0)
            USING HINT = 'append blocks through exchange.services.ledger.block_append';
    END IF;
    -- The first entry with fewer than two postings or a currency that does not sum to zero, in one pass.
    SELECT entry_id INTO v_bad FROM (
        SELECT e.id AS entry_id, count(p.id) AS legs, coalesce(sum(p.amount), 0) AS total
          FROM exchange_journalentry e LEFT JOIN exchange_posting p ON p.entry_id = e.id
         WHERE e.block_id = NEW.id
         GROUP BY e.id, p.currency
    ) AS per_currency
     GROUP BY entry_id HAVING sum(legs) < 2 OR bool_or(total <> 0)
     ORDER BY entry_id LIMIT 1;
    IF v_bad IS NOT NULL THEN
        PERFORM exchange_ledger_entry_check(v_bad);  -- raises, naming the entry and what is wrong
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER exchange_ledgerblock_sealed
    BEFORE INSERT ON exchange_ledgerblock
    FOR EACH ROW EXECUTE FUNCTION exchange_ledger_block_sealed();

CREATE FUNCTION exchange_ledger_account_identity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: account % (%) keeps its code, kind and merchant; only its name can change',
        OLD.id, OLD.code
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER exchange_ledgeraccount_identity
    BEFORE UPDATE ON exchange_ledgeraccount
    FOR EACH ROW
    WHEN (OLD.code IS DISTINCT FROM NEW.code OR OLD.kind IS DISTINCT FROM NEW.kind
          OR OLD.merchant_id IS DISTINCT FROM NEW.merchant_id)
    EXECUTE FUNCTION exchange_ledger_account_identity();
"""

REVERSE_SQL = r"""
DROP TRIGGER exchange_ledgeraccount_identity ON exchange_ledgeraccount;
DROP FUNCTION exchange_ledger_account_identity();
DROP TRIGGER exchange_ledgerblock_sealed ON exchange_ledgerblock;
DROP FUNCTION exchange_ledger_block_sealed();
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)  # no placeholder parsing: plpgsql's "%" stays as it is

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("exchange", "0020_order_indexes_only_where_used"),
    ]

    operations = [
        migrations.AddField(
            model_name="journalentry",
            name="reverses",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="reversed_by",
                to="exchange.journalentry",
                verbose_name="reverses",
            ),
        ),
        migrations.RunPython(_on_postgresql(FORWARD_SQL), _on_postgresql(REVERSE_SQL), elidable=False),
    ]
