"""Merchant statements: exact figures for a month of sales, a refund after payout, a dispute and payouts;
the CSV; who may see them; bad periods. Trades go through the real services (sandbox gateway, tasks eager)."""

import csv
import io
from datetime import UTC, date, datetime

import pytest
import time_machine
from django.urls import reverse

from exchange import statement_views
from exchange.choices import JournalKind, PayoutStatus
from exchange.gateways import GatewayError
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import JournalEntry, Order, Payout, Posting
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.refunds import order_refund
from exchange.services.settlement import settlement_run_start
from exchange.services.statements import (
    CSV_HEADER,
    Period,
    StatementPeriodError,
    statement_build,
    statement_lines,
    statement_period,
)
from tests.exchange.helpers import read_stream
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _at(month, day):
    return time_machine.travel(datetime(2026, month, day, 10, 0, tzinfo=UTC), tick=False)


def _sell(listing, capture, month, day) -> Order:
    """A buyer pays 1234 CNY through the sandbox, confirms receipt, and a settlement run pays the merchant."""
    buyer = UserFactory()
    with _at(month, day):
        with capture(execute=True):
            order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=f"k-{buyer.pk}")
            order_checkout_start(order=order)
            order.refresh_from_db()
            SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
        with capture(execute=True):
            order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer)
            settlement_run_start(trigger="test")
    return Order.objects.get(pk=order.pk)


@pytest.fixture
def month(settings, published_listing, staff, django_capture_on_commit_callbacks):
    """February: sale A paid out. March: sale B paid out, 617 of A refunded after its payout, sale C paid out
    net of that refund, B disputed after its payout. April: sale D (outside March)."""
    settings.PLATFORM_FEE_BPS = 1000
    capture = django_capture_on_commit_callbacks
    a = _sell(published_listing, capture, 2, 20)
    b = _sell(published_listing, capture, 3, 3)
    with _at(3, 10):
        order_refund(order=a, amount=617, reason="one table was missing", actor=staff)
    c = _sell(published_listing, capture, 3, 15)
    with _at(3, 20), capture(execute=True):
        SandboxGateway().emit_dispute(order=b)
    d = _sell(published_listing, capture, 4, 2)
    return {"a": a, "b": b, "c": c, "d": d}


MARCH = Period(date(2026, 3, 1), date(2026, 3, 31))


def test_march_statement_has_exact_figures_and_reconciles_with_the_payouts(month, merchant):
    (totals,) = statement_build(merchant=merchant, period=MARCH).totals
    assert totals.currency == "CNY"
    # fees: 123 on B and C; 62 of A's fee returned with the 617 refund (123 * 617 / 1234 = 61.5, half up);
    # 123 of B's fee returned with the dispute.
    assert (totals.opening, totals.sales, totals.fees, totals.refunds, totals.disputes, totals.payouts) == (
        0,
        2468,
        61,
        617,
        1234,
        1667,
    )
    assert (totals.other, totals.closing, totals.lines) == (0, -1111, 6)
    assert totals.opening + totals.sales - totals.fees - totals.refunds - totals.disputes - totals.payouts == -1111
    sent_in_march = Payout.objects.filter(
        merchant=merchant, status=PayoutStatus.SENT, sent_at__gte=MARCH.start, sent_at__lt=MARCH.end
    )
    assert sorted(sent_in_march.values_list("amount", flat=True)) == [556, 1111]
    assert totals.payouts == totals.payouts_sent == 1667
    # The closing balance is the payable account's balance at the end of March (ledger sign: debit positive).
    payable = Posting.objects.filter(account__merchant=merchant, entry__created_at__lt=MARCH.end)
    assert -sum(payable.values_list("amount", flat=True)) == -1111


def test_march_lines_in_ledger_order(month, merchant):
    lines = [
        (line.at.day, line.kind, line.reference, line.gross, line.fee, line.net)
        for line in statement_lines(merchant=merchant, period=MARCH)
    ]
    b, c, a = month["b"].reference, month["c"].reference, month["a"].reference
    payout_b, payout_c = Payout.objects.filter(merchant=merchant).order_by("pk")[1:3]
    assert lines == [
        (3, "sale", b, 1234, 123, 1111),
        (3, "payout_created", f"payout {payout_b.pk}", -1111, 0, -1111),
        (10, "refund", a, -617, -62, -555),
        (15, "sale", c, 1234, 123, 1111),
        (15, "payout_created", f"payout {payout_c.pk}", -556, 0, -556),
        (20, "dispute", b, -1234, -123, -1111),
    ]


