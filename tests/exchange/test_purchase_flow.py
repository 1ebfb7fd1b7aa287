"""The whole trade through the web UI, with Celery tasks run eagerly on commit."""

import pytest
from django.core.management import call_command
from django.urls import reverse

from exchange.choices import (
    DeliveryStatus,
    EntitlementStatus,
    JournalKind,
    OrderStatus,
    PaymentEventStatus,
    PayoutStatus,
    SettlementRunStatus,
)
from exchange.models import Delivery, Entitlement, JournalEntry, Order, PaymentEvent, Payout, Posting, SettlementRun
from exchange.services.ledger import ledger_verify
from tests.exchange.helpers import approve_in_sandbox, buy, library_links, read_stream
from tests.factories import SAMPLE_CSV

pytestmark = pytest.mark.django_db


def test_buyer_pays_in_sandbox_downloads_and_merchant_is_paid(
    client, buyer, published_listing, django_capture_on_commit_callbacks, settings
):
    settings.PLATFORM_FEE_BPS = 1000
    client.force_login(buyer)
    response = buy(client, published_listing)
    order = Order.objects.get()
    assert order.status == OrderStatus.PENDING_PAYMENT
    assert (order.amount, order.currency) == (1234, "CNY")
    assert response.status_code == 302 and response.url == order.checkout_url

    page = client.get(order.checkout_url)
    assert page.status_code == 200 and b"Approve payment" in page.content
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = approve_in_sandbox(client, order.checkout_url)
    assert response.status_code == 302
    assert response.url == reverse("exchange:order_detail", args=[order.public_id])
    assert len(callbacks) >= 1

    order.refresh_from_db()
    assert order.status == OrderStatus.PAID and order.paid_at is not None
    event = PaymentEvent.objects.get()
    assert (event.type, event.status) == ("checkout.session.completed", PaymentEventStatus.PROCESSED)
    entitlement = Entitlement.objects.get()
    assert (entitlement.buyer, entitlement.status) == (buyer, EntitlementStatus.ACTIVE)
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.READY
    payment_entry = JournalEntry.objects.get(kind=JournalKind.PAYMENT)
    assert sorted(payment_entry.postings.values_list("amount", flat=True)) == [-1234, 1234]

    timeline = client.get(reverse("exchange:order_detail", args=[order.public_id]))
    assert b"Paid (held in escrow)" in timeline.content

    links = library_links(client.get(reverse("exchange:library")).content.decode())
    assert len(links) == 1
    download = client.get(links[0])
    assert download.status_code == 200
    assert download["X-Content-SHA256"] == published_listing.versions.get().files.get().sha256
    assert download["Content-Disposition"] == 'attachment; filename="data.csv"'
    assert read_stream(download) == SAMPLE_CSV
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED
    assert Delivery.objects.get().status == DeliveryStatus.CONFIRMED

    with django_capture_on_commit_callbacks(execute=True):
        call_command("settle")
    run = SettlementRun.objects.get()
    assert run.status == SettlementRunStatus.COMPLETED and run.orders_settled == 1
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED and order.settlement_run == run
    sale = JournalEntry.objects.get(kind=JournalKind.SALE)
    assert sorted(sale.postings.values_list("account__code", "amount")) == [
        ("escrow_held", 1234),
        (f"merchant_payable:{published_listing.merchant_id}", -1111),
        ("platform_revenue", -123),
    ]
    payout = Payout.objects.get()
    assert (payout.amount, payout.currency, payout.status) == (1111, "CNY", PayoutStatus.SENT)
    assert payout.gateway_reference.startswith("tr_sbx_")
    # Every entry balances, the merchant is paid out to zero, and the chain verifies.
    assert sum(Posting.objects.values_list("amount", flat=True)) == 0
    assert (
        sum(
            Posting.objects.filter(account__code=f"merchant_payable:{published_listing.merchant_id}").values_list(
                "amount", flat=True
            )
        )
        == 0
    )
    assert ledger_verify().ok


def test_declined_payment_grants_nothing(client, buyer, published_listing, django_capture_on_commit_callbacks):
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url, decision="decline")
    order.refresh_from_db()
    assert order.status == OrderStatus.DECLINED
    assert Entitlement.objects.count() == 0
    assert JournalEntry.objects.count() == 0
    assert library_links(client.get(reverse("exchange:library")).content.decode()) == []


def test_double_submitted_buy_form_creates_one_order_and_one_session(client, buyer, published_listing):
    client.force_login(buyer)
    first = buy(client, published_listing, token="7d0c0d7e-6b55-4e1a-9d0c-2a8d0b1c1e11")
    second = buy(client, published_listing, token="7d0c0d7e-6b55-4e1a-9d0c-2a8d0b1c1e11")
    assert Order.objects.count() == 1
    assert first.url == second.url == Order.objects.get().checkout_url
    from exchange.models import SandboxCheckoutSession

    assert SandboxCheckoutSession.objects.count() == 1


def test_sandbox_session_cannot_be_approved_twice(client, buyer, published_listing, django_capture_on_commit_callbacks):
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
        approve_in_sandbox(client, order.checkout_url)
    assert PaymentEvent.objects.count() == 1
    assert Entitlement.objects.count() == 1


def test_settlement_run_refuses_while_another_runs(staff):
    from django.core.management.base import CommandError

    SettlementRun.objects.create(requested_by=staff)
    with pytest.raises(CommandError, match="still running"):
        call_command("settle")
    assert SettlementRun.objects.count() == 1
