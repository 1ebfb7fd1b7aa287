"""The reconciliation report: the ledger against the sandbox's records and Stripe's balance transactions
(the real SDK against the fake Stripe server), through the service, `manage.py reconcile` and the staff page."""

import json
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
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
    SandboxDispute,
    SandboxRefund,
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
from tests.factories import UserFactory, make_listing
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
        list(SandboxRefund.objects.order_by("pk").values_list()),
        list(SandboxDispute.objects.order_by("pk").values_list()),
        list(SandboxCheckoutSession.objects.order_by("pk").values_list("pk", "amount")),
    )


SANDBOX_UNRECORDED_NOTE = "{count} refund(s) made before the sandbox kept refund records were not checked."
SANDBOX_UNRECORDED_DISPUTES_NOTE = "{count} dispute(s) opened before the sandbox kept dispute records were not checked."


def test_sandbox_ledger_and_gateway_agree(trades):
    report = reconciliation_report(gateway="sandbox")
    # 2 payments, 2 payouts and the refund, matched with the sandbox's record of it.
    assert (report.ok, report.matched, report.differences) == (True, 5, [])
    assert report.notes == []
    out = StringIO()
    call_command("reconcile", stdout=out)
    assert out.getvalue().splitlines()[0] == "Reconciliation with sandbox: 5 matched."
    assert out.getvalue().splitlines()[-1] == "No differences."


def test_sandbox_matches_the_refunds_it_reported_and_the_disputes_it_opened_and_lost_or_won(
    trades, django_capture_on_commit_callbacks
):
    _, second = trades
    gateway = SandboxGateway()
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(order=second, dispute_id="dp_sbx_recon")
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(
            order=Order.objects.get(pk=second.pk), status="won", closed=True, dispute_id="dp_sbx_recon"
        )
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_refund(order=Order.objects.get(pk=second.pk), amount=100)
    assert JournalEntry.objects.filter(kind__in=["dispute", "dispute_won"]).count() == 2
    reported = Refund.objects.get(source="gateway")
    assert SandboxRefund.objects.get(idempotency_key=None).id == reported.gateway_refund_id
    report = reconciliation_report(gateway="sandbox")
    # The refund the exchange asked for and the one the sandbox made on its own are both matched, and so are the
    # dispute (what the sandbox withdrew) and its being won (what it gave back), with the sandbox's record of it.
    assert SandboxDispute.objects.get().status == "won"
    assert (report.ok, report.matched, report.differences, report.notes) == (True, 8, [], [])
    # A dispute lost withdraws and gives nothing back: matched once.
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(order=Order.objects.get(pk=second.pk), dispute_id="dp_sbx_lost")
    with django_capture_on_commit_callbacks(execute=True):
        gateway.emit_dispute(
            order=Order.objects.get(pk=second.pk), status="lost", closed=True, dispute_id="dp_sbx_lost"
        )
    assert SandboxDispute.objects.get(pk="dp_sbx_lost").amount == 1234 - 100  # less the refund the sandbox made
    report = reconciliation_report(gateway="sandbox")
    assert (report.ok, report.matched, report.differences, report.notes) == (True, 9, [], [])


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


def test_a_refund_whose_record_differs_is_exactly_the_difference(trades):
    refund = Refund.objects.get()
    SandboxRefund.objects.filter(pk=refund.gateway_refund_id).update(amount=300)
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 4
    assert report.differences == [Difference(AMOUNT_MISMATCH, "refund", refund.gateway_refund_id, "200 CNY", "300 CNY")]
    assert _snapshot() == before


def test_a_refund_the_sandbox_made_that_the_ledger_never_booked_is_missing_in_the_ledger(trades):
    _, second = trades
    # The sandbox refunded, but the exchange never heard: the answer was lost and the refund request never made.
    made = SandboxGateway().refund_create(payment_id=second.gateway_payment_id, amount=150, idempotency_key="lost")
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 5
    assert report.differences == [Difference(MISSING_IN_LEDGER, "refund", made, "", "150 CNY")]
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile", stdout=out)
    assert f"missing_in_ledger refund {made}: ledger [-] gateway [150 CNY]" in out.getvalue().splitlines()
    assert _snapshot() == before


