"""Upload limits enforced while the request body is read, not after.

Django's default upload handlers accept a body of any size: the whole file is
received (spilled to a temporary file) before listings.uploads.inspect_upload
can refuse it. ``LimitedUploadHandler`` goes first in ``request.upload_handlers``
of the two upload views (web and API) and refuses:

* **before reading anything**, when the declared ``Content-Length`` exceeds
  what could be allowed: the per-file limit (``UPLOAD_MAX_BYTES``) or the room
  left in the merchant's storage quota (``MERCHANT_STORAGE_QUOTA_BYTES``), plus
  ``MULTIPART_ALLOWANCE`` for the multipart framing and the other fields. The
  parse is answered empty; the body is never read.
* **while streaming**, as soon as the bytes of the file pass either limit (the
  declared length allowed the framing, or the client lied about it). From then
  on no byte reaches the later handlers, so nothing more is written to disk.
  The rest of the body is at most ``MULTIPART_ALLOWANCE`` bytes when the
  declared length was honest: it is read and counted (so the refusal can give
  the file's exact size, and the response reaches a client still sending).
  More bytes than were declared mean the client lied: ``StopUpload`` with
  ``connection_reset`` stops reading at once.

The refusal is kept on the handler (``refusal``) for the view to answer; a
refused file appears in ``request.FILES`` only as a ``RefusedUpload``, an empty
placeholder that the upload service would refuse too, never as the partial
file the later handlers received.

Installing the handler must happen before anything reads ``request.POST`` or
``request.FILES``; CsrfViewMiddleware reads POST, so the web view is
``csrf_exempt`` and applies ``csrf_protect`` itself once the handler is in
place (Django's documented pattern for custom upload handlers).
"""

import io
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict

from listings.uploads import merchant_storage_used, quota_exceeded_message, too_large_message

# Multipart framing (boundaries, part headers) and the small fields beside the file (CSRF token, changelog).
MULTIPART_ALLOWANCE = 64 * 1024


@dataclass(frozen=True)
class UploadRefusal:
    """Why an upload was refused: ``code`` is "too_large" or "quota_exceeded"; ``message`` is for people."""

    code: str
    message: str


@dataclass(frozen=True)
class UploadLimits:
    """The limits of one upload request.

    ``quota_bytes`` is None when the merchant is not known yet (an API caller whose product does not resolve):
    only the per-file limit applies here, and the view refuses the request anyway.
    """

    max_file_bytes: int
    quota_bytes: int | None = None
    used_bytes: int = 0

    @property
    def room(self) -> int | None:
        """Bytes the merchant may still store (negative when already over a lowered quota)."""
        return None if self.quota_bytes is None else self.quota_bytes - self.used_bytes

    def declared_refusal(self, content_length: int) -> UploadRefusal | None:
        """The refusal of a body declared ``content_length`` bytes long, if no file inside it could be allowed."""
        if content_length > self.max_file_bytes + MULTIPART_ALLOWANCE:
            return UploadRefusal(
                "too_large",
                f"The upload is {content_length} bytes; files are limited to {self.max_file_bytes} bytes.",
            )
        room = self.room
        if room is not None and content_length > max(room, 0) + MULTIPART_ALLOWANCE:
            return UploadRefusal(
                "quota_exceeded",
                quota_exceeded_message(used=self.used_bytes, adding=content_length - MULTIPART_ALLOWANCE),
            )
        return None

    def received_refusal(self, *, file_bytes: int, total_bytes: int) -> UploadRefusal | None:
        """The refusal once a file has ``file_bytes`` bytes and the request's files ``total_bytes``."""
        if file_bytes > self.max_file_bytes:
            return UploadRefusal("too_large", too_large_message(file_bytes))
        room = self.room
        if room is not None and total_bytes > room:
            return UploadRefusal("quota_exceeded", quota_exceeded_message(used=self.used_bytes, adding=total_bytes))
        return None


def upload_limits(*, merchant_pk: int | None) -> UploadLimits:
    """The limits for an upload by the merchant ``merchant_pk`` (None: the per-file limit only)."""
    if merchant_pk is None:
        return UploadLimits(max_file_bytes=settings.UPLOAD_MAX_BYTES)
    return UploadLimits(
        max_file_bytes=settings.UPLOAD_MAX_BYTES,
        quota_bytes=settings.MERCHANT_STORAGE_QUOTA_BYTES,
        used_bytes=merchant_storage_used(merchant_pk=merchant_pk),
    )


