"""The reconciliation report: the ledger against the sandbox's records and Stripe's balance transactions
(the real SDK against the fake Stripe server), through the service, `manage.py reconcile` and the staff page."""

import json
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from exchange.gateways.sandbox import SandboxGateway
from exchange.gateways.signing import sign_payload
from exchange.models import (
    JournalEntry,
    Order,
    Payout,
    Posting,
    Refund,
    SandboxCheckoutSession,
    SandboxTransfer,
)
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.reconciliation import (
    AMOUNT_MISMATCH,
    MISSING_AT_GATEWAY,
    MISSING_IN_LEDGER,
    Difference,
    reconciliation_report,
)
from exchange.services.refunds import order_refund
from exchange.services.settlement import settlement_run_start
from tests.factories import UserFactory
from tests.fakes.stripe_balance import FakeStripeWithBalance
from tests.fakes.stripe_server import settings_use_fake_stripe

pytestmark = pytest.mark.django_db


def _sell(listing, capture) -> Order:
    """A buyer pays 1234 CNY through the sandbox and confirms receipt; a settlement run pays the merchant."""
    buyer = UserFactory()
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
def trades(settings, published_listing, staff, django_capture_on_commit_callbacks):
    """Two sandbox sales, each settled and paid out, and a refund of 200 on the first after its payout."""
    settings.PLATFORM_FEE_BPS = 1000
    first = _sell(published_listing, django_capture_on_commit_callbacks)
    second = _sell(published_listing, django_capture_on_commit_callbacks)
    order_refund(order=first, amount=200, reason="a late file", actor=staff)
    return first, second


def _snapshot():
    return (
        JournalEntry.objects.count(),
        Posting.objects.count(),
        Payout.objects.count(),
        SandboxTransfer.objects.count(),
        list(SandboxCheckoutSession.objects.order_by("pk").values_list("pk", "amount")),
    )


def test_sandbox_ledger_and_gateway_agree(trades):
    report = reconciliation_report(gateway="sandbox")
    # 2 payments, 2 payouts, 1 refund.
    assert (report.ok, report.matched, report.differences) == (True, 5, [])
    out = StringIO()
    call_command("reconcile", stdout=out)
    assert out.getvalue().splitlines()[0] == "Reconciliation with sandbox: 5 matched."
    assert out.getvalue().splitlines()[-1] == "No differences."


def test_a_transfer_without_a_payout_entry_is_exactly_the_difference(trades, merchant):
    SandboxTransfer.objects.create(
        id="tr_sbx_stray", idempotency_key="made-by-hand", merchant=merchant, amount=500, currency="CNY"
    )
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 5
    assert report.differences == [Difference(MISSING_IN_LEDGER, "payout", "tr_sbx_stray", "", "500 CNY")]
    out = StringIO()
    with pytest.raises(CommandError) as exc:
        call_command("reconcile", stdout=out)
    assert str(exc.value) == "1 difference(s) between the ledger and sandbox."
    assert "missing_in_ledger payout tr_sbx_stray: ledger [-] gateway [500 CNY]" in out.getvalue().splitlines()
    assert _snapshot() == before  # a report writes nothing


def test_a_session_whose_amount_differs_is_exactly_the_difference(trades):
    first, _ = trades
    SandboxCheckoutSession.objects.filter(pk=first.gateway_session_id).update(amount=1000)
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 4
    assert report.differences == [
        Difference(AMOUNT_MISMATCH, "payment", first.gateway_session_id, "1234 CNY", "1000 CNY")
    ]


def test_a_payout_entry_whose_transfer_is_gone_is_missing_at_the_gateway(trades):
    payout = Payout.objects.order_by("pk").first()
    SandboxTransfer.objects.filter(idempotency_key=payout.idempotency_key).delete()
    report = reconciliation_report(gateway="sandbox")
    assert report.differences == [
        Difference(
            MISSING_AT_GATEWAY, "payout", f"{payout.idempotency_key} ({payout.gateway_reference})", "1111 CNY", ""
        )
    ]


def test_a_refund_whose_gateway_record_differs_is_exactly_the_difference(trades):
    refund = Refund.objects.get()
    Refund.objects.filter(pk=refund.pk).update(amount=300)  # the exchange's record of what the sandbox refunded
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 4
    assert report.differences == [Difference(AMOUNT_MISMATCH, "refund", refund.gateway_refund_id, "200 CNY", "300 CNY")]


def test_since_bounds_the_report(trades, merchant):
    SandboxTransfer.objects.create(
        id="tr_sbx_old", idempotency_key="old-by-hand", merchant=merchant, amount=500, currency="CNY"
    )
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    out = StringIO()
    call_command("reconcile", "--since", tomorrow, stdout=out)
    assert out.getvalue().splitlines()[0] == f"Reconciliation with sandbox since {tomorrow}: 0 matched."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-02-30"], "'since' must be a date written YYYY-MM-DD, not '2026-02-30'."),
        (["--gateway", "paypal"], "Reconciliation knows the sandbox and stripe gateways, not 'paypal'."),
    ],
)
def test_bad_command_input_is_refused_clearly(trades, args, message):
    before = _snapshot()
    with pytest.raises(CommandError) as exc:
        call_command("reconcile", *args, stdout=StringIO())
    assert str(exc.value) == message
    assert _snapshot() == before


