import datetime

import pytest

from listings.pii import (
    cn_resident_id_check_char,
    is_bank_card,
    is_cn_resident_id,
    is_email,
    is_ip_address,
    is_phone,
    luhn_valid,
    pii_flags,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice@example.com", True),
        ("first.last+tag@mail.example.com.cn", True),
        ("  bob@example.org ", True),
        ("alice@localhost", False),
        ("alice.example.com", False),
        ("@example.com", False),
        ("alice@@example.com", False),
        ("alice@exa mple.com", False),
    ],
)
def test_email(value, expected):
    assert is_email(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("13812345678", True),
        ("+8613812345678", True),
        ("+86 139-1234-5678", True),
        ("008619912345678", True),
        ("+14155552671", True),
        ("+44 (20) 7946 0958", True),
        ("12812345678", False),  # 1 then 2: not a mobile prefix
        ("1381234567", False),  # ten digits
        ("138123456789", False),  # twelve digits
        ("4155552671", False),  # national number without a country code
        ("+0123456789", False),
        ("+1234567890123456", False),  # sixteen digits: longer than E.164 allows
        ("2024-01-01", False),
    ],
)
def test_phone(value, expected):
    assert is_phone(value) is expected


def test_resident_id_check_character_follows_iso_7064_mod_11_2():
    assert cn_resident_id_check_char("11010519491231002") == "X"
    assert cn_resident_id_check_char("44030419900101001") == "1"
    assert cn_resident_id_check_char("31011519920308461") == "6"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("11010519491231002X", True),
        ("11010519491231002x", True),  # lower-case check character
        ("440304199001010011", True),
        ("310115199203084616", True),
        ("110105194912310021", False),  # wrong check digit (should be X)
        ("440304199001010012", False),  # wrong check digit
        ("110105194902300020", False),  # valid check digit, 30 February
        ("990105194912310023", False),  # valid check digit, no province 99
        ("110105189912310023", False),  # valid check digit, born 1899
        ("110105300012310020", False),  # valid check digit, born in 3000
        ("11010519491231002", False),  # seventeen characters
        ("1101051949123100XX", False),
    ],
)
def test_cn_resident_id(value, expected):
    assert is_cn_resident_id(value, today=datetime.date(2025, 6, 1)) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4111111111111111", True),
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1111", True),
        ("6228480012345678903", True),  # 19 digits
        ("401288888888183", True),  # 15 digits
        ("4111111111111112", False),  # Luhn fails
        ("6228480012345678904", False),  # Luhn fails
        ("411111111111", False),  # 12 digits
        ("41111111111111111111", False),  # 20 digits
        ("0000000000000000", False),  # passes Luhn, but a placeholder
        ("0412888888881836", False),  # passes Luhn, but a leading 0
        ("4111.1111.1111.1111", False),
    ],
)
def test_bank_card(value, expected):
    assert is_bank_card(value) is expected


def test_luhn():
    assert luhn_valid("79927398713") is True
    assert luhn_valid("79927398710") is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.168.1.20", True),
        ("8.8.8.8", True),
        ("2001:db8::1", True),
        ("::1", True),
        ("256.1.1.1", False),
        ("192.168.1", False),
        ("01.2.3.4", False),
        ("2001:db8::g", False),
        ("1", False),
    ],
)
def test_ip_address(value, expected):
    assert is_ip_address(value) is expected


def test_flags_a_column_when_at_least_30_percent_match():
    emails = ["a@example.com", "b@example.com", "c@example.com"]
    assert pii_flags([*emails, "x", "y", "z", "u", "v", "w", "t"]) == ["email"]  # 3 of 10
    assert pii_flags([*emails, "x", "y", "z", "u", "v", "w", "t", "s"]) == []  # 3 of 11


def test_ignores_nulls_and_blank_values_when_counting():
    assert pii_flags([None, "", "  ", "a@example.com"]) == ["email"]
    assert pii_flags([None, "", "   "]) == []
    assert pii_flags([]) == []


def test_flags_several_kinds_in_a_fixed_order():
    values = ["192.168.0.1", "alice@example.com", "13812345678", "11010519491231002X", "4111111111111111"]
    assert pii_flags(values) == []  # one in five of each kind
    more = ["bob@example.com", "10.0.0.1", "carol@example.com", "10.0.0.2"]
    assert pii_flags(values + more) == ["email", "ip_address"]  # three in nine of each


def test_values_are_judged_by_their_string_form():
    assert pii_flags([13812345678, 13912345678, None]) == ["phone"]
    assert pii_flags([4111111111111111, 6228480012345678903]) == ["bank_card"]


def test_wrong_check_digits_are_not_flagged():
    assert pii_flags(["110105194912310021", "440304199001010012"]) == []
    assert pii_flags(["11010519491231002X", "440304199001010011"]) == ["cn_resident_id"]
    assert pii_flags(["4111111111111112", "6228480012345678904"]) == []


def test_ordinary_data_is_not_flagged():
    values = ["Guiyang", "2024", "6400000", "3.14", "2024-01-01", "order-000123", "N/A"]
    assert pii_flags(values) == []
