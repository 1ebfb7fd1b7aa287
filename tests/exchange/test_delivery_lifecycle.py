"""Delivery lifecycle: per-version deliveries by rule, verified files, retries, failure refunds, confirmation."""

from pathlib import Path

import pytest
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.urls import reverse

from exchange.choices import (
    DeliveryStatus,
    EntitlementStatus,
    NotificationKind,
    OrderStatus,
    RefundStatus,
)
from exchange.models import Delivery, Entitlement, Notification, Order, Refund
from exchange.services.delivery import (
    DeliveryTransitionError,
    delivery_confirm,
    delivery_failure_settle,
    delivery_retry_countdown,
    delivery_transition,
    delivery_version_allowed,
    published_versions,
    schema_diff_summary,
    versions_allowed,
)
from exchange.services.downloads import DOWNLOAD_SALT
from exchange.tasks import delivery_prepare, delivery_version_published
from listings.choices import VersionAccess
from listings.models import ListingVersion
from listings.profiling import datafile_profile_run
from listings.services import version_publish, version_upload
from tests.exchange.helpers import approve_in_sandbox, buy, library_links
from tests.factories import SAMPLE_CSV, csv_upload

pytestmark = pytest.mark.django_db

V2_CSV = b"city,year,population\nGuiyang,2025,6500000\nShanghai,2025,24900000\n"
V3_CSV = b"city,year,population,area_km2\nGuiyang,2026,6600000,8034\nShanghai,2026,25000000,6341\n"


def publish_version(listing, owner, content: bytes) -> ListingVersion:
    """Upload, profile (in process, as the worker would) and publish a new version; hooks are not run."""
    version = version_upload(listing=listing, actor=owner, uploaded_file=csv_upload(content))
    for data_file in version.files.all():
        datafile_profile_run(data_file_pk=data_file.pk)
    return version_publish(version=version, actor=owner)


def purchase(client, user, listing, capture) -> Order:
    """The buyer pays in the sandbox; every on-commit task (delivery included) runs inline."""
    client.force_login(user)
    with capture(execute=True):
        buy(client, listing)
        order = Order.objects.get(buyer=user, listing=listing)
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    return order


def set_rule(listing, rule: str) -> None:
    listing.plans.filter(is_active=True).update(version_access=rule)


def delivered_labels(entitlement) -> list[str]:
    return sorted(Delivery.objects.filter(entitlement=entitlement).values_list("version__label", flat=True))


def stored_path(data_file) -> Path:
    return Path(default_storage.path(data_file.file.name))


# --- preparation ---------------------------------------------------------------------------------


def test_a_purchase_gets_one_ready_delivery_with_a_receipt_and_one_notice(
    client, buyer, published_listing, django_capture_on_commit_callbacks
):
    order = purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    data_file = published_listing.versions.get().files.get()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (DeliveryStatus.READY, 1, "")
    assert delivery.ready_at is not None and delivery.failed_at is None
    assert delivery.receipt["files"] == [
        {
            "name": "data.csv",
            "size": len(SAMPLE_CSV),
            "sha256": data_file.sha256,
            "format": "csv",
            "content_type": data_file.content_type,
        }
    ]
    assert delivery.receipt["order"] == {"reference": order.reference, "public_id": str(order.public_id)}
    assert len(delivery.receipt_sha256) == 64
    notice = Notification.objects.get(kind=NotificationKind.DELIVERY_READY)
    assert (notice.user, notice.url, notice.dedupe_key) == (
        buyer,
        reverse("exchange:library"),
        f"delivery-ready:{delivery.pk}",
    )
    assert notice.title == "City populations v1 is ready to download"


def test_preparing_twice_makes_the_same_rows_and_one_notice(
    client, buyer, published_listing, django_capture_on_commit_callbacks
):
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    entitlement = Entitlement.objects.get()
    first = Delivery.objects.get()
    again = delivery_prepare.delay(entitlement.pk).get()
    assert again == [first.pk]
    second = Delivery.objects.get()
    assert (second.pk, second.status, second.attempts, second.receipt, second.receipt_sha256, second.ready_at) == (
        first.pk,
        DeliveryStatus.READY,
        1,
        first.receipt,
        first.receipt_sha256,
        first.ready_at,
    )
    assert Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).count() == 1


# (rule, labels delivered at purchase with v1 and v2 published, labels after v3 is published, labels linked after)
RULES = [
    (VersionAccess.ALL, ["v1", "v2"], ["v1", "v2", "v3"], ["v1", "v2", "v3"]),
    (VersionAccess.WHILE_ENTITLED, ["v2"], ["v2", "v3"], ["v2", "v3"]),
    (VersionAccess.LATEST, ["v2"], ["v2", "v3"], ["v3"]),
]


