"""Batched delivery preparation: a batch of paid entitlements prepared in a fixed number of queries, same guarantees."""

import base64
import hashlib
import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
import redis
from django.conf import settings as django_settings
from django.core.files.storage import FileSystemStorage
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from exchange.celery import app as celery_app
from exchange.choices import DeliveryStatus, EntitlementStatus, NotificationKind, OrderStatus, RefundStatus
from exchange.models import Delivery, DeliveryStatusHistory, Entitlement, Notification, Order, Refund
from exchange.services.delivery import (
    DeliveryMove,
    DeliveryTransitionError,
    delivery_prepare,
    delivery_prepare_many,
    delivery_transitions_apply,
    receipt_build,
    receipt_canonical_bytes,
)
from exchange.services.entitlements import entitlement_grant, entitlement_revoke
from exchange.services.orders import order_transition
from exchange.tasks import delivery_prepare_batch
from listings.profiling import datafile_profile_run
from listings.selectors import listing_active_plan
from listings.services import version_publish, version_upload
from tests.exchange.helpers import approve_in_sandbox, buy
from tests.factories import SAMPLE_CSV, UserFactory, csv_upload, make_listing

pytestmark = pytest.mark.django_db

V2_CSV = b"city,year,population\nGuiyang,2025,6500000\nShanghai,2025,24900000\n"
AIR_CSV = b"city,year,pm25\nGuiyang,2024,24\nShanghai,2024,31\n"


@pytest.fixture
def air_listing(merchant, merchant_user, staff):
    """A second published product of the same merchant, with a different file."""
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title="Air quality", content=AIR_CSV)


def paid_entitlements(listing, count: int, *, prefix: str) -> list[Entitlement]:
    """``count`` buyers' paid orders of ``listing`` and their entitlements, as the payment leaves them
    (the delivery task not yet run)."""
    plan = listing_active_plan(listing=listing)
    entitlements = []
    for n in range(count):
        buyer = UserFactory(email=f"{prefix}{n}@example.com")
        order = Order.objects.create(
            buyer=buyer,
            listing=listing,
            plan=plan,
            merchant_id=listing.merchant_id,
            amount=plan.amount,
            currency=plan.currency,
            idempotency_key=f"{prefix}-{n}",
            gateway="sandbox",
        )
        order = order_transition(order_pk=order.pk, to_status=OrderStatus.PAID, reason="paid in tests")
        entitlements.append(entitlement_grant(order=order))
    return entitlements


