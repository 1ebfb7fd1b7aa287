"""Notifications in batches: constant queries, once per key under concurrency, emails over one connection."""

import json
import smtplib
import threading
import time

import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import connection, transaction
from django.urls import reverse

from exchange.celery import app as celery_app
from exchange.choices import NotificationKind, OutboundEventStatus
from exchange.models import Notification, Order, OutboundEvent
from exchange.services import notifications
from exchange.services.notifications import (
    NotificationSpec,
    notification_emails_send,
    notifications_send_many,
    order_paid_notify,
    orders_paid_notify_many,
)
from exchange.services.outbound import signature_verify, webhook_endpoint_create
from merchants.models import MerchantMember
from tests.exchange.helpers import approve_in_sandbox, buy
from tests.exchange.test_outbound_webhooks import Receiver
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _spec(user, key, title=None, **extra):
    return NotificationSpec(
        user=user,
        kind=extra.pop("kind", NotificationKind.REFUND),
        title=title or f"Notice {key}",
        url="/library/",
        data=extra.pop("data", {"n": key}),
        dedupe_key=key,
        **extra,
    )


class CountingBackend(LocmemBackend):
    """Django's test backend (mail.outbox), counting the connections opened."""

    opened = 0

    def open(self):
        type(self).opened += 1
        return super().open()


class FlakyBackend(LocmemBackend):
    """The locmem backend with an SMTP server that drops the connection at one recipient, or refuses another."""

    drop_at = None
    refuse = None

    def send_messages(self, messages):
        for message in messages:
            if message.to[0] == self.drop_at:
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            if message.to[0] == self.refuse:
                raise smtplib.SMTPRecipientsRefused({self.refuse: (550, b"No such user")})
        return super().send_messages(messages)


@pytest.fixture
def flaky_backend(settings):
    settings.EMAIL_BACKEND = f"{__name__}.FlakyBackend"
    yield FlakyBackend
    FlakyBackend.drop_at = FlakyBackend.refuse = None


@pytest.fixture
def counting_backend(settings):
    settings.EMAIL_BACKEND = f"{__name__}.CountingBackend"
    CountingBackend.opened = 0
    return CountingBackend


@pytest.fixture
def users(db):
    return [UserFactory(email=f"batch{i}@example.com") for i in range(5)]


# --- queries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 50])
def test_a_batch_costs_the_same_queries_whatever_its_size(
    size, users, settings, django_assert_num_queries, django_capture_on_commit_callbacks
):
    settings.OUTBOUND_WEBHOOK_ALLOW_HTTP = True
    for user in users:
        webhook_endpoint_create(user=user, url=f"https://hooks.example.com/{user.pk}")
    specs = [_spec(users[i % len(users)], f"q:{i}") for i in range(size)]

    # The existing keys, the notifications' INSERT, the users' endpoints, the events' INSERT.
    with django_assert_num_queries(4), django_capture_on_commit_callbacks(execute=False) as callbacks:
        sent = notifications_send_many(specs)

    assert len(callbacks) == 1  # one hook queues every email and webhook send of the batch
    assert [n.dedupe_key for n in sent] == [f"q:{i}" for i in range(size)]
    assert all(n.pk is not None for n in sent)
    assert Notification.objects.count() == size and OutboundEvent.objects.count() == size
    assert sorted(OutboundEvent.objects.values_list("dedupe_key", flat=True)) == sorted(
        f"notification:{n.pk}" for n in sent
    )

    # Sent again: the existing keys are found, nothing else is asked or written.
    with django_assert_num_queries(1), django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = notifications_send_many(specs)
    assert [n.pk for n in again] == [n.pk for n in sent] and callbacks == []
    assert Notification.objects.count() == size and OutboundEvent.objects.count() == size


def _paid_orders(client, listing, buyers, capture) -> list[Order]:
    for buyer in buyers:
        client.force_login(buyer)
        buy(client, listing)
        order = Order.objects.get(buyer=buyer)
        with capture(execute=True):
            approve_in_sandbox(client, order.checkout_url)
    return list(Order.objects.filter(buyer__in=buyers).order_by("pk"))