@pytest.mark.parametrize(("rule", "at_purchase", "after_v3", "linked"), RULES)
def test_each_rule_delivers_its_versions_including_one_published_after_purchase(
    client,
    buyer,
    merchant_user,
    published_listing,
    django_capture_on_commit_callbacks,
    rule,
    at_purchase,
    after_v3,
    linked,
):
    set_rule(published_listing, rule)
    publish_version(published_listing, merchant_user, V2_CSV)
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    entitlement = Entitlement.objects.get()
    assert entitlement.version_access == rule
    assert delivered_labels(entitlement) == at_purchase
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.READY}

    v3 = publish_version(published_listing, merchant_user, V3_CSV)
    assert delivery_version_published.delay(v3.pk).get() == 1
    assert delivered_labels(entitlement) == after_v3
    assert Delivery.objects.get(version=v3).status == DeliveryStatus.READY
    notice = Notification.objects.get(kind=NotificationKind.NEW_VERSION)
    assert (notice.user, notice.dedupe_key) == (buyer, f"new-version:{v3.pk}:{entitlement.pk}")
    assert notice.title == "City populations: version v3 is available"
    assert notice.body == "Added columns: area_km2."
    assert notice.data == {
        "version": v3.pk,
        "version_label": "v3",
        "listing_slug": "city-populations",
        "schema_diff": {"added": ["area_km2"], "removed": [], "retyped": []},
    }

    # The library links only the versions the rule covers now: a latest buyer's v2 is listed without a link.
    links = library_links(client.get(reverse("exchange:library")).content.decode())
    tokens = [signing.loads(link.split("/")[2], salt=DOWNLOAD_SALT) for link in links]
    assert sorted(Delivery.objects.get(pk=t["d"]).version.label for t in tokens) == linked

    # The same announcement again (a redelivered task): no new rows, no second notice.
    delivery_version_published.delay(v3.pk).get()
    assert delivered_labels(entitlement) == after_v3
    assert Notification.objects.filter(kind=NotificationKind.NEW_VERSION).count() == 1
    assert Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).count() == len(after_v3)


def test_a_new_version_is_not_delivered_to_buyers_without_access(
    client, buyer, staff, merchant_user, published_listing, django_capture_on_commit_callbacks
):
    from exchange.services.refunds import order_refund

    order = purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    order_refund(order=order, amount=order.amount, reason="changed my mind", actor=staff)
    v2 = publish_version(published_listing, merchant_user, V2_CSV)
    assert delivery_version_published.delay(v2.pk).get() == 0
    assert delivered_labels(Entitlement.objects.get()) == ["v1"]
    assert not Notification.objects.filter(kind=NotificationKind.NEW_VERSION).exists()


@pytest.mark.parametrize("rule", [VersionAccess.ALL, VersionAccess.WHILE_ENTITLED, VersionAccess.LATEST])
def test_the_bulk_rule_agrees_with_the_single_version_rule(
    client, buyer, merchant_user, published_listing, django_capture_on_commit_callbacks, rule
):
    set_rule(published_listing, rule)
    publish_version(published_listing, merchant_user, V2_CSV)
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    publish_version(published_listing, merchant_user, V3_CSV)
    entitlement = Entitlement.objects.get()
    published = list(published_versions(published_listing.pk))
    assert [v.label for v in published] == ["v3", "v2", "v1"]
    bulk = {v.pk for v in versions_allowed(entitlement, published)}
    single = {v.pk for v in published if delivery_version_allowed(entitlement, v)}
    assert bulk == single and bulk


def test_schema_diff_summary_names_every_change():
    diff = {"added": ["a", "b"], "removed": ["c"], "retyped": [{"name": "d", "from": "BIGINT", "to": "VARCHAR"}]}
    assert schema_diff_summary(diff) == (
        "Added columns: a, b.\nRemoved columns: c.\nRetyped columns: d (BIGINT → VARCHAR)."
    )
    assert schema_diff_summary({}) == "The columns are unchanged."


# --- failures --------------------------------------------------------------------------------------


def _break_missing(data_file):
    default_storage.delete(data_file.file.name)


def _break_corrupt(data_file):
    # Same size, different bytes: only the SHA-256 tells.
    path = stored_path(data_file)
    path.write_bytes(path.read_bytes().replace(b"Guiyang", b"Guiyanq"))


def _break_truncated(data_file):
    path = stored_path(data_file)
    path.write_bytes(path.read_bytes()[:-5])


BREAKAGES = [
    (_break_missing, "data.csv: the stored file is missing."),
    (_break_corrupt, "data.csv: the stored file's SHA-256 is "),
    (
        _break_truncated,
        f"data.csv: the stored file has {len(SAMPLE_CSV) - 5} bytes, the record says {len(SAMPLE_CSV)}.",
    ),
]


