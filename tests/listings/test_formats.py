import gzip
import hashlib
import io
import tempfile
import zipfile
from pathlib import Path

import duckdb
import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile

from listings.models import DataFile, ListingVersion
from listings.services import version_upload
from listings.uploads import SNIFF_BYTES, inspect_upload
from tests.factories import SAMPLE_CSV

SAMPLE_TSV = b"city\tyear\tpopulation\nGuiyang\t2024\t6400000\nShanghai\t2024\t24870000\n"
SAMPLE_JSONL = b'{"city": "Guiyang", "population": 6400000}\n{"city": "Shanghai", "population": 24870000}\n'


def _stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _upload(content: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def _parquet_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "made.parquet"
        with duckdb.connect() as connection:
            connection.execute(
                "COPY (SELECT * FROM (VALUES ('Guiyang', 6400000), ('Shanghai', 24870000)) t(city, population))"
                f" TO '{path}' (FORMAT parquet)"
            )
        return path.read_bytes()


PARQUET = _parquet_bytes()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.parquet", b"PAR1")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "name", "fmt", "content_type", "encoding"),
    [
        (SAMPLE_CSV, "data.csv", "csv", "text/csv", "utf-8"),
        ("城市,人口\n贵阳,6400000\n".encode("gb18030"), "城市.csv", "csv", "text/csv", "gb18030"),
        (b"\xef\xbb\xbf" + SAMPLE_CSV, "bom.csv", "csv", "text/csv", "utf-8"),
        (SAMPLE_TSV, "data.tsv", "tsv", "text/tab-separated-values", "utf-8"),
        ("城市\t人口\n贵阳\t6400000\n".encode("gb18030"), "data.TSV", "tsv", "text/tab-separated-values", "gb18030"),
        (SAMPLE_JSONL, "data.jsonl", "jsonl", "application/x-ndjson", "utf-8"),
        (SAMPLE_JSONL + b"\n\n", "data.ndjson", "jsonl", "application/x-ndjson", "utf-8"),
        (b"PAR1,PAR2\n1,2\n", "par.csv", "csv", "text/csv", "utf-8"),
    ],
    ids=["csv", "csv-gb18030", "csv-bom", "tsv", "tsv-gb18030", "jsonl", "ndjson-blank-lines", "csv-header-par1"],
)
def test_text_formats_are_accepted_with_their_facts(
    draft_listing, merchant_user, _private_storage, content, name, fmt, content_type, encoding
):
    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=_upload(content, name))
    data_file = version.files.get()
    assert (data_file.original_name, data_file.format, data_file.content_type, data_file.encoding) == (
        name,
        fmt,
        content_type,
        encoding,
    )
    assert data_file.size == len(content)
    assert data_file.sha256 == hashlib.sha256(content).hexdigest()
    assert data_file.file.name.endswith(f".{fmt}")
    assert (_private_storage / data_file.file.name).read_bytes() == content


def test_parquet_is_accepted(draft_listing, merchant_user, _private_storage):
    content = PARQUET
    version = version_upload(
        listing=draft_listing, actor=merchant_user, uploaded_file=_upload(content, "cities.parquet")
    )
    data_file = version.files.get()
    assert (data_file.format, data_file.content_type, data_file.encoding) == (
        "parquet",
        "application/vnd.apache.parquet",
        "",
    )
    assert data_file.file.name.endswith(".parquet")
    assert (_private_storage / data_file.file.name).read_bytes() == content