def test_paid_orders_are_notified_in_constant_queries(
    client, users, merchant, merchant_user, published_listing, django_assert_num_queries,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    colleague = UserFactory(email="colleague@example.com")
    MerchantMember.objects.create(merchant=merchant, user=colleague)
    orders = _paid_orders(client, published_listing, users[:3], django_capture_on_commit_callbacks)
    Notification.objects.all().delete()
    mail.outbox.clear()

    # The orders (with listing and buyer), the merchants' members, the existing keys, the INSERT, the endpoints.
    with django_assert_num_queries(5), django_capture_on_commit_callbacks(execute=False):
        order_paid_notify(order=orders[0])
    with django_capture_on_commit_callbacks(execute=True) as callbacks, django_assert_num_queries(5):
        orders_paid_notify_many(orders=orders)  # (the emails go out after the count, when the callbacks run)
    assert len(callbacks) == 1

    expected = {f"purchase_confirmed:{o.pk}" for o in orders}
    expected |= {f"sale:{o.pk}:{u.pk}" for o in orders for u in (merchant_user, colleague)}
    assert set(Notification.objects.values_list("dedupe_key", flat=True)) == expected
    confirmed = Notification.objects.get(dedupe_key=f"purchase_confirmed:{orders[1].pk}")
    assert (confirmed.user, confirmed.title, confirmed.url) == (
        users[1],
        "Purchase confirmed: City populations",
        reverse("exchange:order_detail", args=[orders[1].public_id]),
    )
    assert confirmed.data["order_reference"] == orders[1].reference
    # The first order's three were written above (their callbacks dropped); the batch's hook emailed the six it wrote.
    assert len(mail.outbox) == 6
    assert sorted(m.to[0] for m in mail.outbox) == sorted(
        ["batch1@example.com", "batch2@example.com"] + ["merchant@example.com", "colleague@example.com"] * 2
    )
    # A re-run notifies nobody again.
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        orders_paid_notify_many(orders=orders)
    assert callbacks == [] and len(mail.outbox) == 6 and Notification.objects.count() == 9


# --- once per key ---------------------------------------------------------------------------------


def test_dedupe_within_the_batch_and_against_existing_rows(buyer, other_buyer, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        (before,) = notifications_send_many([_spec(buyer, "a", "First a")])
    mail.outbox.clear()
    batch = [
        _spec(buyer, "a", "Second a"),
        _spec(buyer, "b", "First b"),
        _spec(other_buyer, "b", "Second b"),
        _spec(buyer, None, "No key 1"),
        _spec(buyer, "", "No key 2"),  # an empty key is no key
    ]
    with django_capture_on_commit_callbacks(execute=True):
        sent = notifications_send_many(batch)

    assert sent[0].pk == before.pk and sent[0].title == "First a"
    assert sent[1].pk == sent[2].pk and (sent[2].title, sent[2].user) == ("First b", buyer)
    assert [n.title for n in sent[3:]] == ["No key 1", "No key 2"] and sent[3].pk != sent[4].pk
    assert sent[4].dedupe_key is None
    assert Notification.objects.count() == 4
    assert sorted(m.subject for m in mail.outbox) == [
        "[Data Exchange] First b",
        "[Data Exchange] No key 1",
        "[Data Exchange] No key 2",
    ]


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_sharing_a_key_write_it_once(buyer, other_buyer):
    first_written, release = threading.Event(), threading.Event()
    results, errors = {}, []

    def first():
        try:
            with transaction.atomic():
                results["first"] = notifications_send_many([_spec(buyer, "k1"), _spec(buyer, "k2", "First k2")])
                first_written.set()
                release.wait(20)  # holds k2 uncommitted until the second batch waits on it
        except Exception as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    def second():
        try:
            results["second"] = notifications_send_many(
                [_spec(other_buyer, "k2", "Second k2"), _spec(other_buyer, "k3")]
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    one = threading.Thread(target=first)
    one.start()
    assert first_written.wait(20)
    two = threading.Thread(target=second)
    two.start()
    try:
        deadline = time.monotonic() + 20
        while not _insert_waits_on_a_lock():
            assert time.monotonic() < deadline, "the second batch never waited on the first's key"
            time.sleep(0.02)
    finally:
        release.set()
        one.join(30)
        two.join(30)
    assert errors == []

    first_k2 = results["first"][1]
    assert results["second"][0].pk == first_k2.pk and results["second"][0].title == "First k2"
    assert sorted(Notification.objects.values_list("dedupe_key", "user__email")) == [
        ("k1", "buyer@example.com"),
        ("k2", "buyer@example.com"),
        ("k3", "other-buyer@example.com"),
    ]
    # Only the batch that wrote a notification emails it.
    assert sorted(m.subject for m in mail.outbox) == [
        "[Data Exchange] First k2",
        "[Data Exchange] Notice k1",
        "[Data Exchange] Notice k3",
    ]


def _insert_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE %s",
            ['INSERT INTO "exchange_notification"%'],
        )
        return cursor.fetchone()[0] > 0


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"kind": "payout"}, ValueError, "Unknown notification kind 'payout'"),
        ({"data": {"links": [{"download_token": "t"}]}}, ValueError, "refusing the key 'download_token'"),
        ({"data": {"when": object()}}, TypeError, "Notification data must be plain JSON"),
        ({"dedupe_key": "k" * 151}, ValueError, "dedupe_key is longer than 150 characters"),
    ],
)
def test_one_bad_spec_refuses_the_whole_batch(bad, error, message, buyer, settings, django_capture_on_commit_callbacks):
    settings.OUTBOUND_WEBHOOK_ALLOW_HTTP = True
    webhook_endpoint_create(user=buyer, url="https://hooks.example.com/x")
    fields = {"user": buyer, "kind": NotificationKind.REFUND, "title": "Bad", "dedupe_key": "bad", **bad}
    batch = [_spec(buyer, "good-1"), NotificationSpec(**fields), _spec(buyer, "good-2")]
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(error, match=message):
        notifications_send_many(batch)
    assert callbacks == [] and mail.outbox == []
    assert Notification.objects.count() == 0 and OutboundEvent.objects.count() == 0


