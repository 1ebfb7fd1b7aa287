import datetime
import os
import tempfile
from pathlib import Path

import duckdb
import pytest
from django.core.files.storage import InMemoryStorage, default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from listings.choices import ListingStatus, ProfileStatus
from listings.models import DataFile, Listing
from listings.profiling import datafile_profile_run, json_safe, schema_diff
from listings.services import version_upload
from listings.tasks import datafile_profile, datafile_profile_sweep
from listings.uploads import SNIFF_BYTES
from tests.listings.catalog_data import without_catalog_bumps

PEOPLE_CSV = (
    b"name,age,email,phone,score,joined\n"
    b"Alice,30,alice@example.com,+8613812345678,1.5,2024-01-05\n"
    b"Bob,,bob@example.com,13912345678,,2024-02-10\n"
    b"Carol,25,,+14155552671,3.25,\n"
    b"Dan,41,dan@example.org,13700001111,-2,2023-12-31\n"
)


def _upload(content: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


@pytest.fixture
def upload_profiled(draft_listing, merchant_user, django_capture_on_commit_callbacks):
    """Upload a file through the service and run the profiling it schedules; return the DataFile."""

    def upload(content: bytes, name: str, listing: Listing = draft_listing) -> DataFile:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            version = version_upload(listing=listing, actor=merchant_user, uploaded_file=_upload(content, name))
        assert len(without_catalog_bumps(callbacks)) == 1
        return version.files.get()

    return upload


def test_upload_schedules_profiling_on_commit(draft_listing, merchant_user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=_upload(PEOPLE_CSV, "p.csv"))
    data_file = version.files.get()
    (profile,) = without_catalog_bumps(callbacks)
    assert data_file.profile_status == ProfileStatus.PENDING  # nothing runs before the commit
    profile()
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.DONE


def test_csv_profile_has_exact_columns_nulls_min_max_pii_and_samples(upload_profiled, settings):
    settings.PROFILE_SAMPLE_ROWS = 2
    data_file = upload_profiled(PEOPLE_CSV, "people.csv")
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.profile_error == ""
    assert data_file.profiled_at is not None
    assert data_file.row_count == 4
    assert data_file.columns == [
        {"name": "name", "type": "VARCHAR", "null_ratio": 0.0, "min": "Alice", "max": "Dan", "pii": []},
        {"name": "age", "type": "BIGINT", "null_ratio": 0.25, "min": "25", "max": "41", "pii": []},
        {
            "name": "email",
            "type": "VARCHAR",
            "null_ratio": 0.25,
            "min": "alice@example.com",
            "max": "dan@example.org",
            "pii": ["email"],
        },
        {
            "name": "phone",
            "type": "VARCHAR",
            "null_ratio": 0.0,
            "min": "+14155552671",
            "max": "13912345678",
            "pii": ["phone"],
        },
        {"name": "score", "type": "DOUBLE", "null_ratio": 0.25, "min": "-2.0", "max": "3.25", "pii": []},
        {"name": "joined", "type": "DATE", "null_ratio": 0.25, "min": "2023-12-31", "max": "2024-02-10", "pii": []},
    ]
    assert data_file.sample_rows == [
        ["Alice", 30, "alice@example.com", "+8613812345678", 1.5, "2024-01-05"],
        ["Bob", None, "bob@example.com", "13912345678", None, "2024-02-10"],
    ]
    assert data_file.pii_columns == {"email": ["email"], "phone": ["phone"]}
    listing = Listing.objects.get(pk=data_file.version.listing_id)
    assert listing.column_names == "name age email phone score joined"


def test_null_ratio_is_rounded_to_four_decimals(upload_profiled):
    content = b"a,b\n" + b"".join(b"1,\n" if i % 3 == 0 else b"1,x\n" for i in range(7))  # 3 nulls in 7
    data_file = upload_profiled(content, "thirds.csv")
    data_file.refresh_from_db()
    assert data_file.row_count == 7
    assert [c["null_ratio"] for c in data_file.columns] == [0.0, 0.4286]


def test_no_sample_rows_when_the_setting_is_zero(upload_profiled, settings):
    settings.PROFILE_SAMPLE_ROWS = 0
    data_file = upload_profiled(PEOPLE_CSV, "people.csv")
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.row_count == 4
    assert data_file.sample_rows == []


def test_gb18030_file_is_transcoded_and_keeps_its_chinese_text(upload_profiled):
    content = "城市\t人口\t备注\n贵阳\t6400000\t省会\n上海\t24870000\t直辖市\n".encode("gb18030")
    data_file = upload_profiled(content, "城市.tsv")
    data_file.refresh_from_db()
    assert data_file.encoding == "gb18030"
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.row_count == 2
    assert data_file.columns == [
        {"name": "城市", "type": "VARCHAR", "null_ratio": 0.0, "min": "上海", "max": "贵阳", "pii": []},
        {"name": "人口", "type": "BIGINT", "null_ratio": 0.0, "min": "6400000", "max": "24870000", "pii": []},
        {"name": "备注", "type": "VARCHAR", "null_ratio": 0.0, "min": "直辖市", "max": "省会", "pii": []},
    ]
    assert data_file.sample_rows == [["贵阳", 6400000, "省会"], ["上海", 24870000, "直辖市"]]


def test_integer_columns_are_checked_for_pii_too(upload_profiled):
    data_file = upload_profiled(b"id,mobile\n1,13812345678\n2,13912345678\n3,\n", "mobiles.csv")
    data_file.refresh_from_db()
    assert data_file.columns[1] == {
        "name": "mobile",
        "type": "BIGINT",
        "null_ratio": 0.3333,
        "min": "13812345678",
        "max": "13912345678",
        "pii": ["phone"],
    }


def test_a_header_only_file_has_no_rows(upload_profiled):
    data_file = upload_profiled(b"city,population\n", "empty.csv")
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.row_count == 0
    assert data_file.columns == [
        {"name": "city", "type": "VARCHAR", "null_ratio": 0.0, "min": None, "max": None, "pii": []},
        {"name": "population", "type": "VARCHAR", "null_ratio": 0.0, "min": None, "max": None, "pii": []},
    ]
    assert data_file.sample_rows == []


class StorageWithoutPaths(InMemoryStorage):
    """Like S3's storage: files can be opened, but have no local path."""

    def path(self, name):
        raise NotImplementedError("This backend doesn't support absolute paths.")

    def _relative_path(self, name):
        return os.path.relpath(super().path(name), self.location)


def test_a_storage_without_local_paths_is_copied_to_a_temporary_file(upload_profiled, settings):
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": f"{__name__}.StorageWithoutPaths"}}
    data_file = upload_profiled(PEOPLE_CSV, "people.csv")
    data_file.refresh_from_db()
    with pytest.raises(NotImplementedError):
        default_storage.path(data_file.file.name)
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.row_count == 4
    assert [c["name"] for c in data_file.columns] == ["name", "age", "email", "phone", "score", "joined"]


def test_gb18030_json_lines_are_transcoded_too(upload_profiled):
    content = '{"城市": "贵阳"}\n{"城市": "上海"}\n'.encode("gb18030")
    data_file = upload_profiled(content, "cities.jsonl")
    data_file.refresh_from_db()
    assert (data_file.encoding, data_file.profile_status, data_file.row_count) == ("gb18030", "done", 2)
    assert data_file.sample_rows == [["贵阳"], ["上海"]]


def _parquet_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "made.parquet"
        with duckdb.connect() as connection:
            connection.execute(
                """
                COPY (
                    SELECT * FROM (VALUES
                        (1, 'Guiyang', 12.50::DECIMAL(10, 2), DATE '2024-01-01', TIMESTAMP '2024-01-01 08:30:00',
                         true, '11010519491231002X', [1, 2]),
                        (2, NULL, 7.25::DECIMAL(10, 2), DATE '2024-03-15', NULL,
                         false, '440304199001010011', []),
                        (3, 'Shanghai', NULL, NULL, TIMESTAMP '2023-12-31 23:59:59',
                         NULL, NULL, NULL)
                    ) t(id, city, price, day, seen_at, active, resident_id, scores)
                ) TO '{path}' (FORMAT parquet)
                """.replace("{path}", str(path))
            )
        return path.read_bytes()


def test_parquet_profile(upload_profiled):
    data_file = upload_profiled(_parquet_bytes(), "cities.parquet")
    data_file.refresh_from_db()
    assert data_file.encoding == ""
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.row_count == 3
    assert data_file.columns == [
        {"name": "id", "type": "INTEGER", "null_ratio": 0.0, "min": "1", "max": "3", "pii": []},
        {"name": "city", "type": "VARCHAR", "null_ratio": 0.3333, "min": "Guiyang", "max": "Shanghai", "pii": []},
        {"name": "price", "type": "DECIMAL(10,2)", "null_ratio": 0.3333, "min": "7.25", "max": "12.50", "pii": []},
        {"name": "day", "type": "DATE", "null_ratio": 0.3333, "min": "2024-01-01", "max": "2024-03-15", "pii": []},
        {
            "name": "seen_at",
            "type": "TIMESTAMP",
            "null_ratio": 0.3333,
            "min": "2023-12-31 23:59:59",
            "max": "2024-01-01 08:30:00",
            "pii": [],
        },
        {"name": "active", "type": "BOOLEAN", "null_ratio": 0.3333, "min": "false", "max": "true", "pii": []},
        {
            "name": "resident_id",
            "type": "VARCHAR",
            "null_ratio": 0.3333,
            "min": "11010519491231002X",
            "max": "440304199001010011",
            "pii": ["cn_resident_id"],
        },
        {"name": "scores", "type": "INTEGER[]", "null_ratio": 0.3333, "min": None, "max": None, "pii": []},
    ]
    assert data_file.sample_rows == [
        [1, "Guiyang", "12.50", "2024-01-01", "2024-01-01T08:30:00", True, "11010519491231002X", [1, 2]],
        [2, None, "7.25", "2024-03-15", None, False, "440304199001010011", []],
        [3, "Shanghai", None, None, "2023-12-31T23:59:59", None, None, None],
    ]


def test_json_lines_profile(upload_profiled):
    content = (
        b'{"id": 1, "ip": "10.0.0.1", "card": "4111 1111 1111 1111", "tags": ["a", "b"], "meta": {"k": "v"}}\n'
        b'{"id": 2, "ip": "2001:db8::1", "card": null, "tags": [], "meta": {"k": "w"}}\n'
        b"\n"
        b'{"id": 3, "ip": null, "card": "6228480012345678903", "tags": null, "meta": null}\n'
    )
    data_file = upload_profiled(content, "events.jsonl")
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.row_count == 3
    assert data_file.columns == [
        {"name": "id", "type": "BIGINT", "null_ratio": 0.0, "min": "1", "max": "3", "pii": []},
        {
            "name": "ip",
            "type": "VARCHAR",
            "null_ratio": 0.3333,
            "min": "10.0.0.1",
            "max": "2001:db8::1",
            "pii": ["ip_address"],
        },
        {
            "name": "card",
            "type": "VARCHAR",
            "null_ratio": 0.3333,
            "min": "4111 1111 1111 1111",
            "max": "6228480012345678903",
            "pii": ["bank_card"],
        },
        {"name": "tags", "type": "VARCHAR[]", "null_ratio": 0.3333, "min": None, "max": None, "pii": []},
        {"name": "meta", "type": "STRUCT(k VARCHAR)", "null_ratio": 0.3333, "min": None, "max": None, "pii": []},
    ]
    assert data_file.sample_rows == [
        [1, "10.0.0.1", "4111 1111 1111 1111", ["a", "b"], {"k": "v"}],
        [2, "2001:db8::1", None, [], {"k": "w"}],
        [3, None, "6228480012345678903", None, None],
    ]


def test_a_late_value_of_another_type_is_profiled_with_the_wider_type(upload_profiled):
    rows = b"".join(b"%d,x\n" % i for i in range(30000))
    data_file = upload_profiled(b"code,label\n" + rows + b"A-17,y\n", "codes.csv")
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.DONE
    assert data_file.row_count == 30001
    assert data_file.columns[0] == {
        "name": "code",
        "type": "VARCHAR",
        "null_ratio": 0.0,
        "min": "0",
        "max": "A-17",
        "pii": [],
    }


def _padding_rows(template: bytes) -> bytes:
    return template * (SNIFF_BYTES // len(template) + 10)


@pytest.mark.parametrize(
    ("content", "name", "error"),
    [
        (
            b"id,name\n" + _padding_rows(b"1,Guiyang\n") + b"2,Shanghai,extra\n",
            "late.csv",
            "Invalid Input Error: CSV Error on Line: 6565\nOriginal Line: 2,Shanghai,extra\n"
            "Expected Number of Columns: 2 Found: 3",
        ),
        (
            _padding_rows(b'{"id": 1}\n') + b'{"id": \n',
            "late.jsonl",
            'Invalid Input Error: Malformed JSON in file "late.jsonl", at byte 9 in line 6565: unexpected end of data.',
        ),
    ],
    ids=["csv-ragged-after-head", "jsonl-broken-after-head"],
)
def test_a_file_duckdb_cannot_parse_ends_failed_with_a_readable_error(upload_profiled, content, name, error):
    data_file = upload_profiled(content, name)
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.FAILED
    assert data_file.profile_error == error
    assert "/tmp" not in data_file.profile_error and "Possible fixes" not in data_file.profile_error
    assert data_file.profiled_at is not None
    assert (data_file.row_count, data_file.columns, data_file.sample_rows) == (None, [], [])


def test_an_invalid_gb18030_sequence_after_the_head_ends_failed(upload_profiled):
    head = "城市,人口\n".encode("gb18030") + _padding_rows("贵阳,1\n".encode("gb18030"))
    data_file = upload_profiled(head + b"\xff\xff,2\n", "late.csv")
    data_file.refresh_from_db()
    assert data_file.encoding == "gb18030"
    assert data_file.profile_status == ProfileStatus.FAILED
    assert data_file.profile_error == f"The file is not valid GB18030 text (invalid bytes near byte {len(head)})."


def test_a_missing_stored_file_ends_failed(upload_profiled, _private_storage, draft_listing, merchant_user):
    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=_upload(PEOPLE_CSV, "p.csv"))
    data_file = version.files.get()
    (_private_storage / data_file.file.name).unlink()
    datafile_profile_run(data_file_pk=data_file.pk)
    data_file.refresh_from_db()
    assert (data_file.profile_status, data_file.profile_error) == (ProfileStatus.FAILED, "The stored file is missing.")


def test_profiling_twice_changes_nothing(upload_profiled, django_assert_max_num_queries):
    data_file = upload_profiled(PEOPLE_CSV, "people.csv")
    data_file.refresh_from_db()
    before = DataFile.objects.filter(pk=data_file.pk).values().get()
    with django_assert_max_num_queries(3):  # the savepoint, the locking read, the release
        again = datafile_profile_run(data_file_pk=data_file.pk)
    assert again.profile_status == ProfileStatus.DONE
    assert datafile_profile.delay(data_file.pk).get() == f"data file {data_file.pk}: done"
    assert DataFile.objects.filter(pk=data_file.pk).values().get() == before


def test_a_failed_file_is_not_retried_by_the_task(upload_profiled):
    data_file = upload_profiled(b"id,name\n" + _padding_rows(b"1,a\n") + b"1,2,3\n", "bad.csv")
    result = datafile_profile.apply(args=[data_file.pk])
    assert result.successful()
    assert result.get() == f"data file {data_file.pk}: failed"


def test_the_task_ignores_a_deleted_file(db):
    assert datafile_profile.delay(987654).get() == "data file 987654: gone"


def test_the_sweep_reenqueues_files_left_pending(draft_listing, merchant_user, time_machine):
    time_machine.move_to(datetime.datetime(2025, 1, 1, 12, 0, tzinfo=datetime.UTC), tick=False)
    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=_upload(PEOPLE_CSV, "p.csv"))
    data_file = version.files.get()
    assert datafile_profile_sweep(older_than_seconds=600) == 0  # too recent
    time_machine.move_to(datetime.datetime(2025, 1, 1, 12, 11, tzinfo=datetime.UTC), tick=False)
    assert datafile_profile_sweep(older_than_seconds=600) == 1
    data_file.refresh_from_db()
    assert data_file.profile_status == ProfileStatus.DONE
    assert datafile_profile_sweep(older_than_seconds=600) == 0


