"""Notifications: an in-app list, an email and outbound webhook events for each event a user must know about.

``notifications_send_many`` is the one implementation; ``notification_send``
is its batch of one. A ``dedupe_key`` makes it safe to call from tasks that
may run twice: the second call finds the first notification and sends
nothing. A batch costs the same few queries whatever its size (the trade
pipeline sends hundreds per transaction): the existing keys, one INSERT that
skips keys a concurrent batch took first, the webhook endpoints of its users
and one INSERT of their events (exchange.services.outbound), all in the
caller's transaction. After commit one hook queues the webhook sends and the
emails, up to ``EMAIL_BATCH`` per ``notification_emails_send`` task (on the
``notifications`` queue, away from the payment drains), which renders them
from ``templates/exchange/email/<kind>.txt`` and sends them over one
connection.

``data`` travels in the webhook payload: plain JSON with useful ids (order
public id, listing slug, version label, amounts in minor units and their
currency), never secrets; keys that look like one are refused.

No sweeper re-sends emails a lost task never sent: a notification does not
record whether it was meant to be emailed (``email=False`` leaves no trace),
so one could not tell "lost" from "not wanted". Emails are at least once
while their task lives, and the notification stays in the in-app list.
"""

import json
import logging
import smtplib
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Case, IntegerField, Value, When
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from common.money import format_minor
from exchange.choices import NotificationKind
from exchange.models import Entitlement, Notification, Order, Refund
from exchange.services.outbound import (
    FanOut,
    insert_skipping_conflicts,
    outbound_events_fan_out_many,
    outbound_events_schedule,
)
from merchants.models import MerchantMember

log = logging.getLogger(__name__)

# A data key containing one of these words is refused: the payload leaves the exchange.
_SECRET_WORDS = ("secret", "password", "token", "api_key", "apikey", "signature", "credential")
# Notifications per email task: one SMTP connection each, and row locks held no longer than its sends take.
EMAIL_BATCH = 100
_DEDUPE_KEY_MAX = Notification._meta.get_field("dedupe_key").max_length


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


