"""Notifications: an in-app list and an email for each event a user must know about.

``notification_send`` is the one entry point. A ``dedupe_key`` makes it safe
to call from tasks that may run twice: the second call finds the first
notification and sends nothing.
"""

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from exchange.models import Notification


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
    """Record a notification for ``user`` and email it after commit; once per ``dedupe_key``."""
    if dedupe_key:
        existing = Notification.objects.filter(dedupe_key=dedupe_key).first()
        if existing is not None:
            return existing
    try:
        with transaction.atomic():
            notification = Notification.objects.create(
                user=user, kind=kind, title=title[:200], body=body, url=url[:300], data=data or {}, dedupe_key=dedupe_key
            )
    except IntegrityError:  # a concurrent run of the same task got there first
        return Notification.objects.get(dedupe_key=dedupe_key)
    if email and user.email:
        transaction.on_commit(lambda: _email(notification.pk))
    return notification


def _email(notification_pk: int) -> None:
    notification = Notification.objects.select_related("user").get(pk=notification_pk)
    context = {"notification": notification, "user": notification.user, "site_url": settings.SITE_URL}
    text = render_to_string(
        [f"exchange/email/{notification.kind}.txt", "exchange/email/notification.txt"], context
    ).strip()
    send_mail(f"[Data Exchange] {notification.title}", text, None, [notification.user.email])
    Notification.objects.filter(pk=notification_pk).update(emailed_at=timezone.now())
