"""The exchange's Ed25519 signing key for transaction certificates.

The private key lives in a PEM file (PKCS#8, unencrypted) named by
``settings.EXCHANGE_SIGNING_KEY_FILE``. Outside production a missing file is
generated on first use with mode 0600, like ``var/secret_key``; in production
a missing or unreadable file raises ImproperlyConfigured instead, because a
silently new key would make every certificate issued before it unverifiable.

The key is loaded once per process (per file path, so tests may point the
setting elsewhere). ``key_id`` is the first 16 hex characters of the sha256 of
the raw 32-byte public key: short enough to print, long enough to tell keys apart.

Rotation: certificates name the key that signed them (``key_id``). After a new
key replaces the old one, the old public key, listed in
``settings.EXCHANGE_SIGNING_RETIRED_KEYS``, still verifies what it signed
(``verification_keys``); only the current key signs.
"""

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    public_key_pem: str
    key_id: str
    path: Path


_lock = threading.Lock()
_loaded: dict[Path, SigningKey] = {}


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex characters of sha256(raw public key bytes)."""
    raw = public_key.public_bytes(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _public_pem(public_key: Ed25519PublicKey) -> str:
    """The SubjectPublicKeyInfo PEM that /verify/public-key.pem serves."""
    return public_key.public_bytes(
        encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _generate(path: Path) -> None:
    """Write a new key to ``path`` with mode 0600; if another process won the race, keep its key."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting together must not both write (the second would replace
    # the key the first may already have signed with). The mode is set at creation, so the
    # key is never readable by others, not even for an instant.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)  # the umask may have masked bits off os.open's mode, never added any


def _load(path: Path) -> SigningKey:
    if not path.exists():
        if settings.DEPLOY_ENV == "production":
            raise ImproperlyConfigured(
                f"EXCHANGE_SIGNING_KEY_FILE {path} does not exist; in production the certificate signing key "
                "must be provided (a new key would make earlier certificates unverifiable)."
            )
        _generate(path)
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"EXCHANGE_SIGNING_KEY_FILE {path} is not a readable PEM private key: {exc}"
        ) from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ImproperlyConfigured(
            f"EXCHANGE_SIGNING_KEY_FILE {path} holds a {type(private_key).__name__}, not Ed25519"
        )
    public_key = private_key.public_key()
    return SigningKey(private_key, public_key, _public_pem(public_key), key_id_for(public_key), path)


def signing_key() -> SigningKey:
    """The configured key, loaded (or, outside production, generated) on first use in this process."""
    path = Path(settings.EXCHANGE_SIGNING_KEY_FILE).resolve()
    key = _loaded.get(path)
    if key is None:
        with _lock:
            key = _loaded.get(path)
            if key is None:
                key = _loaded[path] = _load(path)
    return key


@dataclass(frozen=True)
class VerificationKey:
    key_id: str
    public_key: Ed25519PublicKey
    public_key_pem: str
    retired: bool


_retired: dict[Path, VerificationKey] = {}


def _load_retired(path: Path) -> VerificationKey:
    try:
        public_key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"EXCHANGE_SIGNING_RETIRED_KEYS: {path} is not a readable PEM public key: {exc}"
        ) from exc
    if not isinstance(public_key, Ed25519PublicKey):
        raise ImproperlyConfigured(
            f"EXCHANGE_SIGNING_RETIRED_KEYS: {path} holds a {type(public_key).__name__}, not an Ed25519 public key"
        )
    return VerificationKey(key_id_for(public_key), public_key, _public_pem(public_key), retired=True)


def verification_keys() -> dict[str, VerificationKey]:
    """Every key a certificate of this exchange can be signed with, by key id: the current one and the retired ones.

    The current key wins when a retired file holds the same key. Raises
    ImproperlyConfigured, naming the file, for a retired key that is not an
    Ed25519 public key in PEM.
    """
    keys = {}
    for path in settings.EXCHANGE_SIGNING_RETIRED_KEYS:
        path = Path(path).resolve()
        key = _retired.get(path)
        if key is None:
            with _lock:
                key = _retired.setdefault(path, _load_retired(path))
        keys[key.key_id] = key
    current = signing_key()
    keys[current.key_id] = VerificationKey(current.key_id, current.public_key, current.public_key_pem, retired=False)
    return keys
