"""What every endpoint of the REST API (``/api/v1/``) shares.

- **Errors** in one shape, ``{"error": {"code": "...", "message": "...", "fields": {...}?}}``, from every
  DRF exception (``api_exception_handler``, the project's EXCEPTION_HANDLER) and from views that answer
  an error themselves (``error_response``). ``code`` is machine-readable and stable; ``message`` is for
  people; ``fields`` maps each invalid input to its messages.
- **Authentication**: an API key (``Authorization: Api-Key <key>``, scopes per key) or the web session.
  Object endpoints answer 404, never 403, for objects the caller may not see.
- **Pagination**: cursor pagination on every list (``?cursor=``, ``?page_size=`` up to 200): no
  unbounded response, stable under inserts.
- **Throttling**: per API key, else per user, else per address (DRF throttles on the shared cache);
  endpoints that move money also take ``MoneyRateLimit``, an atomic check-and-increment in Redis.
- **Schema**: drf-spectacular; ``ERRORS`` gives the error responses to declare with ``extend_schema``.
"""

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.throttling import SimpleRateThrottle

# --- errors -------------------------------------------------------------------------------------------------------


def error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status: int, code: str, message: str, *, headers: dict | None = None, **extra) -> JsonResponse:
    """An error answered by a view itself, in the API's one shape."""
    response = JsonResponse(error_body(code, message, **extra), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ParseError: "parse_error",
}


def _code(exc: exceptions.APIException) -> str:
    for kind, code in _CODES.items():
        if isinstance(exc, kind):
            return code
    detail = exc.detail
    if isinstance(detail, exceptions.ErrorDetail) and detail.code and detail.code not in {"invalid", "error"}:
        return str(detail.code)
    return str(getattr(exc, "default_code", "error"))


class Conflict(exceptions.APIException):
    """409: the object is not in a state that allows this (the code says which state)."""

    status_code = 409
    default_detail = "The object is not in a state that allows this."
    default_code = "conflict"


def first_code(detail) -> str | None:
    """The code of the first error in a DRF error detail (nested dicts and lists, in order)."""
    if isinstance(detail, exceptions.ErrorDetail):
        return detail.code
    values = detail.values() if isinstance(detail, dict) else detail if isinstance(detail, list) else ()
    for value in values:
        code = first_code(value)
        if code:
            return code
    return None


def api_exception_handler(exc, context):
    """DRF's handler (404 for Http404, 403 for PermissionDenied...), every answer in the one error shape.

    A ValidationError keyed by field answers the first field error's own code (``required``,
    ``unknown_scope``...; ``invalid`` when it has none), the message "The request is not valid." and
    ``fields`` naming every problem; a single error answers its own code and message.
    """
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    # Imported here: DRF's views module reads the settings' throttle classes, which live in this module.
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        first = exc.detail[0] if isinstance(exc.detail, list) and exc.detail else None
        code = first_code(exc.detail) or "invalid"
        message = str(first) if first is not None else "The request is not valid."
        response.data = error_body(code, message, fields=fields)
    else:
        detail = exc.detail
        message = detail.get("detail", str(exc)) if isinstance(detail, dict) else str(detail)
        response.data = error_body(_code(exc), str(message))
    return response


def ErrorSerializer(name: str = "Error"):
    """The schema of the error shape (for ``extend_schema(responses=...)``)."""
    return inline_serializer(
        name=name,
        fields={
            "error": inline_serializer(
                name=f"{name}Detail",
                fields={
                    "code": serializers.CharField(),
                    "message": serializers.CharField(),
                    "fields": serializers.DictField(required=False),
                },
            )
        },
    )


_ERROR = ErrorSerializer()
ERRORS = {
    400: OpenApiResponse(_ERROR, description="Invalid input: `fields` names each problem."),
    401: OpenApiResponse(_ERROR, description="No credentials, or an invalid, revoked or expired API key."),
    403: OpenApiResponse(_ERROR, description="The API key lacks the scope this needs."),
    404: OpenApiResponse(_ERROR, description="No such object, or not one the caller may see."),
    409: OpenApiResponse(_ERROR, description="The object is not in a state that allows this."),
    429: OpenApiResponse(_ERROR, description="Too many requests: retry after `Retry-After` seconds."),
}


def errors(*statuses: int) -> dict:
    """The declared error responses for ``statuses`` (401 and 429 are added: every endpoint can answer them)."""
    return {status: ERRORS[status] for status in sorted({*statuses, 401, 429})}


def not_found_handler(request, exception=None):
    """The project's handler404: JSON in the API's shape under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return error_response(404, "not_found", "No such resource.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


# --- pagination ---------------------------------------------------------------------------------------------------


class ApiCursorPagination(CursorPagination):
    """Newest first by primary key; ``page_size`` up to 200."""

    ordering = "-pk"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


# --- throttling ---------------------------------------------------------------------------------------------------


class KeyOrUserRateThrottle(SimpleRateThrottle):
    """``API_RATE_PER_KEY`` requests per key (else per user, else per address) on the shared cache."""

    scope = "api"

    def get_rate(self):
        return settings.API_RATE

    def get_cache_key(self, request, view):
        from accounts.models import ApiKey

        if isinstance(request.auth, ApiKey):
            ident = f"key:{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return f"throttle:{self.scope}:{ident}"


class MoneyRateLimit:
    """A permission for endpoints that move money: an atomic Redis check-and-increment per key or user.

    Over ``API_MONEY_RATE`` calls a minute the answer is 429 with an exact ``Retry-After`` (the seconds left
    in the window), counted by the same Lua limiter as the data API.
    """

    message = "Too many purchase requests: slow down."

    def has_permission(self, request, view):
        from accounts.models import ApiKey
        from exchange.services.usage import QuotaExceeded, rate_limit_take

        subject = (
            f"money:key:{request.auth.pk}" if isinstance(request.auth, ApiKey) else f"money:user:{request.user.pk}"
        )
        try:
            rate_limit_take(subject=subject, limit=settings.API_MONEY_RATE_PER_MINUTE)
        except QuotaExceeded as exc:
            raise exceptions.Throttled(wait=exc.retry_after, detail=self.message) from None
        return True

    def has_object_permission(self, request, view, obj):
        return True


# --- schema: the API key scheme -------------------------------------------------------------------------------------


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <your key>` (shown once when created under *API keys*).",
        }