def test_neighbouring_months_chain_opening_to_closing(month, merchant):
    (feb,) = statement_build(merchant=merchant, period=Period(date(2026, 2, 1), date(2026, 2, 28))).totals
    (apr,) = statement_build(merchant=merchant, period=Period(date(2026, 4, 1), date(2026, 4, 30))).totals
    assert (feb.opening, feb.sales, feb.fees, feb.payouts, feb.closing) == (0, 1234, 123, 1111, 0)
    # April's sale is netted against the 1111 the merchant owed after the dispute: nothing left to pay out.
    assert (apr.opening, apr.sales, apr.fees, apr.payouts, apr.closing, apr.payouts_sent) == (-1111, 1234, 123, 0, 0, 0)


def test_statement_page_shows_the_figures_and_paginates(month, merchant, merchant_user, client, monkeypatch):
    monkeypatch.setattr(statement_views, "PER_PAGE", 4)
    client.force_login(merchant_user)
    url = reverse("statements:page")
    response = client.get(url, {"from": "2026-03-01", "to": "2026-03-31"})
    assert response.status_code == 200
    html = response.content.decode()
    assert '<tr id="CNY-closing"><th>Closing balance</th><td>-¥11.11 CNY</td></tr>' in html
    assert '<tr id="CNY-sales"><th>Sales (gross)</th><td>¥24.68 CNY</td></tr>' in html
    assert [line.kind for line in response.context["lines"]] == ["sale", "payout_created", "refund", "sale"]
    second = client.get(url, {"from": "2026-03-01", "to": "2026-03-31", "page": 2})
    assert [line.kind for line in second.context["lines"]] == ["payout_created", "dispute"]
    assert "Page 2 of 2" in second.content.decode()


def test_statement_defaults_to_the_current_month(month, merchant, merchant_user, client):
    client.force_login(merchant_user)
    with _at(3, 25):
        response = client.get(reverse("statements:page"))
    assert response.status_code == 200
    assert response.context["period"] == MARCH