def mixed_batch(city_listing, air_listing, size: int) -> list[int]:
    """``size`` entitlements, alternating between the two products (two listings, two files per batch)."""
    cities = paid_entitlements(city_listing, (size + 1) // 2, prefix=f"city{size}-")
    air = paid_entitlements(air_listing, size // 2, prefix=f"air{size}-")
    return [e.pk for e in cities + air]


def ready_notice(delivery: Delivery) -> dict:
    """What the single path has always sent when a delivery became READY."""
    entitlement, version = delivery.entitlement, delivery.version
    return {
        "user_id": entitlement.buyer_id,
        "kind": NotificationKind.DELIVERY_READY,
        "title": f"{entitlement.listing.title} {version.label} is ready to download",
        "body": (
            f"Your data is ready in your library. Order {entitlement.order.reference}; "
            f"receipt SHA-256 {delivery.receipt_sha256}."
        ),
        "url": reverse("exchange:library"),
        "data": {
            "delivery": delivery.pk,
            "order": str(entitlement.order.public_id),
            "listing_slug": entitlement.listing.slug,
            "version_label": version.label,
            "receipt_sha256": delivery.receipt_sha256,
        },
        "dedupe_key": f"delivery-ready:{delivery.pk}",
    }


def utc_iso(moment) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def loaded(pk: int) -> Delivery:
    return Delivery.objects.select_related(
        "entitlement__order", "entitlement__buyer", "entitlement__listing__merchant", "version"
    ).get(pk=pk)


def snapshot() -> dict:
    """Every delivery-related row, to compare before and after a call that must change nothing."""
    return {
        "deliveries": list(Delivery.objects.order_by("pk").values()),
        "history": list(DeliveryStatusHistory.objects.order_by("pk").values()),
        "notifications": list(Notification.objects.order_by("pk").values()),
        "refunds": list(Refund.objects.order_by("pk").values()),
    }


# --- queries ------------------------------------------------------------------------------------


# entitlements (with order, buyer, listing, merchant); published versions; their files; INSERT of the missing
# deliveries; SAVEPOINT; SELECT ... FOR UPDATE of the pending ones; history INSERT; UPDATE to READY;
# notifications_send_many (existing dedupe keys, INSERT, the users' webhook endpoints); RELEASE SAVEPOINT.
BATCH_QUERIES = 12


@pytest.mark.parametrize("size", [2, 30])
def test_a_batch_costs_the_same_queries_whatever_its_size(
    published_listing, air_listing, django_assert_num_queries, size
):
    pks = mixed_batch(published_listing, air_listing, size)
    with django_assert_num_queries(BATCH_QUERIES):
        prepared = delivery_prepare_many(entitlement_pks=pks)
    assert list(prepared) == pks
    assert [len(deliveries) for deliveries in prepared.values()] == [1] * size
    assert Delivery.objects.filter(status=DeliveryStatus.READY, attempts=1, last_error="").count() == size
    assert (
        DeliveryStatusHistory.objects.filter(
            from_status=DeliveryStatus.PENDING, to_status=DeliveryStatus.READY, reason="files verified"
        ).count()
        == size
    )
    assert Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).count() == size


class CountingStorage(FileSystemStorage):
    """The local storage, counting how often each stored file is stat'ed and opened."""

    calls: ClassVar[Counter] = Counter()

    def size(self, name):
        self.calls["size", name] += 1
        return super().size(name)

    def open(self, name, mode="rb"):
        self.calls["open", name] += 1
        return super().open(name, mode)


@pytest.fixture
def counting_storage(settings, _private_storage):
    CountingStorage.calls.clear()
    default = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**default, "BACKEND": "tests.exchange.test_delivery_batch.CountingStorage"},
    }
    return CountingStorage.calls


def test_each_stored_file_is_checked_once_per_batch_however_many_buyers(
    published_listing, air_listing, counting_storage
):
    pks = mixed_batch(published_listing, air_listing, 30)
    city_file = published_listing.versions.get().files.get().file.name
    air_file = air_listing.versions.get().files.get().file.name
    delivery_prepare_many(entitlement_pks=pks)
    assert Delivery.objects.filter(status=DeliveryStatus.READY).count() == 30
    assert dict(counting_storage) == {
        ("size", city_file): 1,
        ("open", city_file): 1,
        ("size", air_file): 1,
        ("open", air_file): 1,
    }


# --- receipts and notices ------------------------------------------------------------------------


def test_batch_receipts_and_notices_are_exactly_the_single_paths(published_listing, air_listing, buyer):
    single = paid_entitlements(published_listing, 1, prefix="single")[0]
    pks = mixed_batch(published_listing, air_listing, 4)
    [alone] = delivery_prepare(entitlement_pk=single.pk)
    prepared = delivery_prepare_many(entitlement_pks=pks)
    batch = [d for deliveries in prepared.values() for d in deliveries]
    assert len(batch) == 4
    for returned in [alone, *batch]:
        delivery = loaded(returned.pk)
        assert (returned.status, delivery.status) == (DeliveryStatus.READY, DeliveryStatus.READY)
        # The golden: the receipt built afresh from the database for the same moment, and its hash.
        golden = receipt_build(delivery=delivery, ready_at=delivery.ready_at)
        assert delivery.receipt == golden
        assert delivery.receipt_sha256 == hashlib.sha256(receipt_canonical_bytes(golden)).hexdigest()
        assert (returned.receipt, returned.receipt_sha256) == (delivery.receipt, delivery.receipt_sha256)
        notice = Notification.objects.get(dedupe_key=f"delivery-ready:{delivery.pk}")
        sent = {key: getattr(notice, key) for key in ("user_id", "kind", "title", "body", "url", "data", "dedupe_key")}
        assert sent == ready_notice(delivery)

    # One receipt in full, so the golden itself is pinned down.
    first = loaded(prepared[pks[0]][0].pk)
    entitlement, order = first.entitlement, first.entitlement.order
    data_file = published_listing.versions.get().files.get()
    iso = utc_iso(first.ready_at)
    assert first.receipt == {
        "receipt_format": 1,
        "delivery_id": first.pk,
        "order": {"reference": order.reference, "public_id": str(order.public_id)},
        "product": {
            "title": "City populations",
            "slug": published_listing.slug,
            "listing_id": published_listing.pk,
            "registration_number": published_listing.registration_number,
        },
        "version": {"label": "v1", "published_at": utc_iso(first.version.published_at)},
        "files": [
            {
                "name": "data.csv",
                "size": len(SAMPLE_CSV),
                "sha256": hashlib.sha256(SAMPLE_CSV).hexdigest(),
                "format": "csv",
                "content_type": data_file.content_type,
            }
        ],
        "licence": {"code": "CC-BY-4.0", "name": "CC BY 4.0"},
        "scenario": "",
        "buyer": {"email": "city4-0@example.com"},
        "merchant": {"name": "Guiyang Data"},
        "granted_at": utc_iso(entitlement.granted_at),
        "ready_at": iso,
        "issued_at": iso,
    }