@pytest.mark.parametrize(("breakage", "error"), BREAKAGES)
def test_a_broken_file_is_retried_then_fails_refunds_once_and_tells_both_sides(
    client, buyer, merchant_user, published_listing, django_capture_on_commit_callbacks, settings, breakage, error
):
    settings.DELIVERY_MAX_ATTEMPTS = 3
    breakage(published_listing.versions.get().files.get())
    order = purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    # The eager task retried in place (the countdown applies on a real worker) until the attempts ran out.
    order.refresh_from_db()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert delivery.last_error.startswith(error)
    assert delivery.failed_at is not None and delivery.ready_at is None
    assert (delivery.receipt, delivery.receipt_sha256) == ({}, "")
    refund = Refund.objects.get()
    assert (refund.amount, refund.source, refund.idempotency_key, refund.status) == (
        1234,
        "delivery_failure",
        f"delivery-failure:{order.pk}",
        RefundStatus.SUCCEEDED,
    )
    assert (order.status, order.refunded_amount) == (OrderStatus.REFUNDED, 1234)
    assert Entitlement.objects.get().status == EntitlementStatus.REVOKED
    notices = {n.user: n for n in Notification.objects.filter(kind=NotificationKind.DELIVERY_FAILED)}
    assert set(notices) == {buyer, merchant_user}
    assert notices[buyer].dedupe_key == f"delivery-failed:{delivery.pk}:buyer"
    assert notices[buyer].title == "We could not deliver City populations v1"
    assert error in notices[buyer].body and "was refunded in full (¥12.34 CNY)" in notices[buyer].body
    assert notices[merchant_user].dedupe_key == f"delivery-failed:{delivery.pk}:member:{merchant_user.pk}"
    assert error in notices[merchant_user].body and order.reference in notices[merchant_user].body
    assert not Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).exists()

    # Settled again (a redelivered task): nothing more is refunded or sent.
    again = delivery_failure_settle(delivery_pk=delivery.pk)
    assert again.pk == refund.pk
    assert Refund.objects.count() == 1
    assert Notification.objects.filter(kind=NotificationKind.DELIVERY_FAILED).count() == 2
    order.refresh_from_db()
    assert order.refunded_amount == 1234


def test_a_failed_attempt_keeps_the_delivery_pending_and_a_later_attempt_recovers(
    client, buyer, published_listing, django_capture_on_commit_callbacks, settings
):
    from exchange.services.delivery import delivery_make_ready

    data_file = published_listing.versions.get().files.get()
    original = stored_path(data_file).read_bytes()
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    # Rewind to a fresh pending delivery, then break the file for one attempt only.
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, attempts=0, receipt={}, receipt_sha256=""
    )
    _break_missing(data_file)
    once = delivery_make_ready(delivery_pk=delivery.pk)
    assert (once.status, once.attempts, once.last_error) == (
        DeliveryStatus.PENDING,
        1,
        "data.csv: the stored file is missing.",
    )
    stored_path(data_file).parent.mkdir(parents=True, exist_ok=True)
    stored_path(data_file).write_bytes(original)
    recovered = delivery_make_ready(delivery_pk=delivery.pk)
    assert (recovered.status, recovered.attempts, recovered.last_error) == (DeliveryStatus.READY, 2, "")
    assert not Refund.objects.exists()


def test_big_files_are_size_checked_only(
    client, buyer, published_listing, django_capture_on_commit_callbacks, settings
):
    settings.DELIVERY_VERIFY_SHA256_MAX_BYTES = 10
    _break_corrupt(published_listing.versions.get().files.get())
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    assert Delivery.objects.get().status == DeliveryStatus.READY


def test_a_failed_new_version_does_not_refund_a_buyer_who_has_the_earlier_one(
    client, buyer, merchant_user, published_listing, django_capture_on_commit_callbacks, settings
):
    settings.DELIVERY_MAX_ATTEMPTS = 2
    order = purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    v2 = publish_version(published_listing, merchant_user, V2_CSV)
    _break_missing(v2.files.get())
    delivery_version_published.delay(v2.pk).get()
    failed = Delivery.objects.get(version=v2)
    assert (failed.status, failed.attempts) == (DeliveryStatus.FAILED, 2)
    order.refresh_from_db()
    assert (order.status, order.refunded_amount) == (OrderStatus.PAID, 0)
    assert not Refund.objects.exists()
    assert Delivery.objects.get(version__label="v1").status == DeliveryStatus.READY
    notice = Notification.objects.get(kind=NotificationKind.DELIVERY_FAILED, user=buyer)
    assert "keeps their other deliveries" in notice.body
    assert Notification.objects.filter(kind=NotificationKind.DELIVERY_FAILED, user=merchant_user).count() == 1


