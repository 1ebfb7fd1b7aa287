"""Notifications: an in-app list, an email and outbound webhook events for each event a user must know about.

``notification_send`` is the one entry point. A ``dedupe_key`` makes it safe
to call from tasks that may run twice: the second call finds the first
notification and sends nothing. Each new notification is emailed (rendered
from ``templates/exchange/email/<kind>.txt``) by a task after commit, and
fans out to the user's outbound webhook endpoints as events of type
``kind`` (exchange.services.outbound), in the same transaction.

``data`` travels in the webhook payload: plain JSON with useful ids (order
public id, listing slug, version label, amounts in minor units and their
currency), never secrets; keys that look like one are refused.
"""

import json
import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Case, IntegerField, Value, When
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from common.money import format_minor
from exchange.choices import NotificationKind
from exchange.models import Entitlement, Notification, Order, Refund
from exchange.services.outbound import outbound_events_fan_out
from merchants.models import MerchantMember

log = logging.getLogger(__name__)

# A data key containing one of these words is refused: the payload leaves the exchange.
_SECRET_WORDS = ("secret", "password", "token", "api_key", "apikey", "signature", "credential")


def _data_clean(data: dict | None) -> dict:
    data = dict(data or {})
    try:
        encoded = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Notification data must be plain JSON (str, int, bool, None, lists, dicts): {exc}") from None
    _keys_check(data)
    return json.loads(encoded)  # tuples become lists, as the stored and sent copies will be


def _keys_check(value) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if any(word in str(key).lower() for word in _SECRET_WORDS):
                raise ValueError(f"Notification data must not carry secrets; refusing the key {key!r}.")
            _keys_check(item)
    elif isinstance(value, list):
        for item in value:
            _keys_check(item)


def notification_send(
    *,
    user,
    kind: str,
    title: str,
    body: str = "",
    url: str = "",
    data: dict | None = None,
    dedupe_key: str | None = None,
    email: bool = True,
) -> Notification:
    """Record a notification for ``user``, queue its webhook events, email it after commit; once per ``dedupe_key``.

    ``kind`` is a NotificationKind value and the webhook event's type; ``url``
    a site path (no host); ``data`` plain JSON without secrets (TypeError /
    ValueError otherwise, and nothing is written).
    """
    notification, _ = _send(
        user=user, kind=kind, title=title, body=body, url=url, data=data, dedupe_key=dedupe_key, email=email
    )
    return notification


def _send(*, user, kind, title, body, url, data, dedupe_key, email) -> tuple[Notification, bool]:
    if kind not in NotificationKind.values:
        raise ValueError(f"Unknown notification kind {kind!r}.")
    data = _data_clean(data)
    if dedupe_key:
        existing = Notification.objects.filter(dedupe_key=dedupe_key).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            notification = Notification.objects.create(
                user=user, kind=kind, title=title[:200], body=body, url=url[:300], data=data, dedupe_key=dedupe_key
            )
            outbound_events_fan_out(
                user_id=user.pk,
                type=kind,
                data={**data, "title": notification.title, "url": _absolute(notification.url)},
                dedupe_key=f"notification:{notification.pk}",
                created_at=notification.created_at,
            )
    except IntegrityError:  # a concurrent run of the same task got there first
        return Notification.objects.get(dedupe_key=dedupe_key), False
    if email and user.email:
        transaction.on_commit(lambda: _email_schedule(notification.pk))
    return notification, True


def _absolute(path: str) -> str:
    return f"{settings.SITE_URL}{path}" if path else ""


def _email_schedule(notification_pk: int) -> None:
    from exchange.tasks import notification_email_send

    try:
        notification_email_send.delay(notification_pk)
    except BrokerError:
        # Runs after the trade's commit: a broker outage must not fail the payment or delivery that notified.
        # The notification stays in the in-app list (and its webhook events have their own sweeper).
        log.warning("notification %s not emailed (broker unavailable)", notification_pk)


def notification_email_send(*, notification_pk: int) -> bool:
    """Email a notification unless it was already emailed; True when this call sent it.

    The row stays locked while the mail goes out, so two runs never both send;
    a worker that dies after sending but before commit sends again (at least once).
    """
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update(of=("self",))
            .select_related("user")
            .filter(pk=notification_pk)
            .first()
        )
        if notification is None or notification.emailed_at is not None or not notification.user.email:
            return False
        context = {"notification": notification, "user": notification.user, "site_url": settings.SITE_URL}
        text = render_to_string(
            [f"exchange/email/{notification.kind}.txt", "exchange/email/notification.txt"], context
        ).strip()
        send_mail(f"[Data Exchange] {notification.title}", text, None, [notification.user.email])
        notification.emailed_at = timezone.now()
        notification.save(update_fields=["emailed_at"])
    return True


# --- the in-app list ------------------------------------------------------------------------------


def notifications_for_user(*, user):
    """The user's notifications: unread first, then newest first."""
    unread_first = Case(When(read_at__isnull=True, then=Value(0)), default=Value(1), output_field=IntegerField())
    return Notification.objects.filter(user=user).order_by(unread_first, "-created_at", "-pk")


