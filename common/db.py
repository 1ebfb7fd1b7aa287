"""Bulk writes for the hot paths (settlement batches): PostgreSQL ``COPY`` rather than ``INSERT``.

Django's ``bulk_create`` builds model instances and, on PostgreSQL, binds
every column as an array parameter; for thousands of rows the Python side of
that costs more than the database's work. ``COPY ... FROM STDIN`` streams the
rows as they are. Elsewhere (the embedded SQLite default) the same rows go
through ``bulk_create``.
"""

from collections.abc import Iterable, Sequence

from django.db import connection


def rows_copy(model, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Insert ``rows`` (tuples in ``columns`` order, by column attname such as ``order_id``) into ``model``'s table.

    Must run inside the caller's transaction; columns left out take the
    database's default (the primary key's sequence), never Django's Python
    defaults, so every column without a database default must be given.
    Returns the number of rows written. Nothing is read back.
    """
    rows = list(rows)
    if not rows:
        return 0
    if connection.vendor != "postgresql":
        model.objects.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in rows])
        return len(rows)
    table = connection.ops.quote_name(model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(model._meta.get_field(c).column) for c in columns)
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return len(rows)
