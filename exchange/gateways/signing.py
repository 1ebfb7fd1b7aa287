"""Webhook signatures in Stripe's scheme, shared by every gateway we speak.

Header: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
Verification works on the raw request body, rejects timestamps outside the
tolerance (replays), and compares in constant time.
"""

import hashlib
import hmac
import time


class SignatureError(ValueError):
    pass


def sign_payload(*, body: bytes, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(*, body: bytes, header: str | None, secret: str, tolerance: int, now: float | None = None) -> None:
    """Raise SignatureError unless ``header`` is a valid, fresh signature of ``body``."""
    if not header:
        raise SignatureError("Missing signature header.")
    timestamp, signatures = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not timestamp.isdigit() or not signatures:
        raise SignatureError("Malformed signature header.")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance:
        raise SignatureError("Signature timestamp is outside the tolerance window.")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureError("Signature does not match the payload.")
