"""API keys: create, revoke, authenticate.

A key reads ``dx_<prefix>.<secret>``: the prefix (8 base32 characters) names
the key in lists and finds its row; the secret is 32 random bytes from
``secrets``. Only the prefix and a SHA-256 of the whole key are stored. The
keys are high-entropy, so a fast hash is the right one (a slow password hash
would protect nothing and cost every request); the stored hash is compared in
constant time. A key is shown once, at creation, and cannot be retrieved later.

Revocation and expiry are checked against the database on every request (no
cache of a key's validity), so they take effect on the very next request.
"""

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiKey, User
from audit.services import audit_record

KEY_PREFIX = "dx_"
SCOPES = ("read", "trade", "data", "merchant")
SCOPE_LABELS = {
    "read": "read — the catalog and your own records",
    "trade": "trade — buy and manage orders",
    "data": "data — read the rows of purchased data",
    "merchant": "merchant — manage your merchant's products",
}
# last_used_at is written at most this often per key, so a busy key costs no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_PREFIX_BYTES = 5  # 40 bits: 8 base32 characters
_SECRET_BYTES = 32


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_keys_active_q(*, now: datetime | None = None) -> Q:
    """Keys that authenticate now: not revoked and not past their expiry."""
    now = now or timezone.now()
    return Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def api_key_is_active(key: ApiKey, *, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


def scopes_validate(scopes, *, allowed: list[str] | None = None) -> list[str]:
    """Return ``scopes`` in canonical order, or raise ValidationError (code ``unknown_scope``,
    ``no_scope`` or ``scope_not_held``). ``allowed``: the creating key's scopes, which a new key may not exceed."""
    if isinstance(scopes, str) or not isinstance(scopes, list | tuple) or not scopes:
        raise ValidationError("Choose at least one scope.", code="no_scope")
    unknown = sorted({str(s) for s in scopes} - set(SCOPES))
    if unknown:
        raise ValidationError(
            f"Unknown scope(s): {', '.join(unknown)}. Scopes are: {', '.join(SCOPES)}.", code="unknown_scope"
        )
    if allowed is not None:
        extra = sorted(set(scopes) - set(allowed))
        if extra:
            raise ValidationError(
                f"A key can only create keys within its own scopes; this key lacks: {', '.join(extra)}.",
                code="scope_not_held",
            )
    return [s for s in SCOPES if s in scopes]


def _new_prefix() -> str:
    return base64.b32encode(secrets.token_bytes(_PREFIX_BYTES)).decode().lower()


def api_key_create(
    *,
    user: User,
    name: str,
    scopes,
    expires_at: datetime | None = None,
    within_scopes: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``user``; return ``(key, raw_key)``. ``raw_key`` is never stored: show it once.

    Raises ValidationError (nothing created) for a blank or over-long name, an
    unknown or missing scope, scopes beyond ``within_scopes`` (when a key makes
    a key), an expiry not in the future, or when the user already holds
    ``settings.API_KEYS_MAX_ACTIVE`` active keys.
    """
    name = (name or "").strip()
    if not name:
        raise ValidationError("Give the key a name.", code="no_name")
    if len(name) > ApiKey._meta.get_field("name").max_length:
        raise ValidationError("The key's name is too long (80 characters at most).", code="name_too_long")
    scopes = scopes_validate(scopes, allowed=within_scopes)
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise ValidationError("The expiry must be in the future.", code="expiry_in_past")
    with transaction.atomic():
        # The user's row lock serialises concurrent creations, so the limit holds.
        User.objects.select_for_update().filter(pk=user.pk).first()
        active = ApiKey.objects.filter(api_keys_active_q(now=now), user=user).count()
        if active >= settings.API_KEYS_MAX_ACTIVE:
            raise ValidationError(
                f"You already have {active} active API keys, the most allowed; revoke one first.",
                code="too_many_keys",
            )
        for _ in range(5):  # a prefix collision is a 1-in-2^40 event; retrying is enough
            prefix = _new_prefix()
            raw_key = f"{KEY_PREFIX}{prefix}.{secrets.token_urlsafe(_SECRET_BYTES)}"
            try:
                with transaction.atomic():
                    key = ApiKey.objects.create(
                        user=user,
                        name=name,
                        prefix=prefix,
                        hashed_key=api_key_hash(raw_key),
                        scopes=scopes,
                        expires_at=expires_at,
                    )
            except IntegrityError:
                continue
            audit_record(
                action="api_key_created",
                obj=key,
                target_user=user.pk,
                prefix=prefix,
                scopes=scopes,
                expires_at=expires_at.isoformat() if expires_at else None,
            )
            return key, raw_key
    raise RuntimeError("Could not find a free API key prefix.")


def api_key_revoke(*, user: User, prefix: str) -> ApiKey:
    """Revoke one of ``user``'s keys (idempotent: a revoked key keeps its first revocation time).

    Raises ApiKey.DoesNotExist when ``user`` holds no key with that prefix.
    """
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().get(user=user, prefix=prefix)
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
            audit_record(action="api_key_revoked", obj=key, target_user=user.pk, prefix=key.prefix)
    return key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key ``raw_key`` is, with its user loaded; None for anything else.

    Checks the format, finds the row by prefix, compares the SHA-256 in
    constant time, then revocation, expiry and the user's ``is_active``.
    """
    if not raw_key.startswith(KEY_PREFIX) or "." not in raw_key or len(raw_key) > 200:
        return None
    prefix = raw_key[len(KEY_PREFIX) :].split(".", 1)[0]
    if not prefix or len(prefix) > 16:
        return None
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if key is None or not hmac.compare_digest(key.hashed_key, api_key_hash(raw_key)):
        return None
    now = timezone.now()
    if not api_key_is_active(key, now=now) or not key.user.is_active:
        return None
    if key.last_used_at is None or key.last_used_at <= now - LAST_USED_RESOLUTION:
        # Conditional, so concurrent requests in the same minute write once between them.
        ApiKey.objects.filter(pk=key.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
        key.last_used_at = now
    return key