def notifications_unread_count(*, user) -> int:
    if not user.is_authenticated:
        return 0
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def notification_mark_read(*, user, notification_pk: int) -> Notification:
    """Mark one of ``user``'s notifications read (once: the first read time stays).

    Raises Notification.DoesNotExist for a notification that is not theirs.
    """
    notification = Notification.objects.get(pk=notification_pk, user=user)
    if notification.read_at is None:
        notification.read_at = timezone.now()
        Notification.objects.filter(pk=notification.pk, read_at__isnull=True).update(read_at=notification.read_at)
    return notification


def notifications_mark_all_read(*, user) -> int:
    """Mark every unread notification of ``user`` read; return how many."""
    return Notification.objects.filter(user=user, read_at__isnull=True).update(read_at=timezone.now())


# --- the trade's notices --------------------------------------------------------------------------


def _order_data(order: Order) -> dict:
    return {
        "order_id": str(order.public_id),
        "order_reference": order.reference,
        "listing_slug": order.listing.slug,
        "listing_title": order.listing.title,
        "plan_kind": order.plan_kind,
        "amount": order.amount,
        "currency": order.currency,
    }


def _merchant_users(order: Order):
    return [
        member.user for member in MerchantMember.objects.filter(merchant_id=order.merchant_id).select_related("user")
    ]


def order_paid_notify(*, order: Order) -> None:
    """The buyer's "purchase confirmed" and each merchant member's "new sale"; once per order (safe to re-run)."""
    order = Order.objects.select_related("listing").get(pk=order.pk)
    data = _order_data(order)
    renewal = order.subscription_id is not None  # renewal orders point at the subscription they renew
    price = "free" if order.amount == 0 else format_minor(order.amount, order.currency)
    if renewal:
        title = f"Subscription renewed: {order.listing.title}"
        body = f"Your subscription to {order.listing.title} was renewed ({price}); access continues."
    else:
        title = f"Purchase confirmed: {order.listing.title}"
        body = (
            f"Order {order.reference} ({price}) is paid. The payment is held in escrow until the data is delivered; "
            "you will be told when it is ready to download."
        )
    notification_send(
        user=order.buyer,
        kind=NotificationKind.PURCHASE_CONFIRMED,
        title=title,
        body=body,
        url=reverse("exchange:order_detail", args=[order.public_id]),
        data=data,
        dedupe_key=f"purchase_confirmed:{order.pk}",
    )
    for user in _merchant_users(order):
        notification_send(
            user=user,
            kind=NotificationKind.SALE,
            title=f"{'Renewal' if renewal else 'New sale'}: {order.listing.title} ({price})",
            body=f"Order {order.reference} is paid; the buyer's money is held in escrow until delivery.",
            url=reverse("exchange:sales"),
            data=data,
            dedupe_key=f"sale:{order.pk}:{user.pk}",
        )


def refund_notify(*, refund: Refund) -> None:
    """Tell the buyer and the merchant's members that a refund went through; once per refund."""
    refund = Refund.objects.select_related("order__listing").get(pk=refund.pk)
    order = refund.order
    amount = format_minor(refund.amount, refund.currency)
    data = {
        **_order_data(order),
        "refund_id": refund.pk,
        "refund_amount": refund.amount,
        "refund_currency": refund.currency,
        "reason": refund.reason,
        "fully_refunded": order.refunded_amount >= order.amount,
    }
    full = data["fully_refunded"]
    notification_send(
        user=order.buyer,
        kind=NotificationKind.REFUND,
        title=f"Refund of {amount}: {order.listing.title}",
        body=f"{amount} of order {order.reference} was refunded: {refund.reason}"
        + (" Your access to this product has ended." if full else ""),
        url=reverse("exchange:order_detail", args=[order.public_id]),
        data=data,
        dedupe_key=f"refund:{refund.pk}:buyer",
    )
    for user in _merchant_users(order):
        notification_send(
            user=user,
            kind=NotificationKind.REFUND,
            title=f"Refund issued on order {order.reference}: {amount}",
            body=f"{amount} of order {order.reference} ({order.listing.title}) was refunded: {refund.reason}",
            url=reverse("exchange:sales"),
            data=data,
            dedupe_key=f"refund:{refund.pk}:merchant:{user.pk}",
        )


def entitlement_expiring_dedupe_key(entitlement: Entitlement) -> str:
    """One notice per entitlement and period: a renewed period (a new ``valid_until``) gets its own."""
    return f"entitlement_expiring:{entitlement.pk}:{int(entitlement.valid_until.timestamp())}"


def entitlement_expiring_notify(*, entitlement: Entitlement) -> bool:
    """Tell the buyer their access ends at ``valid_until``; True when this call created the notice."""
    listing = entitlement.listing
    _, created = _send(
        user=entitlement.buyer,
        kind=NotificationKind.ENTITLEMENT_EXPIRING,
        title=f"Access ending {entitlement.valid_until:%Y-%m-%d}: {listing.title}",
        body=(
            f"Your access to {listing.title} ends on {entitlement.valid_until:%Y-%m-%d %H:%M} UTC. "
            "Renew the subscription (or buy again) to keep it."
        ),
        url=reverse("exchange:library"),
        data={
            "entitlement_id": entitlement.pk,
            "order_id": str(entitlement.order.public_id),
            "listing_slug": listing.slug,
            "listing_title": listing.title,
            "valid_until": entitlement.valid_until.isoformat(),
        },
        dedupe_key=entitlement_expiring_dedupe_key(entitlement),
        email=True,
    )
    return created
