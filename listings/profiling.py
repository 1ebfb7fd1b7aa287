"""Profiling of stored data files with DuckDB, and the schema diff between versions.

``datafile_profile_run`` reads a stored file with DuckDB, which streams it:
the file is never loaded into Python, and DuckDB runs under a memory limit
and spills to a temporary directory. It records on the DataFile the columns
(name, type, null ratio, min, max, PII flags), the row count and the first
``settings.PROFILE_SAMPLE_ROWS`` rows, then refreshes the version's schema
diff and the catalog. A file DuckDB cannot read ends FAILED with the reason;
only transient errors (database, network) escape, for the task to retry.

DuckDB reads UTF-8 only (its encodings extension would be a download), so a
GB18030 text file is first transcoded, streamed, into a temporary UTF-8 copy.
Extensions are never installed or auto-loaded: the CSV, JSON and Parquet
readers are built in.
"""

import codecs
import contextlib
import datetime
import decimal
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import duckdb
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from listings.choices import FileFormat, ProfileStatus
from listings.models import DataFile, ListingVersion
from listings.pii import MAX_VALUE_CHARS, pii_flags
from listings.search import listing_refresh_catalog_fields

CHUNK = 1024 * 1024
DUCKDB_MEMORY_LIMIT = "512MB"
DUCKDB_THREADS = 2
# How many non-null values of a column the PII checks look at.
PII_SAMPLE_VALUES = 1000
# Caps that keep the stored profile small whatever the data holds.
MINMAX_MAX_CHARS = 200
SAMPLE_VALUE_MAX_CHARS = 1000
SAMPLE_NESTED_MAX_ITEMS = 100
ERROR_MAX_CHARS = 1000

# Column types whose values may hold PII as text: strings, and integers
# (a column of phone or card numbers is sniffed as BIGINT or HUGEINT).
INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)
_PII_TYPES = {"VARCHAR", *INTEGER_TYPES}


class ProfileError(Exception):
    """The file cannot be profiled; the message is shown to the merchant."""


