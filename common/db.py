"""Bulk reads and writes for the hot paths (settlement batches).

Writes: PostgreSQL ``COPY`` rather than ``INSERT``. Django's ``bulk_create``
builds model instances and, on PostgreSQL, binds every column as an array
parameter; for thousands of rows the Python side of that costs more than the
database's work. ``COPY ... FROM STDIN`` streams the rows as they are.
Elsewhere (the embedded SQLite default) the same rows go through
``bulk_create``.

Reads: the ``any_of`` lookup (``filter(pk__any_of=ids)``) is ``__in`` sent as
one array parameter (``= ANY(%s)``) on PostgreSQL. ``__in`` with 500 values
builds, binds and parses 500 placeholders, which costs a settlement batch
more Python time than the query costs PostgreSQL. Elsewhere it is ``__in``.
"""

from collections.abc import Iterable, Sequence

from django.db import connection
from django.db.models import Field, ForeignObject
from django.db.models.lookups import In


class AnyOf(In):
    """``field__any_of=values``: ``field IN (values)``, bound as one array on PostgreSQL."""

    lookup_name = "any_of"

    def as_postgresql(self, compiler, connection):
        if not isinstance(self.rhs, (list, tuple, set, frozenset)):
            return super().as_sql(compiler, connection)  # a subquery: IN (SELECT ...) as usual
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = [value for value in self.rhs if value is not None]
        return f"{lhs} = ANY(%s)", (*lhs_params, values)


Field.register_lookup(AnyOf)
ForeignObject.register_lookup(AnyOf)  # foreign keys keep their own lookups: ``order_id__any_of`` needs this too


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
    # The raw psycopg cursor: its errors are turned into Django's (IntegrityError, ...) as any query's are.
    with (
        connection.wrap_database_errors,
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
    return len(rows)
