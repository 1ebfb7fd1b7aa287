"""Uploads are safe: size limits before and while the body is read, a per-merchant storage quota, content
sniffing, server-generated storage paths and sanitised download names.

The upload limits live in listings/upload_handlers.py (installed by the web and API upload views), the quota
and the sniffing in listings/uploads.py and the upload service, the download headers in exchange/serving.py.
"""

import io
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadhandler import FileUploadHandler, MemoryFileUploadHandler, TemporaryFileUploadHandler
from django.db import connection
from django.http.multipartparser import MultiPartParser
from django.test import Client, override_settings
from django.test.client import BOUNDARY, MULTIPART_CONTENT, FakePayload, encode_multipart
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.services import api_key_create
from exchange.serving import file_headers
from listings import uploads
from listings.models import DataFile, ListingVersion
from listings.services import version_upload
from listings.upload_handlers import MULTIPART_ALLOWANCE, LimitedUploadHandler, RefusedUpload, UploadLimits
from listings.uploads import sanitise_filename
from tests.factories import SAMPLE_CSV, csv_upload

pytestmark = pytest.mark.django_db

LIMIT = 200_000  # UPLOAD_MAX_BYTES in these tests
XHR = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}


def csv_of(size: int) -> bytes:
    """A valid CSV of exactly ``size`` bytes."""
    header, row = b"id,city\n", b"1,Guiyang\n"
    rows, pad = divmod(size - len(header), len(row))
    return header + row * (rows - 1) + b"1,Guiyang" + b"y" * pad + b"\n"


def multipart(content: bytes, name: str = "data.csv", **fields) -> bytes:
    return encode_multipart(BOUNDARY, {**fields, "file": csv_upload(content, name=name)})


class UnreadableBody(FakePayload):
    """A request body that fails the test if anything reads it."""

    def read(self, *args):
        raise AssertionError("the request body was read")

    readline = read


def stored_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def nothing_changed(root: Path) -> bool:
    return ListingVersion.objects.count() == 0 and DataFile.objects.count() == 0 and stored_files(root) == []


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.UPLOAD_MAX_BYTES = LIMIT


@pytest.fixture
def web(client, merchant_user):
    client.force_login(merchant_user)
    return client


@pytest.fixture
def api(merchant_user) -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Api-Key {api_key_create(user=merchant_user, name='t', scopes=['merchant'])[1]}"
    )
    return client


def upload_url(listing) -> str:
    return reverse("listings:upload", args=[listing.pk])


def versions_url(listing) -> str:
    return f"/api/v1/merchant/products/{listing.slug}/versions/"


# --- 1. the size limit, before and while the body is read -------------------------------------------------------


def test_web_upload_declared_over_the_limit_is_refused_unread(web, draft_listing, _private_storage):
    declared = LIMIT + MULTIPART_ALLOWANCE + 1
    extra = {"CONTENT_LENGTH": str(declared), "wsgi.input": UnreadableBody(b"x")}
    page = web.generic("POST", upload_url(draft_listing), b"x", content_type=MULTIPART_CONTENT, **extra)
    assert page.status_code == 413
    message = f"The upload is {declared} bytes; files are limited to {LIMIT} bytes."
    assert message in page.content.decode()
    extra["wsgi.input"] = UnreadableBody(b"x")
    answer = web.generic("POST", upload_url(draft_listing), b"x", content_type=MULTIPART_CONTENT, **extra, **XHR)
    assert (answer.status_code, answer.json()) == (413, {"ok": False, "errors": [message]})
    assert nothing_changed(_private_storage)


def test_web_upload_passing_the_limit_while_streaming_is_refused(web, draft_listing, _private_storage):
    body = multipart(csv_of(LIMIT + 1), changelog="too big")
    assert len(body) <= LIMIT + MULTIPART_ALLOWANCE  # the declared length alone allows it
    page = web.generic("POST", upload_url(draft_listing), body, content_type=MULTIPART_CONTENT)
    assert page.status_code == 413
    assert f"The file is {LIMIT + 1} bytes; the limit is {LIMIT} bytes." in page.content.decode()
    answer = web.generic("POST", upload_url(draft_listing), body, content_type=MULTIPART_CONTENT, **XHR)
    assert answer.status_code == 413
    assert answer.json() == {"ok": False, "errors": [f"The file is {LIMIT + 1} bytes; the limit is {LIMIT} bytes."]}
    assert nothing_changed(_private_storage)


