"""The purchase driven end to end, with a real Celery worker process doing the work."""

import re
from collections import defaultdict

import pytest
from django.urls import reverse

from exchange.choices import DeliveryStatus, OrderStatus, PaymentEventStatus, PayoutStatus, SettlementRunStatus
from exchange.models import Delivery, Entitlement, JournalEntry, Order, PaymentEvent, Payout, Posting, SettlementRun
from exchange.services.ledger import ledger_verify
from exchange.services.settlement import settlement_run_start
from tests.exchange.helpers import approve_in_sandbox, buy, library_links, read_stream
from tests.factories import UserFactory, make_listing, make_merchant
from tests.system.conftest import wait_for

pytestmark = pytest.mark.system

CONTENT = "station,date,passengers\n贵阳北站,2025-01-01,51234\n上海虹桥,2025-01-01,301234\n".encode()


def test_worker_delivers_paid_order_and_settles_it(celery_worker_process, client):
    seller = UserFactory(email="seller@example.com")
    merchant = make_merchant(seller, name="Rail Data")
    listing = make_listing(merchant=merchant, owner=seller, content=CONTENT, price=5000)
    buyer = UserFactory(email="buyer@example.com")

    client.force_login(buyer)
    buy(client, listing)
    order = Order.objects.get()
    approve_in_sandbox(client, order.checkout_url)

    # The web process only stored the signed event; the worker applies it.
    event = PaymentEvent.objects.get()
    wait_for(
        lambda: PaymentEvent.objects.get(pk=event.pk).status == PaymentEventStatus.PROCESSED,
        message="the worker to process the paid event",
    )
    wait_for(
        lambda: Delivery.objects.filter(status=DeliveryStatus.READY).exists(),
        message="the worker to prepare the delivery",
    )
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert Entitlement.objects.get().buyer == buyer
    log = celery_worker_process.log()
    assert re.search(r"Task exchange\.tasks\.payment_events_drain\[[^\]]+\] succeeded", log), log
    assert re.search(r"Task exchange\.tasks\.delivery_prepare(?:_batch)?\[[^\]]+\] succeeded", log), log

    links = library_links(client.get(reverse("exchange:library")).content.decode())
    assert len(links) == 1
    response = client.get(links[0])
    assert response.status_code == 200
    assert read_stream(response) == CONTENT
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED

    run = settlement_run_start(trigger="test")
    wait_for(
        lambda: SettlementRun.objects.get(pk=run.pk).status != SettlementRunStatus.RUNNING, message="the settlement run"
    )
    wait_for(lambda: Payout.objects.filter(status=PayoutStatus.SENT).exists(), message="the payout to be sent")
    run.refresh_from_db()
    assert run.status == SettlementRunStatus.COMPLETED and run.orders_settled == 1
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED
    payout = Payout.objects.get()
    assert (payout.merchant, payout.amount, payout.currency) == (merchant, 4500, "CNY")

    # Every entry balances per currency; the whole ledger sums to zero; the chain verifies.
    for entry in JournalEntry.objects.all():
        totals = defaultdict(int)
        for amount, currency in entry.postings.values_list("amount", "currency"):
            totals[currency] += amount
        assert set(totals.values()) == {0}, entry
    assert JournalEntry.objects.count() == 4  # payment, sale, payout created, payout sent
    assert sum(Posting.objects.values_list("amount", flat=True)) == 0
    result = ledger_verify()
    assert result.ok and result.entries_checked == 4
