"""The paid-but-undelivered sweeper: what it picks up from the database, and what it leaves alone."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from exchange.choices import DeliveryStatus, EntitlementStatus, OrderStatus
from exchange.models import Delivery, Entitlement, EntitlementStatusHistory, Order
from exchange.services.delivery_sweep import deliveries_sweep, undelivered_entitlements
from exchange.tasks import delivery_sweep
from listings.models import ListingVersion
from listings.selectors import listing_active_plan

HOUR_AGO = timedelta(hours=1)


def _paid(listing, buyer, *, key: str, granted_ago=HOUR_AGO, order_status=OrderStatus.PAID, **entitlement_fields):
    """A paid order and its entitlement as the payment leaves them (without the delivery task having run)."""
    plan = listing_active_plan(listing=listing)
    order = Order.objects.create(
        buyer=buyer,
        listing=listing,
        plan=plan,
        merchant_id=listing.merchant_id,
        amount=plan.amount,
        currency=plan.currency,
        idempotency_key=key,
        gateway="sandbox",
        paid_at=timezone.now() - granted_ago,
    )
    Order.objects.filter(pk=order.pk).update(status=order_status)
    entitlement = Entitlement.objects.create(
        order=order, buyer=buyer, listing=listing, plan=plan, version_access=plan.version_access, **entitlement_fields
    )
    Entitlement.objects.filter(pk=entitlement.pk).update(granted_at=timezone.now() - granted_ago)
    entitlement.refresh_from_db()
    return entitlement


def _delivery(entitlement, *, status, age=HOUR_AGO, version=None, attempts=0):
    delivery = Delivery.objects.create(
        entitlement=entitlement, version=version or entitlement.listing.versions.get(), status=status, attempts=attempts
    )
    Delivery.objects.filter(pk=delivery.pk).update(prepared_at=timezone.now() - age)
    return delivery


def test_sweeper_picks_only_paid_usable_entitlements_owed_their_latest_version(published_listing, buyer):
    owed = _paid(published_listing, buyer, key="owed")
    stuck = _paid(published_listing, buyer, key="stuck")
    _delivery(stuck, status=DeliveryStatus.PENDING, age=timedelta(minutes=5))  # its task died
    delivered_order = _paid(published_listing, buyer, key="delivered-order", order_status=OrderStatus.DELIVERED)

    fresh = _paid(published_listing, buyer, key="fresh", granted_ago=timedelta(seconds=5))  # its own task is on its way
    preparing = _paid(published_listing, buyer, key="preparing")
    _delivery(preparing, status=DeliveryStatus.PENDING, age=timedelta(seconds=5))
    ready = _paid(published_listing, buyer, key="ready")
    _delivery(ready, status=DeliveryStatus.READY)
    confirmed = _paid(published_listing, buyer, key="confirmed")
    _delivery(confirmed, status=DeliveryStatus.CONFIRMED)
    failed = _paid(published_listing, buyer, key="failed")
    _delivery(failed, status=DeliveryStatus.FAILED)  # refunded; never retried by the sweeper
    revoked = _paid(published_listing, buyer, key="revoked", status=EntitlementStatus.REVOKED)
    expired = _paid(published_listing, buyer, key="lapsed", valid_until=timezone.now() - timedelta(minutes=1))
    refunded = _paid(published_listing, buyer, key="refunded", order_status=OrderStatus.REFUNDED)

    found = undelivered_entitlements(older_than_seconds=60, limit=100)

    assert found == [owed.pk, stuck.pk, delivered_order.pk]
    left_alone = {fresh.pk, preparing.pk, ready.pk, confirmed.pk, failed.pk, revoked.pk, expired.pk, refunded.pk}
    assert left_alone.isdisjoint(found)


def test_a_pending_delivery_waiting_for_its_retry_backoff_is_not_taken_early(published_listing, buyer, settings):
    settings.DELIVERY_RETRY_BACKOFF_SECONDS, settings.DELIVERY_RETRY_BACKOFF_MAX_SECONDS = 30, 3600
    three_minutes = timedelta(minutes=3)
    # Two failed attempts: retries due 30 s and 30 + 60 s after creation; with the 60 s age, stuck after 150 s.
    overdue = _paid(published_listing, buyer, key="overdue")
    _delivery(overdue, status=DeliveryStatus.PENDING, age=three_minutes, attempts=2)
    # Three failed attempts: the third retry is due 30 + 60 + 120 s after creation; not stuck before 270 s.
    backing_off = _paid(published_listing, buyer, key="backing-off")
    _delivery(backing_off, status=DeliveryStatus.PENDING, age=three_minutes, attempts=3)

    assert undelivered_entitlements(older_than_seconds=60, limit=10) == [overdue.pk]
    later = timezone.now() + timedelta(seconds=91)
    assert undelivered_entitlements(older_than_seconds=60, limit=10, now=later) == [overdue.pk, backing_off.pk]


def test_a_new_version_is_owed_to_entitlements_delivered_only_the_old_one(published_listing, buyer):
    entitlement = _paid(published_listing, buyer, key="old-version")
    _delivery(entitlement, status=DeliveryStatus.CONFIRMED)
    assert undelivered_entitlements(older_than_seconds=60, limit=10) == []

    ListingVersion.objects.create(listing=published_listing, label="v2", published_at=timezone.now())

    assert undelivered_entitlements(older_than_seconds=60, limit=10) == [entitlement.pk]


def test_sweep_enqueues_delivery_for_the_oldest_first_up_to_the_batch(
    published_listing, buyer, django_capture_on_commit_callbacks
):
    oldest = _paid(published_listing, buyer, key="a", granted_ago=timedelta(hours=3))
    middle = _paid(published_listing, buyer, key="b", granted_ago=timedelta(hours=2))
    newest = _paid(published_listing, buyer, key="c", granted_ago=timedelta(hours=1))

    # Tasks run inline in the unit tests: the enqueued delivery_prepare delivers at once.
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_sweep(older_than_seconds=60, batch=2) == [oldest.pk, middle.pk]

    delivered = Delivery.objects.filter(status=DeliveryStatus.READY, ready_at__isnull=False)
    assert sorted(delivered.values_list("entitlement_id", flat=True)) == [oldest.pk, middle.pk]
    assert undelivered_entitlements(older_than_seconds=60, limit=10) == [newest.pk]

    with django_capture_on_commit_callbacks(execute=True):
        assert delivery_sweep.delay(older_than_seconds=60).get() == 1
    assert Delivery.objects.filter(entitlement=newest, status=DeliveryStatus.READY).count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_sweep(older_than_seconds=60) == []  # every one delivered: a second sweep does nothing
    assert Delivery.objects.count() == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"older_than_seconds": -1}, "older_than_seconds must be a whole number of seconds >= 0, got -1"),
        ({"older_than_seconds": 1.5}, "older_than_seconds must be a whole number of seconds >= 0, got 1.5"),
        ({"older_than_seconds": "60"}, "older_than_seconds must be a whole number of seconds >= 0, got '60'"),
        ({"batch": 0}, "batch must be a whole number from 1 to 10000, got 0"),
        ({"batch": 10_001}, "batch must be a whole number from 1 to 10000, got 10001"),
        ({"batch": True}, "batch must be a whole number from 1 to 10000, got True"),
    ],
)
def test_sweep_refuses_bad_arguments_and_changes_nothing(
    published_listing, buyer, django_capture_on_commit_callbacks, kwargs, message
):
    _paid(published_listing, buyer, key="owed")
    history = EntitlementStatusHistory.objects.count()

    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(ValueError) as raised:
        deliveries_sweep(**kwargs)

    assert str(raised.value) == message
    assert callbacks == [] and not Delivery.objects.exists()
    assert EntitlementStatusHistory.objects.count() == history


def test_beat_runs_the_sweep_on_the_delivery_queue_at_the_configured_interval():
    entry = settings.CELERY_BEAT_SCHEDULE["delivery-sweep"]
    assert entry == {"task": "exchange.tasks.delivery_sweep", "schedule": 60.0}
    assert (settings.DELIVERY_SWEEP_SECONDS, settings.DELIVERY_SWEEP_AGE_SECONDS) == (60, 60)
    assert delivery_sweep.name == "exchange.tasks.delivery_sweep"  # matched by the delivery_* route
    assert settings.CELERY_TASK_ROUTES["exchange.tasks.delivery_*"] == {"queue": "delivery"}


def test_sweep_without_an_age_uses_the_setting(published_listing, buyer, settings):
    settings.DELIVERY_SWEEP_AGE_SECONDS = 7200
    _paid(published_listing, buyer, key="an-hour-old")
    assert deliveries_sweep() == []
    settings.DELIVERY_SWEEP_AGE_SECONDS = 600
    assert len(deliveries_sweep()) == 1


def test_a_product_without_a_published_version_owes_nothing(published_listing, buyer):
    entitlement = _paid(published_listing, buyer, key="unpublished")
    ListingVersion.objects.filter(listing=published_listing).update(published_at=None)
    assert undelivered_entitlements(older_than_seconds=0, limit=10) == []
    assert Entitlement.objects.get(pk=entitlement.pk).status == EntitlementStatus.ACTIVE