@pytest.mark.parametrize("reported", [False, True], ids=["requested", "reported by the sandbox"])
def test_a_ledger_refund_whose_record_is_gone_is_missing_at_the_gateway(
    trades, django_capture_on_commit_callbacks, reported
):
    first, _ = trades
    if reported:
        with django_capture_on_commit_callbacks(execute=True):
            SandboxGateway().emit_refund(order=Order.objects.get(pk=first.pk), amount=100)
    refund = Refund.objects.order_by("pk").last()
    assert refund.source == ("gateway" if reported else "admin")
    SandboxRefund.objects.filter(pk=refund.gateway_refund_id).delete()
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == (5 if reported else 4)
    assert report.differences == [
        Difference(MISSING_AT_GATEWAY, "refund", refund.gateway_refund_id, f"{refund.amount} CNY", "")
    ]
    assert report.notes == []
    assert _snapshot() == before


def test_refunds_made_before_the_sandbox_kept_records_are_noted_not_reported(
    trades, django_capture_on_commit_callbacks
):
    first, _ = trades
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_refund(order=Order.objects.get(pk=first.pk), amount=100)
    # Both refunds were made by the sandbox of before its refund records: it remembers neither.
    SandboxRefund.objects.all().delete()
    MigrationRecorder(connection).migration_qs.filter(app="exchange", name="0023_sandbox_refunds").update(
        applied=Refund.objects.order_by("created_at").last().created_at + timedelta(seconds=1)
    )
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert (report.ok, report.matched, report.differences) == (True, 4, [])
    assert report.notes == [SANDBOX_UNRECORDED_NOTE.format(count=2)]
    assert _snapshot() == before  # no records made up for them


def test_a_dispute_after_a_refund_made_before_the_records_withdraws_what_was_left(
    trades, django_capture_on_commit_callbacks
):
    first, _ = trades  # 200 of the first refunded
    # That refund was made by the sandbox of before its refund records; the dispute comes afterwards.
    SandboxRefund.objects.all().delete()
    MigrationRecorder(connection).migration_qs.filter(app="exchange", name="0023_sandbox_refunds").update(
        applied=Refund.objects.get().created_at + timedelta(seconds=1)
    )
    _disputed(first, django_capture_on_commit_callbacks, won=None, dispute_id="dp_sbx_after_old_refund")
    assert SandboxDispute.objects.get().amount == first.amount - 200  # not the whole charge
    report = reconciliation_report(gateway="sandbox")
    assert (report.ok, report.differences) == (True, [])
    assert report.notes == [SANDBOX_UNRECORDED_NOTE.format(count=1)]


def test_a_refund_recorded_just_before_since_and_booked_after_it_is_matched(trades):
    refund = Refund.objects.get()
    entry = JournalEntry.objects.get(idempotency_key=f"refund:{refund.pk}")
    since = entry.created_at  # everything else was booked before the refund
    SandboxRefund.objects.filter(pk=refund.gateway_refund_id).update(created_at=since - timedelta(seconds=1))
    report = reconciliation_report(gateway="sandbox", since=since)
    assert (report.ok, report.matched, report.differences) == (True, 1, [])  # the refund only
    # And a record from ``since`` on whose refund was booked before it belongs to an earlier report.
    later = entry.created_at + timedelta(seconds=1)
    SandboxRefund.objects.filter(pk=refund.gateway_refund_id).update(created_at=later + timedelta(seconds=1))
    report = reconciliation_report(gateway="sandbox", since=later)
    assert (report.ok, report.matched, report.differences) == (True, 0, [])


