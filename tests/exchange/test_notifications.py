"""Notifications: created once by the real trade flow, emailed from their templates, listed and read in the UI."""

from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.template.loader import get_template
from django.urls import reverse
from django.utils import timezone

from exchange.choices import NotificationKind, OrderStatus
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import Entitlement, Notification, Order, OutboundEvent, Subscription
from exchange.services.entitlements import entitlements_expiring_notify
from exchange.services.notifications import notification_email_send, notification_send, order_paid_notify
from exchange.services.refunds import order_refund
from tests.exchange.helpers import approve_in_sandbox, buy, buy_plan, checkout_completed_event, post_webhook
from tests.factories import make_listing

pytestmark = pytest.mark.django_db

PLANS = (
    {"kind": "free", "amount": 0, "name": "Sample"},
    {"kind": "subscription", "amount": 3000, "interval": "month"},
)


@pytest.fixture
def listing(merchant, merchant_user, staff, categories):
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, extra_plans=PLANS)


def _kinds(user):
    return sorted(Notification.objects.filter(user=user).values_list("kind", flat=True))


def test_purchase_notifies_buyer_and_merchant_once(
    client, buyer, merchant_user, published_listing, django_capture_on_commit_callbacks, settings
):
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID

    confirmed = Notification.objects.get(user=buyer, kind=NotificationKind.PURCHASE_CONFIRMED)
    assert confirmed.title == "Purchase confirmed: City populations"
    assert confirmed.url == reverse("exchange:order_detail", args=[order.public_id])
    expected_data = {
        "order_id": str(order.public_id),
        "order_reference": order.reference,
        "listing_slug": published_listing.slug,
        "listing_title": "City populations",
        "plan_kind": "one_time",
        "amount": 1234,
        "currency": "CNY",
    }
    assert confirmed.data == expected_data
    sale = Notification.objects.get(user=merchant_user, kind=NotificationKind.SALE)
    assert (sale.kind, sale.title, sale.url) == (
        NotificationKind.SALE,
        "New sale: City populations (¥12.34 CNY)",
        reverse("exchange:sales"),
    )
    assert sale.data == expected_data

    # Emailed once each, from the per-kind templates, after commit.
    (to_buyer,) = [m for m in mail.outbox if m.subject == "[Data Exchange] Purchase confirmed: City populations"]
    (to_merchant,) = [m for m in mail.outbox if m.subject == "[Data Exchange] New sale: City populations (¥12.34 CNY)"]
    assert (to_buyer.to, to_merchant.to) == (["buyer@example.com"], ["merchant@example.com"])
    assert f"Order reference: {order.reference}" in to_buyer.body
    assert "http://127.0.0.1:8000/library/" in to_buyer.body
    assert "less the platform fee" in to_merchant.body
    confirmed.refresh_from_db()
    assert confirmed.emailed_at is not None

    # A redelivered gateway event and a re-run of the notifier change nothing.
    emails = len(mail.outbox)
    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(client, checkout_completed_event(order), secret=settings.SANDBOX_WEBHOOK_SECRET)
        order_paid_notify(order=order)
    assert len(mail.outbox) == emails
    # (The buyer's "delivery ready" comes from the delivery service, once too.)
    assert _kinds(buyer) == ["delivery_ready", "purchase_confirmed"] and _kinds(merchant_user) == ["sale"]


def test_free_order_is_confirmed_at_once(client, buyer, merchant_user, listing, django_capture_on_commit_callbacks):
    order = buy_plan(client, buyer, listing, django_capture_on_commit_callbacks, "free")
    assert order.status == OrderStatus.PAID
    notice = Notification.objects.get(user=buyer, kind=NotificationKind.PURCHASE_CONFIRMED)
    assert (notice.kind, notice.data["amount"], notice.data["plan_kind"]) == ("purchase_confirmed", 0, "free")
    assert "(free)" in notice.body
    assert (
        Notification.objects.get(user=merchant_user, kind=NotificationKind.SALE).title
        == "New sale: City populations (free)"
    )