def test_web_upload_at_the_limit_is_accepted(web, draft_listing, _private_storage):
    response = web.generic("POST", upload_url(draft_listing), multipart(csv_of(LIMIT)), content_type=MULTIPART_CONTENT)
    assert response.status_code == 302
    assert draft_listing.versions.get().files.get().size == LIMIT


def test_web_upload_still_checks_csrf(merchant_user, draft_listing, _private_storage):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(merchant_user)
    forged = browser.post(upload_url(draft_listing), {"file": csv_upload()})
    assert forged.status_code == 403
    assert nothing_changed(_private_storage)
    browser.get(reverse("listings:manage", args=[draft_listing.pk]))
    token = browser.cookies["csrftoken"].value
    genuine = browser.post(upload_url(draft_listing), {"file": csv_upload(), "csrfmiddlewaretoken": token})
    assert genuine.status_code == 302
    assert draft_listing.versions.count() == 1


def test_api_upload_declared_over_the_limit_is_refused_unread(api, draft_listing, _private_storage):
    declared = LIMIT + MULTIPART_ALLOWANCE + 1
    extra = {"CONTENT_LENGTH": str(declared), "wsgi.input": UnreadableBody(b"x")}
    response = api.generic("POST", versions_url(draft_listing), b"x", content_type=MULTIPART_CONTENT, **extra)
    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "code": "too_large",
            "message": f"The upload is {declared} bytes; files are limited to {LIMIT} bytes.",
        }
    }
    assert nothing_changed(_private_storage)


def test_api_upload_passing_the_limit_while_streaming_is_refused(api, draft_listing, _private_storage):
    body = multipart(csv_of(LIMIT + 1))
    response = api.generic("POST", versions_url(draft_listing), body, content_type=MULTIPART_CONTENT)
    assert response.status_code == 413
    assert response.json() == {
        "error": {"code": "too_large", "message": f"The file is {LIMIT + 1} bytes; the limit is {LIMIT} bytes."}
    }
    assert nothing_changed(_private_storage)


def test_api_upload_with_a_session_is_limited_while_csrf_is_checked(merchant_user, draft_listing, _private_storage):
    """Session authentication parses the body for its CSRF check, before the view runs: the limits are in place."""
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(merchant_user)
    session.get(reverse("listings:manage", args=[draft_listing.pk]))
    token = {"HTTP_X_CSRFTOKEN": session.cookies["csrftoken"].value}
    url = versions_url(draft_listing)
    too_big = session.generic("POST", url, multipart(csv_of(LIMIT + 1)), content_type=MULTIPART_CONTENT, **token)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "too_large"
    assert nothing_changed(_private_storage)
    no_token = session.generic("POST", url, multipart(csv_of(100)), content_type=MULTIPART_CONTENT)
    assert no_token.status_code == 403
    assert nothing_changed(_private_storage)
    fine = session.generic("POST", url, multipart(csv_of(100)), content_type=MULTIPART_CONTENT, **token)
    assert fine.status_code == 201, fine.content
    assert draft_listing.versions.get().files.get().size == 100


def test_api_limits_do_not_apply_to_another_merchants_product(other_merchant_user, draft_listing, _private_storage):
    """The caller's limits need its own product: another merchant's answers 404, whatever the size."""
    stranger = APIClient()
    key = api_key_create(user=other_merchant_user, name="t", scopes=["merchant"])[1]
    stranger.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    response = stranger.generic(
        "POST", versions_url(draft_listing), multipart(csv_of(100)), content_type=MULTIPART_CONTENT
    )
    assert response.status_code == 404
    assert nothing_changed(_private_storage)


