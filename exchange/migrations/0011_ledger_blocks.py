"""Ledger blocks: journal entries are hashed into blocks and the blocks are chained (DESIGN.md §5.5).

Until now every entry chained to the one before, so every writer held the
chain head's lock for its whole transaction. Existing entries already form one
chain from the genesis hash, which is exactly one block: they become block #1
with position = sequence, their stored hashes unchanged. New entries take
their sequence from a PostgreSQL sequence (unique and increasing, not
gap-free), so writers no longer need the head lock to number them.
"""

import django.db.models.deletion
from django.db import migrations, models

GENESIS = "0" * 64


def entries_into_a_legacy_block(apps, schema_editor):
    from exchange.services.ledger import block_hash

    JournalEntry = apps.get_model("exchange", "JournalEntry")
    LedgerBlock = apps.get_model("exchange", "LedgerBlock")
    LedgerChainHead = apps.get_model("exchange", "LedgerChainHead")
    postgresql = schema_editor.connection.vendor == "postgresql"
    last = JournalEntry.objects.order_by("-sequence").values_list("sequence", "entry_hash", "created_at").first()
    if postgresql:
        start = (last[0] + 1) if last else 1
        schema_editor.execute(f"CREATE SEQUENCE exchange_journal_sequence START {int(start)}")
    if last is None:
        LedgerChainHead.objects.filter(pk=1).update(sequence=0, block_hash=GENESIS)
        return
    count = JournalEntry.objects.count()
    digest = block_hash(prev_hash=GENESIS, sequence=1, entry_count=count, root_hash=last[1], created_at=last[2])
    block = LedgerBlock.objects.create(
        sequence=1, entry_count=count, root_hash=last[1], created_at=last[2], prev_hash=GENESIS, block_hash=digest
    )
    if postgresql:  # the append-only trigger refuses UPDATE; this one-time move only adds the block link
        schema_editor.execute("ALTER TABLE exchange_journalentry DISABLE TRIGGER exchange_journalentry_append_only")
    JournalEntry.objects.update(block=block, position=models.F("sequence"))
    if postgresql:
        schema_editor.execute("ALTER TABLE exchange_journalentry ENABLE TRIGGER exchange_journalentry_append_only")
    LedgerChainHead.objects.update_or_create(pk=1, defaults={"sequence": 1, "block_hash": digest})


def drop_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP SEQUENCE IF EXISTS exchange_journal_sequence")


BLOCK_TRIGGERS = """
CREATE TRIGGER exchange_ledgerblock_append_only
    BEFORE UPDATE OR DELETE ON exchange_ledgerblock
    FOR EACH ROW EXECUTE FUNCTION exchange_ledger_append_only();
"""


def block_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BLOCK_TRIGGERS, params=None)


def drop_block_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER IF EXISTS exchange_ledgerblock_append_only ON exchange_ledgerblock")


class Migration(migrations.Migration):
    dependencies = [
        ("exchange", "0010_fee_rules"),
    ]

    operations = [
        migrations.RenameField(model_name="ledgerchainhead", old_name="entry_hash", new_name="block_hash"),
        migrations.CreateModel(
            name="LedgerBlock",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("sequence", models.BigIntegerField(unique=True)),
                ("entry_count", models.PositiveIntegerField()),
                ("root_hash", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField()),
                ("prev_hash", models.CharField(max_length=64)),
                ("block_hash", models.CharField(max_length=64, unique=True)),
            ],
            options={"ordering": ["sequence"]},
        ),
        migrations.AddField(
            model_name="journalentry",
            name="block",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entries",
                to="exchange.ledgerblock",
            ),
        ),
        migrations.AddField(model_name="journalentry", name="position", field=models.PositiveIntegerField(null=True)),
        migrations.RunPython(entries_into_a_legacy_block, drop_sequence),
        migrations.AlterField(
            model_name="journalentry",
            name="block",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="entries", to="exchange.ledgerblock"
            ),
        ),
        migrations.AlterField(model_name="journalentry", name="position", field=models.PositiveIntegerField()),
        migrations.AddConstraint(
            model_name="journalentry",
            constraint=models.UniqueConstraint(fields=("block", "position"), name="journal_entry_block_position"),
        ),
        migrations.RunPython(block_triggers, drop_block_triggers),
    ]
