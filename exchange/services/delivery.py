"""Delivery: handing a buyer the versions their entitlement covers, provably, or refunding them.

A Delivery is one (entitlement, version) pair. It is created PENDING, its
stored files are checked against what was recorded at upload (existence and
size always, SHA-256 up to ``DELIVERY_VERIFY_SHA256_MAX_BYTES``), and only then
does it become READY with a frozen receipt. A file that is missing or does not
match counts as a failed attempt; after ``DELIVERY_MAX_ATTEMPTS`` of them the
delivery is FAILED, and if the buyer was handed nothing else of the product
the order is refunded in full and both sides are told why.

Every status change goes through ``delivery_transitions_apply`` (``delivery_transition`` for one) and its table.
"""

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Prefetch, prefetch_related_objects
from django.urls import reverse
from django.utils import timezone

from common.canonical import canonical_json
from common.money import format_minor
from exchange.choices import DeliveryStatus, NotificationKind, OrderStatus, RefundStatus
from exchange.models import Delivery, DeliveryStatusHistory, Entitlement, Order, Refund
from exchange.selectors import buyer_library
from exchange.services.entitlements import entitlement_is_usable
from exchange.services.notifications import NotificationSpec, notification_send, notifications_send_many
from listings.choices import VersionAccess
from listings.models import DataFile, ListingVersion
from merchants.models import MerchantMember

log = logging.getLogger(__name__)

_D = DeliveryStatus
# The one table of allowed delivery moves (DESIGN.md §5.3). A withdrawn delivery (access ended)
# comes back ready when access is restored; failed is final (the order was refunded).
DELIVERY_TRANSITIONS: dict[str, set[str]] = {
    _D.PENDING: {_D.READY, _D.FAILED, _D.WITHDRAWN},
    _D.READY: {_D.CONFIRMED, _D.WITHDRAWN},
    _D.CONFIRMED: {_D.WITHDRAWN},
    _D.FAILED: set(),
    _D.WITHDRAWN: {_D.READY},
}
# What a delivery can be confirmed by (stored in Delivery.confirmed_by).
CONFIRMED_BY = {"download", "api_call", "buyer", "auto"}
HASH_CHUNK = 1024 * 1024
RECEIPT_FORMAT = 1


class DeliveryTransitionError(ValidationError):
    """The delivery cannot move to the requested status from the one it is in."""


class DeliveryFileError(Exception):
    """A stored file is missing or differs from its record; the message says which and how (safe to show)."""


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


def versions_allowed(entitlement: Entitlement, published: Sequence[ListingVersion]) -> list[ListingVersion]:
    """The versions among ``published`` that the entitlement's rule covers, without a query.

    ``published`` must be every published version of the entitlement's product, newest first
    (``published_versions``). Same rule as ``delivery_version_allowed``, for callers that
    look at many versions or entitlements at once (the library page, preparation).
    """
    if not published:
        return []
    rule = entitlement.version_access
    if rule == VersionAccess.ALL:
        return list(published)
    if rule == VersionAccess.LATEST:
        return [published[0]]
    current_at_grant = next((v for v in published if v.published_at <= entitlement.granted_at), None)
    return [
        v
        for v in published
        if v.published_at >= entitlement.granted_at or (current_at_grant is not None and v.pk == current_at_grant.pk)
    ]


@dataclass
class DeliveryMove:
    """One requested status change for ``delivery_transitions_apply``; ``fields`` are saved with it."""

    delivery: Delivery
    to_status: str
    reason: str
    fields: dict = field(default_factory=dict)


