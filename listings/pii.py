"""Detection of personal information in a column's sample values.

Pure functions, no I/O: profiling hands over up to a few hundred sampled
values of one column and gets back the kinds of personal information the
column holds. The checks favour precision over recall: resident IDs must carry
a valid ISO 7064 MOD 11-2 check character and a real birth date, bank cards a
valid Luhn digit, so that a column of order numbers is not branded personal
data. A column is flagged for a kind when at least 30 % of its non-empty
sampled values (and at least one) are of that kind.
"""

import datetime
import ipaddress
import re
from collections.abc import Iterable

# The flags, in the order they are reported.
EMAIL = "email"
PHONE = "phone"
CN_RESIDENT_ID = "cn_resident_id"
BANK_CARD = "bank_card"
IP_ADDRESS = "ip_address"
FLAGS = (EMAIL, PHONE, CN_RESIDENT_ID, BANK_CARD, IP_ADDRESS)

# A column is flagged when matches / non-empty values >= 3 / 10. Kept as an
# integer ratio so the comparison is exact (0.3 * 10 is not 3.0 in floats).
MIN_SHARE_NUMERATOR = 3
MIN_SHARE_DENOMINATOR = 10
# Longer strings are not any of the kinds (an e-mail address is at most 254).
MAX_VALUE_CHARS = 320

_EMAIL_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
# Separators people type inside phone and card numbers.
_PHONE_SEPARATORS_RE = re.compile(r"[\s().-]")
_CARD_SEPARATORS_RE = re.compile(r"[\s-]")
_CN_MOBILE_RE = re.compile(r"(?:(?:\+|00)86)?1[3-9]\d{9}")
# E.164: a "+", a country code not starting with 0, at most 15 digits in all.
_E164_RE = re.compile(r"\+[1-9]\d{6,14}")
_RESIDENT_ID_RE = re.compile(r"\d{17}[\dX]")
_DIGITS_RE = re.compile(r"\d+")

# GB/T 2260 province-level codes (the first two digits of a resident ID).
_CN_PROVINCE_CODES = frozenset(
    {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46}
    | {50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83, 91}
)
# ISO 7064 MOD 11-2 as GB 11643 applies it: weights 2^(17-i) mod 11, and the
# check character for each remainder of the weighted sum.
_RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_ID_CHECK_CHARS = "10X98765432"
_EARLIEST_BIRTH_YEAR = 1900


def is_email(value: str) -> bool:
    value = value.strip()
    return len(value) <= 254 and _EMAIL_RE.fullmatch(value) is not None


def is_phone(value: str) -> bool:
    """A mainland-China mobile (``1[3-9]`` and nine digits, optionally +86) or an E.164 number."""
    compact = _PHONE_SEPARATORS_RE.sub("", value)
    return _CN_MOBILE_RE.fullmatch(compact) is not None or _E164_RE.fullmatch(compact) is not None


def cn_resident_id_check_char(first17: str) -> str:
    """The check character (``0``-``9`` or ``X``) for the first 17 digits of a resident ID."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _RESIDENT_ID_WEIGHTS, strict=True))
    return _RESIDENT_ID_CHECK_CHARS[total % 11]


def is_cn_resident_id(value: str, *, today: datetime.date | None = None) -> bool:
    """An 18-character resident ID: known province, a real birth date, a valid check character."""
    value = value.strip().upper()
    if _RESIDENT_ID_RE.fullmatch(value) is None:
        return False
    if int(value[:2]) not in _CN_PROVINCE_CODES:
        return False
    try:
        birth = datetime.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if birth.year < _EARLIEST_BIRTH_YEAR or birth > (today or datetime.date.today()):
        return False
    return cn_resident_id_check_char(value[:17]) == value[17]


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of digits, check digit last."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def is_bank_card(value: str) -> bool:
    """13 to 19 digits (spaces and dashes ignored) with a valid Luhn check digit.

    A leading 0 is no card issuer's, and a run of one repeated digit (which
    passes Luhn for 0s) is a placeholder, not a card.
    """
    digits = _CARD_SEPARATORS_RE.sub("", value)
    if not (13 <= len(digits) <= 19 and _DIGITS_RE.fullmatch(digits)):
        return False
    if digits[0] == "0" or len(set(digits)) == 1:
        return False
    return luhn_valid(digits)


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        return False
    return True


_CHECKS = (
    (EMAIL, is_email),
    (PHONE, is_phone),
    (CN_RESIDENT_ID, is_cn_resident_id),
    (BANK_CARD, is_bank_card),
    (IP_ADDRESS, is_ip_address),
)


def pii_flags(values: Iterable[object]) -> list[str]:
    """The PII kinds a column holds, judged from its sampled values.

    ``None`` and blank values are ignored; other values are judged by their
    string form (an integer column can hold phone or card numbers). Returns
    the flags in the order of ``FLAGS``, each present when at least 30 % of
    the non-empty values, and at least one, match it.
    """
    counts = dict.fromkeys(FLAGS, 0)
    total = 0
    for raw in values:
        if raw is None:
            continue
        value = str(raw).strip()
        if not value:
            continue
        total += 1
        if len(value) > MAX_VALUE_CHARS:
            continue
        for flag, check in _CHECKS:
            if check(value):
                counts[flag] += 1
    return [
        flag
        for flag in FLAGS
        if counts[flag] >= 1 and counts[flag] * MIN_SHARE_DENOMINATOR >= total * MIN_SHARE_NUMERATOR
    ]