# --- idempotency -----------------------------------------------------------------------------------


def test_preparing_a_batch_twice_makes_the_same_rows_and_one_notice_each(published_listing, air_listing):
    pks = mixed_batch(published_listing, air_listing, 6)
    first = delivery_prepare_many(entitlement_pks=pks)
    before = snapshot()
    again = delivery_prepare_many(entitlement_pks=pks + pks[:2])  # repeats in the batch are one entitlement
    assert snapshot() == before
    assert {pk: [d.pk for d in ds] for pk, ds in again.items()} == {pk: [d.pk for d in ds] for pk, ds in first.items()}
    assert [d.status for ds in again.values() for d in ds] == [DeliveryStatus.READY] * 6
    assert len(before["deliveries"]) == 6 and len(before["history"]) == 6
    assert Counter(
        n["dedupe_key"] for n in before["notifications"] if n["kind"] == NotificationKind.DELIVERY_READY
    ) == {f"delivery-ready:{d['id']}": 1 for d in before["deliveries"]}


def test_a_batch_delivers_every_covered_version_oldest_first(published_listing, merchant_user):
    [entitlement] = paid_entitlements(published_listing, 1, prefix="all")
    v2 = version_upload(listing=published_listing, actor=merchant_user, uploaded_file=csv_upload(V2_CSV))
    datafile_profile_run(data_file_pk=v2.files.get().pk)
    version_publish(version=v2, actor=merchant_user)
    prepared = delivery_prepare_many(entitlement_pks=[entitlement.pk])
    assert [(d.version.label, d.status) for d in prepared[entitlement.pk]] == [
        ("v1", DeliveryStatus.READY),
        ("v2", DeliveryStatus.READY),
    ]
    assert loaded(prepared[entitlement.pk][1].pk).receipt["files"][0]["sha256"] == hashlib.sha256(V2_CSV).hexdigest()


# --- file problems -------------------------------------------------------------------------------


@pytest.fixture
def broker_messages(settings):
    """Send tasks to the real Redis broker (not eagerly) and read back what reached the delivery queue."""
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete("delivery")
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False

    def messages() -> list[dict]:
        found = []
        for raw in reversed(client.lrange("delivery", 0, -1)):  # LPUSHed: oldest last
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append({"task": message["headers"]["task"], "args": args, "eta": message["headers"]["eta"]})
        return found

    yield messages
    celery_app.conf.task_always_eager = eager
    client.delete("delivery")
    client.close()