def _disputed(order, capture, *, won: bool | None = True, dispute_id: str = "dp_sbx_recon") -> Order:
    """The sandbox opens a dispute on ``order`` and (unless ``won`` is None) closes it won or lost."""
    gateway = SandboxGateway()
    with capture(execute=True):
        gateway.emit_dispute(order=Order.objects.get(pk=order.pk), dispute_id=dispute_id)
    if won is not None:
        with capture(execute=True):
            gateway.emit_dispute(
                order=Order.objects.get(pk=order.pk),
                status="won" if won else "lost",
                closed=True,
                dispute_id=dispute_id,
            )
    return Order.objects.get(pk=order.pk)


def test_a_dispute_the_sandbox_opened_that_the_ledger_never_booked_is_missing_in_the_ledger(
    trades, django_capture_on_commit_callbacks, monkeypatch
):
    _, second = trades
    # The sandbox opened the dispute and won it, but the exchange never heard: its events were lost.
    monkeypatch.setattr(SandboxGateway, "notify", lambda self, event_type, obj: None)
    _disputed(second, django_capture_on_commit_callbacks, won=True)
    assert not JournalEntry.objects.filter(kind__in=["dispute", "dispute_won"]).exists()
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 5
    assert report.differences == [
        Difference(MISSING_IN_LEDGER, "dispute", "dp_sbx_recon", "", "1234 CNY"),
        Difference(MISSING_IN_LEDGER, "dispute_won", "dp_sbx_recon", "", "1234 CNY"),
    ]
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile", stdout=out)
    assert "missing_in_ledger dispute dp_sbx_recon: ledger [-] gateway [1234 CNY]" in out.getvalue().splitlines()
    assert _snapshot() == before


@pytest.mark.parametrize("won", [True, False], ids=["won", "open"])
def test_a_ledger_dispute_whose_record_is_gone_is_missing_at_the_gateway(
    trades, django_capture_on_commit_callbacks, won
):
    _, second = trades
    _disputed(second, django_capture_on_commit_callbacks, won=True if won else None)
    SandboxDispute.objects.all().delete()
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 5
    assert report.differences == [
        Difference(MISSING_AT_GATEWAY, "dispute", "dp_sbx_recon", "1234 CNY", ""),
        *([Difference(MISSING_AT_GATEWAY, "dispute_won", "dp_sbx_recon", "1234 CNY", "")] if won else []),
    ]
    assert report.notes == []
    assert _snapshot() == before


def test_a_dispute_whose_record_differs_is_exactly_the_difference(trades, django_capture_on_commit_callbacks):
    _, second = trades
    _disputed(second, django_capture_on_commit_callbacks, won=True)
    SandboxDispute.objects.filter(pk="dp_sbx_recon").update(amount=1000)
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert report.matched == 5
    assert report.differences == [
        Difference(AMOUNT_MISMATCH, "dispute", "dp_sbx_recon", "1234 CNY", "1000 CNY"),
        Difference(AMOUNT_MISMATCH, "dispute_won", "dp_sbx_recon", "1234 CNY", "1000 CNY"),
    ]
    assert _snapshot() == before
    # Another currency is a mismatch too; and a record closed lost has no won amount to compare.
    SandboxDispute.objects.filter(pk="dp_sbx_recon").update(amount=1234, currency="USD", status="lost")
    report = reconciliation_report(gateway="sandbox")
    assert report.differences == [
        Difference(AMOUNT_MISMATCH, "dispute", "dp_sbx_recon", "1234 CNY", "1234 USD"),
        Difference(MISSING_AT_GATEWAY, "dispute_won", "dp_sbx_recon", "1234 CNY", ""),
    ]


