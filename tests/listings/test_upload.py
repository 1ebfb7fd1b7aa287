import gzip
import io
import zipfile
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from listings.choices import ListingStatus
from listings.models import DataFile, Listing, ListingVersion
from listings.services import version_upload
from tests.factories import SAMPLE_CSV, csv_upload


def _stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_upload_records_size_sha256_and_server_path(draft_listing, merchant_user, _private_storage):
    import hashlib

    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(name="My Data.csv"))
    data_file = version.files.get()
    assert version.label == "v1"
    assert data_file.size == len(SAMPLE_CSV)
    assert data_file.sha256 == hashlib.sha256(SAMPLE_CSV).hexdigest()
    assert data_file.original_name == "My Data.csv"
    assert data_file.file.name.startswith(f"datasets/{draft_listing.merchant_id}/{draft_listing.pk}/")
    assert "My Data" not in data_file.file.name
    assert (_private_storage / data_file.file.name).read_bytes() == SAMPLE_CSV


def test_gb18030_csv_is_accepted(draft_listing, merchant_user):
    content = "城市,人口\n贵阳,6400000\n上海,24870000\n".encode("gb18030")
    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(content))
    assert version.files.get().size == len(content)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", SAMPLE_CSV)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "name", "code"),
    [
        (SAMPLE_CSV, "data.xlsx", "bad_extension"),
        (SAMPLE_CSV, "data", "bad_extension"),
        (b"", "data.csv", "empty"),
        (b"x" * (1024 * 1024 + 1), "data.csv", "too_large"),
        (_zip_bytes(), "data.csv", "content_mismatch"),
        (gzip.compress(SAMPLE_CSV), "data.csv", "content_mismatch"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "data.csv", "content_mismatch"),
        (b"a,b\n1,2\x00,3\n", "data.csv", "not_csv"),
        (b"a,b,c\n1,2\n", "data.csv", "malformed_csv"),
        (b'a,b\n"unterminated,2\n', "data.csv", "malformed_csv"),
        (b"\xff\xfe\xfa\xfb,\x81\n", "data.csv", "undecodable"),
    ],
    ids=["xlsx-ext", "no-ext", "empty", "over-limit", "zip", "gzip", "png", "nul", "ragged", "quote", "undecodable"],
)
def test_bad_uploads_are_refused_and_store_nothing(draft_listing, merchant_user, _private_storage, content, name, code):
    with pytest.raises(ValidationError) as exc:
        version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(content, name=name))
    assert exc.value.code == code
    assert exc.value.messages[0]  # a message a person can read
    assert ListingVersion.objects.count() == 0
    assert DataFile.objects.count() == 0
    assert _stored_files(_private_storage) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../etc/passwd.csv", "passwd.csv"), ("a\x00b\r\nc.csv", "abc.csv"), ('x"; y.csv', "x__ y.csv")],
)
def test_hostile_filenames_are_sanitised(draft_listing, merchant_user, _private_storage, name, expected):
    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(name=name))
    data_file = version.files.get()
    assert data_file.original_name == expected
    stored = _private_storage / data_file.file.name
    assert stored.resolve().is_relative_to(_private_storage.resolve())


def test_other_merchant_cannot_upload(draft_listing, other_merchant_user, _private_storage):
    with pytest.raises(PermissionDenied):
        version_upload(listing=draft_listing, actor=other_merchant_user, uploaded_file=csv_upload())
    assert DataFile.objects.count() == 0
    assert _stored_files(_private_storage) == []


def test_files_cannot_change_while_under_review(merchant, merchant_user, _private_storage):
    from tests.factories import make_listing

    submitted = make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)
    before = _stored_files(_private_storage)
    with pytest.raises(ValidationError) as exc:
        version_upload(listing=submitted, actor=merchant_user, uploaded_file=csv_upload())
    assert exc.value.code == "not_editable"
    assert submitted.versions.count() == 1
    assert _stored_files(_private_storage) == before
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