def test_a_missing_file_keeps_only_its_deliveries_pending_and_the_task_requeues_only_them(
    published_listing, air_listing, broker_messages, settings
):
    settings.DELIVERY_RETRY_BACKOFF_SECONDS = 30
    air_listing.versions.get().files.get().file.delete(save=False)
    pks = mixed_batch(published_listing, air_listing, 5)  # three city buyers, then two air buyers
    city, air = pks[:3], pks[3:]
    started = timezone.now()

    assert delivery_prepare_batch(pks) == 5

    deliveries = {d.entitlement_id: d for d in Delivery.objects.all()}
    assert {pk: (deliveries[pk].status, deliveries[pk].attempts, deliveries[pk].last_error) for pk in pks} == {
        **{pk: (DeliveryStatus.READY, 1, "") for pk in city},
        **{pk: (DeliveryStatus.PENDING, 1, "data.csv: the stored file is missing.") for pk in air},
    }
    for pk in air:
        assert (deliveries[pk].receipt, deliveries[pk].receipt_sha256, deliveries[pk].ready_at) == ({}, "", None)
        assert not DeliveryStatusHistory.objects.filter(delivery=deliveries[pk]).exists()
    ready_keys = set(
        Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).values_list("dedupe_key", flat=True)
    )
    assert ready_keys == {f"delivery-ready:{deliveries[pk].pk}" for pk in city}
    assert not Refund.objects.exists()

    sent = broker_messages()
    assert [(m["task"], m["args"]) for m in sent] == [("exchange.tasks.delivery_prepare", [pk]) for pk in air]
    for message in sent:  # the first backoff step
        eta = datetime.fromisoformat(message["eta"])
        assert started + timedelta(seconds=29) <= eta <= timezone.now() + timedelta(seconds=31)


def purchase(client, user, listing, capture) -> Order:
    client.force_login(user)
    with capture(execute=True):
        buy(client, listing)
        order = Order.objects.get(buyer=user, listing=listing)
        approve_in_sandbox(client, order.checkout_url)
    client.logout()
    order.refresh_from_db()
    return order


def test_the_last_attempt_fails_and_settles_like_the_single_path(
    client,
    buyer,
    other_buyer,
    merchant_user,
    published_listing,
    air_listing,
    django_capture_on_commit_callbacks,
    settings,
):
    settings.DELIVERY_MAX_ATTEMPTS = 1
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    order = purchase(client, other_buyer, air_listing, django_capture_on_commit_callbacks)
    # Back to paid-but-undelivered (the payment's delivery task not run yet), then lose the air file.
    Delivery.objects.all().delete()
    Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).delete()
    air_listing.versions.get().files.get().file.delete(save=False)
    pks = list(Entitlement.objects.order_by("pk").values_list("pk", flat=True))

    prepared = delivery_prepare_many(entitlement_pks=pks)

    city_delivery, air_delivery = prepared[pks[0]][0], prepared[pks[1]][0]
    assert (city_delivery.status, air_delivery.status) == (DeliveryStatus.READY, DeliveryStatus.FAILED)
    air_delivery.refresh_from_db()
    assert (air_delivery.attempts, air_delivery.last_error) == (1, "data.csv: the stored file is missing.")
    assert air_delivery.failed_at is not None and air_delivery.receipt_sha256 == ""
    assert list(air_delivery.history.values_list("from_status", "to_status", "reason")) == [
        (DeliveryStatus.PENDING, DeliveryStatus.FAILED, "attempt 1: data.csv: the stored file is missing.")
    ]
    refund = Refund.objects.get()
    assert (refund.order_id, refund.amount, refund.source, refund.idempotency_key, refund.status) == (
        order.pk,
        1234,
        "delivery_failure",
        f"delivery-failure:{order.pk}",
        RefundStatus.SUCCEEDED,
    )
    order.refresh_from_db()
    assert (order.status, order.refunded_amount) == (OrderStatus.REFUNDED, 1234)
    failed = Notification.objects.filter(kind=NotificationKind.DELIVERY_FAILED)
    assert sorted(failed.values_list("dedupe_key", flat=True)) == sorted(
        [f"delivery-failed:{air_delivery.pk}:buyer", f"delivery-failed:{air_delivery.pk}:member:{merchant_user.pk}"]
    )
    assert Notification.objects.get(kind=NotificationKind.DELIVERY_READY).user == buyer

    # Again (a redelivered batch): nothing more is refunded, sent or moved.
    before = snapshot()
    delivery_prepare_many(entitlement_pks=pks)
    assert snapshot() == before


# --- access and bad input -------------------------------------------------------------------------


