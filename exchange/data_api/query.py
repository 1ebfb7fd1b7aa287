"""Reading the rows of a stored data file with DuckDB, for the data API.

``RowQuery.parse`` validates the query string against the file's profiled
columns (``DataFile.columns``): column selection, equality and range filters,
page size, an opaque signed cursor and the output format. ``rows_fetch`` then
runs one ``SELECT ... WHERE ... LIMIT ... OFFSET ...`` over the file, with
every filter value bound as a parameter (never put in the SQL text) and cast
in Python to the column's profiled type. The file is read in the format's
own table function (the profiler's, with the profiled types pinned, so a page
never depends on DuckDB re-sniffing the file) and streamed by DuckDB: only the
page asked for (at most ``DATA_API_MAX_LIMIT`` rows) is ever held in memory.

Each request gets a fresh in-memory DuckDB on one thread and within
``DATA_API_DUCKDB_MEMORY_MB``, so one request cannot starve the server.
Row order is the file's order (insertion order preserved, one thread).
"""

import datetime
import decimal
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from django.conf import settings
from django.core import signing
from django.core.files.storage import default_storage

from listings.choices import FileFormat
from listings.models import DataFile
from listings.profiling import CHUNK, INTEGER_TYPES, quote_identifier, source_sql, transcode_to_utf8

CURSOR_SALT = "exchange.data_api.cursor.v1"
RESERVED_PARAMS = {"columns", "limit", "cursor", "format"}
FORMATS = ("json", "csv", "ndjson")
OPERATORS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
FETCH_CHUNK = 1000

_FLOAT = {"FLOAT", "DOUBLE", "REAL"}
_TIMESTAMP = re.compile(r"^TIMESTAMP(_S|_MS|_NS| WITH TIME ZONE)?$")
_INTEGER_TEXT = re.compile(r"^[+-]?\d{1,40}$")


class QueryError(Exception):
    """A request the data API refuses with 400; ``code`` names the problem, the message says how to fix it."""

    def __init__(self, code: str, message: str, *, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True)
class Filter:
    column: str
    op: str  # "=", ">=", ">", "<=", "<"
    value: object