def test_refund_notifies_buyer_and_merchant_once_per_refund(
    client, buyer, merchant_user, staff, published_listing, django_capture_on_commit_callbacks
):
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)
    with django_capture_on_commit_callbacks(execute=True):
        first = order_refund(order=order, amount=234, reason="one file was late", actor=staff)
        order_refund(order=order, amount=1000, reason="the rest", actor=staff)
        # A repeated refund request with the first one's key returns it and notifies nobody again.
        order_refund(order=order, amount=234, reason="x", actor=staff, idempotency_key=first.idempotency_key)

    refunds = Notification.objects.filter(user=buyer, kind=NotificationKind.REFUND).order_by("pk")
    assert [n.title for n in refunds] == [
        "Refund of ¥2.34 CNY: City populations",
        "Refund of ¥10.00 CNY: City populations",
    ]
    assert refunds[0].body == f"¥2.34 CNY of order {order.reference} was refunded: one file was late"
    assert refunds[1].body.endswith("the rest Your access to this product has ended.")
    assert (refunds[0].data["refund_amount"], refunds[0].data["fully_refunded"]) == (234, False)
    assert (refunds[1].data["refund_amount"], refunds[1].data["fully_refunded"]) == (1000, True)
    merchant_titles = list(
        Notification.objects.filter(user=merchant_user, kind=NotificationKind.REFUND)
        .order_by("pk")
        .values_list("title", flat=True)
    )
    assert merchant_titles == [
        f"Refund issued on order {order.reference}: ¥2.34 CNY",
        f"Refund issued on order {order.reference}: ¥10.00 CNY",
    ]
    assert _kinds(buyer) == ["delivery_ready", "purchase_confirmed", "refund", "refund"]
    assert _kinds(merchant_user) == ["refund", "refund", "sale"]
    refund_mail = [m for m in mail.outbox if m.subject == "[Data Exchange] Refund of ¥2.34 CNY: City populations"]
    assert len(refund_mail) == 1 and "original payment method" in refund_mail[0].body