def test_json_safe_values():
    assert json_safe(float("nan")) == "nan"
    assert json_safe(float("inf")) == "inf"
    assert json_safe(b"\x00\xff") == "00ff"
    assert json_safe(datetime.time(8, 30)) == "08:30:00"
    assert json_safe(datetime.timedelta(days=1)) == "1 day, 0:00:00"
    assert json_safe("a\x00b") == "a\ufffdb"
    assert json_safe("x" * 1001) == "x" * 999 + "…"
    assert json_safe({"k": (1, 2)}) == {"k": [1, 2]}


def test_schema_diff():
    previous = [
        {"name": "city", "type": "VARCHAR"},
        {"name": "year", "type": "BIGINT"},
        {"name": "population", "type": "BIGINT"},
    ]
    current = [
        {"name": "area", "type": "DOUBLE"},
        {"name": "city", "type": "VARCHAR"},
        {"name": "year", "type": "DATE"},
    ]
    assert schema_diff(previous, current) == {
        "added": ["area"],
        "removed": ["population"],
        "retyped": [{"name": "year", "from": "BIGINT", "to": "DATE"}],
    }
    assert schema_diff(current, current) == {"added": [], "removed": [], "retyped": []}


V1 = b"city,year,population\nGuiyang,2024,6400000\nShanghai,2024,24870000\n"
V2 = b"city,year,area\nGuiyang,2024-01-01,8034.0\nShanghai,2024-01-01,6340.5\n"