class RefusedUpload(UploadedFile):
    """What ``request.FILES`` holds for a refused file: its name and received size, no content."""

    def __init__(self, *, name, content_type, size, refusal: UploadRefusal):
        super().__init__(io.BytesIO(), name=name, content_type=content_type, size=size)
        self.refusal = refusal

    def chunks(self, chunk_size=None):
        return iter(())

    def multiple_chunks(self, chunk_size=None):
        return False


class LimitedUploadHandler(FileUploadHandler):
    """Refuses an upload over the limits before or while its body is read (see the module's docstring).

    ``limits`` may be a callable, resolved once when parsing starts: the API learns its caller (and so the
    merchant) only after the handler has to be installed.
    """

    def __init__(self, request=None, *, limits: UploadLimits | Callable[[], UploadLimits]):
        super().__init__(request)
        self._limits = limits
        self.refusal: UploadRefusal | None = None
        self.declared_length: int | None = None
        self.total_bytes = 0
        self.file_bytes = 0
        self._refusing_this_file = False

    @property
    def limits(self) -> UploadLimits:
        if callable(self._limits):
            self._limits = self._limits()
        return self._limits

    def check_declared_length(self, meta) -> UploadRefusal | None:
        """Refuse from the request's declared Content-Length alone (nothing is read); the refusal, if any."""
        try:
            declared = int(meta.get("CONTENT_LENGTH") or 0)
        except (TypeError, ValueError):
            declared = 0  # Django's parser treats it so too: nothing is read
        self.declared_length = declared
        if self.refusal is None:
            self.refusal = self.limits.declared_refusal(declared)
        return self.refusal

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if self.check_declared_length(META) is not None:
            # Answering the parse ourselves means Django never reads the body.
            return QueryDict(encoding=encoding), MultiValueDict()
        return None

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.file_bytes = 0
        self._refusing_this_file = self.refusal is not None

    def receive_data_chunk(self, raw_data, start):
        self.file_bytes += len(raw_data)
        self.total_bytes += len(raw_data)
        if self.refusal is None:
            self.refusal = self.limits.received_refusal(file_bytes=self.file_bytes, total_bytes=self.total_bytes)
        if self.refusal is None:
            return raw_data
        if not self._refusing_this_file:
            self._refusing_this_file = True
            self._discard_partial_files()
        if self.declared_length is None or self.total_bytes > self.declared_length:
            # More file bytes than the whole body was declared to hold: nothing bounds the rest. Stop reading.
            raise StopUpload(connection_reset=True)
        # Within the declared length, at most MULTIPART_ALLOWANCE bytes remain: count them, pass on none.
        return None

    def _discard_partial_files(self) -> None:
        """Close what the later handlers received of the refused file (a temporary file is deleted on close).

        They keep it in ``file``, as Django's own parser assumes when it closes files. Their ``file_complete`` is
        never called for this file: ours answers first, with the placeholder.
        """
        handlers = list(getattr(self.request, "upload_handlers", None) or ())
        for handler in handlers[handlers.index(self) + 1 :] if self in handlers else ():
            partial = getattr(handler, "file", None)
            if partial is not None:
                partial.close()

    def file_complete(self, file_size):
        if not self._refusing_this_file:
            return None  # the next handler (memory or temporary file) holds the file
        if self.refusal.code == "too_large" and self.file_bytes > self.limits.max_file_bytes:
            # Now the exact size is known.
            self.refusal = UploadRefusal("too_large", too_large_message(self.file_bytes))
        elif self.refusal.code == "quota_exceeded":
            self.refusal = UploadRefusal(
                "quota_exceeded", quota_exceeded_message(used=self.limits.used_bytes, adding=self.total_bytes)
            )
        # A placeholder, so the partial file the later handlers received never reaches request.FILES.
        return RefusedUpload(
            name=self.file_name, content_type=self.content_type, size=self.file_bytes, refusal=self.refusal
        )


def install_upload_limits(request, *, limits: UploadLimits | Callable[[], UploadLimits]) -> LimitedUploadHandler:
    """Put a LimitedUploadHandler first in ``request.upload_handlers``; call before POST or FILES is read."""
    handler = LimitedUploadHandler(request, limits=limits)
    request.upload_handlers.insert(0, handler)
    return handler