class Recorder(FileUploadHandler):
    """A handler after the limiter: records how many bytes of the file reached it."""

    def __init__(self):
        super().__init__()
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        return None

    def file_complete(self, file_size):
        return None


def parse(body: bytes, *, declared: int, handlers):
    meta = {"CONTENT_TYPE": MULTIPART_CONTENT, "CONTENT_LENGTH": str(declared)}
    return MultiPartParser(meta, io.BytesIO(body), handlers).parse()


def test_the_files_bytes_past_the_limit_never_reach_the_later_handlers():
    limiter = LimitedUploadHandler(limits=UploadLimits(max_file_bytes=LIMIT))
    recorder = Recorder()
    body = multipart(csv_of(LIMIT + 50_000), name="big.csv")
    _post, files = parse(body, declared=len(body), handlers=[limiter, recorder])
    assert limiter.refusal.code == "too_large"
    assert limiter.refusal.message == f"The file is {LIMIT + 50_000} bytes; the limit is {LIMIT} bytes."
    assert recorder.received <= LIMIT
    refused = files["file"]
    assert isinstance(refused, RefusedUpload)
    assert (refused.name, refused.size, refused.read()) == ("big.csv", LIMIT + 50_000, b"")
    # The placeholder fails safe: the upload service refuses it too.
    with pytest.raises(ValidationError) as exc:
        uploads.inspect_upload(refused)
    assert exc.value.code == "too_large"


def test_the_partial_temporary_file_is_deleted_at_once():
    limiter = LimitedUploadHandler(limits=UploadLimits(max_file_bytes=LIMIT))
    spill = TemporaryFileUploadHandler()
    limiter.request = SimpleNamespace(upload_handlers=[limiter, spill])
    body = multipart(csv_of(LIMIT + 1000))
    _post, files = parse(body, declared=len(body), handlers=[limiter, spill])
    assert isinstance(files["file"], RefusedUpload)
    assert spill.file.closed
    assert not os.path.exists(spill.file.file.name)


def test_a_client_sending_more_than_it_declared_is_cut_off():
    """A lying (or chunked) client: once the file has more bytes than the whole body declared, reading stops."""
    limiter = LimitedUploadHandler(limits=UploadLimits(max_file_bytes=LIMIT))
    body = multipart(csv_of(LIMIT * 4))
    stream = io.BytesIO(body)
    meta = {"CONTENT_TYPE": MULTIPART_CONTENT, "CONTENT_LENGTH": "1000"}
    handlers = [limiter, MemoryFileUploadHandler(), TemporaryFileUploadHandler()]
    _post, files = MultiPartParser(meta, stream, handlers).parse()
    assert limiter.refusal.code == "too_large"
    assert "file" not in files
    assert stream.tell() < LIMIT * 2  # the rest was never read


def test_a_file_within_the_limits_passes_untouched():
    limiter = LimitedUploadHandler(limits=UploadLimits(max_file_bytes=LIMIT, quota_bytes=10 * LIMIT, used_bytes=0))
    content = csv_of(LIMIT)
    body = multipart(content)
    _post, files = parse(
        body, declared=len(body), handlers=[limiter, MemoryFileUploadHandler(), TemporaryFileUploadHandler()]
    )
    assert limiter.refusal is None
    assert files["file"].read() == content


# --- 2. the per-merchant storage quota --------------------------------------------------------------------------


def test_web_upload_over_the_quota_is_refused_with_used_and_limit(web, draft_listing, merchant_user, _private_storage):
    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(csv_of(1000)))
    before = sorted(DataFile.objects.values_list("pk", flat=True))
    files_before = stored_files(_private_storage)
    with override_settings(MERCHANT_STORAGE_QUOTA_BYTES=1500):
        body = multipart(csv_of(600))
        response = web.generic("POST", upload_url(draft_listing), body, content_type=MULTIPART_CONTENT, **XHR)
    message = "Storage quota exceeded: 1000 bytes of 1.5 KB used; this upload of 600 bytes does not fit."
    assert (response.status_code, response.json()) == (413, {"ok": False, "errors": [message]})
    assert sorted(DataFile.objects.values_list("pk", flat=True)) == before
    assert stored_files(_private_storage) == files_before
    with override_settings(MERCHANT_STORAGE_QUOTA_BYTES=1600):  # exactly enough room
        response = web.generic("POST", upload_url(draft_listing), body, content_type=MULTIPART_CONTENT, **XHR)
    assert response.status_code == 200
    assert draft_listing.versions.count() == 2