def test_an_unsaved_user_is_refused(buyer):
    with pytest.raises(ValueError, match="A notification needs a saved user"):
        notifications_send_many([_spec(buyer, "good"), _spec(UserFactory.build(), "unsaved")])
    assert Notification.objects.count() == 0


# --- emails ---------------------------------------------------------------------------------------


def test_a_batch_is_emailed_over_one_connection_once(
    users, counting_backend, django_assert_num_queries, django_capture_on_commit_callbacks
):
    specs = [_spec(users[i % 5], f"e:{i}") for i in range(30)]
    specs.append(_spec(users[0], "quiet", email=False))
    with django_capture_on_commit_callbacks(execute=True):
        sent = notifications_send_many(specs)

    assert counting_backend.opened == 1
    assert sorted(m.subject for m in mail.outbox) == sorted(f"[Data Exchange] Notice e:{i}" for i in range(30))
    assert mail.outbox[0].body.startswith("Hello batch0@example.com,")
    assert Notification.objects.filter(emailed_at__isnull=True).get().dedupe_key == "quiet"

    # The task run again (a redelivered message): it locks and reads, finds them emailed, sends nothing.
    with django_assert_num_queries(3):  # savepoint, the locking SELECT, release (the test runs in a transaction)
        assert notification_emails_send(notification_pks=[n.pk for n in sent[:30]]) == 0
    assert len(mail.outbox) == 30 and counting_backend.opened == 1