@dataclass
class RowQuery:
    columns: list[str]
    filters: list[Filter] = field(default_factory=list)
    limit: int = 100
    offset: int = 0
    fmt: str = "json"
    shape: str = ""

    @classmethod
    def parse(cls, params, *, data_file: DataFile) -> "RowQuery":
        """Validate ``params`` (a QueryDict) for ``data_file``; raise QueryError on the first problem."""
        profiled = {column["name"]: column["type"] for column in data_file.columns}
        names = list(profiled)
        raw_columns = params.get("columns")
        if raw_columns is None or raw_columns.strip() == "":
            columns = names
        else:
            columns = [name.strip() for name in raw_columns.split(",")]
            unknown = [name for name in columns if name not in profiled]
            if unknown:
                raise QueryError(
                    "unknown_column",
                    f"Unknown column(s): {', '.join(unknown)}. Columns: {', '.join(names)}.",
                    param="columns",
                )
            if len(set(columns)) != len(columns):
                raise QueryError("duplicate_column", "A column is named twice in 'columns'.", param="columns")
        fmt = params.get("format", "json")
        if fmt not in FORMATS:
            raise QueryError("bad_format", f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.", param="format")
        limit = _parse_limit(params.get("limit"))
        filters = []
        for param in sorted(params):
            if param in RESERVED_PARAMS:
                continue
            column, op = _split_filter(param, profiled)
            for raw in params.getlist(param):
                filters.append(Filter(column, op, _cast(raw, profiled[column], param=param)))
        shape = _shape_hash(data_file.pk, columns, params)
        offset = 0
        if params.get("cursor"):
            offset = _cursor_offset(params["cursor"], shape)
        return cls(columns=columns, filters=filters, limit=limit, offset=offset, fmt=fmt, shape=shape)

    def cursor_for(self, offset: int) -> str:
        return signing.dumps({"o": offset, "q": self.shape}, salt=CURSOR_SALT, compress=False)


def _parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return settings.DATA_API_DEFAULT_LIMIT
    maximum = settings.DATA_API_MAX_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise QueryError("bad_limit", f"'limit' must be a whole number from 1 to {maximum}.", param="limit")
    return int(raw)


def _split_filter(param: str, profiled: dict[str, str]) -> tuple[str, str]:
    if param in profiled:
        return param, "="
    column, sep, suffix = param.rpartition("__")
    if sep and column in profiled:
        if suffix not in OPERATORS:
            raise QueryError(
                "unknown_operator",
                f"Unknown filter operator {suffix!r} in {param!r}; use one of {', '.join(OPERATORS)}.",
                param=param,
            )
        return column, OPERATORS[suffix]
    raise QueryError("unknown_column", f"Unknown column in filter {param!r}.", param=param)


def _cast(raw: str, type_: str, *, param: str):
    """``raw`` as a Python value of the column's DuckDB type; QueryError(``bad_value``) when it is not one."""
    base = type_.upper()
    try:
        if base == "VARCHAR":
            return raw
        if base in INTEGER_TYPES:
            if not _INTEGER_TEXT.match(raw):
                raise ValueError
            return int(raw)
        if base in _FLOAT:
            value = float(raw)
            if value != value:  # NaN compares to nothing
                raise ValueError
            return value
        if base.startswith("DECIMAL"):
            value = decimal.Decimal(raw)
            if not value.is_finite():
                raise ValueError
            return value
        if base == "BOOLEAN":
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return lowered in ("true", "1")
        if base == "DATE":
            return datetime.date.fromisoformat(raw)
        if _TIMESTAMP.match(base):
            return datetime.datetime.fromisoformat(raw)
        if base == "TIME":
            return datetime.time.fromisoformat(raw)
    except (ValueError, ArithmeticError):
        raise QueryError(
            "bad_value", f"{raw!r} is not a valid {type_} value for filter {param!r}.", param=param
        ) from None
    raise QueryError("unfilterable_column", f"Columns of type {type_} cannot be filtered.", param=param)


def _shape_hash(file_pk: int, columns: list[str], params) -> str:
    """What a cursor is bound to: the file, the columns and the filters (not the page size or format)."""
    filters = sorted((name, value) for name in params if name not in RESERVED_PARAMS for value in params.getlist(name))
    text = json.dumps([file_pk, columns, filters], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cursor_offset(cursor: str, shape: str) -> int:
    try:
        data = signing.loads(cursor, salt=CURSOR_SALT)
    except signing.BadSignature:
        raise QueryError("bad_cursor", "The cursor is not valid; start again without one.", param="cursor") from None
    if not isinstance(data, dict) or not isinstance(data.get("o"), int) or data["o"] < 0:
        raise QueryError("bad_cursor", "The cursor is not valid; start again without one.", param="cursor")
    if data.get("q") != shape:
        raise QueryError(
            "bad_cursor",
            "The cursor belongs to a query with other columns or filters; keep them as they were.",
            param="cursor",
        )
    return data["o"]


# --- the file --------------------------------------------------------------------


def _cached_copy(data_file: DataFile, *, utf8_from: str | None) -> str:
    """A local copy of the stored file under DATA_API_CACHE_DIR, made once per sha256 (and atomically)."""
    directory = Path(settings.DATA_API_CACHE_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = "utf8" if utf8_from else data_file.format
    final = directory / f"{data_file.sha256}.{suffix}"
    if final.is_file():
        return str(final)
    with tempfile.TemporaryDirectory(dir=directory, prefix="fill-") as scratch:
        if utf8_from:
            made = transcode_to_utf8(data_file.file.name, scratch, utf8_from)
        else:
            made = os.path.join(scratch, f"copy-{uuid.uuid4().hex}")
            with default_storage.open(data_file.file.name, "rb") as source, open(made, "wb") as copy:
                shutil.copyfileobj(source, copy, CHUNK)
        os.replace(made, final)  # concurrent fillers write the same bytes; the last rename wins harmlessly
    return str(final)


def local_path(data_file: DataFile) -> str:
    """A UTF-8 local path DuckDB can read for ``data_file``.

    The storage's own path when it has one (FileSystemStorage); otherwise
    (S3) or for text that is not UTF-8 a cached local copy keyed by the
    file's sha256, made on first use.
    """
    encoding = (data_file.encoding or "").lower()
    if encoding and encoding not in ("utf-8", "utf8", "ascii"):
        return _cached_copy(data_file, utf8_from=encoding)
    try:
        path = default_storage.path(data_file.file.name)
    except NotImplementedError:
        path = None
    if path is not None and os.path.isfile(path):
        return path
    return _cached_copy(data_file, utf8_from=None)


def _typed_source(data_file: DataFile, path: str) -> str:
    """The profiler's table function for the file, with the profiled column types pinned."""
    source = source_sql(data_file, path)
    if data_file.format == FileFormat.PARQUET:
        return source  # Parquet carries its own types
    entries = ", ".join(f"{_literal(column['name'])}: {_literal(column['type'])}" for column in data_file.columns)
    option = "types" if data_file.format in (FileFormat.CSV, FileFormat.TSV) else "columns"
    if not source.endswith(")"):
        raise RuntimeError("Unexpected table function form")
    return f"{source[:-1]}, {option} = {{{entries}}})"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect(temp_directory: str) -> duckdb.DuckDBPyConnection:
    # The profiler's hardening (no extension fetches, locked configuration) with the API's
    # smaller budget: one thread, which also keeps pages in file order.
    return duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "memory_limit": f"{settings.DATA_API_DUCKDB_MEMORY_MB}MB",
            "threads": 1,
            "temp_directory": temp_directory,
            "preserve_insertion_order": True,
            "lock_configuration": True,
        },
    )


@dataclass
class Page:
    columns: list[str]
    rows: list[tuple]
    has_more: bool


def rows_fetch(data_file: DataFile, query: RowQuery, *, limit: int | None = None) -> Page:
    """The page of rows ``query`` asks for (at most ``limit`` rows, default ``query.limit``).

    Raises duckdb.Error when the file cannot be read.
    """
    limit = query.limit if limit is None else limit
    path = local_path(data_file)
    select = ", ".join(quote_identifier(name) for name in query.columns)
    where, params = [], []
    for item in query.filters:
        where.append(f"{quote_identifier(item.column)} {item.op} ?")
        params.append(item.value)
    sql = f"SELECT {select} FROM {_typed_source(data_file, path)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    # One row past the page says whether there is a next one.
    sql += f" LIMIT {int(limit) + 1} OFFSET {int(query.offset)}"
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="data-api-") as scratch, _connect(scratch) as connection:
        cursor = connection.execute(sql, params)
        while len(rows) <= limit:
            chunk = cursor.fetchmany(FETCH_CHUNK)
            if not chunk:
                break
            rows.extend(chunk)
    has_more = len(rows) > limit
    return Page(columns=list(query.columns), rows=rows[:limit], has_more=has_more)
