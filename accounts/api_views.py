"""The account API's keys (``/api/v1/account/keys/``): list by prefix, create (the key is shown once), revoke.

Any of the user's keys or the browser session may manage the user's keys; a key only creates keys within its
own scopes. Someone else's key is not found. Revocation is checked on every request, so a revoked key fails
on the very next one.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ErrorDetail, NotFound, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from accounts.api_serializers import ApiKeyCreatedSerializer, ApiKeyCreateSerializer, ApiKeySerializer
from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_revoke
from common.api import errors

# --- shared with the catalog and the exchange side of the account API -------------------------------------------------


def service_error(exc: DjangoValidationError, *, field_of_code: dict[str, str] | None = None) -> ValidationError:
    """A service's ValidationError as a 400 keyed by field, each message with its code.

    Errors the service keyed by field keep their field; the others go under the field ``field_of_code`` names
    for their code, else ``non_field_errors``. A message the service left without a code is ``invalid``.
    """
    if hasattr(exc, "error_dict"):
        by_field = exc.error_dict.items()
    else:
        by_field = [((field_of_code or {}).get(error.code, "non_field_errors"), [error]) for error in exc.error_list]
    detail: dict[str, list[ErrorDetail]] = {}
    for field, errs in by_field:
        for error in errs:
            detail.setdefault(field, []).extend(ErrorDetail(m, code=error.code or "invalid") for m in error.messages)
    return ValidationError(detail)


NO_STORE = {"Cache-Control": "no-store"}  # an answer carrying a secret is never cached anywhere


# --- keys -------------------------------------------------------------------------------------------------------------

_KEY_FIELDS = {
    "no_name": "name",
    "name_too_long": "name",
    "no_scope": "scopes",
    "unknown_scope": "scopes",
    "scope_not_held": "scopes",
    "expiry_in_past": "expires_at",
}


class _KeysView(generics.GenericAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = ApiKeySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return ApiKey.objects.none()
        return ApiKey.objects.filter(user=self.request.user)


class ApiKeyListCreateView(_KeysView):
    """The caller's API keys, newest first (prefix, name, scopes, times; never the key or its hash)."""

    @extend_schema(responses={200: ApiKeySerializer(many=True), **errors(404)})
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer, **errors(400, 403)},
        description=(
            "Create a key. The answer carries the key itself (`key`), once: only its prefix and a hash are stored. "
            "400 codes: `required`, `blank`, `max_length`, `not_a_list`, `no_scope`, `unknown_scope`, "
            "`scope_not_held` (a key creating a key beyond its own scopes), `expiry_in_past`, `too_many_keys`."
        ),
    )
    def post(self, request):
        given = ApiKeyCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        caller_key = request.auth if isinstance(request.auth, ApiKey) else None
        try:
            key, raw_key = api_key_create(
                user=request.user,
                name=given.validated_data["name"],
                scopes=given.validated_data["scopes"],
                expires_at=given.validated_data.get("expires_at"),
                within_scopes=list(caller_key.scopes) if caller_key else None,
            )
        except DjangoValidationError as exc:
            raise service_error(exc, field_of_code=_KEY_FIELDS) from None
        body = ApiKeyCreatedSerializer(key, context={"raw_key": raw_key}).data
        return Response(body, status=status.HTTP_201_CREATED, headers=NO_STORE)


class ApiKeyRevokeView(_KeysView):
    """Revoke one of the caller's keys: it fails from the very next request (revoking twice changes nothing)."""

    @extend_schema(request=None, responses={200: ApiKeySerializer, **errors(403, 404)})
    def post(self, request, prefix):
        try:
            key = api_key_revoke(user=request.user, prefix=prefix)
        except ApiKey.DoesNotExist:
            raise NotFound("No such API key.") from None
        return Response(self.get_serializer(key).data)
