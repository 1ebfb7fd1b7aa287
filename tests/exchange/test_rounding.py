"""One rounding rule: common.money.mul_div_half_up gives exactly what the three roundings it replaced gave.

The old expressions are copied here verbatim as the reference: share_of and
percentage_of in common/money.py, and the fee a refund gives back after
settlement (refunds._half_up over fee * returned / gross, whose numerator can
be negative in principle, so negatives are compared too).
"""

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.money import MoneyError, mul_div_half_up, percentage_of, share_of

BIG = 10**18  # beyond any amount the ledger holds (PositiveBigIntegerField tops out at 9.2e18)


def old_share_of(amount: int, part: int, whole: int) -> int:
    return int((Decimal(amount) * part / whole).to_integral_value(rounding=ROUND_HALF_UP))


def old_percentage_of(amount: int, basis_points: int) -> int:
    return int((Decimal(amount) * basis_points / 10000).to_integral_value(rounding=ROUND_HALF_UP))


def old_refund_fee_back(fee: int, returned: int, gross: int) -> int:
    return int((Decimal(fee) * returned / gross).to_integral_value(rounding=ROUND_HALF_UP))


def test_halves_go_away_from_zero():
    assert [mul_div_half_up(n, 1, 2) for n in (1, 3, 5, -1, -3, -5)] == [1, 2, 3, -1, -2, -3]
    assert mul_div_half_up(1249, 1, 100) == 12  # 12.49 -> 12
    assert mul_div_half_up(1250, 1, 100) == 13  # 12.5 -> 13
    assert mul_div_half_up(-1250, 1, 100) == -13
    assert mul_div_half_up(0, 7, 3) == 0


def test_dividing_by_zero_is_refused():
    with pytest.raises(MoneyError):
        mul_div_half_up(100, 1, 0)


def test_exhaustive_small_values_match_the_old_roundings():
    for amount in range(0, 400):
        for bps in (0, 1, 5, 33, 50, 125, 250, 333, 500, 999, 1000, 1250, 3333, 5000, 9999, 10000):
            assert percentage_of(amount, bps) == old_percentage_of(amount, bps), (amount, bps)
        for whole in range(1, 40):
            for part in range(0, whole + 1):
                assert share_of(amount, part, whole) == old_share_of(amount, part, whole), (amount, part, whole)
    for fee in range(-60, 61):
        for gross in range(1, 30):
            for returned in range(-gross, gross + 1):
                expected = old_refund_fee_back(fee, returned, gross)
                assert mul_div_half_up(fee, returned, gross) == expected, (fee, returned, gross)


@given(amount=st.integers(0, BIG), basis_points=st.integers(0, 10000))
def test_percentage_of_matches_the_old_rounding(amount, basis_points):
    assert percentage_of(amount, basis_points) == old_percentage_of(amount, basis_points)


@given(data=st.data(), amount=st.integers(0, BIG), whole=st.integers(1, BIG))
def test_share_of_matches_the_old_rounding(data, amount, whole):
    part = data.draw(st.integers(0, whole))
    assert share_of(amount, part, whole) == old_share_of(amount, part, whole)


@given(fee=st.integers(-BIG, BIG), returned=st.integers(-BIG, BIG), gross=st.integers(1, BIG))
def test_refund_fee_share_matches_the_old_rounding(fee, returned, gross):
    assert mul_div_half_up(fee, returned, gross) == old_refund_fee_back(fee, returned, gross)
