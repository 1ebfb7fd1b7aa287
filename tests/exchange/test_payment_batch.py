"""The payment drain applies plain paid checkouts in batches, with the per-event handler's exact outcome."""

import json
import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from exchange.choices import JournalKind, OrderStatus, PaymentEventStatus
from exchange.models import (
    Entitlement,
    EntitlementStatusHistory,
    JournalEntry,
    Notification,
    Order,
    OrderStatusHistory,
    PaymentEvent,
    Posting,
)
from exchange.services import payments
from exchange.services.ledger import EntrySpec, UnbalancedEntry, account_get, journal_post_many, ledger_verify
from exchange.services.orders import OrderTransitionError, order_checkout_start, order_create, orders_transition_locked
from tests.exchange.helpers import checkout_completed_event
from tests.factories import UserFactory, make_listing

pytestmark = pytest.mark.django_db


@pytest.fixture
def listing(merchant, merchant_user, staff):
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff)


def _pending(listing, n, start=0):
    orders = []
    for i in range(start, start + n):
        order, _ = order_create(buyer=UserFactory(), listing=listing, idempotency_key=f"batch-{i}")
        order_checkout_start(order=order)
        order.refresh_from_db()
        orders.append(order)
    return orders


def _store(event: dict) -> PaymentEvent:
    stored, _ = payments._event_insert(gateway="sandbox", event=event, body=json.dumps(event).encode())
    return stored


def _apply(events):
    with CaptureQueriesContext(connection) as ctx:
        applied, passed_over = payments.payment_events_apply_batch(event_pks=[e.pk for e in events])
    assert passed_over == set()
    return applied, len(ctx.captured_queries)


def test_a_batch_pays_every_order_in_a_fixed_number_of_queries(listing):
    first = [_store(checkout_completed_event(o)) for o in _pending(listing, 1)]
    _apply(first)  # the first payment ever also creates the ledger accounts and the chain head
    small = [_store(checkout_completed_event(o)) for o in _pending(listing, 2, start=1)]
    applied_small, queries_small = _apply(small)
    large = [_store(checkout_completed_event(o)) for o in _pending(listing, 20, start=3)]
    applied_large, queries_large = _apply(large)

    assert applied_small == {e.pk for e in small} and applied_large == {e.pk for e in large}
    assert queries_large == queries_small  # the cost of a batch does not grow with its size
    assert Order.objects.filter(status=OrderStatus.PAID, paid_at__isnull=False).count() == 23
    assert PaymentEvent.objects.filter(status=PaymentEventStatus.PROCESSED, attempts=1).count() == 23
    assert set(PaymentEvent.objects.values_list("outcome", flat=True)) == {"order paid, entitlement granted"}
    assert Entitlement.objects.count() == 23
    assert EntitlementStatusHistory.objects.count() == 23
    assert OrderStatusHistory.objects.filter(to_status=OrderStatus.PAID).count() == 23
    payments_booked = JournalEntry.objects.filter(kind=JournalKind.PAYMENT)
    assert payments_booked.count() == 23
    assert sorted(payments_booked.values_list("idempotency_key", flat=True)) == sorted(
        f"payment:{o.pk}" for o in Order.objects.all()
    )
    assert Notification.objects.filter(kind="purchase_confirmed").count() == 23
    assert ledger_verify().ok


def test_the_batch_leaves_anything_unusual_to_the_per_event_handler(listing):
    fine, wrong_amount, twice = _pending(listing, 3)
    events = [
        _store(checkout_completed_event(fine)),
        _store(checkout_completed_event(wrong_amount, amount=1)),
        _store(checkout_completed_event(twice)),
        _store(checkout_completed_event(twice)),  # a second event for the same order
    ]
    applied, passed_over = payments.payment_events_apply_batch(event_pks=[e.pk for e in events])
    assert (applied, passed_over) == ({events[0].pk, events[2].pk}, set())
    assert PaymentEvent.objects.get(pk=events[1].pk).status == PaymentEventStatus.RECEIVED
    assert PaymentEvent.objects.get(pk=events[3].pk).status == PaymentEventStatus.RECEIVED
    wrong_amount.refresh_from_db()
    assert wrong_amount.status == OrderStatus.PENDING_PAYMENT

    # The drain gives the rest their per-event outcomes: a refused amount fails, the duplicate is a no-op.
    assert payments.payment_events_drain() == 1
    refused, duplicate = PaymentEvent.objects.get(pk=events[1].pk), PaymentEvent.objects.get(pk=events[3].pk)
    assert (refused.status, refused.outcome) == (PaymentEventStatus.FAILED, "")
    assert (duplicate.status, duplicate.outcome) == (PaymentEventStatus.PROCESSED, "order already paid")
    assert Entitlement.objects.count() == 2
    assert JournalEntry.objects.filter(kind=JournalKind.PAYMENT).count() == 2
    assert ledger_verify().ok