def test_disputes_after_refunds_match_what_was_left_to_withdraw(trades, staff, django_capture_on_commit_callbacks):
    first, second = trades
    # 200 of the first was refunded: the sandbox withdraws, and the exchange books, the 1034 left.
    _disputed(first, django_capture_on_commit_callbacks, won=True, dispute_id="dp_sbx_part")
    assert SandboxDispute.objects.get(pk="dp_sbx_part").amount == 1034
    # All of the second refunded: nothing left to withdraw, nothing booked, and no difference.
    order_refund(order=second, amount=1234, reason="wrong file", actor=staff)
    _disputed(second, django_capture_on_commit_callbacks, won=None, dispute_id="dp_sbx_none")
    assert SandboxDispute.objects.get(pk="dp_sbx_none").amount == 0
    report = reconciliation_report(gateway="sandbox")
    # 2 payments, 2 payouts, 2 refunds, the first's dispute and its being won.
    assert (report.ok, report.matched, report.differences, report.notes) == (True, 8, [], [])


def test_disputes_opened_before_the_sandbox_kept_records_are_noted_not_reported(
    trades, django_capture_on_commit_callbacks
):
    first, second = trades
    _disputed(second, django_capture_on_commit_callbacks, won=None, dispute_id="dp_sbx_old")
    # Opened by the sandbox of before its dispute records: it remembers nothing of it, and closes it without one.
    SandboxDispute.objects.all().delete()
    MigrationRecorder(connection).migration_qs.filter(app="exchange", name="0024_sandbox_disputes").update(
        applied=JournalEntry.objects.get(kind="dispute").created_at + timedelta(seconds=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_dispute(
            order=Order.objects.get(pk=second.pk), status="won", closed=True, dispute_id="dp_sbx_old"
        )
    assert JournalEntry.objects.filter(kind__in=["dispute", "dispute_won"]).count() == 2
    # A dispute opened since is on the sandbox's books and checked.
    _disputed(first, django_capture_on_commit_callbacks, won=None, dispute_id="dp_sbx_new")
    before = _snapshot()
    report = reconciliation_report(gateway="sandbox")
    assert (report.ok, report.matched, report.differences) == (True, 6, [])
    assert report.notes == [SANDBOX_UNRECORDED_DISPUTES_NOTE.format(count=1)]
    assert _snapshot() == before  # no records made up for it


def test_a_dispute_recorded_just_before_since_and_booked_after_it_is_matched(
    trades, django_capture_on_commit_callbacks
):
    _, second = trades
    _disputed(second, django_capture_on_commit_callbacks, won=True)
    withdrawn = JournalEntry.objects.get(kind="dispute")
    given_back = JournalEntry.objects.get(kind="dispute_won")
    since = withdrawn.created_at  # everything else was booked before the dispute
    SandboxDispute.objects.filter(pk="dp_sbx_recon").update(created_at=since - timedelta(seconds=1))
    report = reconciliation_report(gateway="sandbox", since=since)
    assert (report.ok, report.matched, report.differences) == (True, 2, [])  # the dispute and its being won
    # And a record closed from ``since`` on whose closing was booked before it belongs to an earlier report.
    later = given_back.created_at + timedelta(seconds=1)
    SandboxDispute.objects.filter(pk="dp_sbx_recon").update(
        created_at=later + timedelta(seconds=1), closed_at=later + timedelta(seconds=1)
    )
    report = reconciliation_report(gateway="sandbox", since=later)
    assert (report.ok, report.matched, report.differences) == (True, 0, [])


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
    assert "keeps no dispute records" not in html
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


def _stripe_event(client, capture, event_type: str, obj: dict) -> None:
    """Deliver a signed Stripe event to the webhook endpoint and process it."""
    event = {"id": f"evt_{time.time_ns()}", "object": "event", "type": event_type, "data": {"object": obj}}
    body = json.dumps(event).encode()
    with capture(execute=True):
        response = client.post(
            reverse("exchange:webhook", args=["stripe"]),
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sign_payload(body=body, secret=WEBHOOK_SECRET),
        )
    assert response.status_code == 200


def _stripe_sale(client, listing, capture, fake, intent: str, charged_at: int | None = None) -> Order:
    """A buyer pays through Stripe Checkout (the charge at Stripe ``charged_at``, default now), confirms receipt,
    and a settlement run pays the merchant by a Connect transfer."""
    buyer = UserFactory()
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=f"k-{buyer.pk}")
    order_checkout_start(order=order)
    order.refresh_from_db()
    session = {
        "id": order.gateway_session_id,
        "object": "checkout.session",
        "amount_total": order.amount,
        "currency": order.currency.lower(),
        "payment_status": "paid",
        "payment_intent": intent,
        "metadata": {"order_id": str(order.public_id)},
    }
    _stripe_event(client, capture, "checkout.session.completed", session)
    fake.charge(payment_intent=intent, amount=order.amount, currency=order.currency, created=charged_at)
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
    fake_stripe.sources[transfer["source"]]["amount"] = 1000
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
    # Read from three days earlier: a movement Stripe recorded before ``since`` may be booked after it.
    assert params["created"] == {"gte": str(int(since.timestamp()) - 3 * 24 * 3600)}


def test_stripe_balance_transaction_amount_is_not_compared_only_the_source(stripe_trades, fake_stripe):
    # The balance transaction is in the balance currency: a different figure there (fees, conversion) is no mismatch.
    charge = fake_stripe.balance_transactions[0]
    assert charge["type"] == "charge"
    charge["amount"] = 1200
    report = reconciliation_report(gateway="stripe")
    assert (report.ok, report.matched) == (True, 5)


@pytest.fixture
def usd_trade(fake_stripe, client, merchant, merchant_user, staff, django_capture_on_commit_callbacks):
    """A 1500 USD Stripe sale on a platform whose balance is in CNY: settled, paid out (1350 USD), 300 refunded."""
    merchant.stripe_account_id = "acct_test_merchant"
    merchant.save(update_fields=["stripe_account_id"])
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, price=1500, currency="USD")
    order = _stripe_sale(client, listing, django_capture_on_commit_callbacks, fake_stripe, "pi_test_usd")
    assert Payout.objects.get(currency="USD").amount == 1350
    order_refund(order=order, amount=300, reason="a late file", actor=staff)
    # What Stripe's balance shows: CNY, converted (1500 * 7.1234, -1350 * 7.1234, -300 * 7.1234).
    balance = [(t["type"], t["amount"], t["currency"]) for t in fake_stripe.balance_transactions]
    assert balance == [("charge", 10685, "cny"), ("transfer", -9617, "cny"), ("refund", -2137, "cny")]
    return order


