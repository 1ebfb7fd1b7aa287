"""Typed access to environment variables that fails loudly on bad values.

Settings come from the environment (DESIGN.md §5.8). A value that is present but
malformed raises ImproperlyConfigured naming the variable, instead of being
silently replaced by a default.
"""

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    """NAME's value; or, when NAME_FILE is set instead, that file's content (stripped), for secrets kept in files.

    Setting both is refused, and so is a file that cannot be read; the message names the variable and the
    path but never the value, so nothing secret reaches a log.
    """
    file_var = f"{name}_FILE"
    path = os.environ.get(file_var)
    if path is None:
        return os.environ.get(name, default)
    if name in os.environ:
        raise ImproperlyConfigured(f"Set {name} or {file_var}, not both")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ImproperlyConfigured(f"{file_var} names a file that cannot be read ({path!r}: {reason})") from None


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be <= {maximum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_money_map(name: str) -> dict[str, int]:
    """``CNY:2.00,USD:0.30`` (major units per currency) as minor units by currency; empty or unset is ``{}``."""
    from common.money import MoneyError, to_minor

    raw = (os.environ.get(name) or "").strip()
    amounts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        currency, sep, amount = item.partition(":")
        currency = currency.strip().upper()
        if not sep or currency in amounts:
            raise ImproperlyConfigured(f"{name} must look like CNY:2.00,USD:0.30 (each currency once), got {raw!r}")
        try:
            amounts[currency] = to_minor(amount, currency)
        except MoneyError as exc:
            raise ImproperlyConfigured(f"{name}: {currency}: {exc}") from None
    return amounts


def env_choice(name: str, default: str, choices: set[str]) -> str:
    value = os.environ.get(name, default).strip()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value
