"""Recording sensitive actions (issue 9)."""

from audit import context
from audit.models import AuditAction, AuditEvent

# Keys whose values are never written to the log, whatever a caller passes by mistake.
_SECRET_WORDS = ("secret", "password", "raw_key", "token", "card", "iban", "account_number", "routing")


def _actor_from_request():
    ctx = context.current()
    user = getattr(getattr(ctx, "request", None), "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    return None


def audit_record(*, action: str, actor=None, ip: str | None = None, obj=None, **details) -> AuditEvent:
    """Record one sensitive action, in the caller's transaction (it rolls back with the action it records).

    ``actor`` defaults to the signed-in user of the request being served, and ``ip`` to its address
    (audit.middleware); outside a request both stay empty (the system acted). ``obj`` is the model
    instance acted on. ``details`` must be JSON-serialisable; keys that name secrets are refused with
    ValueError, so a secret can never reach the log by accident.
    """
    if action not in AuditAction.values:
        raise ValueError(f"Unknown audit action {action!r}")
    leaked = sorted(key for key in details if any(word in key.lower() for word in _SECRET_WORDS))
    if leaked:
        raise ValueError(f"Audit details must not hold secrets: {', '.join(leaked)}")
    ctx = context.current()
    if actor is None:
        actor = _actor_from_request()
    if ip is None and ctx is not None:
        ip = ctx.ip
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None  # AnonymousUser
    return AuditEvent.objects.create(
        action=action,
        actor=actor,
        ip=ip,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        details=details,
    )
