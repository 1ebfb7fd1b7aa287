"""Catalog indexes: full-text (GIN) and the orders the catalog pages by.

All are partial on published listings, the only rows the catalog reads, so
drafts cost nothing. They are created only on PostgreSQL: the SQLite default
is for small, local data and searches with icontains. The statements are
plain SQL (not Meta.indexes) because the GIN index and its predicate are
PostgreSQL features; the model state is unchanged, so makemigrations stays
clean. CONCURRENTLY keeps a live catalog writable while they build, which is
why this migration is not atomic.
"""

from django.db import migrations

INDEXES = {
    "listing_search_gin": "USING gin (search_vector)",
    "listing_pub_newest_idx": "(published_at DESC, id DESC)",
    "listing_pub_price_asc_idx": "(price_from ASC NULLS LAST, id ASC)",
    "listing_pub_price_desc_idx": "(price_from DESC NULLS LAST, id DESC)",
}


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, definition in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON listings_listing {definition} "
            "WHERE status = 'published'"
        )


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("listings", "0002_seed_categories")]
    operations = [migrations.RunPython(create_indexes, drop_indexes, atomic=False)]
