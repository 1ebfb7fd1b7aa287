"""Entitlements and delivery: who may have which data, and handing it over."""

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from exchange.choices import DeliveryStatus, OrderStatus
from exchange.models import Delivery, DownloadLog, Entitlement, Order
from exchange.services.entitlements import entitlement_is_usable
from listings.choices import VersionAccess
from listings.models import DataFile, ListingVersion

DOWNLOAD_SALT = "exchange.download.v1"


class DownloadDenied(Exception):
    """A download link that must be refused; the message is safe to show."""


def published_versions(listing_id: int):
    """The listing's published versions, newest first."""
    return ListingVersion.objects.filter(listing_id=listing_id, published_at__isnull=False).order_by(
        "-published_at", "-pk"
    )


def delivery_version_allowed(
    entitlement: Entitlement, version: ListingVersion, *, latest: ListingVersion | None = None
) -> bool:
    """Whether the entitlement's version-access rule covers ``version`` (a published version of its product).

    - ``all``: every published version, past and future.
    - ``while_entitled``: the version that was current when access was granted, and every version
      published after that while the entitlement lasts.
    - ``latest``: only the newest published version; older ones are no longer served once a new one is out.

    ``latest`` may be passed to save a query when the caller already knows the newest version.
    """
    if version.listing_id != entitlement.listing_id or version.published_at is None:
        return False
    rule = entitlement.version_access
    if rule == VersionAccess.ALL:
        return True
    if rule == VersionAccess.LATEST:
        latest = latest or published_versions(entitlement.listing_id).first()
        return latest is not None and latest.pk == version.pk
    # while_entitled
    if version.published_at >= entitlement.granted_at:
        return True
    current_at_grant = (
        published_versions(entitlement.listing_id).filter(published_at__lte=entitlement.granted_at).first()
    )
    return current_at_grant is not None and current_at_grant.pk == version.pk


def delivery_prepare(*, entitlement_pk: int) -> list[Delivery]:
    """Prepare a delivery of the latest published version; safe to run twice."""
    with transaction.atomic():
        entitlement = Entitlement.objects.select_for_update().select_related("listing").get(pk=entitlement_pk)
        if not entitlement_is_usable(entitlement):
            return []
        version = (
            ListingVersion.objects.filter(listing_id=entitlement.listing_id, published_at__isnull=False)
            .order_by("-published_at", "-pk")
            .first()
        )
        if version is None:
            return []
        delivery, _ = Delivery.objects.get_or_create(entitlement=entitlement, version=version)
    return [delivery]


def download_link_make(*, delivery: Delivery, file: DataFile, user) -> str:
    """A signed link for ``user`` to fetch ``file`` of ``delivery``; expires after the configured TTL."""
    token = signing.dumps({"d": delivery.pk, "f": file.pk, "u": user.pk}, salt=DOWNLOAD_SALT, compress=False)
    return reverse("exchange:download", args=[token])


def download_resolve(*, token: str, user) -> tuple[Delivery, DataFile]:
    """Check a download token for ``user``; raise DownloadDenied unless it may be served now.

    The entitlement is re-checked on every request, so revoked access stops
    at the next download even with a fresh link.
    """
    try:
        data = signing.loads(token, salt=DOWNLOAD_SALT, max_age=settings.DOWNLOAD_LINK_TTL_SECONDS)
    except signing.SignatureExpired:
        raise DownloadDenied("This download link has expired; open your library for a fresh one.") from None
    except signing.BadSignature:
        raise DownloadDenied("This download link is not valid.") from None
    if not isinstance(data, dict) or not user.is_authenticated or data.get("u") != user.pk:
        raise DownloadDenied("This download link is not valid.")
    delivery = Delivery.objects.select_related("entitlement", "version").filter(pk=data.get("d")).first()
    if delivery is None or delivery.entitlement.buyer_id != user.pk:
        raise DownloadDenied("This download link is not valid.")
    if not entitlement_is_usable(delivery.entitlement):
        raise DownloadDenied("Your access to this data product has ended.")
    file = DataFile.objects.filter(pk=data.get("f"), version_id=delivery.version_id).first()
    if file is None:
        raise DownloadDenied("This download link is not valid.")
    return delivery, file


def download_log_start(*, delivery: Delivery, file: DataFile, user, ip_address: str | None) -> DownloadLog:
    return DownloadLog.objects.create(delivery=delivery, file=file, user=user, ip_address=ip_address)


def download_log_finish(*, log_pk: int, bytes_sent: int, completed: bool) -> None:
    DownloadLog.objects.filter(pk=log_pk).update(bytes_sent=bytes_sent, completed=completed, finished_at=timezone.now())


def delivery_confirm(*, delivery_pk: int, reason: str) -> Delivery:
    """Record a completed hand-over; the first one releases the order from escrow."""
    from exchange.services.orders import order_transition

    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().select_related("entitlement").get(pk=delivery_pk)
        delivery.download_count += 1
        fields = ["download_count"]
        if delivery.status != DeliveryStatus.CONFIRMED:
            delivery.status, delivery.confirmed_at = DeliveryStatus.CONFIRMED, timezone.now()
            fields += ["status", "confirmed_at"]
        delivery.save(update_fields=fields)
        order = Order.objects.select_for_update().get(pk=delivery.entitlement.order_id)
        if order.status == OrderStatus.PAID:
            order_transition(order_pk=order.pk, to_status=OrderStatus.DELIVERED, reason=reason)
        elif order.delivered_at is None and order.status == OrderStatus.PARTIALLY_REFUNDED:
            # Delivered after a partial refund: the rest becomes eligible for settlement.
            Order.objects.filter(pk=order.pk).update(delivered_at=timezone.now())
    return delivery
