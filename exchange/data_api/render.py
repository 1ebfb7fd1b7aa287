"""A page of rows as JSON, CSV or NDJSON bytes, in chunks.

Values keep their exactness: decimals travel as strings, dates and times in
ISO 8601, binary as hex, nested values as JSON (CSV cells hold their JSON).
"""

import csv
import io
import json

from listings.profiling import json_safe

RENDER_CHUNK_ROWS = 500
CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}


def json_value(value):
    """A DuckDB value as JSON holds it, without loss (nothing clipped, unlike the stored samples)."""
    return json_safe(value, limit=None)


def _csv_cell(value) -> str:
    value = json_value(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render_chunks(fmt: str, columns: list[str], rows: list[tuple], *, next_url: str | None) -> list[bytes]:
    """The body of a page in ``fmt`` as a list of byte chunks (their sum is the body)."""
    if fmt == "json":
        body = {
            "columns": columns,
            "rows": [[json_value(v) for v in row] for row in rows],
            "next": next_url,
            "row_count": len(rows),
        }
        return [_dumps(body).encode()]
    chunks = []
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(columns)
        for start in range(0, len(rows), RENDER_CHUNK_ROWS):
            writer.writerows([_csv_cell(v) for v in row] for row in rows[start : start + RENDER_CHUNK_ROWS])
            chunks.append(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
        if buffer.getvalue() or not chunks:
            chunks.append(buffer.getvalue().encode())
        return chunks
    for start in range(0, len(rows), RENDER_CHUNK_ROWS):
        lines = (
            _dumps({name: json_value(v) for name, v in zip(columns, row, strict=True)}) + "\n"
            for row in rows[start : start + RENDER_CHUNK_ROWS]
        )
        chunks.append("".join(lines).encode())
    return chunks
