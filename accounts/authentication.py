"""DRF authentication by API key, and the per-scope permission.

Clients send ``Authorization: Api-Key dx_<prefix>.<secret>`` (``Bearer`` is
accepted too). ``request.auth`` is then the ApiKey; a signed-in browser
session (``request.auth`` None) acts with every scope, as the user would in
the web UI.
"""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from accounts.models import ApiKey
from accounts.services import SCOPES, api_key_authenticate

_KEYWORDS = (b"api-key", b"bearer")


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Api-Key <key>`` or ``Bearer <key>``; no such header: not this scheme (None).

    A header of this scheme with a key that is malformed, unknown, revoked or
    expired fails with 401; the message never echoes the key.
    """

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in _KEYWORDS:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: send 'Api-Key <your key>'.")
        try:
            raw_key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.") from None
        key = api_key_authenticate(raw_key=raw_key)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        return key.user, key

    def authenticate_header(self, request):
        # Makes DRF answer 401 (with this challenge) rather than 403 to unauthenticated requests.
        return 'Api-Key realm="api"'


def request_scopes(request) -> tuple[str, ...]:
    """The scopes the request acts with: its key's, or all of them for a session."""
    if isinstance(request.auth, ApiKey):
        return tuple(request.auth.scopes)
    return SCOPES if request.user and request.user.is_authenticated else ()


class HasScope(BasePermission):
    """``permission_classes = [HasScope("data")]``: authenticated, and the key (if any) holds one of the scopes.

    DRF instantiates each entry of ``permission_classes``; calling an instance
    returns it, so a configured instance can stand in the list.
    """

    def __init__(self, *scopes: str):
        if not scopes or set(scopes) - set(SCOPES):
            raise ValueError(f"Unknown scopes {scopes!r}")
        self.scopes = scopes
        self.message = f"This API key lacks the scope this needs: {' or '.join(scopes)}."

    def __call__(self):
        return self

    def has_permission(self, request, view):
        # Unauthenticated requests get DRF's 401 (NotAuthenticated), not this message.
        return bool(request.user and request.user.is_authenticated) and any(
            scope in request_scopes(request) for scope in self.scopes
        )
