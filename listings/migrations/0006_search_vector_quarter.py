"""Every published listing's search vector gains its publication quarter as a lexeme (``pubq2026q4``).

The catalog narrows a broad search to recent quarters inside the GIN index
(``listings.search._candidates_sql``). On PostgreSQL the vectors of published
listings are extended here in one statement, with the GIN index dropped and
rebuilt around it (updating a large catalog's index row by row would take far
longer than building it once). New vectors come from
``listings.search.SEARCH_VECTOR_SQL``, which includes the lexeme.
"""

from django.db import migrations

QUARTER = "to_tsvector('simple', 'pubq' || to_char(published_at AT TIME ZONE 'UTC', 'YYYY\"q\"Q'))"


def extend_vectors(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP INDEX IF EXISTS listing_search_gin")
    schema_editor.execute(
        f"UPDATE listings_listing SET search_vector = search_vector || {QUARTER}"
        " WHERE published_at IS NOT NULL AND search_vector IS NOT NULL"
    )
    schema_editor.execute(
        "CREATE INDEX IF NOT EXISTS listing_search_gin ON listings_listing USING gin (search_vector)"
        " WHERE status = 'published'"
    )


class Migration(migrations.Migration):
    dependencies = [("listings", "0005_listing_price_kinds")]
    operations = [migrations.RunPython(extend_vectors, migrations.RunPython.noop)]