def test_api_upload_over_the_quota_is_refused(api, draft_listing, merchant_user, _private_storage):
    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(csv_of(1000)))
    files_before = stored_files(_private_storage)
    with override_settings(MERCHANT_STORAGE_QUOTA_BYTES=1500):
        streamed = api.generic(
            "POST", versions_url(draft_listing), multipart(csv_of(600)), content_type=MULTIPART_CONTENT
        )
        declared = api.generic(
            "POST",
            versions_url(draft_listing),
            b"x",
            content_type=MULTIPART_CONTENT,
            CONTENT_LENGTH=str(500 + MULTIPART_ALLOWANCE + 1),
            **{"wsgi.input": UnreadableBody(b"x")},
        )
    assert streamed.status_code == 413
    assert streamed.json() == {
        "error": {
            "code": "quota_exceeded",
            "message": "Storage quota exceeded: 1000 bytes of 1.5 KB used; this upload of 600 bytes does not fit.",
        }
    }
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "quota_exceeded"
    assert draft_listing.versions.count() == 1
    assert stored_files(_private_storage) == files_before


def test_the_service_checks_the_quota_over_all_the_merchants_products(
    draft_listing, published_listing, merchant_user, _private_storage
):
    used = uploads.merchant_storage_used(merchant_pk=draft_listing.merchant_id)
    assert used == published_listing.versions.get().files.get().size == len(SAMPLE_CSV)
    files_before = stored_files(_private_storage)
    quota = override_settings(MERCHANT_STORAGE_QUOTA_BYTES=used + len(SAMPLE_CSV) - 1)
    with quota, pytest.raises(ValidationError) as exc:
        version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload())
    assert exc.value.code == "quota_exceeded"
    assert "Storage quota exceeded" in exc.value.messages[0]
    assert draft_listing.versions.count() == 0
    assert stored_files(_private_storage) == files_before


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_uploads_cannot_both_squeeze_under_the_quota(
    draft_listing, merchant_user, _private_storage, monkeypatch
):
    """Both pass the early, unlocked check; the merchant's row lock lets only one of them commit."""
    from listings.services import versions

    barrier = threading.Barrier(2, timeout=10)
    real_store = versions.store_upload

    def store_together(*args, **kwargs):
        path = real_store(*args, **kwargs)
        barrier.wait()  # both files are stored before either transaction starts
        return path

    monkeypatch.setattr(versions, "store_upload", store_together)
    outcomes = []

    def upload(name):
        try:
            version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(name=name))
            outcomes.append("ok")
        except ValidationError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    with override_settings(MERCHANT_STORAGE_QUOTA_BYTES=len(SAMPLE_CSV) * 3 // 2):
        threads = [threading.Thread(target=upload, args=(f"{n}.csv",)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(outcomes) == ["ok", "quota_exceeded"]
    assert DataFile.objects.count() == 1
    assert [path.name for path in stored_files(_private_storage)] == [Path(DataFile.objects.get().file.name).name]


def test_the_manage_page_shows_storage_used_of_the_quota(web, draft_listing, merchant_user):
    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(csv_of(2048)))
    with override_settings(MERCHANT_STORAGE_QUOTA_BYTES=5 * 1024**3):
        page = web.get(reverse("listings:manage", args=[draft_listing.pk])).content.decode()
    assert re.search(r"Storage used: 2\.0\sKB of 5\.0\sGB", page.replace("\xa0", " "))


def test_the_quota_setting_comes_from_the_environment():
    code = "from django.conf import settings; print(settings.MERCHANT_STORAGE_QUOTA_BYTES)"
    base = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "exchange.settings"}
    base_dir = Path(__file__).resolve().parent.parent.parent
    run = [sys.executable, "-c", f"import django; django.setup(); {code}"]

    def settings_with(value):
        env = {**base} if value is None else {**base, "MERCHANT_STORAGE_QUOTA_BYTES": value}
        return subprocess.run(run, env=env, cwd=base_dir, capture_output=True, text=True, timeout=60)

    assert settings_with(None).stdout.strip() == str(5 * 1024**3)
    assert settings_with("1048576").stdout.strip() == "1048576"
    refused = settings_with("lots")
    assert refused.returncode != 0
    assert "MERCHANT_STORAGE_QUOTA_BYTES must be an integer, got 'lots'" in refused.stderr


# --- 3. content sniffing, server paths, download names ----------------------------------------------------------


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", SAMPLE_CSV)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56 + b"a,b\n",
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 50,
        b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + b"\x00" * 56,
        _zip(),
    ],
    ids=["elf", "windows-exe", "mach-o", "zip"],
)
def test_sniffing_refuses_a_program_or_archive_renamed_csv(draft_listing, merchant_user, _private_storage, content):
    with pytest.raises(ValidationError) as exc:
        version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(content, name="data.csv"))
    assert exc.value.code == "content_mismatch"
    assert nothing_changed(_private_storage)