@dataclass(frozen=True)
class NotificationSpec:
    """One notification to send with ``notifications_send_many`` (the same fields as ``notification_send``)."""

    user: object
    kind: str
    title: str
    body: str = ""
    url: str = ""
    data: dict = field(default_factory=dict)
    dedupe_key: str | None = None
    email: bool = True


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
    ValueError otherwise, and nothing is written). A batch of one of
    ``notifications_send_many``.
    """
    spec = NotificationSpec(
        user=user, kind=kind, title=title, body=body, url=url, data=data, dedupe_key=dedupe_key, email=email
    )
    return _send_many([spec])[0][0]


def notifications_send_many(specs: list[NotificationSpec]) -> list[Notification]:
    """Send several notifications at once, with ``notification_send``'s guarantees for each.

    Every spec is checked before anything is written: an unknown kind, data
    that is not plain JSON or carries a secret-looking key, a dedupe key
    longer than 150 characters or an unsaved user raises (ValueError, or
    TypeError for the data) and the batch writes nothing. A ``dedupe_key``
    already used, earlier in the batch or before (by a concurrent batch too),
    yields the existing notification and sends nothing again; an empty key is
    no key. The writes join the caller's transaction (an error there fails
    it); emails and webhook sends are queued once it commits. Returns the
    notifications in the order of ``specs``.
    """
    return [notification for notification, _ in _send_many(specs)]


def _spec_check(spec: NotificationSpec) -> Notification:
    """The unsaved notification for ``spec``, or the error that refuses the batch."""
    if spec.kind not in NotificationKind.values:
        raise ValueError(f"Unknown notification kind {spec.kind!r}.")
    if getattr(spec.user, "pk", None) is None:
        raise ValueError(f"A notification needs a saved user; got {spec.user!r}.")
    dedupe_key = spec.dedupe_key or None
    if dedupe_key is not None and len(dedupe_key) > _DEDUPE_KEY_MAX:
        raise ValueError(f"Notification dedupe_key is longer than {_DEDUPE_KEY_MAX} characters: {dedupe_key!r}.")
    return Notification(
        user=spec.user,
        kind=spec.kind,
        title=spec.title[:200],
        body=spec.body,
        url=spec.url[:300],
        data=_data_clean(spec.data),
        dedupe_key=dedupe_key,
    )


def _send_many(specs: list[NotificationSpec]) -> list[tuple[Notification, bool]]:
    """``notifications_send_many``, with whether each notification was created by this call."""
    specs = list(specs)
    candidates = [_spec_check(spec) for spec in specs]  # all checked before the first query
    if not candidates:
        return []
    keys = {n.dedupe_key for n in candidates if n.dedupe_key is not None}
    with transaction.atomic(savepoint=False):
        existing = {n.dedupe_key: n for n in Notification.objects.filter(dedupe_key__in=keys)} if keys else {}
        keyed: dict[str, Notification] = {}  # the first new notification of each key, to insert
        unkeyed: list[Notification] = []
        for notification in candidates:
            key = notification.dedupe_key
            if key is None:
                unkeyed.append(notification)
            elif key not in existing and key not in keyed:
                keyed[key] = notification
        # Sorted by key: two batches sharing keys take the unique index's locks in one order (no deadlock).
        to_insert = sorted(keyed.values(), key=lambda n: n.dedupe_key)
        inserted = insert_skipping_conflicts(to_insert, unique_fields=("dedupe_key",))
        if len(inserted) < len(to_insert):  # a concurrent batch committed some of these keys first
            taken = [n.dedupe_key for n in to_insert if n.pk is None]
            existing.update((n.dedupe_key, n) for n in Notification.objects.filter(dedupe_key__in=taken))
        created = {id(n) for n in inserted}
        if unkeyed:
            Notification.objects.bulk_create(unkeyed)
            created.update(id(n) for n in unkeyed)
        results = []
        for notification in candidates:
            if id(notification) in created:
                results.append((notification, True))
            else:  # a key used before, by a concurrent batch, or earlier in this batch
                key = notification.dedupe_key
                results.append((existing[key] if key in existing else keyed[key], False))
        new = [(n, spec) for (n, is_new), spec in zip(results, specs, strict=True) if is_new]
        event_pks = outbound_events_fan_out_many(
            [
                FanOut(
                    user_id=n.user_id,
                    type=n.kind,
                    data={**n.data, "title": n.title, "url": _absolute(n.url)},
                    dedupe_key=f"notification:{n.pk}",
                    created_at=n.created_at,
                )
                for n, _ in new
            ],
            schedule=False,
        )
        email_pks = [n.pk for n, spec in new if spec.email and spec.user.email]
        if event_pks or email_pks:
            transaction.on_commit(lambda: _after_commit(email_pks=email_pks, event_pks=event_pks))
    return results


def _absolute(path: str) -> str:
    return f"{settings.SITE_URL}{path}" if path else ""


def _after_commit(*, email_pks: list[int], event_pks: list[int]) -> None:
    """The batch's one on_commit hook: queue its webhook sends and its emails."""
    from exchange.tasks import notification_emails_send

    outbound_events_schedule(event_pks)
    for start in range(0, len(email_pks), EMAIL_BATCH):
        chunk = email_pks[start : start + EMAIL_BATCH]
        try:
            notification_emails_send.delay(chunk)
        except BrokerError:
            # Runs after the trade's commit: a broker outage must not fail the payment or delivery that notified.
            # The notifications stay in the in-app list (and their webhook events have their own sweeper).
            log.warning("notifications %s not emailed (broker unavailable)", chunk)


def notification_emails_send(*, notification_pks: list[int]) -> int:
    """Email those of the notifications not emailed yet, over one connection; return how many this call sent.

    The rows stay locked while their mails go out, so two runs never both send
    one; rows another run holds are left to it. A worker that dies after
    sending but before commit sends again (at least once). A failed send does
    not undo the others: the ones sent are marked, then ConnectionError is
    raised so the task retries the rest (a refused recipient is skipped at
    once: retrying cannot help it). Users without an email get none.
    """
    pks = sorted(set(notification_pks))
    if not pks:
        return 0
    sent: list[int] = []
    error = None
    with transaction.atomic():
        batch = list(
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("user")
            .filter(pk__in=pks, emailed_at__isnull=True)
            .order_by("pk")
        )
        messages = [(n.pk, _email_message(n)) for n in batch if n.user.email]
        if messages:
            with get_connection() as connection:
                for pk, message in messages:
                    try:
                        connection.send_messages([message])
                    except smtplib.SMTPRecipientsRefused as exc:
                        log.warning("notification %s not emailed: recipient refused (%s)", pk, exc)
                        continue
                    except OSError as exc:  # smtplib's errors are OSErrors; the connection is likely gone
                        error = exc
                        break
                    sent.append(pk)
        if sent:
            Notification.objects.filter(pk__in=sent).update(emailed_at=timezone.now())
    if error is not None:
        raise ConnectionError(f"{len(messages) - len(sent)} notification email(s) not sent: {error}") from error
    return len(sent)


