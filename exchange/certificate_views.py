"""Transaction certificates: the printable page and bundle download (buyer, merchant, staff), the public
verification pages and the public key, and their API (``/api/v1/certificates/``).

Errors of the API answer ``{"error": {"code", "message"}}`` like every endpoint of the API (``common.api``).
"""

import json

from django import forms
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import content_disposition_header
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiKeyAuthentication, request_scopes
from common.api import ERRORS, error_body, errors
from common.money import format_minor
from exchange.models import TransactionCertificate
from exchange.selectors import order_visible
from exchange.services.certificates import (
    BUNDLE_FORMAT,
    CERTIFICATE_VERSION,
    MAX_BUNDLE_BYTES,
    CertificateInputError,
    certificate_bundle,
    certificate_bundle_bytes,
    certificate_bundle_verify,
    certificate_number_valid,
    certificate_verify,
    certificate_visible,
)
from exchange.signing_key import signing_key, verification_keys


class VerifyForm(forms.Form):
    bundle = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 10, "placeholder": '{"document": "…", "signature": "…", "key_id": "…"}'}),
        label=_("Certificate bundle (JSON)"),
    )
    upload = forms.FileField(required=False, label=_("…or upload the bundle file"))

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("upload")
        if upload is not None:
            if upload.size > MAX_BUNDLE_BYTES:
                raise forms.ValidationError(
                    _("The file is %(size)s bytes; certificate bundles are at most %(limit)s bytes."),
                    params={"size": upload.size, "limit": MAX_BUNDLE_BYTES},
                )
            cleaned["raw"] = upload.read()
        else:
            cleaned["raw"] = cleaned.get("bundle", "")
        return cleaned


def _certificate_or_404(request, number: str) -> TransactionCertificate:
    # Anonymous visitors, other buyers and other merchants get the same 404 as an unknown number.
    certificate = certificate_visible(number=number, user=request.user)
    if certificate is None:
        raise Http404("No such certificate.")
    return certificate


def _document(certificate: TransactionCertificate) -> dict:
    return json.loads(certificate.document)


def _amounts(doc: dict | None) -> dict[str, str]:
    """The document's amounts for people (``12.34 CNY``); anything malformed is shown as a dash."""
    amounts = {}
    for name in ("price", "refunded", "buyer_service_fee", "platform_fee", "merchant_proceeds"):
        value = (doc or {}).get(name)
        try:
            amounts[name] = format_minor(value["amount"], value["currency"])
        except (TypeError, KeyError, ValueError, ArithmeticError):
            amounts[name] = "—"
    return amounts


def _certificate_context(certificate: TransactionCertificate, result) -> dict:
    doc = _document(certificate)
    return {"certificate": certificate, "doc": doc, "amounts": _amounts(doc), "result": result, "key": signing_key()}


def certificate_page(request, number):
    """The printable certificate, with its bundle to download and a link to check it publicly."""
    certificate = _certificate_or_404(request, number)
    result = certificate_verify(document=certificate.document, signature=certificate.signature)
    return render(
        request,
        "exchange/certificate.html",
        _certificate_context(certificate, result),
    )