def test_replaying_a_batch_changes_nothing(listing):
    events = [_store(checkout_completed_event(o)) for o in _pending(listing, 3)]
    pks = [e.pk for e in events]
    assert payments.payment_events_apply_batch(event_pks=pks) == (set(pks), set())
    counts = (Entitlement.objects.count(), JournalEntry.objects.count(), Notification.objects.count())
    # Processed events are no longer waiting: the drain passes over them.
    assert payments.payment_events_apply_batch(event_pks=pks) == (set(), set(pks))
    assert (Entitlement.objects.count(), JournalEntry.objects.count(), Notification.objects.count()) == counts


def test_one_refused_move_writes_nothing_for_the_whole_batch(listing):
    first, second = _pending(listing, 2)
    Order.objects.filter(pk=second.pk).update(status=OrderStatus.CANCELLED)
    orders = list(Order.objects.filter(pk__in=[first.pk, second.pk]).order_by("pk"))
    with pytest.raises(OrderTransitionError, match=second.reference):
        orders_transition_locked(orders=orders, to_status=OrderStatus.PAID, reasons={})
    assert Order.objects.get(pk=first.pk).status == OrderStatus.PENDING_PAYMENT
    assert not OrderStatusHistory.objects.filter(to_status=OrderStatus.PAID).exists()


def test_journal_batches_chain_in_order_and_refuse_unbalanced_entries_whole():
    clearing, held = account_get(kind="gateway_clearing"), account_get(kind="escrow_held")
    good = EntrySpec("k1", JournalKind.PAYMENT, [(clearing, 100, "CNY"), (held, -100, "CNY")])
    bad = EntrySpec("k2", JournalKind.PAYMENT, [(clearing, 100, "CNY"), (held, -99, "CNY")])
    with pytest.raises(UnbalancedEntry, match="k2"):
        journal_post_many([good, bad])
    assert not JournalEntry.objects.exists() and not Posting.objects.exists()

    again = EntrySpec("k3", JournalKind.PAYMENT, [(clearing, 5, "USD"), (held, -5, "USD")])
    results = journal_post_many([good, again, good])
    assert [created for _, created in results] == [True, True, False]
    assert results[2][0].pk == results[0][0].pk
    first, second = JournalEntry.objects.order_by("sequence")
    # One batch, one block: numbered in order, the second chained to the first inside the block.
    assert first.block_id == second.block_id and (first.position, second.position) == (1, 2)
    assert first.sequence < second.sequence and second.prev_hash == first.entry_hash
    assert journal_post_many([good]) == [(first, False)]
    assert ledger_verify().ok


@pytest.mark.django_db(transaction=True)
def test_a_second_drain_passes_over_the_events_another_drain_holds(listing):
    held, free = _pending(listing, 2)
    held_event, free_event = _store(checkout_completed_event(held)), _store(checkout_completed_event(free))
    locked, release = threading.Event(), threading.Event()

    def other_drain():
        try:
            with transaction.atomic():
                list(PaymentEvent.objects.select_for_update().filter(pk=held_event.pk))
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other_drain)
    thread.start()
    try:
        assert locked.wait(10)
        applied, passed_over = payments.payment_events_apply_batch(event_pks=[held_event.pk, free_event.pk])
    finally:
        release.set()
        thread.join()
    assert (applied, passed_over) == ({free_event.pk}, {held_event.pk})
    assert PaymentEvent.objects.get(pk=held_event.pk).status == PaymentEventStatus.RECEIVED
    assert Order.objects.get(pk=held.pk).status == OrderStatus.PENDING_PAYMENT
