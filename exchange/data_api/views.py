"""The data API: the rows of purchased files, API keys, and the caller's usage.

Authenticated by API key (``Authorization: Api-Key <key>`` or ``Bearer``) or
by the browser session. Errors answer ``{"error": {"code", "message"}}``.
"""

import contextlib
import json
import logging
import time

import duckdb
from django.core.exceptions import ValidationError
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts.authentication import ApiKeyAuthentication, HasScope, request_scopes
from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_is_active, api_key_revoke
from common.api import ERRORS, error_body, errors
from exchange.data_api.access import data_file_for_buyer, delivery_to_confirm
from exchange.data_api.query import QueryError, RowQuery, rows_fetch
from exchange.data_api.render import CONTENT_TYPES, render_chunks
from exchange.data_api.selectors import buyer_usage
from exchange.services.delivery import DeliveryTransitionError, delivery_confirm
from exchange.services.usage import (
    ROWS_PER_UNIT,
    MeteringUnavailable,
    QuotaExceeded,
    quota_reserve,
    quota_settle,
    rate_limit_take,
    units_for,
    usage_record_create,
)
from listings.choices import MeteredUnit

log = logging.getLogger(__name__)


class _NoFormatOverride:
    URL_FORMAT_OVERRIDE = None

    def __getattr__(self, name):
        return getattr(api_settings, name)


class DataApiNegotiation(DefaultContentNegotiation):
    """Negotiation by Accept only: ``?format=`` is the rows endpoint's own output format."""

    settings = _NoFormatOverride()


class DataApiView(APIView):
    """Errors take the API's one shape through the project's handler (``common.api.api_exception_handler``)."""

    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    content_negotiation_class = DataApiNegotiation


# --- what the schema says the views answer --------------------------------------------------------------------------

_ERROR = ERRORS[400].response  # the one error shape (a second "Error" component would clash)


class RowsPageSerializer(serializers.Serializer):
    columns = serializers.ListField(child=serializers.CharField(), help_text="The columns of each row, in order.")
    rows = serializers.ListField(
        child=serializers.ListField(child=serializers.JSONField()),
        help_text="Each row's values in the order of `columns` (decimals as strings, dates in ISO 8601).",
    )
    next = serializers.CharField(allow_null=True, help_text="The URL of the next page, or null on the last page.")
    row_count = serializers.IntegerField(help_text="The number of rows on this page.")


class KeySerializer(serializers.Serializer):
    prefix = serializers.CharField()
    name = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField()


class KeyCreatedSerializer(KeySerializer):
    key = serializers.CharField(help_text="The key itself: shown this once, never stored in clear.")


class KeyListSerializer(serializers.Serializer):
    results = KeySerializer(many=True)


class _UsageListingSerializer(serializers.Serializer):
    slug = serializers.CharField()
    title = serializers.CharField()


class _UsagePlanSerializer(serializers.Serializer):
    kind = serializers.CharField()
    metered_unit = serializers.CharField(allow_null=True)


class _UsageThisMonthSerializer(serializers.Serializer):
    calls = serializers.IntegerField()
    refused = serializers.IntegerField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()
    units = serializers.IntegerField()
    live_units = serializers.IntegerField(allow_null=True)


class _UsageMonthSerializer(serializers.Serializer):
    month = serializers.CharField(help_text="YYYY-MM")
    calls = serializers.IntegerField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()
    units = serializers.IntegerField()
    billable_units = serializers.IntegerField()
    amount = serializers.IntegerField(help_text="In minor units of `currency`.")
    currency = serializers.CharField()


class EntitlementUsageSerializer(serializers.Serializer):
    entitlement = serializers.IntegerField()
    listing = _UsageListingSerializer()
    plan = _UsagePlanSerializer(allow_null=True)
    free_units_per_month = serializers.IntegerField()
    monthly_cap_units = serializers.IntegerField(allow_null=True)
    this_month = _UsageThisMonthSerializer()
    months = _UsageMonthSerializer(many=True)


class UsageListSerializer(serializers.Serializer):
    results = EntitlementUsageSerializer(many=True)