def duckdb_connect(*, temp_directory: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never fetches extensions and stays within a memory budget."""
    return duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "memory_limit": DUCKDB_MEMORY_LIMIT,
            "threads": DUCKDB_THREADS,
            "temp_directory": temp_directory,
            # "The first N rows" must mean the file's first rows.
            "preserve_insertion_order": True,
            "lock_configuration": True,
        },
    )


def duckdb_error_message(exc: Exception, *, replace: dict[str, str] | None = None) -> str:
    """A DuckDB error as a person reads it: the diagnosis without the tuning tips or server paths."""
    text = str(exc)
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    # Drop the tuning tips and the echo of our own SQL ("LINE 1: ..." and a caret line).
    for marker in ("\nPossible fixes", "\nPossible solutions", "\n* ", "\nLINE "):
        text = text.split(marker, 1)[0]
    lines = [line.rstrip() for line in text.strip().splitlines() if not line.strip().startswith("file =")]
    text = "\n".join(line for line in lines if line).replace("\x00", "")
    return text[:ERROR_MAX_CHARS] or exc.__class__.__name__


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@contextlib.contextmanager
def _local_path(name: str, directory: str) -> Iterator[str]:
    """A local filesystem path for a stored file: the storage's own, or a chunked copy.

    Remote storages (S3) have no local path; some (in-memory) return one that
    is not on disk. Either way the file is streamed into ``directory``.
    """
    try:
        path = default_storage.path(name)
    except NotImplementedError:
        path = None
    if path is not None and os.path.isfile(path):
        yield path
        return
    path = os.path.join(directory, f"copy-{uuid.uuid4().hex}")
    with default_storage.open(name, "rb") as source, open(path, "wb") as copy:
        shutil.copyfileobj(source, copy, CHUNK)
    try:
        yield path
    finally:
        os.unlink(path)


def transcode_to_utf8(name: str, directory: str, encoding: str) -> str:
    """Stream a stored text file into a UTF-8 temporary copy; return its path."""
    path = os.path.join(directory, f"utf8-{uuid.uuid4().hex}")
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    with default_storage.open(name, "rb") as source, open(path, "w", encoding="utf-8", newline="") as target:
        while chunk := source.read(CHUNK):
            try:
                target.write(decoder.decode(chunk))
            except UnicodeDecodeError as exc:
                raise ProfileError(
                    f"The file is not valid {encoding.upper()} text (invalid bytes near byte {offset + exc.start})."
                ) from exc
            offset += len(chunk)
        try:
            target.write(decoder.decode(b"", final=True))
        except UnicodeDecodeError as exc:
            raise ProfileError(f"The file is not valid {encoding.upper()} text: it ends mid-character.") from exc
    return path


def source_sql(data_file: DataFile, path: str, *, full_sniff: bool = False) -> str:
    """The DuckDB table function reading ``path`` in the file's format."""
    literal = _quote_literal(path)
    sample = ", sample_size = -1" if full_sniff else ""
    if data_file.format in (FileFormat.CSV, FileFormat.TSV):
        delimiter = "\\t" if data_file.format == FileFormat.TSV else ","
        # The upload checks assumed a header, double quotes and RFC 4180
        # escaping; DuckDB reads the file the same way.
        return (
            f"read_csv({literal}, header = true, delim = E'{delimiter}', quote = '\"', escape = '\"',"
            f" strict_mode = true, encoding = 'utf-8'{sample})"
        )
    if data_file.format == FileFormat.JSONL:
        return f"read_json({literal}, format = 'newline_delimited', records = true{sample})"
    if data_file.format == FileFormat.PARQUET:
        return f"read_parquet({literal})"
    raise ProfileError(f"Files in the format {data_file.format!r} cannot be profiled.")


def _clip(text: str, limit: int | None) -> str:
    if limit is None:
        return text
    text = text.replace("\x00", "\ufffd")  # PostgreSQL's jsonb refuses NUL characters
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_safe(value, *, limit: int | None = SAMPLE_VALUE_MAX_CHARS):
    """A value DuckDB returned, as JSON can hold it (lossless where JSON has the type).

    With a ``limit`` (samples stored in jsonb) long texts are clipped, NULs
    replaced and nested values cut to SAMPLE_NESTED_MAX_ITEMS items; with
    ``limit=None`` (rows served by the data API) nothing is cut.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _clip(value, limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return _clip(bytes(value).hex(), limit)
    nested = None if limit is None else SAMPLE_NESTED_MAX_ITEMS
    if isinstance(value, dict):
        items = list(value.items())[:nested]
        return {_clip(str(key), limit): json_safe(item, limit=limit) for key, item in items}
    if isinstance(value, list | tuple):
        return [json_safe(item, limit=limit) for item in value[:nested]]
    return _clip(str(value), limit)  # UUID, timedelta and the like


def _profile(connection: duckdb.DuckDBPyConnection, source: str, sample_rows: int) -> dict:
    described = connection.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    names = [row[0] for row in described]
    types = [str(row[1]) for row in described]
    if not names:
        raise ProfileError("The file has no columns.")
    # One streamed pass for the row count and every column's nulls, min and max.
    aggregates = ["count(*)"]
    for name, type_ in zip(names, types, strict=True):
        column = quote_identifier(name)
        aggregates.append(f"count({column})")
        if _is_nested(type_):
            aggregates.extend(["NULL", "NULL"])  # ordering lists and structs says nothing useful
        else:
            aggregates.extend([f"CAST(min({column}) AS VARCHAR)", f"CAST(max({column}) AS VARCHAR)"])
    totals = connection.execute(f"SELECT {', '.join(aggregates)} FROM {source}").fetchone()
    row_count = totals[0]
    columns = []
    for index, (name, type_) in enumerate(zip(names, types, strict=True)):
        non_null, minimum, maximum = totals[1 + 3 * index : 4 + 3 * index]
        pii = []
        if non_null and type_ in _PII_TYPES:
            column = quote_identifier(name)
            values = connection.execute(
                # One character past the PII checks' limit keeps an over-long value over it.
                f"SELECT left(CAST({column} AS VARCHAR), {MAX_VALUE_CHARS + 1}) FROM {source}"
                f" WHERE {column} IS NOT NULL LIMIT {PII_SAMPLE_VALUES}"
            ).fetchall()
            pii = pii_flags(value for (value,) in values)
        columns.append(
            {
                "name": _clip(name, MINMAX_MAX_CHARS),
                "type": type_,
                "null_ratio": round((row_count - non_null) / row_count, 4) if row_count else 0.0,
                "min": None if minimum is None else _clip(minimum, MINMAX_MAX_CHARS),
                "max": None if maximum is None else _clip(maximum, MINMAX_MAX_CHARS),
                "pii": pii,
            }
        )
    rows = connection.execute(f"SELECT * FROM {source} LIMIT {int(sample_rows)}").fetchall() if sample_rows else []
    return {
        "row_count": row_count,
        "columns": columns,
        "sample_rows": [[json_safe(value) for value in row] for row in rows],
    }


def _is_nested(type_: str) -> bool:
    return type_.endswith("]") or type_.startswith(("STRUCT", "MAP", "UNION"))


def datafile_profile_compute(data_file: DataFile) -> dict:
    """Profile a stored file; return ``{"row_count", "columns", "sample_rows"}``.

    Raises ProfileError when the file cannot be read as its format says.
    """
    name = data_file.file.name
    replace: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="profile-") as directory:
        try:
            if data_file.encoding and data_file.encoding.lower() not in ("utf-8", "utf8", "ascii"):
                files = contextlib.nullcontext(transcode_to_utf8(name, directory, data_file.encoding))
            else:
                files = _local_path(name, directory)
            with files as path:
                replace[path] = data_file.original_name
                with duckdb_connect(temp_directory=directory) as connection:
                    try:
                        return _profile(connection, source_sql(data_file, path), settings.PROFILE_SAMPLE_ROWS)
                    except duckdb.ConversionException:
                        # A value past DuckDB's type-sniffing sample did not fit the
                        # type sniffed; sniff over the whole file instead.
                        pass
                    source = source_sql(data_file, path, full_sniff=True)
                    return _profile(connection, source, settings.PROFILE_SAMPLE_ROWS)
        except FileNotFoundError as exc:
            raise ProfileError("The stored file is missing.") from exc
        except LookupError as exc:  # an encoding Python does not know
            raise ProfileError(f"The text encoding {data_file.encoding!r} is not supported.") from exc
        except duckdb.Error as exc:
            raise ProfileError(duckdb_error_message(exc, replace=replace)) from exc


def datafile_profile_run(*, data_file_pk: int) -> DataFile:
    """Profile a data file once; safe to run again (a DONE file is returned untouched).

    The row stays locked while DuckDB works, so a second delivery of the task
    waits and then finds the work done. A file that cannot be read ends
    FAILED with ``profile_error`` set; it is not retried.
    """
    with transaction.atomic():
        data_file = DataFile.objects.select_for_update().get(pk=data_file_pk)
        if data_file.profile_status == ProfileStatus.DONE:
            return data_file
        try:
            profile = datafile_profile_compute(data_file)
        except ProfileError as exc:
            data_file.profile_status = ProfileStatus.FAILED
            data_file.profile_error = _clip(str(exc), ERROR_MAX_CHARS)
            data_file.row_count = None
            data_file.columns = []
            data_file.sample_rows = []
        else:
            data_file.profile_status = ProfileStatus.DONE
            data_file.profile_error = ""
            data_file.row_count = profile["row_count"]
            data_file.columns = profile["columns"]
            data_file.sample_rows = profile["sample_rows"]
        data_file.profiled_at = timezone.now()
        data_file.save(
            update_fields=["profile_status", "profile_error", "row_count", "columns", "sample_rows", "profiled_at"]
        )
        if data_file.profile_status == ProfileStatus.DONE:
            version_schema_diff_refresh(version_pk=data_file.version_id)
            listing_refresh_catalog_fields(listing_pk=data_file.version.listing_id)
    return data_file


def schema_diff(previous_columns: list[dict], current_columns: list[dict]) -> dict:
    """Columns added, removed and retyped from one schema to the next.

    Each argument is a list of ``{"name", "type", ...}``. Added and retyped
    columns come in the current order, removed ones in the previous order:
    ``{"added": [name, ...], "removed": [name, ...], "retyped": [{"name", "from", "to"}, ...]}``.
    """
    before = {column["name"]: column.get("type") for column in previous_columns}
    after = {column["name"]: column.get("type") for column in current_columns}
    return {
        "added": [name for name in after if name not in before],
        "removed": [name for name in before if name not in after],
        "retyped": [
            {"name": name, "from": before[name], "to": type_}
            for name, type_ in after.items()
            if name in before and before[name] != type_
        ],
    }


def _version_columns(version: ListingVersion) -> list[dict] | None:
    """The columns of a version's files, or None while any file is not profiled."""
    files = list(version.files.all())
    if not files or any(f.profile_status != ProfileStatus.DONE for f in files):
        return None
    columns: dict[str, dict] = {}
    for data_file in files:
        for column in data_file.columns:
            columns.setdefault(column["name"], column)
    return list(columns.values())


def _neighbour(version: ListingVersion, *, before: bool) -> ListingVersion | None:
    siblings = ListingVersion.objects.filter(listing_id=version.listing_id).exclude(pk=version.pk)
    if before:
        earlier = Q(created_at__lt=version.created_at) | Q(created_at=version.created_at, pk__lt=version.pk)
        return siblings.filter(earlier).order_by("-created_at", "-pk").first()
    later = Q(created_at__gt=version.created_at) | Q(created_at=version.created_at, pk__gt=version.pk)
    return siblings.filter(later).order_by("created_at", "pk").first()


def _diff_against_previous(version: ListingVersion) -> dict | None:
    current = _version_columns(version)
    if current is None:
        return None
    previous = _neighbour(version, before=True)
    if previous is None:
        return {}
    previous_columns = _version_columns(previous)
    return {} if previous_columns is None else schema_diff(previous_columns, current)


def version_schema_diff_refresh(*, version_pk: int) -> None:
    """Recompute the schema diff of a version and of the one after it.

    Files may finish profiling in any order, so the next version's diff (which
    compares against this one) is refreshed too. Only ``schema_diff`` is
    written; a published version's data and files are never touched.
    """
    version = ListingVersion.objects.get(pk=version_pk)
    following = _neighbour(version, before=False)
    for target in (version, following):
        if target is None:
            continue
        diff = _diff_against_previous(target)
        if diff is not None and diff != target.schema_diff:
            ListingVersion.objects.filter(pk=target.pk).update(schema_diff=diff)