def test_stripe_foreign_currency_movements_match_their_original_amount(usd_trade, fake_stripe):
    report = reconciliation_report(gateway="stripe")
    assert (report.ok, report.matched, report.differences, report.notes) == (True, 3, [], [])


def test_stripe_foreign_currency_mismatch_is_still_reported(usd_trade, fake_stripe):
    charge, transfer, _refund = (fake_stripe.sources[t["source"]] for t in fake_stripe.balance_transactions)
    charge["amount"] = 1400
    transfer["currency"] = "eur"
    report = reconciliation_report(gateway="stripe")
    assert report.matched == 1  # the refund
    assert report.differences == [
        Difference(AMOUNT_MISMATCH, "payment", "pi_test_usd", "1500 USD", "1400 USD"),
        Difference(AMOUNT_MISMATCH, "payout", transfer["id"], "1350 USD", "1350 EUR"),
    ]


def _dispute_event(client, capture, dispute: dict, event_type: str = "charge.dispute.created") -> None:
    _stripe_event(client, capture, event_type, {**dispute, "reason": "fraudulent"})


def test_stripe_dispute_and_dispute_won_are_matched(
    stripe_trades, fake_stripe, client, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    dispute = fake_stripe.dispute(payment_intent="pi_test_2", amount=1234, currency="CNY")
    _dispute_event(client, capture, dispute)
    report = reconciliation_report(gateway="stripe")
    # The withdrawal is an adjustment whose source is the dispute: compared, not ignored.
    assert (report.ok, report.matched, report.differences, report.notes) == (True, 6, [], [])
    fake_stripe.dispute_won(dispute)
    _dispute_event(client, capture, dispute, "charge.dispute.closed")
    assert JournalEntry.objects.filter(kind="dispute_won").count() == 1
    report = reconciliation_report(gateway="stripe")
    assert (report.ok, report.matched, report.differences, report.notes) == (True, 7, [], [])


def test_stripe_dispute_missing_on_either_side_is_reported(
    stripe_trades, fake_stripe, client, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # Stripe withdrew the funds but the exchange never heard of it.
    unheard = fake_stripe.dispute(payment_intent="pi_test_1", amount=1234, currency="CNY")
    # The exchange booked a dispute, and it being won, that Stripe's balance does not show.
    unseen = {
        "id": "dp_test_unseen",
        "object": "dispute",
        "payment_intent": "pi_test_2",
        "amount": 1234,
        "currency": "cny",
        "status": "needs_response",
    }
    _dispute_event(client, capture, unseen)
    _dispute_event(client, capture, {**unseen, "status": "won"}, "charge.dispute.closed")
    report = reconciliation_report(gateway="stripe")
    assert report.matched == 5
    assert report.differences == [
        Difference(MISSING_IN_LEDGER, "dispute", unheard["id"], "", "1234 CNY"),
        Difference(MISSING_AT_GATEWAY, "dispute", "dp_test_unseen", "1234 CNY", ""),
        Difference(MISSING_AT_GATEWAY, "dispute_won", "dp_test_unseen", "1234 CNY", ""),
    ]


def test_stripe_foreign_currency_dispute_is_matched(usd_trade, fake_stripe, client, django_capture_on_commit_callbacks):
    # 300 of the 1500 was refunded: the bank pulls back the 1200 left.
    dispute = fake_stripe.dispute(payment_intent="pi_test_usd", amount=1200, currency="USD")
    _dispute_event(client, django_capture_on_commit_callbacks, dispute)
    assert fake_stripe.balance_transactions[-1]["amount"] == -8548  # in CNY at Stripe
    report = reconciliation_report(gateway="stripe")
    assert (report.ok, report.matched, report.differences) == (True, 4, [])


def test_stripe_window_matches_a_movement_recorded_either_side_of_since(
    fake_stripe, client, published_listing, merchant, django_capture_on_commit_callbacks
):
    merchant.stripe_account_id = "acct_test_merchant"
    merchant.save(update_fields=["stripe_account_id"])
    since = datetime(2026, 3, 2, tzinfo=UTC)
    # Stripe charged at 23:59:50 the day before; the webhook booked the payment at 00:00:10 (in the window).
    with time_machine.travel(since + timedelta(seconds=10), tick=False):
        _stripe_sale(
            client,
            published_listing,
            django_capture_on_commit_callbacks,
            fake_stripe,
            "pi_test_boundary",
            charged_at=int(since.timestamp()) - 10,
        )
    # Wholly before the window (within the margin read to match the boundary): not this report's.
    fake_stripe.charge(payment_intent="pi_test_old", amount=500, currency="CNY", created=int(since.timestamp()) - 3600)
    # In the window, unknown to the ledger: reported.
    fake_stripe.charge(payment_intent="pi_test_new", amount=700, currency="CNY", created=int(since.timestamp()) + 3600)
    assert JournalEntry.objects.get(kind="payment").created_at == since + timedelta(seconds=10)
    report = reconciliation_report(gateway="stripe", since=since)
    assert report.matched == 2  # the payment and its payout
    assert report.differences == [Difference(MISSING_IN_LEDGER, "payment", "pi_test_new", "", "700 CNY")]
    # The day after: everything lies before it.
    later = reconciliation_report(gateway="stripe", since=since + timedelta(days=1))
    assert (later.matched, later.differences) == (0, [])