def _email_message(notification: Notification) -> EmailMessage:
    context = {"notification": notification, "user": notification.user, "site_url": settings.SITE_URL}
    text = render_to_string(
        [f"exchange/email/{notification.kind}.txt", "exchange/email/notification.txt"], context
    ).strip()
    # A line break in a title would be a header injection (and EmailMessage refuses it): one line.
    subject = " ".join(f"[Data Exchange] {notification.title}".splitlines())
    return EmailMessage(subject, text, None, [notification.user.email])


def notification_email_send(*, notification_pk: int) -> bool:
    """Email one notification unless it was already emailed (``notification_emails_send`` for one); True if sent."""
    return notification_emails_send(notification_pks=[notification_pk]) == 1


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


def _merchant_users(merchant_ids) -> dict[int, list]:
    """Each merchant's member users (one query for all the merchants)."""
    users = defaultdict(list)
    members = MerchantMember.objects.filter(merchant_id__in=set(merchant_ids)).select_related("user").order_by("pk")
    for member in members:
        users[member.merchant_id].append(member.user)
    return users


def order_paid_notify(*, order: Order) -> None:
    """The buyer's "purchase confirmed" and each merchant member's "new sale"; once per order (safe to re-run)."""
    orders_paid_notify_many(orders=[order])


def orders_paid_notify_many(*, orders: list[Order]) -> None:
    """``order_paid_notify`` for several paid orders at once (the payment drain's batches).

    Two queries to read the orders (with listing and buyer) and the merchants'
    members, then one ``notifications_send_many`` for the whole batch.
    """
    pks = [order.pk for order in orders]
    if not pks:
        return
    fresh = list(Order.objects.select_related("listing", "buyer").filter(pk__in=pks).order_by("pk"))
    members = _merchant_users(order.merchant_id for order in fresh)
    specs = []
    for order in fresh:
        specs.extend(_order_paid_specs(order, members[order.merchant_id]))
    notifications_send_many(specs)


def _order_paid_specs(order: Order, merchant_users: list) -> list[NotificationSpec]:
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
    specs = [
        NotificationSpec(
            user=order.buyer,
            kind=NotificationKind.PURCHASE_CONFIRMED,
            title=title,
            body=body,
            url=reverse("exchange:order_detail", args=[order.public_id]),
            data=data,
            dedupe_key=f"purchase_confirmed:{order.pk}",
        )
    ]
    sales_url = reverse("exchange:sales")
    for user in merchant_users:
        specs.append(
            NotificationSpec(
                user=user,
                kind=NotificationKind.SALE,
                title=f"{'Renewal' if renewal else 'New sale'}: {order.listing.title} ({price})",
                body=f"Order {order.reference} is paid; the buyer's money is held in escrow until delivery.",
                url=sales_url,
                data=data,
                dedupe_key=f"sale:{order.pk}:{user.pk}",
            )
        )
    return specs


def refund_notify(*, refund: Refund) -> None:
    """Tell the buyer and the merchant's members that a refund went through; once per refund."""
    refund = Refund.objects.select_related("order__listing", "order__buyer").get(pk=refund.pk)
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
    specs = [
        NotificationSpec(
            user=order.buyer,
            kind=NotificationKind.REFUND,
            title=f"Refund of {amount}: {order.listing.title}",
            body=f"{amount} of order {order.reference} was refunded: {refund.reason}"
            + (" Your access to this product has ended." if full else ""),
            url=reverse("exchange:order_detail", args=[order.public_id]),
            data=data,
            dedupe_key=f"refund:{refund.pk}:buyer",
        )
    ]
    for user in _merchant_users([order.merchant_id])[order.merchant_id]:
        specs.append(
            NotificationSpec(
                user=user,
                kind=NotificationKind.REFUND,
                title=f"Refund issued on order {order.reference}: {amount}",
                body=f"{amount} of order {order.reference} ({order.listing.title}) was refunded: {refund.reason}",
                url=reverse("exchange:sales"),
                data=data,
                dedupe_key=f"refund:{refund.pk}:merchant:{user.pk}",
            )
        )
    notifications_send_many(specs)


def entitlement_expiring_dedupe_key(entitlement: Entitlement) -> str:
    """One notice per entitlement and period: a renewed period (a new ``valid_until``) gets its own."""
    return f"entitlement_expiring:{entitlement.pk}:{int(entitlement.valid_until.timestamp())}"


def entitlement_expiring_notify(*, entitlement: Entitlement) -> bool:
    """Tell the buyer their access ends at ``valid_until``; True when this call created the notice."""
    listing = entitlement.listing
    ((_, created),) = _send_many(
        [
            NotificationSpec(
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
        ]
    )
    return created