def test_expiring_access_is_told_once_per_period(client, buyer, listing, django_capture_on_commit_callbacks):
    order = buy_plan(client, buyer, listing, django_capture_on_commit_callbacks, "subscription")
    entitlement = Entitlement.objects.get(order=order)
    first_end = entitlement.valid_until

    assert entitlements_expiring_notify(within_days=3) == 0  # a month away
    with (
        time_machine.travel(first_end - timedelta(days=2), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert entitlements_expiring_notify(within_days=3) == 1
        assert entitlements_expiring_notify(within_days=3) == 0
    notice = Notification.objects.get(kind=NotificationKind.ENTITLEMENT_EXPIRING)
    assert (notice.user, notice.url) == (buyer, reverse("exchange:library"))
    assert notice.title == f"Access ending {first_end:%Y-%m-%d}: City populations"
    assert notice.data == {
        "entitlement_id": entitlement.pk,
        "order_id": str(order.public_id),
        "listing_slug": listing.slug,
        "listing_title": "City populations",
        "valid_until": first_end.isoformat(),
    }
    assert [m.subject for m in mail.outbox if "Access ending" in m.subject] == [f"[Data Exchange] {notice.title}"]

    # Renewed: the next period gets its own notice near its end, and only then.
    with django_capture_on_commit_callbacks(execute=True):
        SandboxGateway().emit_renewal(subscription=Subscription.objects.get())
    entitlement.refresh_from_db()
    assert entitlement.valid_until > first_end
    with time_machine.travel(first_end - timedelta(days=1), tick=False):
        assert entitlements_expiring_notify(within_days=3) == 0
    with time_machine.travel(entitlement.valid_until - timedelta(hours=5), tick=False):
        assert entitlements_expiring_notify(within_days=3) == 1
        assert entitlements_expiring_notify(within_days=3) == 0
    assert Notification.objects.filter(kind=NotificationKind.ENTITLEMENT_EXPIRING).count() == 2

    # Lapsed or revoked access is not "about to expire".
    with time_machine.travel(entitlement.valid_until + timedelta(hours=1), tick=False):
        assert entitlements_expiring_notify(within_days=3) == 0


def test_bad_data_is_refused_and_nothing_is_written(buyer, django_capture_on_commit_callbacks):
    with pytest.raises(TypeError, match="Notification data must be plain JSON"):
        notification_send(user=buyer, kind="refund", title="x", data={"when": timezone.now()}, dedupe_key="a")
    with pytest.raises(ValueError, match="refusing the key 'download_token'"):
        notification_send(user=buyer, kind="refund", title="x", data={"links": [{"download_token": "t"}]})
    with pytest.raises(ValueError, match="Unknown notification kind 'payout'"):
        notification_send(user=buyer, kind="payout", title="x")
    assert Notification.objects.count() == 0 and OutboundEvent.objects.count() == 0 and mail.outbox == []


def test_plain_text_email_is_not_html_escaped(buyer, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        notification_send(
            user=buyer,
            kind="new_version",
            title="Roads & rails v2",
            body='Columns "a" & <b>',
            data={"version_label": "v2"},
        )
    body = mail.outbox[0].body
    assert "Roads & rails v2" in body and 'Columns "a" & <b>' in body and "Version: v2" in body


# --- the pages ------------------------------------------------------------------------------------


def _notices(user, n, **extra):
    return [
        notification_send(user=user, kind="refund", title=f"Notice {i}", dedupe_key=f"{user.pk}:{i}", **extra)
        for i in range(n)
    ]


def test_list_is_unread_first_newest_first_and_paginated(client, buyer):
    notices = _notices(buyer, 23)
    notices[0].read_at = timezone.now()
    notices[0].save()
    client.force_login(buyer)
    page = client.get(reverse("notify:notifications")).content.decode()
    # Newest first among the unread; the one read notice sinks to the end (on page 2).
    assert page.index("Notice 22") < page.index("Notice 21") < page.index("Notice 3")
    assert "Notice 0<" not in page and "Page 1 of 2" in page
    assert "Notifications (22 unread)" in page
    second = client.get(reverse("notify:notifications"), {"page": 2}).content.decode()
    assert "Notice 1<" in second and "Notice 0" in second
    assert second.count('class="notification unread"') == 2 and second.count('class="notification read"') == 1


def test_list_query_count_is_pinned(client, buyer, django_assert_num_queries):
    _notices(buyer, 5)
    client.force_login(buyer)
    # session, user, the page's count, the page, the nav's unread count (once, though shown twice)
    with django_assert_num_queries(5):
        assert client.get(reverse("notify:notifications")).status_code == 200
    _notices(buyer, 30)
    with django_assert_num_queries(5):
        assert client.get(reverse("notify:notifications")).status_code == 200


def test_mark_one_and_all_read(client, buyer):
    first, _, _ = _notices(buyer, 3, url="/library/")
    client.force_login(buyer)
    response = client.post(reverse("notify:notification_read", args=[first.pk]), {"next": "/library/"})
    assert response.status_code == 302 and response.url == "/library/"
    first.refresh_from_db()
    read_at = first.read_at
    assert read_at is not None
    # Reading again keeps the first read time; an outside "next" is ignored.
    response = client.post(reverse("notify:notification_read", args=[first.pk]), {"next": "https://evil.example/"})
    assert response.url == reverse("notify:notifications")
    first.refresh_from_db()
    assert first.read_at == read_at
    assert "Notifications (2 unread)" in client.get(reverse("exchange:library")).content.decode()

    response = client.post(reverse("notify:notifications_read_all"), follow=True)
    assert "Marked 2 notification(s) read." in response.content.decode()
    assert Notification.objects.filter(user=buyer, read_at__isnull=True).count() == 0
    assert ">Notifications</a>" in response.content.decode()


def test_other_users_notifications_are_404_and_unchanged(client, buyer, other_buyer):
    (mine,) = _notices(buyer, 1)
    (theirs,) = _notices(other_buyer, 1)
    client.force_login(buyer)
    assert client.post(reverse("notify:notification_read", args=[theirs.pk])).status_code == 404
    assert client.post(reverse("notify:notification_read", args=[999_999])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.read_at is None
    page = client.get(reverse("notify:notifications")).content.decode()
    assert f"/notifications/{theirs.pk}/read/" not in page and f"/notifications/{mine.pk}/read/" in page
    client.post(reverse("notify:notifications_read_all"))
    theirs.refresh_from_db()
    assert theirs.read_at is None
    # Reading changes state: a GET does nothing.
    assert client.get(reverse("notify:notification_read", args=[mine.pk])).status_code == 405


def test_anonymous_nav_has_no_count_and_no_query(client, db, django_assert_num_queries):
    with django_assert_num_queries(0):
        page = client.get(reverse("api_ping"))
    assert page.status_code == 200
    response = client.get(reverse("notify:notifications"))
    assert response.status_code == 302


@pytest.mark.parametrize("kind", NotificationKind.values)
def test_every_kind_has_its_own_email_template(buyer, kind, django_capture_on_commit_callbacks):
    assert get_template(f"exchange/email/{kind}.txt").origin.name.endswith(f"templates/exchange/email/{kind}.txt")
    with django_capture_on_commit_callbacks(execute=True):
        notice = notification_send(user=buyer, kind=kind, title=f"About {kind}", body="Details.", url="/library/")
    (message,) = mail.outbox
    assert (message.subject, message.to) == (f"[Data Exchange] About {kind}", ["buyer@example.com"])
    assert message.body.startswith("Hello buyer@example.com,\n\nAbout " + kind)
    assert "Details." in message.body and "http://127.0.0.1:8000/library/" in message.body
    notice.refresh_from_db()
    assert notice.emailed_at is not None
    # A second run of the email task finds it sent.
    assert notification_email_send(notification_pk=notice.pk) is False and len(mail.outbox) == 1