def test_a_csv_header_beginning_mz_is_still_a_csv(draft_listing, merchant_user):
    version = version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload(b"MZ,code\n1,2\n"))
    assert version.files.get().format == "csv"


def test_the_storage_path_ignores_the_clients_name(web, draft_listing, _private_storage):
    hostile = "../../../etc/cron.d/evil name.csv"
    response = web.post(upload_url(draft_listing), {"file": csv_upload(name=hostile)})
    assert response.status_code == 302
    data_file = draft_listing.versions.get().files.get()
    pattern = rf"datasets/{draft_listing.merchant_id}/{draft_listing.pk}/[0-9a-f]{{32}}\.csv"
    assert re.fullmatch(pattern, data_file.file.name)
    assert [path.relative_to(_private_storage).as_posix() for path in stored_files(_private_storage)] == [
        data_file.file.name
    ]
    assert data_file.original_name == "evil name.csv"  # kept for display only


@pytest.mark.parametrize(
    ("original_name", "expected"),
    [
        ("report\r\nSet-Cookie: a=b.csv", 'attachment; filename="reportSet-Cookie_ a=b.csv"'),
        ('say "hi"; filename=x.exe.csv', 'attachment; filename="say _hi__ filename=x.exe.csv"'),
        ("C:\\Users\\x\\..\\secret.csv", 'attachment; filename="secret.csv"'),
        ("/etc/passwd", 'attachment; filename="passwd"'),
        ("invoice\u202etxt.exe.csv", 'attachment; filename="invoicetxt.exe.csv"'),
        ("zero\u200bwidth\u2028line.csv", 'attachment; filename="zerowidth line.csv"'),
        ("城市人口.csv", "attachment; filename*=utf-8''%E5%9F%8E%E5%B8%82%E4%BA%BA%E5%8F%A3.csv"),
        ("café ünïcode.csv", "attachment; filename*=utf-8''caf%C3%A9%20%C3%BCn%C3%AFcode.csv"),
        ("..", 'attachment; filename="data"'),
    ],
    ids=[
        "crlf",
        "quotes",
        "windows-path",
        "posix-path",
        "rtl-override",
        "zero-width-and-line-separator",
        "cjk",
        "latin",
        "dots",
    ],
)
def test_the_download_name_is_sanitised(original_name, expected):
    """Even a name stored before sanitising existed (or written by hand) leaves as a safe header (RFC 6266)."""
    data_file = DataFile(original_name=original_name, sha256="ab" * 32, size=10, content_type="text/csv")
    disposition = file_headers(data_file, full=True)["Content-Disposition"]
    assert disposition == expected
    assert not re.search(r"[\r\n\x00\u202e\u2028/\\]", disposition)


def test_a_long_name_keeps_its_extension():
    name = sanitise_filename("x" * 500 + ".parquet")
    assert len(name) == 200 and name.endswith(".parquet")