def test_statement_csv_is_exact(month, merchant, merchant_user, client):
    client.force_login(merchant_user)
    response = client.get(reverse("statements:csv"), {"from": "2026-03-01", "to": "2026-03-31"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert (
        response["Content-Disposition"] == f'attachment; filename="statement-{merchant.pk}-2026-03-01-2026-03-31.csv"'
    )
    rows = list(csv.reader(io.StringIO(read_stream(response).decode("utf-8"))))
    b, c, a = month["b"].reference, month["c"].reference, month["a"].reference
    payout_b, payout_c = Payout.objects.filter(merchant=merchant).order_by("pk")[1:3]
    seq = list(
        JournalEntry.objects.filter(
            created_at__gte=MARCH.start, created_at__lt=MARCH.end, postings__account__merchant=merchant
        )
        .exclude(kind=JournalKind.RECEIVABLE_NETTED)  # between the merchant's own accounts: no statement line
        .distinct()
        .order_by("sequence")
        .values_list("sequence", flat=True)
    )
    t3, t10, t15, t20 = (f"2026-03-{d:02d}T10:00:00+00:00" for d in (3, 10, 15, 20))
    period = "2026-03-01..2026-03-31"
    assert rows == [
        [
            "date",
            "sequence",
            "kind",
            "reference",
            "currency",
            "gross_minor",
            "fee_minor",
            "net_minor",
            "gross",
            "fee",
            "net",
        ],
        [t3, str(seq[0]), "sale", b, "CNY", "1234", "123", "1111", "¥12.34 CNY", "¥1.23 CNY", "¥11.11 CNY"],
        [
            t3,
            str(seq[1]),
            "payout_created",
            f"payout {payout_b.pk}",
            "CNY",
            "-1111",
            "0",
            "-1111",
            "-¥11.11 CNY",
            "¥0.00 CNY",
            "-¥11.11 CNY",
        ],
        [t10, str(seq[2]), "refund", a, "CNY", "-617", "-62", "-555", "-¥6.17 CNY", "-¥0.62 CNY", "-¥5.55 CNY"],
        [t15, str(seq[3]), "sale", c, "CNY", "1234", "123", "1111", "¥12.34 CNY", "¥1.23 CNY", "¥11.11 CNY"],
        [
            t15,
            str(seq[4]),
            "payout_created",
            f"payout {payout_c.pk}",
            "CNY",
            "-556",
            "0",
            "-556",
            "-¥5.56 CNY",
            "¥0.00 CNY",
            "-¥5.56 CNY",
        ],
        [t20, str(seq[5]), "dispute", b, "CNY", "-1234", "-123", "-1111", "-¥12.34 CNY", "-¥1.23 CNY", "-¥11.11 CNY"],
        [],
        [period, "", "total:opening", "", "CNY", "", "", "0", "", "", "¥0.00 CNY"],
        [period, "", "total:sales", "", "CNY", "", "", "2468", "", "", "¥24.68 CNY"],
        [period, "", "total:fees", "", "CNY", "", "", "61", "", "", "¥0.61 CNY"],
        [period, "", "total:refunds", "", "CNY", "", "", "617", "", "", "¥6.17 CNY"],
        [period, "", "total:disputes", "", "CNY", "", "", "1234", "", "", "¥12.34 CNY"],
        [period, "", "total:payouts", "", "CNY", "", "", "1667", "", "", "¥16.67 CNY"],
        [period, "", "total:payouts_returned", "", "CNY", "", "", "0", "", "", "¥0.00 CNY"],
        [period, "", "total:other", "", "CNY", "", "", "0", "", "", "¥0.00 CNY"],
        [period, "", "total:closing", "", "CNY", "", "", "-1111", "", "", "-¥11.11 CNY"],
        [period, "", "total:payouts_sent", "", "CNY", "", "", "1667", "", "", "¥16.67 CNY"],
    ]


@pytest.fixture
def refused(settings, published_listing, merchant, django_capture_on_commit_callbacks, monkeypatch):
    """March 3: sale E, whose payout the gateway refuses (its 1111 owed again). March 5: the next run pays it."""
    settings.PLATFORM_FEE_BPS = 1000

    def refuse(self, *, payout):
        raise GatewayError("the merchant's account is closed", transient=False)

    with monkeypatch.context() as patched:
        patched.setattr(SandboxGateway, "payout_create", refuse)
        e = _sell(published_listing, django_capture_on_commit_callbacks, 3, 3)
    with _at(3, 5), django_capture_on_commit_callbacks(execute=True):
        settlement_run_start(trigger="test")
    first, second = Payout.objects.filter(merchant=merchant).order_by("pk")
    assert (first.status, first.amount, second.status, second.amount) == (
        PayoutStatus.FAILED,
        1111,
        PayoutStatus.SENT,
        1111,
    )
    return {"e": e, "refused": first, "paid": second}


MARCH_3 = Period(date(2026, 3, 3), date(2026, 3, 3))


def test_a_refused_payout_shows_as_returned_not_as_an_adjustment(refused, merchant):
    (day,) = statement_build(merchant=merchant, period=MARCH_3).totals
    figures = {key: amount for key, _, amount, _ in day.figures()}
    assert figures == {
        "opening": 0,
        "sales": 1234,
        "fees": 123,
        "refunds": 0,
        "disputes": 0,
        "payouts": 1111,
        "payouts_returned": -1111,
        "other": 0,
        "closing": 1111,
        "payouts_sent": 0,
    }
    # What actually left is the payouts net of those returned: nothing was sent that day.
    assert day.payouts + day.payouts_returned == day.payouts_sent == 0
    # The return is the reverse of the entry that created the payout, and names it.
    created = JournalEntry.objects.get(idempotency_key=f"payout_created:{refused['refused'].pk}")
    assert JournalEntry.objects.get(idempotency_key=f"payout_returned:{refused['refused'].pk}").reverses == created
    (march,) = statement_build(merchant=merchant, period=MARCH).totals
    assert (march.sales, march.fees, march.payouts, march.payouts_returned, march.other, march.closing) == (
        1234,
        123,
        2222,
        -1111,
        0,
        0,
    )
    assert march.payouts + march.payouts_returned == march.payouts_sent == 1111
    lines = [
        (line.at.day, line.kind, line.reference, line.gross, line.fee, line.net)
        for line in statement_lines(merchant=merchant, period=MARCH)
    ]
    e, refused_pk, paid_pk = refused["e"].reference, refused["refused"].pk, refused["paid"].pk
    assert lines == [
        (3, "sale", e, 1234, 123, 1111),
        (3, "payout_created", f"payout {refused_pk}", -1111, 0, -1111),
        (3, "payout_returned", f"payout {refused_pk}", 1111, 0, 1111),
        (5, "payout_created", f"payout {paid_pk}", -1111, 0, -1111),
    ]


def test_a_refused_payout_on_the_page_and_in_the_csv(refused, merchant, merchant_user, client):
    client.force_login(merchant_user)
    params = {"from": "2026-03-03", "to": "2026-03-03"}
    html = client.get(reverse("statements:page"), params).content.decode()
    assert '<tr id="CNY-payouts"><th>Payouts</th><td>¥11.11 CNY</td></tr>' in html
    assert (
        '<tr id="CNY-payouts_returned"><th>Payouts returned by the gateway (owed again)</th><td>-¥11.11 CNY</td></tr>'
        in html
    )
    assert '<tr id="CNY-other"><th>Other adjustments</th><td>¥0.00 CNY</td></tr>' in html
    assert '<tr id="CNY-payouts_sent"><th>Payouts sent in the period</th><td>¥0.00 CNY</td></tr>' in html
    assert "Payout refused by the gateway, owed again" in html  # the line itself
    response = client.get(reverse("statements:csv"), params)
    rows = list(csv.reader(io.StringIO(read_stream(response).decode("utf-8"))))
    refused_pk = refused["refused"].pk
    assert [row[2:8] for row in rows[1:4]] == [
        ["sale", refused["e"].reference, "CNY", "1234", "123", "1111"],
        ["payout_created", f"payout {refused_pk}", "CNY", "-1111", "0", "-1111"],
        ["payout_returned", f"payout {refused_pk}", "CNY", "1111", "0", "1111"],
    ]
    totals = {row[2]: row[7] for row in rows[5:]}
    assert totals == {
        "total:opening": "0",
        "total:sales": "1234",
        "total:fees": "123",
        "total:refunds": "0",
        "total:disputes": "0",
        "total:payouts": "1111",
        "total:payouts_returned": "-1111",
        "total:other": "0",
        "total:closing": "1111",
        "total:payouts_sent": "0",
    }


def _ledger_snapshot():
    return (JournalEntry.objects.count(), Posting.objects.count(), Payout.objects.count(), Order.objects.count())


@pytest.mark.parametrize("who", ["anonymous", "buyer", "staff_not_member"])
@pytest.mark.parametrize("name", ["statements:page", "statements:csv"])
def test_only_merchant_members_see_statements(month, who, name, client, buyer, staff):
    user = {"anonymous": None, "buyer": buyer, "staff_not_member": staff}[who]
    if user is not None:
        client.force_login(user)
    before = _ledger_snapshot()
    response = client.get(reverse(name), {"from": "2026-03-01", "to": "2026-03-31"})
    assert response.status_code == 404
    assert "1234" not in response.content.decode() and "Guiyang" not in response.content.decode()
    assert _ledger_snapshot() == before


def test_other_merchant_sees_only_their_own_empty_statement(month, client, other_merchant_user):
    client.force_login(other_merchant_user)
    response = client.get(reverse("statements:page"), {"from": "2026-03-01", "to": "2026-03-31"})
    assert response.status_code == 200
    assert response.context["statement"].totals == [] and response.context["lines"] == []
    html = response.content.decode()
    assert "Shanghai Data" in html and "Guiyang" not in html and "24.68" not in html
    csv_response = client.get(reverse("statements:csv"), {"from": "2026-03-01", "to": "2026-03-31"})
    assert read_stream(csv_response).decode().splitlines() == [",".join(CSV_HEADER), ""]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2026-13-01"}, "'from' must be a date written YYYY-MM-DD, not '2026-13-01'."),
        ({"to": "yesterday"}, "'to' must be a date written YYYY-MM-DD, not 'yesterday'."),
        ({"from": "2026-03-31", "to": "2026-03-01"}, "'from' (2026-03-31) is after 'to' (2026-03-01)."),
        (
            {"from": "2025-01-01", "to": "2026-01-02"},
            "A statement covers at most 366 days; 2025-01-01 to 2026-01-02 is 367.",
        ),
        # December 9999 has no month after it: refused, not a server error.
        ({"from": "9999-12-31"}, "'from' and 'to' must be days before 9999-12-01."),
        ({"to": "9999-12-01"}, "'from' and 'to' must be days before 9999-12-01."),
    ],
)
@pytest.mark.parametrize("name", ["statements:page", "statements:csv"])
def test_bad_periods_get_400_with_a_clear_message(month, merchant_user, client, params, message, name):
    client.force_login(merchant_user)
    before = _ledger_snapshot()
    response = client.get(reverse(name), params)
    assert response.status_code == 400
    assert response.context["error"] == message
    assert _ledger_snapshot() == before
    with pytest.raises(StatementPeriodError) as exc:
        statement_period(params=params)
    assert str(exc.value) == message


def test_period_defaults_and_limits():
    assert statement_period(params={}, today=date(2024, 2, 10)) == Period(date(2024, 2, 1), date(2024, 2, 29))
    assert statement_period(params={"from": "2026-03-15"}) == Period(date(2026, 3, 15), date(2026, 3, 31))
    assert statement_period(params={"to": "2026-12-05"}) == Period(date(2026, 12, 1), date(2026, 12, 5))
    assert statement_period(params={"from": "2024-01-01", "to": "2024-12-31"}).last == date(2024, 12, 31)  # 366 days