def test_retry_countdown_doubles_up_to_the_cap(settings):
    settings.DELIVERY_RETRY_BACKOFF_SECONDS = 30
    settings.DELIVERY_RETRY_BACKOFF_MAX_SECONDS = 200
    assert [delivery_retry_countdown(n) for n in (1, 2, 3, 4, 5)] == [30, 60, 120, 200, 200]


# --- confirmation and transitions --------------------------------------------------------------


def test_the_first_api_call_confirms_and_releases_escrow(
    client, buyer, published_listing, django_capture_on_commit_callbacks
):
    order = purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    confirmed = delivery_confirm(delivery_pk=delivery.pk, reason="first API call", by="api_call")
    assert (confirmed.status, confirmed.confirmed_by, confirmed.download_count) == (
        DeliveryStatus.CONFIRMED,
        "api_call",
        0,
    )
    first_at = confirmed.confirmed_at
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED
    later = delivery_confirm(delivery_pk=delivery.pk, reason="a download", by="download")
    assert (later.confirmed_at, later.confirmed_by, later.download_count) == (first_at, "api_call", 1)


def test_a_delivery_not_ready_cannot_be_confirmed_and_nothing_changes(
    client, buyer, published_listing, django_capture_on_commit_callbacks
):
    order = purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.PENDING)
    with pytest.raises(DeliveryTransitionError) as exc:
        delivery_confirm(delivery_pk=delivery.pk, reason="download", by="download")
    assert exc.value.code == "not_confirmable"
    delivery.refresh_from_db()
    order.refresh_from_db()
    assert (delivery.status, delivery.download_count, delivery.confirmed_at, delivery.confirmed_by) == (
        DeliveryStatus.PENDING,
        0,
        None,
        "",
    )
    assert order.status == OrderStatus.PAID
    with pytest.raises(ValueError, match="Unknown confirmation kind 'telepathy'"):
        delivery_confirm(delivery_pk=delivery.pk, reason="?", by="telepathy")
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING


def test_the_transition_table_refuses_moves_it_does_not_list(
    client, buyer, published_listing, django_capture_on_commit_callbacks
):
    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    with pytest.raises(ValidationError) as exc:
        delivery_transition(delivery, DeliveryStatus.PENDING, reason="back")
    assert exc.value.code == "delivery_transition"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.READY


# --- concurrency ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_attempts_issue_one_receipt_and_one_notice(
    client, buyer, published_listing, django_capture_on_commit_callbacks
):
    """Two workers on the same pending delivery: the row lock makes them take turns; the second finds it READY."""
    import threading

    from django.db import connection

    from exchange.services.delivery import delivery_make_ready

    purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, attempts=0, receipt={}, receipt_sha256="", ready_at=None
    )
    Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).delete()
    start = threading.Barrier(2)
    results, errors = [], []

    def attempt():
        try:
            start.wait()
            results.append(delivery_make_ready(delivery_pk=delivery.pk))
        except Exception as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert [r.status for r in results] == [DeliveryStatus.READY, DeliveryStatus.READY]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.READY, 1)
    assert {r.receipt_sha256 for r in results} == {delivery.receipt_sha256}
    assert Notification.objects.filter(kind=NotificationKind.DELIVERY_READY).count() == 1


def test_a_delivery_failure_refund_held_for_review_is_not_sent_again(
    client, buyer, published_listing, django_capture_on_commit_callbacks, settings, monkeypatch
):
    """The refund of a failed delivery whose gateway call timed out, still pending a day later, is past the
    gateway's memory of its key: settling the failure again leaves it to a person instead of refunding twice."""
    from datetime import timedelta

    from celery.exceptions import Retry
    from django.utils import timezone

    from exchange.gateways import GatewayError
    from exchange.gateways.sandbox import SandboxGateway

    settings.DELIVERY_MAX_ATTEMPTS = 1
    _break_missing(published_listing.versions.get().files.get())

    def timeout(self, **kwargs):
        raise GatewayError("sandbox: timed out", transient=True)

    monkeypatch.setattr(SandboxGateway, "refund_create", timeout)
    with pytest.raises(Retry):  # the delivery task asks to be retried; a worker would, later
        purchase(client, buyer, published_listing, django_capture_on_commit_callbacks)
    refund = Refund.objects.get()
    assert refund.status == RefundStatus.PENDING
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=24))

    def called(self, **kwargs):
        raise AssertionError("the gateway was asked to refund again")

    monkeypatch.setattr(SandboxGateway, "refund_create", called)
    again = delivery_failure_settle(delivery_pk=Delivery.objects.get().pk)
    assert (again.pk, again.status) == (refund.pk, RefundStatus.PENDING)
    assert Refund.objects.count() == 1