def test_entitlements_without_access_get_nothing(published_listing, air_listing, staff):
    pks = mixed_batch(published_listing, air_listing, 4)
    revoked, lapsed = pks[0], pks[3]
    entitlement_revoke(entitlement_pk=revoked, reason="refunded in full")
    Entitlement.objects.filter(pk=lapsed).update(valid_until=timezone.now() - timedelta(minutes=1))

    prepared = delivery_prepare_many(entitlement_pks=pks)

    assert (prepared[revoked], prepared[lapsed]) == ([], [])
    assert sorted(Delivery.objects.values_list("entitlement_id", flat=True)) == sorted([pks[1], pks[2]])
    assert not Notification.objects.filter(
        kind=NotificationKind.DELIVERY_READY, user__entitlements__pk__in=[revoked, lapsed]
    ).exists()
    assert Entitlement.objects.get(pk=revoked).status == EntitlementStatus.REVOKED


def test_unknown_entitlements_map_to_nothing_in_a_batch_and_raise_alone(published_listing):
    [entitlement] = paid_entitlements(published_listing, 1, prefix="known")
    missing = entitlement.pk + 1000
    prepared = delivery_prepare_many(entitlement_pks=[missing, entitlement.pk])
    assert list(prepared) == [missing, entitlement.pk]
    assert prepared[missing] == [] and prepared[entitlement.pk][0].status == DeliveryStatus.READY
    before = snapshot()
    with pytest.raises(Entitlement.DoesNotExist, match=f"Entitlement {missing} does not exist."):
        delivery_prepare(entitlement_pk=missing)
    assert snapshot() == before


@pytest.mark.parametrize("bad", [["1"], [1.0], [None], [True]])
def test_pks_that_are_not_integers_are_refused_and_nothing_changes(published_listing, bad):
    [entitlement] = paid_entitlements(published_listing, 1, prefix="bad")
    before = snapshot()
    with pytest.raises(ValueError, match="Entitlement pks must be integers"):
        delivery_prepare_many(entitlement_pks=[entitlement.pk, *bad])
    assert snapshot() == before
    assert not Delivery.objects.exists()


def test_a_refused_move_in_a_batch_of_transitions_saves_none_of_them(published_listing):
    entitlements = paid_entitlements(published_listing, 2, prefix="moves")
    version = published_listing.versions.get()
    pending = Delivery.objects.create(entitlement=entitlements[0], version=version, status=DeliveryStatus.PENDING)
    failed = Delivery.objects.create(entitlement=entitlements[1], version=version, status=DeliveryStatus.FAILED)
    before = snapshot()
    with pytest.raises(DeliveryTransitionError) as exc:
        delivery_transitions_apply(
            [
                DeliveryMove(pending, DeliveryStatus.READY, "files verified", {"attempts": 1}),
                DeliveryMove(failed, DeliveryStatus.READY, "back from the dead", {"attempts": 9}),
            ]
        )
    assert exc.value.code == "delivery_transition"
    assert exc.value.messages == [f"Delivery {failed.pk} is failed (order refunded); it cannot become ready."]
    assert snapshot() == before


# --- concurrency ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_overlapping_batches_at_once_make_one_delivery_and_one_notice_each(published_listing, air_listing):
    pks = mixed_batch(published_listing, air_listing, 12)
    batches = [pks[:8], list(reversed(pks[4:]))]  # overlapping, in opposite orders
    start = threading.Barrier(2)
    results, errors = [], []

    def prepare(batch):
        try:
            start.wait()
            results.append(delivery_prepare_many(entitlement_pks=batch))
        except Exception as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=prepare, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 2
    rows = list(Delivery.objects.values_list("entitlement_id", "status", "attempts"))
    assert sorted(rows) == sorted((pk, DeliveryStatus.READY, 1) for pk in pks)
    deliveries = set(Delivery.objects.values_list("pk", flat=True))
    notices = Counter(
        Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).values_list("dedupe_key", flat=True)
    )
    assert notices == {f"delivery-ready:{pk}": 1 for pk in deliveries}
    assert Counter(DeliveryStatusHistory.objects.values_list("delivery_id", flat=True)) == dict.fromkeys(deliveries, 1)
    # Both callers see every delivery of their batch as READY, with the one receipt that was issued.
    receipts = dict(Delivery.objects.values_list("pk", "receipt_sha256"))
    for result in results:
        for deliveries_of in result.values():
            [delivery] = deliveries_of
            assert (delivery.status, delivery.receipt_sha256) == (DeliveryStatus.READY, receipts[delivery.pk])