def test_staff_page_lists_the_differences(trades, merchant, client, staff):
    SandboxTransfer.objects.create(
        id="tr_sbx_stray", idempotency_key="made-by-hand", merchant=merchant, amount=500, currency="CNY"
    )
    client.force_login(staff)
    response = client.get(reverse("statements:reconciliation"), {"gateway": "sandbox"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "sandbox: 5 matched, 1 difference" in html
    assert "<td>missing_in_ledger</td><td>payout</td><td><code>tr_sbx_stray</code></td>" in html
    bad = client.get(reverse("statements:reconciliation"), {"since": "soon"})
    assert bad.status_code == 400
    assert bad.context["error"] == "'since' must be a date written YYYY-MM-DD, not 'soon'."


@pytest.mark.parametrize("who", ["anonymous", "buyer", "merchant"])
def test_reconciliation_page_is_for_staff_only(trades, client, who, buyer, merchant_user):
    user = {"anonymous": None, "buyer": buyer, "merchant": merchant_user}[who]
    if user is not None:
        client.force_login(user)
    before = _snapshot()
    response = client.get(reverse("statements:reconciliation"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert _snapshot() == before


# --- Stripe ---------------------------------------------------------------

WEBHOOK_SECRET = "whsec_test_reconcile"


@pytest.fixture
def fake_stripe(settings):
    server = FakeStripeWithBalance().start()
    settings_use_fake_stripe(settings, server, webhook_secret=WEBHOOK_SECRET)
    settings.PLATFORM_FEE_BPS = 1000
    yield server
    server.stop()


def _stripe_sale(client, listing, capture, fake, intent: str) -> Order:
    buyer = UserFactory()
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=f"k-{buyer.pk}")
    order_checkout_start(order=order)
    order.refresh_from_db()
    event = {
        "id": f"evt_{time.time_ns()}",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": order.gateway_session_id,
                "object": "checkout.session",
                "amount_total": order.amount,
                "currency": order.currency.lower(),
                "payment_status": "paid",
                "payment_intent": intent,
                "metadata": {"order_id": str(order.public_id)},
            }
        },
    }
    body = json.dumps(event).encode()
    with capture(execute=True):
        response = client.post(
            reverse("exchange:webhook", args=["stripe"]),
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sign_payload(body=body, secret=WEBHOOK_SECRET),
        )
    assert response.status_code == 200
    fake.charge(payment_intent=intent, amount=order.amount, currency=order.currency)
    with capture(execute=True):
        order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer)
        settlement_run_start(trigger="test")
    return Order.objects.get(pk=order.pk)


@pytest.fixture
def stripe_trades(fake_stripe, client, published_listing, merchant, staff, django_capture_on_commit_callbacks):
    """Two Stripe sales, each settled and paid out by a Connect transfer, then 200 of the first refunded."""
    merchant.stripe_account_id = "acct_test_merchant"
    merchant.save(update_fields=["stripe_account_id"])
    orders = [
        _stripe_sale(client, published_listing, django_capture_on_commit_callbacks, fake_stripe, f"pi_test_{n}")
        for n in (1, 2)
    ]
    assert Payout.objects.filter(gateway_reference__startswith="tr_test_").count() == 2
    refund = order_refund(order=orders[0], amount=200, reason="a late file", actor=staff)
    assert refund.gateway_refund_id.startswith("re_test_")
    return orders


def test_stripe_balance_transactions_match_the_ledger_across_pages(stripe_trades, fake_stripe, monkeypatch):
    # Two pages of two: the SDK's auto-paging must follow the cursor.
    monkeypatch.setattr(FakeStripeWithBalance, "_list", _paged(FakeStripeWithBalance._list, 2))
    report = reconciliation_report(gateway="stripe")
    assert (report.ok, report.matched, report.differences) == (True, 5, [])  # 2 payments, 2 payouts, 1 refund
    listed = [params for method, path, params, _ in fake_stripe.requests if path == "/v1/balance_transactions"]
    # Five transactions, two a page: the second request continues after the first page's last transaction.
    assert len(listed) == 3 and "starting_after" not in listed[0]
    assert (
        listed[1]["starting_after"]
        == sorted(fake_stripe.balance_transactions, key=lambda t: (t["created"], t["id"]), reverse=True)[1]["id"]
    )


def _paged(original, size):
    def listing(self, query):
        return original(self, {**query, "limit": str(size)})

    return listing


def test_stripe_difference_charge_unknown_to_the_ledger_and_transfer_amount(stripe_trades, fake_stripe):
    fake_stripe.charge(payment_intent="pi_test_stranger", amount=999, currency="CNY")
    transfer = fake_stripe.balance_transactions[1]  # the first sale's transfer (after its charge)
    assert transfer["type"] == "transfer"
    transfer["amount"] = -1000
    report = reconciliation_report(gateway="stripe")
    assert report.matched == 4  # both ledger payments, the second payout and the refund
    assert report.differences == [
        Difference(MISSING_IN_LEDGER, "payment", "pi_test_stranger", "", "999 CNY"),
        Difference(AMOUNT_MISMATCH, "payout", transfer["source"], "1111 CNY", "1000 CNY"),
    ]


def test_stripe_since_is_sent_to_stripe(stripe_trades, fake_stripe):
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    since = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)
    report = reconciliation_report(gateway="stripe", since=since)
    assert (report.matched, report.differences) == (0, [])
    _, _, params, _ = [r for r in fake_stripe.requests if r[1] == "/v1/balance_transactions"][-1]
    assert params["created"] == {"gte": str(int(since.timestamp()))}