def delivery_transitions_apply(moves: Sequence[DeliveryMove]) -> None:
    """The one place delivery statuses change: call inside a transaction with every moved row locked.

    Each move is checked against DELIVERY_TRANSITIONS before anything is
    saved, so one refused move raises DeliveryTransitionError and changes
    nothing. A move to the status a delivery already has only saves its
    ``fields``; every real move gets a history row. The writes are one history
    INSERT and one UPDATE per distinct set of saved fields, however many moves.
    """
    for move in moves:
        delivery = move.delivery
        if move.to_status != delivery.status and move.to_status not in DELIVERY_TRANSITIONS[delivery.status]:
            raise DeliveryTransitionError(
                f"Delivery {delivery.pk} is {delivery.get_status_display().lower()}; "
                f"it cannot become {move.to_status}.",
                code="delivery_transition",
            )
    history = []
    by_fields: dict[tuple[str, ...], list[Delivery]] = defaultdict(list)
    for move in moves:
        delivery, fields = move.delivery, dict(move.fields)
        if move.to_status != delivery.status:
            history.append(
                DeliveryStatusHistory(
                    delivery=delivery, from_status=delivery.status, to_status=move.to_status, reason=move.reason[:300]
                )
            )
            fields["status"] = move.to_status
        for name, value in fields.items():
            setattr(delivery, name, value)
        if fields:
            by_fields[tuple(fields)].append(delivery)
    if history:
        DeliveryStatusHistory.objects.bulk_create(history)
    for names, deliveries in by_fields.items():
        if len(deliveries) == 1:
            deliveries[0].save(update_fields=list(names))
        else:
            Delivery.objects.bulk_update(deliveries, fields=list(names))


def delivery_transition(delivery: Delivery, to_status: str, *, reason: str, fields: dict | None = None) -> Delivery:
    """Move one delivery (``delivery_transitions_apply`` for a single move); call with the row locked.

    Raises DeliveryTransitionError (nothing saved) for a move the table does not allow.
    """
    delivery_transitions_apply([DeliveryMove(delivery, to_status, reason, dict(fields or {}))])
    return delivery


def _library_url() -> str:
    return reverse("exchange:library")


# --- preparation ---------------------------------------------------------------------------------


def delivery_prepare(*, entitlement_pk: int) -> list[Delivery]:
    """Create and try to make ready a delivery for every published version the entitlement covers.

    Idempotent: the rows are inserted with ON CONFLICT DO NOTHING against the
    (entitlement, version) unique constraint, and each pending delivery is
    checked under its row lock, so running this twice (or concurrently) makes
    the same rows and issues each receipt and notification once. Returns the
    entitlement's deliveries of covered versions, oldest version first. A
    delivery still PENDING afterwards had a failed attempt (see ``last_error``)
    and should be retried; a FAILED one has been settled (refund, notices).
    Nothing is done for an entitlement that no longer gives access. Raises
    Entitlement.DoesNotExist for an unknown pk. A batch of one of
    ``delivery_prepare_many``.
    """
    prepared = _prepare(_pks_clean([entitlement_pk]))
    if entitlement_pk not in prepared:
        raise Entitlement.DoesNotExist(f"Entitlement {entitlement_pk} does not exist.")
    return prepared[entitlement_pk]


def delivery_prepare_many(*, entitlement_pks: Sequence[int]) -> dict[int, list[Delivery]]:
    """``delivery_prepare`` for several entitlements at once (a batch of paid orders); same guarantees.

    Returns each entitlement's deliveries by entitlement pk (an unknown or
    unusable entitlement maps to ``[]``); an entitlement whose deliveries are
    still PENDING afterwards had a failed attempt and must be retried
    individually (``delivery_prepare``). When every file checks out, the
    number of queries does not depend on the batch's size, and each distinct
    stored file is checked once per call however many buyers receive it.
    Raises ValueError, doing nothing, when a pk is not an integer.
    """
    pks = _pks_clean(entitlement_pks)
    prepared = _prepare(pks)
    return {pk: prepared.get(pk, []) for pk in pks}