def test_the_schema_diff_is_stored_on_the_new_version(published_listing, upload_profiled):
    v1 = published_listing.versions.get()
    datafile_profile_run(data_file_pk=v1.files.get().pk)
    v1.refresh_from_db()
    assert v1.schema_diff == {}  # the first version has nothing to compare with
    data_file = upload_profiled(V2, "v2.csv", listing=published_listing)
    v2 = data_file.version
    v2.refresh_from_db()
    assert v2.label == "v2"
    assert v2.published_at is None
    assert v2.schema_diff == {
        "added": ["area"],
        "removed": ["population"],
        "retyped": [{"name": "year", "from": "BIGINT", "to": "DATE"}],
    }
    published_listing.refresh_from_db()
    assert published_listing.column_names == "city year population"  # v2 is not published yet


def test_the_schema_diff_is_filled_when_the_previous_version_is_profiled_later(
    published_listing, upload_profiled, merchant_user
):
    v1_file = published_listing.versions.get().files.get()
    # The factory profiles v1 at once; put it back to "not profiled yet" for this scenario.
    DataFile.objects.filter(pk=v1_file.pk).update(
        profile_status=ProfileStatus.PENDING, columns=[], sample_rows=[], row_count=None, profiled_at=None
    )
    v2 = upload_profiled(V2, "v2.csv", listing=published_listing).version
    v2.refresh_from_db()
    assert v2.schema_diff == {}  # v1 not profiled yet
    datafile_profile_run(data_file_pk=v1_file.pk)
    v2.refresh_from_db()
    assert v2.schema_diff == {
        "added": ["area"],
        "removed": ["population"],
        "retyped": [{"name": "year", "from": "BIGINT", "to": "DATE"}],
    }
    assert published_listing.versions.get(label="v1").schema_diff == {}
    assert published_listing.status == ListingStatus.PUBLISHED