def test_emails_are_chunked_per_task(users, counting_backend, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(notifications, "EMAIL_BATCH", 4)
    with django_capture_on_commit_callbacks(execute=True):
        notifications_send_many([_spec(users[0], f"c:{i}") for i in range(10)])
    assert counting_backend.opened == 3 and len(mail.outbox) == 10  # 4 + 4 + 2


def test_the_email_task_costs_the_same_queries_whatever_the_batch(users, django_assert_num_queries):
    small = [n.pk for n in notifications_send_many([_spec(users[0], f"s:{i}") for i in range(3)])]
    large = [n.pk for n in notifications_send_many([_spec(users[1], f"l:{i}") for i in range(60)])]
    # savepoint, the locking SELECT (with the users), one UPDATE of emailed_at, release
    with django_assert_num_queries(4):
        assert notification_emails_send(notification_pks=small) == 3
    with django_assert_num_queries(4):
        assert notification_emails_send(notification_pks=large) == 60
    assert Notification.objects.filter(emailed_at__isnull=True).count() == 0 and len(mail.outbox) == 63


def test_a_dropped_smtp_connection_keeps_the_sent_and_retries_the_rest(users, flaky_backend):
    flaky_backend.drop_at, flaky_backend.refuse = "batch2@example.com", "batch1@example.com"
    # Keys in the users' order: the task sends in pk order, and pks follow the (sorted) keys.
    pks = [n.pk for n in notifications_send_many([_spec(user, f"f:{i}") for i, user in enumerate(users)])]

    with pytest.raises(ConnectionError, match=r"4 notification email\(s\) not sent: Connection unexpectedly closed"):
        notification_emails_send(notification_pks=pks)
    # batch0 went out; batch1 was refused (skipped, not retried); the connection dropped at batch2.
    assert [m.to for m in mail.outbox] == [["batch0@example.com"]]
    emailed = set(Notification.objects.filter(emailed_at__isnull=False).values_list("user__email", flat=True))
    assert emailed == {"batch0@example.com"}

    flaky_backend.drop_at = None  # the server is back: the retry sends the rest, not the first again
    assert notification_emails_send(notification_pks=pks) == 3
    assert [m.to[0] for m in mail.outbox] == [f"batch{i}@example.com" for i in (0, 2, 3, 4)]


def test_notification_tasks_run_on_their_own_queue():
    router = celery_app.amqp.router
    for name in (
        "exchange.tasks.notification_emails_send",
        "exchange.tasks.notification_email_send",
        "exchange.tasks.outbound_event_send",
        "exchange.tasks.outbound_events_sweep",
    ):
        assert router.route({}, name)["queue"].name == "notifications", name
    assert router.route({}, "exchange.tasks.payment_events_drain")["queue"].name == "default"


# --- webhooks -------------------------------------------------------------------------------------


def test_a_batch_fans_out_to_each_users_endpoints(buyer, other_buyer, settings, django_capture_on_commit_callbacks):
    settings.OUTBOUND_WEBHOOK_ALLOW_HTTP = True
    settings.OUTBOUND_WEBHOOK_ALLOW_PRIVATE = True
    settings.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS = 5
    receiver = Receiver()
    try:
        mine = webhook_endpoint_create(user=buyer, url=receiver.url(path="/mine"))
        webhook_endpoint_create(user=other_buyer, url=receiver.url(path="/refunds"), event_types=["refund"])
        batch = [
            _spec(buyer, "w1", kind=NotificationKind.PURCHASE_CONFIRMED, data={"order_id": "o1", "amount": 5}),
            _spec(other_buyer, "w2", kind=NotificationKind.PURCHASE_CONFIRMED),  # filtered out
            _spec(other_buyer, "w3", kind=NotificationKind.REFUND),
        ]
        with django_capture_on_commit_callbacks(execute=True):
            sent = notifications_send_many(batch)
        with django_capture_on_commit_callbacks(execute=True):
            notifications_send_many(batch)  # a re-run queues nothing
    finally:
        receiver.close()

    assert sorted(r["path"] for r in receiver.requests) == ["/mine", "/refunds"]
    (to_mine,) = [r for r in receiver.requests if r["path"] == "/mine"]
    assert signature_verify(secret=mine.secret, body=to_mine["body"], header=to_mine["headers"]["X-Exchange-Signature"])
    event = OutboundEvent.objects.get(endpoint=mine)
    assert json.loads(to_mine["body"]) == {
        "id": str(event.public_id),
        "type": "purchase_confirmed",
        "created_at": sent[0].created_at.isoformat(),
        "data": {"order_id": "o1", "amount": 5, "title": "Notice w1", "url": "http://127.0.0.1:8000/library/"},
    }
    assert sorted(OutboundEvent.objects.values_list("dedupe_key", "status")) == [
        (f"notification:{sent[0].pk}", OutboundEventStatus.DELIVERED),
        (f"notification:{sent[2].pk}", OutboundEventStatus.DELIVERED),
    ]