def _pks_clean(entitlement_pks: Sequence[int]) -> list[int]:
    """The pks in their first-seen order without repeats; ValueError for anything that is not an integer."""
    bad = [pk for pk in entitlement_pks if not isinstance(pk, int) or isinstance(pk, bool)]
    if bad:
        raise ValueError(f"Entitlement pks must be integers; got {bad[:5]!r}.")
    return list(dict.fromkeys(entitlement_pks))


def _version_order(delivery: Delivery):
    return (delivery.version.published_at, delivery.version_id)


def _prepare(pks: list[int]) -> dict[int, list[Delivery]]:
    """Prepare the given entitlements; returns the deliveries of each entitlement found (usable or not)."""
    now = timezone.now()
    entitlements = {
        e.pk: e for e in Entitlement.objects.select_related("order", "buyer", "listing__merchant").filter(pk__in=pks)
    }
    prepared: dict[int, list[Delivery]] = {pk: [] for pk in entitlements}
    usable = [e for e in entitlements.values() if entitlement_is_usable(e, now=now)]
    if not usable:
        return prepared
    published: dict[int, list[ListingVersion]] = defaultdict(list)
    for version in ListingVersion.objects.filter(
        listing_id__in={e.listing_id for e in usable}, published_at__isnull=False
    ).order_by("-published_at", "-pk"):
        published[version.listing_id].append(version)
    versions: dict[int, ListingVersion] = {}
    wanted: set[tuple[int, int]] = set()
    for entitlement in usable:
        for version in versions_allowed(entitlement, published[entitlement.listing_id]):
            versions[version.pk] = version
            wanted.add((entitlement.pk, version.pk))
    if not wanted:
        return prepared
    # The files of the covered versions only, in one query; verification and receipts read these.
    prefetch_related_objects(list(versions.values()), Prefetch("files", queryset=DataFile.objects.order_by("pk")))
    # Sorted, so concurrent batches insert overlapping rows in the same order and wait for each other
    # instead of deadlocking; committed at once (autocommit), so the insert holds no lock for long.
    Delivery.objects.bulk_create(
        [Delivery(entitlement_id=e, version_id=v, status=DeliveryStatus.PENDING) for e, v in sorted(wanted)],
        ignore_conflicts=True,
    )
    found: list[Delivery] = []
    with transaction.atomic():
        # Locked in pk order (ORDER BY below the lock), for the same reason. A row another worker made
        # READY while we waited no longer matches the status filter and is read below instead.
        locked = (
            Delivery.objects.select_for_update()
            .filter(
                entitlement_id__in={e for e, _ in wanted},
                version_id__in=list(versions),
                status=DeliveryStatus.PENDING,
            )
            .order_by("pk")
        )
        pending = [d for d in locked if (d.entitlement_id, d.version_id) in wanted]
        for delivery in pending:
            delivery.entitlement, delivery.version = (
                entitlements[delivery.entitlement_id],
                versions[delivery.version_id],
            )
        _attempt(pending, checked={})
        found.extend(pending)
    missing = wanted - {(d.entitlement_id, d.version_id) for d in found}
    if missing:  # deliveries past PENDING (a re-run), read without a lock
        for delivery in Delivery.objects.filter(
            entitlement_id__in={e for e, _ in missing}, version_id__in={v for _, v in missing}
        ):
            if (delivery.entitlement_id, delivery.version_id) in missing:
                delivery.entitlement, delivery.version = (
                    entitlements[delivery.entitlement_id],
                    versions[delivery.version_id],
                )
                found.append(delivery)
    for delivery in sorted(found, key=_version_order):
        prepared[delivery.entitlement_id].append(delivery)
    for deliveries in prepared.values():
        if not any(d.status == DeliveryStatus.PENDING for d in deliveries):
            # Failures are settled once nothing is left to try, so the refund decision sees every outcome.
            for failed in (d for d in deliveries if d.status == DeliveryStatus.FAILED):
                delivery_failure_settle(delivery_pk=failed.pk)
    return prepared