def certificate_bundle_download(request, number):
    """The bundle as a JSON file (``<number>.json``): what the verification page and API accept."""
    certificate = _certificate_or_404(request, number)
    return HttpResponse(
        certificate_bundle_bytes(certificate),
        content_type="application/json; charset=utf-8",
        headers={
            "Content-Disposition": content_disposition_header(True, f"{certificate.number}.json"),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def certificate_for_order(request, public_id):
    """From an order to its certificate (404 until the order is settled, and for anyone who may not see it)."""
    order = order_visible(public_id=public_id, user=request.user)
    number = TransactionCertificate.objects.filter(order=order).values_list("number", flat=True).first()
    if number is None:
        raise Http404("This order has no certificate yet: certificates are issued when a trade is settled.")
    return redirect("certificates:detail", number=number)


@require_http_methods(["GET", "POST"])
def verify(request):
    """Paste or upload a certificate bundle; see whether its signature, ledger entry and number check out."""
    result, error, status = None, None, 200
    form = VerifyForm()
    if request.method == "POST":
        form = VerifyForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                result = certificate_bundle_verify(form.cleaned_data["raw"])
            except CertificateInputError as exc:
                error, status = exc.messages[0], 400
        else:
            status = 400
    context = {"form": form, "result": result, "error": error, "key": signing_key()}
    context["amounts"] = _amounts(result.document if result else None)
    return render(request, "exchange/verify.html", context, status=status)


def verify_number(request, number):
    """The stored certificate ``number`` and the outcome of verifying it now; public."""
    # A "number" that is no certificate number (a NUL in it would make PostgreSQL refuse the query) is just unknown.
    valid = certificate_number_valid(number)
    certificate = TransactionCertificate.objects.filter(number=number).first() if valid else None
    if certificate is None:
        raise Http404("No such certificate.")
    result = certificate_verify(document=certificate.document, signature=certificate.signature)
    return render(
        request,
        "exchange/verify_number.html",
        _certificate_context(certificate, result),
    )


def public_key_pem(request):
    """The exchange's Ed25519 public key (SubjectPublicKeyInfo PEM); its key id in ``X-Key-Id``.

    ``?key_id=`` names a retired key instead (one the exchange signed with before a rotation); 404 for a key id
    the exchange never signed with.
    """
    key = signing_key()
    wanted = request.GET.get("key_id")
    if wanted is not None and wanted != key.key_id:
        key = verification_keys().get(wanted)
        if key is None:
            return HttpResponse(
                f"This exchange has never signed with a key {wanted[:40]!r}.\n", status=404, content_type="text/plain"
            )
    return HttpResponse(
        key.public_key_pem,
        content_type="application/x-pem-file",
        headers={
            "Content-Disposition": content_disposition_header(False, "exchange-public-key.pem"),
            "X-Key-Id": key.key_id,
        },
    )


# --- API -------------------------------------------------------------------


class _RawBodyParser(BaseParser):
    """Hands the view the body's exact bytes: the signed document must not pass through any re-encoding."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read(MAX_BUNDLE_BYTES + 1) if stream is not None else b""


class _CertificateApiView(APIView):
    """Errors take the API's one shape through the project's handler (``common.api.api_exception_handler``)."""

    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = []


class BundleSerializer(serializers.Serializer):
    """A certificate bundle, as ``bundle.json`` holds it.

    ``format`` and ``version``, when present, must be these (else 400); ``number`` and ``key_id``, when present,
    must be the document's own (else the bundle is not valid).
    """

    format = serializers.ChoiceField(choices=[BUNDLE_FORMAT], required=False)
    version = serializers.ChoiceField(choices=[CERTIFICATE_VERSION], required=False)
    number = serializers.CharField(required=False, help_text="The document's number.")
    key_id = serializers.CharField(required=False, help_text="The document's key id.")
    document = serializers.CharField(help_text="The signed document: canonical JSON, exactly as issued.")
    signature = serializers.CharField(help_text="The Ed25519 signature of `document`, base64.")


class VerificationSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    signature_ok = serializers.BooleanField()
    ledger_ok = serializers.BooleanField()
    known = serializers.BooleanField()
    bundle_ok = serializers.BooleanField(help_text="The bundle's number and key id, if stated, are the document's.")
    reasons = serializers.ListField(child=serializers.CharField())
    number = serializers.CharField(allow_null=True)
    key_id = serializers.CharField(allow_blank=True)


class CertificateSerializer(serializers.Serializer):
    number = serializers.CharField()
    order = serializers.UUIDField()
    issued_at = serializers.DateTimeField()
    key_id = serializers.CharField()
    bundle = BundleSerializer()
    document = serializers.DictField(help_text="`bundle.document` parsed.")
    verification = VerificationSerializer()


class RetiredKeySerializer(serializers.Serializer):
    key_id = serializers.CharField()
    public_key_pem = serializers.CharField()


class PublicKeySerializer(serializers.Serializer):
    algorithm = serializers.ChoiceField(choices=["Ed25519"])
    key_id = serializers.CharField()
    public_key_pem = serializers.CharField()
    retired_keys = RetiredKeySerializer(
        many=True, help_text="Keys the exchange signed with before a rotation: certificates they signed still verify."
    )


def public_key_as_dict() -> dict:
    key = signing_key()
    retired = [
        {"key_id": other.key_id, "public_key_pem": other.public_key_pem}
        for other in verification_keys().values()
        if other.retired
    ]
    return {"algorithm": "Ed25519", "key_id": key.key_id, "public_key_pem": key.public_key_pem, "retired_keys": retired}


class CertificateDetailApi(_CertificateApiView):
    """``GET /api/v1/certificates/<number>/``: the certificate's bundle, its parsed document and its verification.

    For its buyer, a member of its merchant, or staff (scope ``read`` for an API key); 404 for
    anyone else, signed in or not, exactly as for an unknown number.
    """

    @extend_schema(operation_id="certificates_retrieve", responses={200: CertificateSerializer, **errors(403, 404)})
    def get(self, request, number):
        if request.user.is_authenticated and "read" not in request_scopes(request):
            raise exceptions.PermissionDenied("This API key lacks the scope this needs: read.")
        certificate = certificate_visible(number=number, user=request.user)
        if certificate is None:
            return Response(error_body("not_found", "No such certificate."), status=404)
        result = certificate_verify(document=certificate.document, signature=certificate.signature)
        return Response(
            {
                "number": certificate.number,
                "order": str(certificate.order.public_id),
                "issued_at": certificate.issued_at.isoformat(),
                "key_id": certificate.key_id,
                "bundle": certificate_bundle(certificate),
                "document": _document(certificate),
                "verification": result.as_dict(),
            }
        )


class CertificateVerifyApi(_CertificateApiView):
    """``POST /api/v1/certificates/verify/`` with a certificate bundle as the JSON body; public.

    Answers 200 ``{"valid", "signature_ok", "ledger_ok", "known", "bundle_ok", "reasons", "number", "key_id"}``
    whatever the outcome, or 400 ``{"error": {"code", "message"}}`` when the body is not a bundle
    (not JSON or nested too deeply, not text, no document or signature, wrong types, another format or
    version, larger than the limit). Reads only.
    """

    # Nobody acts as anyone here: without authentication there is no session to forge a request for,
    # so no CSRF check is needed, and a stale API key cannot turn a public check into a 401.
    authentication_classes = []
    parser_classes = [_RawBodyParser]

    @extend_schema(
        operation_id="certificates_verify",
        request={"application/json": BundleSerializer},
        responses={
            200: VerificationSerializer,
            400: OpenApiResponse(ERRORS[400].response, description="The body is not a certificate bundle."),
            **errors(),
        },
        auth=[],
    )
    def post(self, request):
        try:
            # An empty body never reaches the parser; DRF then gives an empty dict instead of bytes.
            raw = request.data if isinstance(request.data, bytes) else b""
            result = certificate_bundle_verify(raw)
        except CertificateInputError as exc:
            return Response(error_body(exc.code or "invalid", exc.messages[0]), status=400)
        return Response(result.as_dict())


class PublicKeyApi(_CertificateApiView):
    """``GET /api/v1/certificates/public-key/``: ``{"algorithm": "Ed25519", "key_id", "public_key_pem"}``; public."""

    authentication_classes = []

    @extend_schema(operation_id="certificates_public_key", responses={200: PublicKeySerializer, **errors()}, auth=[])
    def get(self, request):
        return Response(public_key_as_dict())
