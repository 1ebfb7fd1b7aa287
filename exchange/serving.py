"""Serving a purchased file over HTTP once every check has passed: ranges, validators, three modes.

``DOWNLOAD_SERVING`` picks how the bytes leave (exchange/settings.py):

* ``django`` (default): the worker streams the file itself with constant memory. Under gunicorn the
  response goes out through ``wsgi.file_wrapper`` and ``sendfile(2)`` (no copy through Python); other
  servers iterate it in ``chunk``-sized reads. ``Range`` (one range) and ``If-Range`` are honoured here.
* ``xaccel``: Django checks and logs, then answers with ``X-Accel-Redirect`` and nginx sends the bytes
  from an ``internal`` location (deploy/nginx/exchange.conf), ranges included.
* ``s3``: a 302 to a presigned S3 GET URL valid ``DOWNLOAD_PRESIGNED_TTL_SECONDS``.

Every response carries the same headers: a safe ``Content-Disposition: attachment``, the sha256 as
``X-Content-SHA256``, a strong ``ETag: "sha256:<hex>"``, ``Repr-Digest`` (RFC 9530), no caching and
no sniffing. ``HEAD`` gets the headers alone and is neither logged nor counted as a download.
"""

import base64
import io
import logging
import re
from dataclasses import dataclass
from urllib.parse import quote

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect
from django.utils.http import content_disposition_header

from exchange.services.downloads import download_log_finish, download_log_start, storage_local_path
from listings.uploads import sanitise_filename

logger = logging.getLogger(__name__)

MODES = ("django", "xaccel", "s3")
# One byte range: "bytes=first-last", "bytes=first-" or "bytes=-suffix" (RFC 9110 §14.1.2). Digits are
# bounded so a silly header cannot make huge integers; the unit is case-insensitive.
_RANGE = re.compile(r"^bytes=(?:(\d{1,19})-(\d{0,19})|-(\d{1,19}))$", re.IGNORECASE)


class RangeNotSatisfiable(Exception):
    """A well-formed range that lies outside the file (416)."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive, as HTTP counts them."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def range_parse(header: str | None, size: int) -> ByteRange | None:
    """The single byte range ``header`` asks of a ``size``-byte file, or None to send the whole file.

    None for no header, another unit, a malformed or backwards range, or several ranges (RFC 9110
    lets a server ignore Range; multipart/byteranges is not worth it for data files). A last position
    past the end is clamped. Raises RangeNotSatisfiable when the first position is at or past the end
    or the suffix is empty (``bytes=-0``), and for any range of an empty file.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        length = int(suffix)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - length), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end)


def etag_for(sha256: str) -> str:
    """The file's strong entity tag: its content hash, so it changes exactly when the bytes do."""
    return f'"sha256:{sha256}"'


def if_range_matches(header: str | None, etag: str) -> bool:
    """Whether a Range may be honoured given ``If-Range``: absent, or exactly our (strong) ETag.

    A date, a weak tag or another tag means the client's partial copy may be stale: send it all.
    """
    return header is None or header.strip() == etag