def _file_problem(data_file: DataFile) -> str | None:
    """What is wrong with one stored file (a message safe to show), or None when it matches its record.

    One storage stat gives existence and size. Storage errors other than "not
    there" propagate, so an outage is retried rather than counted against the delivery.
    """
    name = data_file.file.name
    if not name:
        return f"{data_file.original_name}: the stored file is missing."
    try:
        size = default_storage.size(name)
    except FileNotFoundError:
        return f"{data_file.original_name}: the stored file is missing."
    if size != data_file.size:
        return f"{data_file.original_name}: the stored file has {size} bytes, the record says {data_file.size}."
    if size > settings.DELIVERY_VERIFY_SHA256_MAX_BYTES:
        return None
    digest = hashlib.sha256()
    with default_storage.open(name, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != data_file.sha256:
        return (
            f"{data_file.original_name}: the stored file's SHA-256 is {digest.hexdigest()}, "
            f"the record says {data_file.sha256}."
        )
    return None


def delivery_files_verify(version: ListingVersion, *, checked: dict[int, str | None] | None = None) -> None:
    """Check every stored file of ``version`` against its record; raise DeliveryFileError on the first mismatch.

    Existence and size are always checked; the SHA-256 is recomputed (streamed,
    constant memory) for files up to DELIVERY_VERIFY_SHA256_MAX_BYTES. Storage
    errors other than "not there" propagate, so a storage outage is retried as
    a transient error rather than counted against the delivery. ``checked``
    (DataFile pk → problem or None) remembers results across calls, so a batch
    reads each file once; the version's files are read from its prefetch if loaded.
    """
    checked = {} if checked is None else checked
    files = list(version.files.all())
    if not files:
        raise DeliveryFileError(f"Version {version.label} has no files to deliver.")
    for data_file in files:
        if data_file.pk not in checked:
            checked[data_file.pk] = _file_problem(data_file)
        if checked[data_file.pk] is not None:
            raise DeliveryFileError(checked[data_file.pk])


def _attempt(pending: list[Delivery], *, checked: dict[int, str | None]) -> None:
    """One attempt at each of these PENDING deliveries, locked by the caller, in a fixed number of writes.

    Each needs its entitlement (with order, buyer, listing and merchant) and
    version loaded. Verified ones become READY with a frozen receipt and one
    notice each (dedupe key ``delivery-ready:<pk>``); a file problem counts an
    attempt and stores the reason, and the attempt that reaches
    DELIVERY_MAX_ATTEMPTS marks the delivery FAILED (the caller settles it).
    """
    now = timezone.now()
    moves, ready = [], []
    for delivery in pending:
        attempts = delivery.attempts + 1
        try:
            delivery_files_verify(delivery.version, checked=checked)
        except DeliveryFileError as exc:
            fields = {"attempts": attempts, "last_error": str(exc)}
            if attempts >= settings.DELIVERY_MAX_ATTEMPTS:
                fields["failed_at"] = now
                moves.append(DeliveryMove(delivery, DeliveryStatus.FAILED, f"attempt {attempts}: {exc}", fields))
            else:
                moves.append(DeliveryMove(delivery, DeliveryStatus.PENDING, "", fields))
            continue
        receipt = receipt_build(delivery=delivery, ready_at=now)
        fields = {
            "ready_at": now,
            "receipt": receipt,
            "receipt_sha256": hashlib.sha256(receipt_canonical_bytes(receipt)).hexdigest(),
            "attempts": attempts,
            "last_error": "",
        }
        moves.append(DeliveryMove(delivery, DeliveryStatus.READY, "files verified", fields))
        ready.append(delivery)
    delivery_transitions_apply(moves)
    if ready:
        url = _library_url()
        notifications_send_many([_ready_notice(delivery, url=url) for delivery in ready])


def _ready_notice(delivery: Delivery, *, url: str) -> NotificationSpec:
    entitlement = delivery.entitlement
    return NotificationSpec(
        user=entitlement.buyer,
        kind=NotificationKind.DELIVERY_READY,
        title=f"{entitlement.listing.title} {delivery.version.label} is ready to download",
        body=(
            f"Your data is ready in your library. Order {entitlement.order.reference}; "
            f"receipt SHA-256 {delivery.receipt_sha256}."
        ),
        url=url,
        data={
            "delivery": delivery.pk,
            "order": str(entitlement.order.public_id),
            "listing_slug": entitlement.listing.slug,
            "version_label": delivery.version.label,
            "receipt_sha256": delivery.receipt_sha256,
        },
        dedupe_key=f"delivery-ready:{delivery.pk}",
    )


def delivery_make_ready(*, delivery_pk: int) -> Delivery:
    """One attempt at a pending delivery: verify its files, then issue the receipt and mark it READY.

    Runs under the delivery's row lock, so concurrent runs take turns and only
    the first one issues the receipt. A delivery that is not PENDING is
    returned unchanged. A file problem counts an attempt and stores the
    reason; the attempt that reaches DELIVERY_MAX_ATTEMPTS marks it FAILED
    (the caller settles it with ``delivery_failure_settle``).
    """
    with transaction.atomic():
        delivery = (
            Delivery.objects.select_for_update(of=("self",))
            .select_related("entitlement__order", "entitlement__buyer", "entitlement__listing__merchant", "version")
            .get(pk=delivery_pk)
        )
        if delivery.status == DeliveryStatus.PENDING:
            prefetch_related_objects([delivery.version], Prefetch("files", queryset=DataFile.objects.order_by("pk")))
            _attempt([delivery], checked={})
    return delivery


# --- receipts ------------------------------------------------------------------------------------


def _iso(moment) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def receipt_build(*, delivery: Delivery, ready_at) -> dict:
    """The facts of a hand-over, as plain JSON values (times in UTC, ISO 8601).

    Needs ``delivery`` with entitlement, order, buyer, listing, merchant and
    version loaded; reads the version's files (from its prefetch when loaded), in pk order.
    """
    entitlement = delivery.entitlement
    listing, order, version = entitlement.listing, entitlement.order, delivery.version
    return {
        "receipt_format": RECEIPT_FORMAT,
        "delivery_id": delivery.pk,
        "order": {"reference": order.reference, "public_id": str(order.public_id)},
        "product": {
            "title": listing.title,
            "slug": listing.slug,
            "listing_id": listing.pk,
            "registration_number": listing.registration_number or "",
        },
        "version": {"label": version.label, "published_at": _iso(version.published_at)},
        "files": [
            {
                "name": f.original_name,
                "size": f.size,
                "sha256": f.sha256,
                "format": f.format,
                "content_type": f.content_type,
            }
            for f in sorted(version.files.all(), key=lambda f: f.pk)
        ],
        "licence": {"code": listing.licence, "name": listing.get_licence_display()},
        "scenario": entitlement.scenario,
        "buyer": {"email": entitlement.buyer.email},
        "merchant": {"name": listing.merchant.name},
        "granted_at": _iso(entitlement.granted_at),
        "ready_at": _iso(ready_at),
        "issued_at": _iso(ready_at),
    }


def receipt_canonical_bytes(receipt: dict) -> bytes:
    """The receipt's one byte form: sorted keys, no spaces, UTF-8. Its SHA-256 is ``Delivery.receipt_sha256``.

    The JSON column may reorder keys, so the bytes are always derived from the
    stored value this way rather than kept separately.
    """
    return canonical_json(receipt)


# --- failure ---------------------------------------------------------------------------------------


def _buyer_has_other_delivery(delivery: Delivery) -> bool:
    """Whether the buyer can still download another version of this entitlement (then no refund is due)."""
    entitlement = delivery.entitlement
    allowed = {v.pk for v in versions_allowed(entitlement, list(published_versions(entitlement.listing_id)))}
    return (
        Delivery.objects.filter(
            entitlement=entitlement,
            status__in=[DeliveryStatus.READY, DeliveryStatus.CONFIRMED],
            version_id__in=allowed,
        )
        .exclude(pk=delivery.pk)
        .exists()
    )


def _refund_for_failure(order: Order, reason: str) -> Refund | None:
    """Refund what is left of ``order``, once (the key is fixed per order); None when nothing can be refunded."""
    from exchange.services.refunds import RefundConflict, order_refund, refund_execute

    key = f"delivery-failure:{order.pk}"
    existing = Refund.objects.filter(idempotency_key=key).first()
    if existing is not None:
        # A run that died after reserving the refund, or a transient gateway error: finish it.
        if existing.status != RefundStatus.PENDING:
            return existing
        try:
            return refund_execute(refund_pk=existing.pk)
        except RefundConflict as exc:  # held for review: pending past the gateway's memory of its key
            log.error("delivery failure refund %s of order %s: %s", existing.pk, order.reference, exc.messages[0])
            return existing
    remaining = order.amount - order.refunded_amount
    if remaining <= 0:
        return None
    try:
        return order_refund(
            order=order, amount=remaining, reason=reason, idempotency_key=key, source="delivery_failure"
        )
    except RefundConflict as exc:  # already refunded or disputed meanwhile: nothing more to give back
        log.warning("delivery failure refund of order %s refused: %s", order.reference, exc.messages[0])
        return None


def delivery_failure_settle(*, delivery_pk: int) -> Refund | None:
    """Close a FAILED delivery: refund the order unless the buyer has another usable delivery, tell both sides.

    Safe to run again: the refund has a fixed idempotency key and every
    notification a dedupe key. Returns the refund, or None when none was made.
    """
    delivery = Delivery.objects.select_related(
        "entitlement__order", "entitlement__buyer", "entitlement__listing__merchant", "version"
    ).get(pk=delivery_pk)
    if delivery.status != DeliveryStatus.FAILED:
        raise DeliveryTransitionError(f"Delivery {delivery.pk} has not failed.", code="not_failed")
    entitlement = delivery.entitlement
    order, listing = entitlement.order, entitlement.listing
    what = f"{listing.title} {delivery.version.label}"
    refund_due = not _buyer_has_other_delivery(delivery)
    refund = _refund_for_failure(order, reason=f"delivery failed: {delivery.last_error}"[:300]) if refund_due else None
    if not refund_due:
        outcome = f"Order {order.reference} stays as it is: the buyer keeps their other deliveries of this product."
    elif refund is None:
        outcome = f"Nothing was left to refund on order {order.reference}."
    elif refund.status == RefundStatus.SUCCEEDED:
        outcome = f"Order {order.reference} was refunded in full ({format_minor(refund.amount, refund.currency)})."
    else:
        outcome = f"A refund of order {order.reference} has been requested."
    attempts = f"after {delivery.attempts} attempts"
    notification_send(
        user=entitlement.buyer,
        kind=NotificationKind.DELIVERY_FAILED,
        title=f"We could not deliver {what}",
        body=f"The data could not be handed over {attempts}: {delivery.last_error} {outcome}",
        url=_library_url(),
        data={"delivery": delivery.pk, "order": str(order.public_id)},
        dedupe_key=f"delivery-failed:{delivery.pk}:buyer",
    )
    members = MerchantMember.objects.filter(merchant_id=listing.merchant_id).select_related("user")
    for member in members:
        notification_send(
            user=member.user,
            kind=NotificationKind.DELIVERY_FAILED,
            title=f"Delivery of {what} failed",
            body=(
                f"Order {order.reference} could not be delivered {attempts}: {delivery.last_error} "
                f"Upload the file again as a new version. {outcome}"
            ),
            url=reverse("exchange:sales"),
            data={"delivery": delivery.pk, "order": str(order.public_id)},
            dedupe_key=f"delivery-failed:{delivery.pk}:member:{member.user_id}",
        )
    return refund


def delivery_retry_countdown(attempts: int) -> int:
    """Seconds before the next attempt: DELIVERY_RETRY_BACKOFF_SECONDS doubled per failed attempt, capped."""
    base = settings.DELIVERY_RETRY_BACKOFF_SECONDS
    return min(base * 2 ** max(attempts - 1, 0), settings.DELIVERY_RETRY_BACKOFF_MAX_SECONDS)


# --- new versions --------------------------------------------------------------------------------


def schema_diff_summary(diff: dict) -> str:
    """One line per kind of change in a version's ``schema_diff`` (see listings.profiling.schema_diff)."""
    lines = []
    if diff.get("added"):
        lines.append("Added columns: " + ", ".join(diff["added"]) + ".")
    if diff.get("removed"):
        lines.append("Removed columns: " + ", ".join(diff["removed"]) + ".")
    if diff.get("retyped"):
        changes = ", ".join(f"{c['name']} ({c['from']} → {c['to']})" for c in diff["retyped"])
        lines.append(f"Retyped columns: {changes}.")
    return "\n".join(lines) or "The columns are unchanged."


def delivery_version_published(*, version_pk: int, batch: int = 500) -> list[int]:
    """Find every usable entitlement whose rule covers a newly published version; notify each buyer once.

    Walks the product's usable entitlements by pk in batches of ``batch``.
    Returns the pks of the entitlements to prepare (the task hands each to its
    own ``delivery_prepare`` so a failure retries per buyer). Safe to run twice
    (notifications carry a dedupe key; preparation is idempotent).
    """
    from exchange.services.entitlements import usable_q

    version = ListingVersion.objects.select_related("listing").get(pk=version_pk)
    if version.published_at is None:
        return []
    latest = published_versions(version.listing_id).first()
    diff = schema_diff_summary(version.schema_diff or {})
    changelog = f"\n\n{version.changelog}" if version.changelog else ""
    chosen: list[int] = []
    cursor = 0
    while True:
        entitlements = list(
            Entitlement.objects.filter(usable_q(), listing_id=version.listing_id, pk__gt=cursor)
            .select_related("buyer")
            .order_by("pk")[:batch]
        )
        if not entitlements:
            return chosen
        for entitlement in entitlements:
            if not delivery_version_allowed(entitlement, version, latest=latest):
                continue
            chosen.append(entitlement.pk)
            notification_send(
                user=entitlement.buyer,
                kind=NotificationKind.NEW_VERSION,
                title=f"{version.listing.title}: version {version.label} is available",
                body=f"{diff}{changelog}",
                url=_library_url(),
                data={
                    "version": version.pk,
                    "version_label": version.label,
                    "listing_slug": version.listing.slug,
                    "schema_diff": version.schema_diff or {},
                },
                dedupe_key=f"new-version:{version.pk}:{entitlement.pk}",
            )
        cursor = entitlements[-1].pk


# --- confirmation --------------------------------------------------------------------------------


def delivery_confirm(*, delivery_pk: int, reason: str, by: str = "download") -> Delivery:
    """Record a completed hand-over; the first one confirms the delivery and releases the order from escrow.

    ``by`` says what confirmed it: "download" (all bytes sent; counted in
    ``download_count``), "api_call" (a successful data API call), "buyer" or
    "auto". Only a READY or CONFIRMED delivery can be confirmed; anything else
    raises DeliveryTransitionError and changes nothing. Later confirmations
    keep the first one's time and kind.
    """
    from exchange.services.orders import order_transition

    if by not in CONFIRMED_BY:
        raise ValueError(f"Unknown confirmation kind {by!r}; expected one of {sorted(CONFIRMED_BY)}.")
    with transaction.atomic():
        # Only the delivery's row, and FOR NO KEY UPDATE: downloads being logged (rows referencing it) go on.
        locked = Delivery.objects.select_for_update(of=("self",), no_key=True)
        delivery = locked.select_related("entitlement").get(pk=delivery_pk)
        if delivery.status not in (DeliveryStatus.READY, DeliveryStatus.CONFIRMED):
            raise DeliveryTransitionError(
                f"Delivery {delivery.pk} is {delivery.get_status_display().lower()}; it cannot be confirmed.",
                code="not_confirmable",
            )
        fields = {"download_count": delivery.download_count + 1} if by == "download" else {}
        if delivery.status != DeliveryStatus.CONFIRMED:
            fields.update(confirmed_at=timezone.now(), confirmed_by=by)
        delivery_transition(delivery, DeliveryStatus.CONFIRMED, reason=reason, fields=fields)
        order = Order.objects.select_for_update().get(pk=delivery.entitlement.order_id)
        if order.status == OrderStatus.PAID:
            order_transition(order_pk=order.pk, to_status=OrderStatus.DELIVERED, reason=reason)
        elif order.delivered_at is None and order.status == OrderStatus.PARTIALLY_REFUNDED:
            # Delivered after a partial refund: the rest becomes eligible for settlement.
            Order.objects.filter(pk=order.pk).update(delivered_at=timezone.now())
    return delivery


# --- reads for the buyer's pages -------------------------------------------------------------------


@dataclass
class LibraryDelivery:
    """A delivery as the library shows it: ``files`` pairs each file with a fresh link, or None when not offered."""

    delivery: Delivery
    allowed: bool
    files: list = field(default_factory=list)


@dataclass
class LibraryEntry:
    entitlement: Entitlement
    usable: bool
    deliveries: list[LibraryDelivery] = field(default_factory=list)


def library_entries(*, user) -> list[LibraryEntry]:
    """The buyer's entitlements with their deliveries, newest version first, and signed links where offered.

    A link is offered only while the entitlement gives access, the version is
    one its rule covers now (a ``latest`` buyer loses the older ones), and the
    delivery is READY or CONFIRMED. A fixed number of queries, however many
    entitlements, deliveries and files.
    """
    from exchange.services.downloads import download_link_make  # downloads imports this module

    entitlements = list(buyer_library(user=user))
    published: dict[int, list[ListingVersion]] = defaultdict(list)
    for version in ListingVersion.objects.filter(
        listing_id__in={e.listing_id for e in entitlements}, published_at__isnull=False
    ).order_by("-published_at", "-pk"):
        published[version.listing_id].append(version)
    now = timezone.now()
    entries = []
    for entitlement in entitlements:
        usable = entitlement_is_usable(entitlement, now=now)
        allowed = {v.pk for v in versions_allowed(entitlement, published[entitlement.listing_id])}
        entry = LibraryEntry(entitlement=entitlement, usable=usable)
        deliveries = sorted(
            entitlement.deliveries.all(), key=lambda d: (d.version.published_at or d.prepared_at, d.pk), reverse=True
        )
        for delivery in deliveries:
            offered = (
                usable
                and delivery.version_id in allowed
                and delivery.status in (DeliveryStatus.READY, DeliveryStatus.CONFIRMED)
            )
            entry.deliveries.append(
                LibraryDelivery(
                    delivery=delivery,
                    allowed=delivery.version_id in allowed,
                    files=[
                        (f, download_link_make(delivery=delivery, file=f, user=user) if offered else None)
                        for f in delivery.version.files.all()
                    ],
                )
            )
        entries.append(entry)
    return entries


def delivery_receipt_for(*, pk: int, user) -> Delivery | None:
    """The delivery ``pk`` if ``user`` may read its receipt (its buyer, or staff) and it has one; else None."""
    if not user.is_authenticated:
        return None
    delivery = (
        Delivery.objects.select_related("entitlement", "version__listing").filter(pk=pk).exclude(receipt_sha256="")
    ).first()
    if delivery is None or not (delivery.entitlement.buyer_id == user.pk or user.is_staff):
        return None
    return delivery