def test_inspect_upload_reads_parquet_from_djangos_temporary_file():
    content = PARQUET
    uploaded = TemporaryUploadedFile("cities.parquet", "application/octet-stream", len(content), None)
    uploaded.write(content)
    uploaded.seek(0)
    try:
        facts = inspect_upload(uploaded)
    finally:
        uploaded.close()
    assert facts == {
        "original_name": "cities.parquet",
        "format": "parquet",
        "content_type": "application/vnd.apache.parquet",
        "encoding": "",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def test_inspect_upload_returns_the_facts_of_a_jsonl_file():
    assert inspect_upload(_upload(SAMPLE_JSONL, "data.ndjson")) == {
        "original_name": "data.ndjson",
        "format": "jsonl",
        "content_type": "application/x-ndjson",
        "encoding": "utf-8",
        "size": len(SAMPLE_JSONL),
        "sha256": hashlib.sha256(SAMPLE_JSONL).hexdigest(),
    }


def test_a_quoted_value_straddling_the_sniffed_head_is_not_an_error(draft_listing, merchant_user):
    row = b"1,plain\n"
    body = row * ((SNIFF_BYTES - 20) // len(row))
    content = b"id,note\n" + body + b'2,"a note that goes on\nacross the sniffed head and ends here"\n3,end\n'
    assert len(content) > SNIFF_BYTES
    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=_upload(content, "long.csv"))
    assert version.files.get().size == len(content)


BAD_CASES = {
    "parquet-as-csv": (
        PARQUET,
        "data.csv",
        "content_mismatch",
        "The content is a Parquet file, not CSV text; name it .parquet.",
    ),
    "parquet-as-jsonl": (
        PARQUET,
        "data.jsonl",
        "content_mismatch",
        "The content is a Parquet file, not JSON Lines text; name it .parquet.",
    ),
    "csv-as-parquet": (
        SAMPLE_CSV,
        "data.parquet",
        "content_mismatch",
        "The content is not Parquet: it does not start with the PAR1 signature.",
    ),
    "zip-as-parquet": (
        _zip_bytes(),
        "data.parquet",
        "content_mismatch",
        "The file is a ZIP archive; compressed uploads are not accepted.",
    ),
    "gzip-as-jsonl": (
        gzip.compress(SAMPLE_JSONL),
        "data.jsonl",
        "content_mismatch",
        "The file is gzip-compressed; compressed uploads are not accepted. Upload the JSON Lines file itself.",
    ),
    "gzip-as-tsv": (
        gzip.compress(SAMPLE_TSV),
        "data.tsv",
        "content_mismatch",
        "The file is gzip-compressed; compressed uploads are not accepted. Upload the TSV file itself.",
    ),
    "jsonl-as-csv": (
        SAMPLE_JSONL,
        "data.csv",
        "content_mismatch",
        "The content is JSON Lines, not CSV; name it .jsonl.",
    ),
    "csv-as-jsonl": (
        SAMPLE_CSV,
        "data.jsonl",
        "content_mismatch",
        "The content is not JSON Lines: line 1 is not JSON.",
    ),
    "jsonl-bad-line": (
        b'{"a": 1}\n{"a": 2\n{"a": 3}\n',
        "data.jsonl",
        "malformed_jsonl",
        "Malformed JSON Lines: line 2 is not valid JSON (Expecting ',' delimiter).",
    ),
    "jsonl-array": (
        b'{"a": 1}\n\n[1, 2]\n',
        "data.jsonl",
        "malformed_jsonl",
        "Malformed JSON Lines: line 3 is an array, not a JSON object.",
    ),
    "jsonl-string": (
        b'{"a": 1}\n"text"\n',
        "data.jsonl",
        "malformed_jsonl",
        "Malformed JSON Lines: line 2 is a string, not a JSON object.",
    ),
    "jsonl-nan": (
        b'{"a": NaN}\n',
        "data.jsonl",
        "malformed_jsonl",
        "Malformed JSON Lines: line 1 is not valid JSON (NaN is not valid JSON).",
    ),
    "jsonl-nul": (
        b'{"a": 1}\x00\n',
        "data.jsonl",
        "malformed_jsonl",
        "The file contains NUL bytes; it is not JSON Lines text.",
    ),
    "jsonl-no-records": (b"\n \n\n", "data.ndjson", "malformed_jsonl", "The JSON Lines file has no records."),
    "tsv-ragged": (
        b"a\tb\tc\n1\t2\n",
        "data.tsv",
        "malformed_csv",
        "Malformed TSV: line 2 has 2 fields, the header has 3.",
    ),
    "tsv-nul": (b"a\tb\n1\t2\x00\n", "data.tsv", "not_csv", "The file contains NUL bytes; it is not a text TSV file."),
    "tsv-quote": (b'a\tb\n"open\t2\n', "data.tsv", "malformed_csv", "Malformed TSV: unexpected end of data (line 2)."),
    "tsv-undecodable": (
        b"\xff\xfe\xfa\xfb\t\x81\n",
        "data.tsv",
        "undecodable",
        "The file is not valid UTF-8 or GB18030 text.",
    ),
    "parquet-truncated": (
        PARQUET[:-4],
        "data.parquet",
        "malformed_parquet",
        "The Parquet file is truncated: it does not end with the PAR1 signature.",
    ),
    "parquet-too-short": (
        b"PAR1PAR1",
        "data.parquet",
        "malformed_parquet",
        "The Parquet file is too short to hold a footer.",
    ),
    "json-extension": (
        SAMPLE_CSV,
        "data.json",
        "bad_extension",
        "Only CSV (.csv), TSV (.tsv), JSON Lines (.jsonl, .ndjson) and Parquet (.parquet) files can be uploaded.",
    ),
}


@pytest.mark.parametrize(("content", "name", "code", "message"), list(BAD_CASES.values()), ids=list(BAD_CASES))
def test_bad_uploads_are_refused_and_store_nothing(
    draft_listing, merchant_user, _private_storage, content, name, code, message
):
    with pytest.raises(ValidationError) as exc:
        version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=_upload(content, name))
    assert exc.value.code == code
    assert exc.value.messages == [message]
    assert ListingVersion.objects.count() == 0
    assert DataFile.objects.count() == 0
    assert _stored_files(_private_storage) == []


def test_a_parquet_file_with_a_corrupt_footer_is_refused(draft_listing, merchant_user, _private_storage):
    parquet = PARQUET
    corrupt = parquet[:4] + b"\x00" * (len(parquet) - 8) + parquet[-8:-4].replace(b"\x00", b"\x01") + b"PAR1"
    with pytest.raises(ValidationError) as exc:
        version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=_upload(corrupt, "data.parquet"))
    assert exc.value.code == "malformed_parquet"
    assert exc.value.messages[0].startswith("The Parquet file cannot be read: ")
    assert "/tmp" not in exc.value.messages[0]  # no server paths in the message
    assert ListingVersion.objects.count() == 0
    assert DataFile.objects.count() == 0
    assert _stored_files(_private_storage) == []