def file_headers(data_file, *, full: bool) -> dict[str, str]:
    """The headers every answer about ``data_file`` carries, whichever mode serves the bytes."""
    headers = {
        "Content-Disposition": content_disposition_header(True, sanitise_filename(data_file.original_name)),
        "X-Content-SHA256": data_file.sha256,
        "ETag": etag_for(data_file.sha256),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    try:
        digest = base64.b64encode(bytes.fromhex(data_file.sha256)).decode()
    except ValueError:  # never for a profiled upload; leave the digest out rather than send a wrong one
        digest = None
    if digest:
        # Repr-Digest is about the whole representation, so it is right on a 206 too; the older Digest
        # header (RFC 3230) is sent with full responses only, where it also describes the body.
        headers["Repr-Digest"] = f"sha-256=:{digest}:"
        if full:
            headers["Digest"] = f"sha-256={digest}"
    return headers


class ServedRange:
    """Bytes ``start``..``end`` (inclusive) of an open file, for FileResponse, counting what left.

    The WSGI server takes the bytes one of two ways, and both report progress here:

    * it iterates FileResponse, which calls ``read()``; the server asks for the next chunk only after
      writing the previous one, so each call acknowledges everything handed out before it;
    * it uses ``wsgi.file_wrapper`` with ``sendfile(2)`` (gunicorn): it sends Content-Length bytes from
      the descriptor's current offset, and Python's ``socket.sendfile`` ends, also when the client went
      away, by seeking the file object to the offset it reached, which ``seek()`` records.

    There is deliberately no ``tell()`` and ``seekable()`` is False, so FileResponse does not measure
    the file (the view sets Content-Length). ``close()`` closes the file and calls ``on_close`` once
    with the number of bytes that reached the server.
    """

    def __init__(self, raw, *, byte_range: ByteRange, on_close, sendfile: bool):
        self._raw = raw
        self._start = self._position = self._acknowledged = byte_range.start
        self._stop = byte_range.end + 1
        self._on_close = on_close
        self._sendfile = sendfile
        self._closed = False
        raw.seek(self._start)

    def fileno(self) -> int:
        if not self._sendfile:
            raise io.UnsupportedOperation("fileno")
        return self._raw.fileno()

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        offset = max(self._start, min(offset, self._stop))
        self._acknowledged = max(self._acknowledged, offset)
        self._position = offset
        self._raw.seek(offset)
        return offset

    def read(self, size: int = -1) -> bytes:
        self._acknowledged = max(self._acknowledged, self._position)
        remaining = self._stop - self._position
        if remaining <= 0:
            return b""
        want = remaining if size is None or size < 0 else min(size, remaining)
        data = self._raw.read(want)
        self._position += len(data)
        return data

    @property
    def bytes_sent(self) -> int:
        return self._acknowledged - self._start

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._raw.close()
        finally:
            try:
                self._on_close(self.bytes_sent)
            except Exception:
                # Django swallows errors raised while closing a response; make this one visible.
                logger.exception("recording the end of a download failed")
                raise


def _set_headers(response: HttpResponse, headers: dict[str, str]) -> None:
    for name, value in headers.items():
        response.headers[name] = value


def _log_start(request, delivery, data_file, *, byte_range: ByteRange | None, mode: str):
    return download_log_start(
        delivery=delivery,
        file=data_file,
        user=request.user,
        ip_address=request.META.get("REMOTE_ADDR") or None,
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        range_start=byte_range.start if byte_range else None,
        range_end=byte_range.end if byte_range else None,
        mode=mode,
    )


def download_response(request, *, delivery, data_file, mode: str | None = None, chunk: int = 1024 * 1024):
    """The answer to a GET or HEAD for ``data_file`` of ``delivery``, already checked by download_resolve.

    GET is logged (DownloadLog, one row per request) and a complete download confirms the delivery
    (``download_log_finish``). A 416 (range outside the file) is neither logged nor counted.
    """
    mode = mode or settings.DOWNLOAD_SERVING
    if mode not in MODES:
        raise ValueError(f"unknown download serving mode {mode!r}")
    size, etag = data_file.size, etag_for(data_file.sha256)
    try:
        byte_range = range_parse(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        response = HttpResponse(status=416, content_type="text/plain; charset=utf-8")
        _set_headers(response, file_headers(data_file, full=False))
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    if byte_range is not None and not if_range_matches(request.headers.get("If-Range"), etag):
        byte_range = None
    if request.method == "HEAD":
        return _head(data_file, byte_range)
    if mode == "xaccel":
        return _xaccel(request, delivery, data_file, byte_range)
    if mode == "s3":
        return _presigned(request, delivery, data_file, byte_range)
    return _stream(request, delivery, data_file, byte_range, chunk=chunk)


def _sized_headers(data_file, byte_range: ByteRange | None) -> tuple[int, dict[str, str]]:
    headers = file_headers(data_file, full=byte_range is None)
    if byte_range is None:
        headers["Content-Length"] = str(data_file.size)
        return 200, headers
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{data_file.size}"
    return 206, headers


def _head(data_file, byte_range: ByteRange | None) -> HttpResponse:
    status, headers = _sized_headers(data_file, byte_range)
    response = HttpResponse(status=status, content_type=data_file.content_type)
    _set_headers(response, headers)
    return response


def _stream(request, delivery, data_file, byte_range: ByteRange | None, *, chunk: int) -> FileResponse:
    local = storage_local_path(data_file.file.name)
    # A local file is opened directly (its descriptor allows sendfile); a remote one through the storage.
    raw = open(local, "rb") if local is not None else default_storage.open(data_file.file.name, "rb")  # noqa: SIM115
    try:
        status, headers = _sized_headers(data_file, byte_range)
        log = _log_start(request, delivery, data_file, byte_range=byte_range, mode="django")
        served = ServedRange(
            raw,
            byte_range=byte_range or ByteRange(0, data_file.size - 1),
            on_close=lambda sent: download_log_finish(log_pk=log.pk, bytes_sent=sent),
            sendfile=local is not None,
        )
    except BaseException:
        raw.close()
        raise
    response = FileResponse(served, status=status, content_type=data_file.content_type)
    response.block_size = chunk
    _set_headers(response, headers)
    return response


def _handed_off(request, delivery, data_file, byte_range: ByteRange | None, *, mode: str) -> None:
    """Log a download whose bytes another server sends.

    Django cannot see those bytes, so a full (non-Range) GET handed over counts as the whole file sent
    and confirms the delivery; a ranged one is logged with no bytes and confirms nothing. The trade-off:
    a buyer whose connection breaks mid-way still confirms delivery — acceptable because the link works
    again until the entitlement ends, and the escrow's dispute window still protects the buyer.
    """
    log = _log_start(request, delivery, data_file, byte_range=byte_range, mode=mode)
    download_log_finish(log_pk=log.pk, bytes_sent=data_file.size if byte_range is None else 0)


def _xaccel(request, delivery, data_file, byte_range: ByteRange | None) -> HttpResponse:
    _handed_off(request, delivery, data_file, byte_range, mode="xaccel")
    response = HttpResponse(content_type=data_file.content_type)
    # nginx answers the Range itself, so the headers here describe the whole file.
    headers = file_headers(data_file, full=True)
    _set_headers(response, headers)
    response.headers["X-Accel-Redirect"] = settings.DOWNLOAD_XACCEL_PREFIX + quote(data_file.file.name)
    return response


def presigned_url(data_file, *, ttl: int) -> str:
    """A presigned S3 GET URL for ``data_file`` valid ``ttl`` seconds, naming its download and type.

    The storage is configured without query-string auth (plain URLs of private objects are refused by
    S3), so the URL is signed here with the storage's own client.
    """
    client = default_storage.connection.meta.client
    key = default_storage._normalize_name(data_file.file.name)  # the storage's own key for the name (location)
    params = {
        "Bucket": default_storage.bucket_name,
        "Key": key,
        "ResponseContentDisposition": content_disposition_header(True, sanitise_filename(data_file.original_name)),
        "ResponseContentType": data_file.content_type,
    }
    return client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)


def _presigned(request, delivery, data_file, byte_range: ByteRange | None) -> HttpResponse:
    _handed_off(request, delivery, data_file, byte_range, mode="s3")
    response = HttpResponseRedirect(presigned_url(data_file, ttl=settings.DOWNLOAD_PRESIGNED_TTL_SECONDS))
    # The redirect is not the file: only the hash (to check what S3 sends) and the no-cache rules.
    _set_headers(
        response,
        {
            "X-Content-SHA256": data_file.sha256,
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
    return response
