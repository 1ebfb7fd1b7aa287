"""Money as integer minor units plus an ISO 4217 currency code (DESIGN.md §5.4).

Rounding happens in exactly one place, :func:`mul_div_half_up`: every share the
exchange computes (a percentage fee, :func:`percentage_of`; a share in
proportion, :func:`share_of`; the fee a refund gives back) is
``amount * numerator / denominator`` rounded half up, i.e. to the nearest
minor unit with exact halves going away from zero (2.5 -> 3, -2.5 -> -3).
On the non-negative amounts the exchange charges, half a minor unit goes to
the platform.
"""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Minor-unit exponent per supported currency (ISO 4217).
CURRENCY_EXPONENT = {"CNY": 2, "USD": 2, "EUR": 2}
CURRENCY_CHOICES = [(code, code) for code in CURRENCY_EXPONENT]
CURRENCY_SYMBOL = {"CNY": "¥", "USD": "$", "EUR": "€"}


class MoneyError(ValueError):
    pass


def to_minor(amount: str | Decimal, currency: str) -> int:
    """Convert a major-unit amount ("12.50") to minor units (1250).

    Raises MoneyError for unknown currencies, non-numbers, negatives and
    amounts with more decimals than the currency has.
    """
    if currency not in CURRENCY_EXPONENT:
        raise MoneyError(f"Unsupported currency {currency!r}.")
    try:
        value = Decimal(str(amount).strip())
    except (InvalidOperation, ValueError):
        raise MoneyError(f"{amount!r} is not an amount.") from None
    if not value.is_finite() or value < 0:
        raise MoneyError("An amount must be a positive number.")
    scaled = value.scaleb(CURRENCY_EXPONENT[currency])
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{currency} has at most {CURRENCY_EXPONENT[currency]} decimals.")
    return int(scaled)


def format_minor(amount: int, currency: str) -> str:
    """Human form of a minor-unit amount: ``format_minor(1250, "CNY") == "¥12.50 CNY"``."""
    exponent = CURRENCY_EXPONENT.get(currency, 2)
    major = Decimal(abs(amount)).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))
    sign = "-" if amount < 0 else ""  # the sign before the symbol: "-¥11.11 CNY"
    return f"{sign}{CURRENCY_SYMBOL.get(currency, '')}{major:,} {currency}"


def mul_div_half_up(amount: int, numerator: int, denominator: int) -> int:
    """``amount * numerator / denominator`` rounded to a whole minor unit, halves away from zero.

    The exchange's one rounding rule (Decimal's ROUND_HALF_UP): 12.5 -> 13,
    12.4999 -> 12, -12.5 -> -13. The product is exact; the quotient is taken
    at Decimal's default 28 significant digits before it is rounded to a whole
    unit, the arithmetic every caller used before this function existed, so
    their results are unchanged. Raises MoneyError when ``denominator`` is zero.
    """
    if denominator == 0:
        raise MoneyError("mul_div_half_up cannot divide by zero")
    return int((Decimal(amount) * numerator / denominator).to_integral_value(rounding=ROUND_HALF_UP))


def share_of(amount: int, part: int, whole: int) -> int:
    """``amount * part / whole`` in minor units, rounded half up: the share of ``amount`` that ``part`` of ``whole`` is.

    Used where a flat amount is split in proportion (the buyer service fee
    kept on a partly refunded order); like ``percentage_of``, half a minor unit
    goes to the platform (:func:`mul_div_half_up`).
    """
    if amount < 0 or whole <= 0 or not 0 <= part <= whole:
        raise MoneyError("share_of takes a non-negative amount and 0 <= part <= whole, whole > 0")
    return mul_div_half_up(amount, part, whole)


def percentage_of(amount: int, basis_points: int) -> int:
    """``amount * basis_points / 10000`` in minor units, rounded half up (:func:`mul_div_half_up`).

    Half-up on the non-negative amounts we charge means a fee of exactly half a
    minor unit goes to the platform; the merchant's share is always the
    remainder (amount - fee), so the two always add up to the amount.
    """
    if amount < 0 or not 0 <= basis_points <= 10000:
        raise MoneyError("percentage_of takes a non-negative amount and 0..10000 basis points")
    return mul_div_half_up(amount, basis_points, 10000)