_ROWS_PARAMETERS = [
    OpenApiParameter("columns", str, description="Comma-separated profiled columns (default: all)."),
    OpenApiParameter("limit", int, description="Rows per page: 1 to `DATA_API_MAX_LIMIT` (default 100)."),
    OpenApiParameter("cursor", str, description="The cursor of the next page (from `next` or the `Link` header)."),
    OpenApiParameter("format", str, enum=["json", "csv", "ndjson"], description="The output format (default json)."),
]
_ROWS_RESPONSES = {
    (200, "application/json"): RowsPageSerializer,
    (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="Rows as CSV; the next page in `Link`."),
    (200, "application/x-ndjson"): OpenApiTypes.STR,
    **errors(400, 403, 404),
    500: OpenApiResponse(_ERROR, description="The file could not be read (`read_failed`)."),
    503: OpenApiResponse(_ERROR, description="Metered use cannot be counted now (`metering_unavailable`)."),
}


def _api_key(request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


class FileRowsView(DataApiView):
    """``GET /api/v1/data/files/<file_pk>/rows/``: rows of a purchased file (scope ``data``).

    Query: ``columns=a,b``; filters ``<col>=<v>``, ``<col>__gte|__gt|__lte|__lt=<v>`` (profiled
    columns, values of the column's type); ``limit`` (default 100, at most ``DATA_API_MAX_LIMIT``);
    ``cursor`` (from ``next``); ``format=json|csv|ndjson``. JSON answers ``{"columns", "rows",
    "next", "row_count"}``; CSV and NDJSON stream the rows with the next page in
    ``Link: <url>; rel="next"``. 404 unless the caller holds a usable entitlement covering the
    file's version; 400 with a ``code`` for bad input; 429 (``rate_limited``, ``quota_exceeded``)
    with ``Retry-After``; 503 when metered use cannot be counted. Every answer past the 404 is
    recorded as a UsageRecord.
    """

    permission_classes = [HasScope("data")]

    @extend_schema(
        operation_id="data_file_rows",
        parameters=_ROWS_PARAMETERS,
        responses=_ROWS_RESPONSES,
        description="Filters: `<column>=<value>` and `<column>__gte|__gt|__lte|__lt=<value>` on profiled columns.",
    )
    def get(self, request, file_pk: int):
        started = time.monotonic()
        found = data_file_for_buyer(user=request.user, file_pk=file_pk)
        if found is None:
            return Response(error_body("not_found", "No such file among your purchases."), status=404)
        data_file, entitlement = found
        key = _api_key(request)

        def record(status_code: int, *, rows: int = 0, size: int = 0, units: int = 0):
            usage_record_create(
                entitlement=entitlement,
                file_pk=data_file.pk,
                api_key_pk=key.pk if key else None,
                rows=rows,
                bytes_sent=size,
                units=units,
                status_code=status_code,
                duration_ms=int((time.monotonic() - started) * 1000),
                ip_address=request.META.get("REMOTE_ADDR") or None,
            )

        def refuse(status_code: int, code: str, message: str, **headers) -> HttpResponse:
            response = _json_response(error_body(code, message), status_code, headers)
            record(status_code, size=len(response.content))
            return response

        try:
            query = RowQuery.parse(request.query_params, data_file=data_file)
        except QueryError as exc:
            return refuse(400, exc.code, exc.message)
        now = timezone.now()
        try:
            rate_limit_take(subject=f"key:{key.pk}" if key else f"user:{request.user.pk}", now=now)
            reservation = quota_reserve(entitlement=entitlement, rows_wanted=query.limit, now=now)
        except QuotaExceeded as exc:
            return refuse(429, exc.code, exc.message, **{"Retry-After": str(exc.retry_after)})
        except MeteringUnavailable as exc:
            return refuse(503, "metering_unavailable", str(exc), **{"Retry-After": "30"})
        limit = query.limit
        if reservation.counted and entitlement.plan.metered_unit == MeteredUnit.THOUSAND_ROWS:
            # Near the cap fewer units than asked for may have been granted: a shorter page.
            limit = min(limit, reservation.units * ROWS_PER_UNIT)
        try:
            page = rows_fetch(data_file, query, limit=limit)
        except (duckdb.Error, OSError):
            quota_settle(reservation=reservation, units_used=0)
            log.exception("Data API: reading file %s failed", data_file.pk)
            return refuse(500, "read_failed", "The file could not be read; the exchange has been told.")
        units = units_for(entitlement, rows=len(page.rows))
        quota_settle(reservation=reservation, units_used=units)

        next_url = None
        if page.has_more:
            params = request.query_params.copy()
            params["cursor"] = query.cursor_for(query.offset + len(page.rows))
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        chunks = render_chunks(query.fmt, page.columns, page.rows, next_url=next_url)
        size = sum(len(chunk) for chunk in chunks)
        if query.fmt == "json":
            response = HttpResponse(b"".join(chunks), content_type=CONTENT_TYPES["json"])
        else:
            response = StreamingHttpResponse(iter(chunks), content_type=CONTENT_TYPES[query.fmt])
            if next_url:
                response["Link"] = f'<{next_url}>; rel="next"'
        response["Content-Length"] = str(size)
        response["X-Row-Count"] = str(len(page.rows))
        record(200, rows=len(page.rows), size=size, units=units)
        delivery = delivery_to_confirm(entitlement=entitlement, version_pk=data_file.version_id)
        if delivery is not None:
            # Withdrawn or failed meanwhile (a refund racing this call): the rows were read, nothing to confirm.
            with contextlib.suppress(DeliveryTransitionError):
                delivery_confirm(delivery_pk=delivery.pk, reason="first data API call", by="api_call")

        return response


def _json_response(body: dict, status_code: int, headers: dict) -> HttpResponse:
    response = HttpResponse(json.dumps(body), content_type="application/json", status=status_code)
    for name, value in headers.items():
        response[name] = value
    return response


# --- API keys -----------------------------------------------------------------------


def key_as_dict(key: ApiKey) -> dict:
    return {
        "prefix": key.prefix,
        "name": key.name,
        "scopes": key.scopes,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "active": api_key_is_active(key),
    }


class KeyCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=80)
    scopes = serializers.ListField(child=serializers.CharField(max_length=20), allow_empty=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class KeysView(DataApiView):
    """``GET``: the caller's API keys (prefix, name, scopes, times; never a secret).
    ``POST {"name", "scopes": [...], "expires_at"?}``: a new key, answered once with its ``key``.
    A key may only create keys within its own scopes."""

    permission_classes = []  # authentication is checked below: any of the user's keys, or the session

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()

    @extend_schema(operation_id="data_keys_list", responses={200: KeyListSerializer, **errors()})
    def get(self, request):
        keys = ApiKey.objects.filter(user=request.user).order_by("-created_at", "-pk")
        return Response({"results": [key_as_dict(key) for key in keys]})

    @extend_schema(
        operation_id="data_keys_create",
        request=KeyCreateInput,
        responses={201: KeyCreatedSerializer, **errors(400)},
    )
    def post(self, request):
        data = KeyCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            key, raw_key = api_key_create(
                user=request.user,
                name=data.validated_data["name"],
                scopes=data.validated_data["scopes"],
                expires_at=data.validated_data.get("expires_at"),
                within_scopes=list(request_scopes(request)) if _api_key(request) else None,
            )
        except ValidationError as exc:
            return Response(error_body(exc.code or "invalid", exc.messages[0]), status=400)
        return Response({**key_as_dict(key), "key": raw_key}, status=status.HTTP_201_CREATED)


class KeyRevokeView(KeysView):
    """``POST /keys/<prefix>/revoke/``: revoke one of the caller's keys (404 for anyone else's)."""

    @extend_schema(exclude=True)
    def get(self, request, prefix):
        raise exceptions.MethodNotAllowed("GET")

    @extend_schema(operation_id="data_keys_revoke", request=None, responses={200: KeySerializer, **errors(404)})
    def post(self, request, prefix):
        try:
            key = api_key_revoke(user=request.user, prefix=prefix)
        except ApiKey.DoesNotExist:
            return Response(error_body("not_found", "No such API key."), status=404)
        return Response(key_as_dict(key))


class UsageView(DataApiView):
    """``GET /api/v1/data/usage/``: the caller's usage per entitlement, this month and earlier months."""

    permission_classes = [HasScope("read", "data")]

    @extend_schema(operation_id="data_usage", responses={200: UsageListSerializer, **errors(403)})
    def get(self, request):
        return Response({"results": [item.as_dict() for item in buyer_usage(user=request.user)]})
