"""Refunds and disputes: money going back to the buyer, always as new ledger entries.

Where the money comes from depends on how far the trade has got. Before
settlement it is still held in escrow. After settlement it was split into the
platform's fee and the merchant's payable, so both give back their share (the
fee share is proportional, rounded half up, and a full refund returns the
whole fee). The merchant's share comes out of its payable as far as that
still holds money; beyond that (it was paid out already) it is booked to the
merchant's receivable, which the next settlement run nets against what the
merchant is owed before paying out. Nothing is ever deleted or updated in
the ledger: a dispute won is a new entry that reverses the withdrawal.

A refund is PENDING from the moment its amount is reserved on the order until
the gateway answers. When the gateway did not answer (a timeout, a 5xx) the
refund stays PENDING, its amount reserved and its order out of settlement, and
is sent again with the same idempotency key, so the gateway refunds once: by
staff submitting the same form again (``order_refund`` with the same key), and
by the beat sweep ``refunds_retry_pending``. When the gateway did refund but
the answer was lost, its report settles the matter too (Stripe's
``refund.created``, or ``charge.refunded`` with its refunds listed):
``refund_record_from_gateway`` books the reported refund as that PENDING
refund instead of as a second one.

A refund still PENDING after REFUND_RETRY_MAX_AGE_SECONDS (under Stripe's
24-hour memory of idempotency keys) is never sent again, since an expired key
could refund the buyer twice. The sweep asks the gateway instead whether it
made a refund under the refund's key (``refund_settle_by_lookup``) and books
what it shows; when the gateway cannot tell, the refund is held for review and
staff record what they find (``refund_resolve``).
"""

import logging
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from common.money import format_minor, mul_div_half_up
from exchange.choices import (
    MERCHANT_ACCOUNT_KINDS,
    AccountKind,
    DisputeStatus,
    JournalKind,
    OrderStatus,
    RefundStatus,
)
from exchange.gateways import GatewayError, IdempotencyMismatch, get_gateway
from exchange.gateways.base import RefundFailed
from exchange.models import Dispute, JournalEntry, LedgerAccount, Order, Posting, Refund
from exchange.services.entitlements import entitlement_restore, entitlement_revoke
from exchange.services.ledger import account_balance, account_get, journal_post, journal_reverse
from exchange.services.notifications import refund_notify
from exchange.services.orders import order_transition
from exchange.services.transitions import history_start, status_move

log = logging.getLogger(__name__)

REFUNDABLE = {OrderStatus.PAID, OrderStatus.DELIVERED, OrderStatus.SETTLED, OrderStatus.PARTIALLY_REFUNDED}


def refundable_amount(order: Order) -> int:
    """What staff could still refund of ``order`` (minor units): nothing unless its status allows a refund.

    A read of the row as given; ``order_refund`` asks it again of the row it locked.
    """
    if order.status not in REFUNDABLE:
        return 0
    return max(order.amount - order.refunded_amount, 0)


class RefundConflict(ValidationError):
    """The refund would exceed what was paid, or the order cannot be refunded now."""


class RefundNotHeld(ValidationError):
    """Only a refund held for review (pending past the gateway's key memory) is resolved by hand."""


def refund_key_expired(refund: Refund, *, now=None) -> bool:
    """Whether ``refund`` has been pending longer than REFUND_RETRY_MAX_AGE_SECONDS (under Stripe's 24-hour memory
    of idempotency keys): sent again, the gateway might not recognise the key and refund the buyer twice."""
    limit = (now or timezone.now()) - timedelta(seconds=settings.REFUND_RETRY_MAX_AGE_SECONDS)
    return refund.created_at <= limit


def _sources(order: Order, amount: int) -> list[tuple]:
    """The debit legs that fund ``amount`` going back to the buyer (see module docstring).

    After settlement the fee's share is computed on everything returned so far,
    not on this amount alone: the platform has given back, in total,
    fee * returned / gross rounded half up (``common.money.mul_div_half_up``),
    so several partial returns give back exactly the fee once everything is
    returned (per-refund rounding could give back a unit more or less than
    was charged).
    """
    sale = JournalEntry.objects.filter(idempotency_key=f"sale:{order.pk}").prefetch_related("postings__account").first()
    if sale is None:
        return [(account_get(kind=AccountKind.ESCROW_HELD), amount, order.currency)]
    fee = -sum(p.amount for p in sale.postings.all() if p.account.kind == AccountKind.PLATFORM_REVENUE)
    gross = sum(p.amount for p in sale.postings.all() if p.account.kind == AccountKind.ESCROW_HELD)
    # What the fee and the merchant gave back since the sale (refunds, disputes, less disputes won).
    since_sale = Posting.objects.filter(
        entry__order=order,
        entry__sequence__gt=sale.sequence,
        account__kind__in=[AccountKind.PLATFORM_REVENUE, *MERCHANT_ACCOUNT_KINDS],
    ).values_list("account__kind", "amount")
    fee_back = sum(value for kind, value in since_sale if kind == AccountKind.PLATFORM_REVENUE)
    returned = sum(value for _, value in since_sale)
    owed_back = mul_div_half_up(fee, min(returned + amount, gross), gross) if gross else 0
    fee_share = max(0, min(amount, owed_back - fee_back))
    merchant_share = amount - fee_share
    # The merchant gives back from what it is still owed; beyond that (it was paid out) it owes the rest.
    # Locked: a concurrent refund or payout of the same merchant reads the balance after this one's legs.
    payable = LedgerAccount.objects.select_for_update().get(
        pk=account_get(kind=AccountKind.MERCHANT_PAYABLE, merchant=order.merchant).pk
    )
    owed = -account_balance(account=payable, currency=order.currency)
    from_payable = max(0, min(merchant_share, owed))
    return [
        (account_get(kind=AccountKind.PLATFORM_REVENUE), fee_share, order.currency),
        (payable, from_payable, order.currency),
        (
            account_get(kind=AccountKind.MERCHANT_RECEIVABLE, merchant=order.merchant),
            merchant_share - from_payable,
            order.currency,
        ),
    ]


def _post_money_out(*, order: Order, amount: int, key: str, kind: str, memo: str) -> None:
    legs = [*_sources(order, amount), (account_get(kind=AccountKind.GATEWAY_CLEARING), -amount, order.currency)]
    journal_post(idempotency_key=key, kind=kind, postings=legs, order=order, memo=memo)


def _apply_refund(*, refund: Refund, order: Order, reason: str, actor=None) -> None:
    """A pending refund succeeded: its status, then its booking (inside a transaction, refund and order locked)."""
    refund.completed_at, refund.error = timezone.now(), ""
    status_move(
        refund,
        RefundStatus.SUCCEEDED,
        reason=reason,
        actor=actor,
        fields=("completed_at", "error", "gateway_refund_id"),
    )
    if order.status == OrderStatus.PENDING_PAYMENT:
        return  # booked when the payment itself arrives (events may come out of order)
    _book_refund(refund=refund, order=order)


def _fail_refund(*, refund: Refund, order_pk: int, error: str, reason: str, actor=None) -> None:
    """A pending refund was not made: FAILED with ``error``, and its amount no longer reserved on the order
    (inside a transaction, the refund locked)."""
    refund.error = error[:2000]
    status_move(refund, RefundStatus.FAILED, reason=reason, actor=actor, fields=("error", "gateway_refund_id"))
    Order.objects.filter(pk=order_pk).update(refunded_amount=F("refunded_amount") - refund.amount)


def _book_refund(*, refund: Refund, order: Order) -> None:
    """A succeeded refund's ledger entry, the order's status and the buyer's access."""
    _post_money_out(
        order=order,
        amount=refund.amount,
        key=f"refund:{refund.pk}",
        kind=JournalKind.REFUND,
        memo=f"refund {refund.pk} of order {order.reference}: {refund.reason}",
    )
    full = order.refunded_amount >= order.amount
    target = OrderStatus.REFUNDED if full else OrderStatus.PARTIALLY_REFUNDED
    order_transition(order_pk=order.pk, to_status=target, reason=f"refund {refund.pk}: {refund.reason}")
    if full and hasattr(order, "entitlement"):
        entitlement_revoke(entitlement_pk=order.entitlement.pk, reason="order fully refunded")
    refund_notify(refund=refund)


def order_refund(
    *, order: Order, amount: int, reason: str, actor=None, idempotency_key: str = "", source: str = "admin"
) -> Refund:
    """Refund ``amount`` (minor units) of a paid order through its gateway.

    The amount is reserved on the order under its row lock before the gateway
    is called, so two concurrent refunds can never return more than was paid:
    the second one gets RefundConflict. The gateway call carries the refund's
    stored idempotency key. A repeated ``idempotency_key`` returns the first
    refund; when that one is still PENDING (the gateway did not answer), it is
    sent again first, with the same key, so the gateway refunds once.

    When the gateway does not answer, GatewayError (``transient``) says so: the
    refund stays PENDING with its amount reserved, and is retried by submitting
    the same key again or by the sweep (``refunds_retry_pending``).
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "A refund needs a reason."})
    if not isinstance(amount, int) or amount <= 0:
        raise ValidationError({"amount": "A refund amount must be a positive number of minor units."})
    if idempotency_key:
        existing = Refund.objects.filter(idempotency_key=idempotency_key).first()
        if existing and existing.status == RefundStatus.PENDING:
            return _refund_retry_now(existing)
        if existing:
            return existing
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if locked.status not in REFUNDABLE:
            raise RefundConflict(
                f"Order {locked.reference} is {locked.get_status_display()}; it cannot be refunded.",
                code="not_refundable",
            )
        remaining = refundable_amount(locked)
        if amount > remaining:
            raise RefundConflict(
                f"Refunding {amount} would exceed what was paid: {remaining} of {locked.amount} remains refundable.",
                code="refund_exceeds_paid",
            )
        Order.objects.filter(pk=locked.pk).update(refunded_amount=F("refunded_amount") + amount)
        key = idempotency_key or f"refund-{locked.pk}-{locked.refunds.count() + 1}"
        try:
            with transaction.atomic():
                refund = Refund.objects.create(
                    order=locked,
                    amount=amount,
                    currency=locked.currency,
                    reason=reason[:300],
                    source=source,
                    idempotency_key=key,
                    requested_by=actor,
                )
                history_start([refund], reason=f"requested ({source}): {reason}", actor=actor)
        except IntegrityError:
            raise RefundConflict("A refund with this idempotency key already exists.", code="key_reused") from None
        audit_record(
            action="refund_requested",
            actor=actor,
            obj=refund,
            order=locked.reference,
            amount=amount,
            currency=locked.currency,
            source=source,
        )
    return _execute_or_explain(refund)


# How long one retry may hold its claim on a refund (longer than any gateway call takes, timeouts included).
RETRY_CLAIM_SECONDS = 300


@contextmanager
def _retry_claim(refund_pk: int):
    """Yield whether this process may retry the refund now: no other retry of it is under way.

    Two calls with the same idempotency key at the same moment can make Stripe
    answer 409 (a request with this key is in progress), which would fail a
    refund the other call completes; so a retry claims the refund first.
    """
    key = f"exchange:refund-retry:{refund_pk}"
    claimed = cache.add(key, 1, timeout=RETRY_CLAIM_SECONDS)
    try:
        yield claimed
    finally:
        if claimed:
            cache.delete(key)


def _execute_or_explain(refund: Refund, *, via: str = "") -> Refund:
    """``refund_execute``, with a gateway that did not answer explained to the person who asked."""
    try:
        return refund_execute(refund_pk=refund.pk, via=via)
    except GatewayError as exc:  # refund_execute raises only the transient ones
        raise GatewayError(
            f"The payment gateway did not answer ({exc}). Refund {refund.pk} of "
            f"{format_minor(refund.amount, refund.currency)} stays pending, its amount reserved on the order; "
            "it is sent again automatically within minutes with the same idempotency key, so the buyer is "
            "refunded once. Submitting the same form again retries it now.",
            transient=True,
        ) from exc


def _refund_retry_now(refund: Refund) -> Refund:
    """Staff submitted a refund again that is still PENDING: send it again now (same key)."""
    with _retry_claim(refund.pk) as claimed:
        if not claimed:
            raise RefundConflict(
                f"Refund {refund.pk} is pending and being sent to the gateway again right now; "
                "look at the order again in a minute.",
                code="retry_in_progress",
            )
        return _execute_or_explain(refund, via="sent again: the same refund was submitted again")


def refund_execute(*, refund_pk: int, via: str = "") -> Refund:
    """Send a pending refund to the gateway and book it. Safe to call again (the key dedupes).

    A refund that is no longer PENDING is returned as it is. A refusal fails it
    and frees its amount; a gateway that did not answer leaves it PENDING (its
    error recorded) and the GatewayError is raised. ``via`` says in the status
    history why this attempt was made (a retry), when it was not the first.
    """
    refund = Refund.objects.select_related("order").get(pk=refund_pk)
    if refund.status != RefundStatus.PENDING:
        return refund
    if refund_key_expired(refund):
        # Whoever asks (staff submitting it again, a delivery failure, a late task), it is not sent again.
        raise RefundConflict(
            f"Refund {refund.pk} has been pending since {refund.created_at:%Y-%m-%d %H:%M} UTC, longer than the "
            "gateway keeps its idempotency key, so sending it again could refund the buyer twice. Every few "
            "minutes the exchange asks the gateway whether it made it and books what it shows; when the gateway "
            "cannot tell (the refund's error says why), look it up there and record what you find on the refund's "
            "admin page (Record what the gateway shows).",
            code="refund_held",
        )
    order = refund.order
    gateway = get_gateway(order.gateway)
    try:
        if order.amount and hasattr(gateway, "refund_create"):
            refund.gateway_refund_id = gateway.refund_create(
                payment_id=order.gateway_payment_id or order.gateway_session_id or "",
                amount=refund.amount,
                idempotency_key=refund.idempotency_key,
            )
    except IdempotencyMismatch:
        # The key was first used with other parameters (an earlier release's): that first request may have
        # refunded, so what the gateway made under it is looked up instead.
        return _refund_book_by_lookup(
            refund_pk=refund.pk, how=_why(" (looked up: the gateway refused its key with other parameters)", via)
        )
    except GatewayError as exc:
        with transaction.atomic():
            Order.objects.select_for_update().filter(pk=order.pk).exists()  # the order first, as every path locks
            locked = Refund.objects.select_for_update().get(pk=refund.pk)
            if locked.status != RefundStatus.PENDING:
                pass  # a concurrent attempt already ended it
            elif exc.transient:
                locked.error = str(exc)[:2000]
                locked.save(update_fields=["error"])
            else:
                if isinstance(exc, RefundFailed):  # made and failed at once: its id marks a later report as known
                    locked.gateway_refund_id = exc.refund_id[:120]
                _fail_refund(
                    refund=locked, order_pk=order.pk, error=str(exc), reason=_why(f"gateway refused: {exc}", via)
                )
        if exc.transient:
            raise
        return locked
    with transaction.atomic():
        locked_order = Order.objects.select_for_update().get(pk=order.pk)
        locked = Refund.objects.select_for_update().get(pk=refund.pk)
        if locked.status == RefundStatus.PENDING:
            locked.gateway_refund_id = refund.gateway_refund_id
            done = f"gateway refund {locked.gateway_refund_id}" if locked.gateway_refund_id else "nothing to return"
            _apply_refund(refund=locked, order=locked_order, reason=_why(done, via))
        elif locked.status == RefundStatus.FAILED and refund.gateway_refund_id:
            # Ended meanwhile (recorded as not made, or reported failed). The gateway's answer may be a replay of
            # its first one, so it is not booked from here: if money went back, its refund report books it.
            log.error(
                "refund %s is failed, but the gateway answered with refund %s for it; its report books it if made",
                locked.pk,
                refund.gateway_refund_id,
            )
    locked.refresh_from_db()
    return locked


def _book_held(*, refund: Refund, order: Order, gateway_refund_id: str | None, how: str, actor=None) -> None:
    """Book a refund held for review as the gateway shows it (refund and order locked): made, with the gateway's
    refund id (``""`` when there was nothing to send: a free order), or not made (None). Audited."""
    if gateway_refund_id is not None:
        refund.gateway_refund_id = gateway_refund_id[:120]
        found = f"refund {gateway_refund_id} found at the gateway" if gateway_refund_id else "nothing to return"
        _apply_refund(refund=refund, order=order, reason=found + how, actor=actor)
    else:
        _fail_refund(
            refund=refund,
            order_pk=order.pk,
            error="no refund found at the gateway" + how,
            reason="not made: no refund found at the gateway" + how,
            actor=actor,
        )
    audit_record(
        action="refund_resolved",
        actor=actor,
        obj=refund,
        amount=refund.amount,
        currency=refund.currency,
        outcome="made" if gateway_refund_id is not None else "not made",
        gateway_refund_id=gateway_refund_id or "",
        resolved_by="gateway lookup" if how else "staff",
    )


def refund_resolve(*, refund_pk: int, gateway_refund_id: str = "", actor=None) -> Refund:
    """Record what staff found at the gateway for a refund held for review (pending past its key memory).

    ``gateway_refund_id`` (the refund the gateway shows for this payment and
    amount): it was made, so the refund SUCCEEDED and is booked as any
    other. Empty: the gateway made none, so the refund FAILED and its amount
    is no longer reserved on the order (staff may refund it afresh). Any other
    refund is refused with RefundNotHeld and nothing changes.
    """
    gateway_refund_id = gateway_refund_id.strip()
    order_pk = Refund.objects.values_list("order_id", flat=True).get(pk=refund_pk)
    with transaction.atomic():
        # The order first, then the refund: the order every other path locks them in (no deadlock with the sweep).
        order = Order.objects.select_for_update().get(pk=order_pk)
        refund = Refund.objects.select_for_update().get(pk=refund_pk)
        _refuse_unless_held(refund)
        other = Refund.objects.filter(gateway_refund_id=gateway_refund_id).first() if gateway_refund_id else None
        if other is not None:
            raise RefundConflict(
                f"The gateway's refund {gateway_refund_id} is already booked as refund {other.pk}.",
                code="gateway_refund_taken",
            )
        _book_held(refund=refund, order=order, gateway_refund_id=gateway_refund_id or None, how="", actor=actor)
    refund.refresh_from_db()
    return refund


def _refuse_unless_held(refund: Refund) -> None:
    """What staff may settle by hand (record, or ask the gateway now) is a refund held for review, once any call
    under way has ended: RefundNotHeld for any other, RefundConflict for one sent moments ago."""
    if refund.status != RefundStatus.PENDING or not refund_key_expired(refund):
        raise RefundNotHeld(
            f"Refund {refund.pk} is {refund.get_status_display()} and not held for review: "
            "it is sent (or retried) by the exchange, not settled by hand.",
            code="refund_not_held",
        )
    if not refund_lookup_due(refund):
        raise RefundConflict(
            f"Refund {refund.pk} may have been sent to the gateway moments ago; try again in a few minutes.",
            code="retry_in_progress",
        )


def _lookup_grace() -> timedelta:
    """How long past REFUND_RETRY_MAX_AGE_SECONDS a refund waits before it is looked up: longer than the longest
    gateway call (every network retry timing out), so an attempt started just inside the window has ended and
    its refund, if the gateway made one, is listed."""
    return timedelta(seconds=settings.STRIPE_TIMEOUT_SECONDS * (settings.STRIPE_MAX_NETWORK_RETRIES + 1) + 60)


def refund_lookup_due(refund: Refund, *, now=None) -> bool:
    """Whether a PENDING ``refund`` is held for review and may be looked up at its gateway now."""
    return refund.status == RefundStatus.PENDING and refund_key_expired(
        refund, now=(now or timezone.now()) - _lookup_grace()
    )


def refund_lookup_now(*, refund_pk: int, actor=None) -> Refund:
    """Staff ask the gateway now, rather than at the next sweep, what it made for a refund held for review.

    Booked as ``refund_settle_by_lookup`` books what the gateway shows; still
    PENDING when it cannot tell (its error says why). Any other refund is
    refused with RefundNotHeld, and one that was sent moments ago with
    RefundConflict; nothing changes.
    """
    refund = Refund.objects.get(pk=refund_pk)
    _refuse_unless_held(refund)
    with _retry_claim(refund.pk) as claimed:
        if not claimed:
            raise RefundConflict(
                f"Refund {refund.pk} is being looked up at the gateway right now; look at it again in a minute.",
                code="retry_in_progress",
            )
        return _refund_book_by_lookup(refund_pk=refund.pk, actor=actor)


HELD_FOR_REVIEW = "Held for review: "
EXPIRED = " (looked up after its idempotency key may have expired)"


def refund_settle_by_lookup(*, refund_pk: int, now=None, actor=None) -> Refund:
    """A refund held for review (PENDING past REFUND_RETRY_MAX_AGE_SECONDS and ``_lookup_grace``): ask the
    gateway, and book what it shows (``_refund_book_by_lookup``). Any other refund is returned as it is."""
    refund = Refund.objects.get(pk=refund_pk)
    if not refund_lookup_due(refund, now=now):
        return refund
    return _refund_book_by_lookup(refund_pk=refund_pk, actor=actor, now=now)


def _refund_book_by_lookup(*, refund_pk: int, how: str = EXPIRED, actor=None, now=None) -> Refund:
    """Ask the gateway which refund, if any, it made under the refund's idempotency key, and book that.

    ``refund_lookup`` (Stripe's refunds carry the key in their metadata). One
    it made: SUCCEEDED with its id and booked. None: no refund was made (every
    attempt used that key while the gateway still knew it, or the gateway
    refused it); FAILED, its amount no longer reserved. The gateway cannot
    tell (unreachable, or a refund of the payment it cannot place): still
    PENDING, the reason recorded as the refund's error, for staff. Safe to run
    twice and alongside itself: the booking locks the order and the refund
    and checks again. A refund the gateway shows as made for one recorded as
    not made meanwhile (staff, a concurrent lookup) is booked as the gateway's
    own refund, since the money did go back.
    """
    refund = Refund.objects.select_related("order").get(pk=refund_pk)
    if refund.status != RefundStatus.PENDING:
        return refund
    order = refund.order
    try:
        made = (
            get_gateway(order.gateway).refund_lookup(
                refund=refund, payment_id=order.gateway_payment_id or order.gateway_session_id or ""
            )
            if order.amount
            else ""  # a free order's refund never reaches the gateway
        )
    except GatewayError as exc:
        # Held (past its key window), for staff; or, after an idempotency mismatch inside it, sent (and asked) again.
        prefix = HELD_FOR_REVIEW if refund_key_expired(refund, now=now) else ""
        error = f"{prefix}the gateway could not say whether it made this refund: {exc}"[:2000]
        Refund.objects.filter(pk=refund.pk, status=RefundStatus.PENDING).update(error=error)
        log.error("refund %s held for review: %s", refund.pk, exc)
        refund.refresh_from_db()
        return refund
    with transaction.atomic():
        locked_order = Order.objects.select_for_update().get(pk=order.pk)
        locked = Refund.objects.select_for_update().get(pk=refund.pk)
        if locked.status == RefundStatus.PENDING:
            _book_held(refund=locked, order=locked_order, gateway_refund_id=made, how=how, actor=actor)
        elif made and locked.status == RefundStatus.FAILED:
            log.error("refund %s was recorded as not made, but the gateway shows refund %s for it", locked.pk, made)
            refund_record_from_gateway(
                order=locked_order,
                gateway_refund_id=made,
                amount=locked.amount,
                reason=f"found at the gateway for refund {locked.pk}, which was recorded as not made",
                idempotency_key=locked.idempotency_key,
            )
    locked.refresh_from_db()
    return locked


def _why(reason: str, via: str) -> str:
    return f"{reason} ({via})" if via else reason


def refunds_retry_pending(*, older_than_seconds: int, max_age_seconds: int, batch: int = 100, now=None) -> dict:
    """Send again the refunds a gateway that did not answer left PENDING; return their pks by outcome.

    Retries refunds created more than ``older_than_seconds`` and less than
    ``max_age_seconds`` ago, oldest first, at most ``batch``, each with its
    stored idempotency key: a gateway that did refund the first time returns
    that refund instead of making a second, and the refund is booked. A
    refusal fails it and frees its amount; no answer again leaves it for the
    next sweep. Safe to run twice, and alongside itself: a refund no longer
    PENDING is skipped, and one another process is retrying is left to it.

    Older refunds are never sent again: Stripe keeps an idempotency key for
    24 hours only, after which a retry could refund twice. The gateway is
    asked instead what it made for them (``refund_settle_by_lookup``, at most
    ``batch``): booked as made (``found_at_gateway``) or failed as not made
    (``not_at_gateway``). Those the gateway cannot tell about are reported
    under ``too_old`` (and logged) for staff to check in its dashboard.
    """
    now = now or timezone.now()
    pending = Refund.objects.filter(status=RefundStatus.PENDING)
    due = pending.filter(
        created_at__lte=now - timedelta(seconds=older_than_seconds),
        created_at__gt=now - timedelta(seconds=max_age_seconds),
    )
    outcome: dict[str, list[int]] = {"succeeded": [], "failed": [], "still_pending": [], "too_old": []}
    for refund_pk in list(due.order_by("created_at", "pk").values_list("pk", flat=True)[:batch]):
        with _retry_claim(refund_pk) as claimed:
            if not claimed:
                continue
            try:
                refund = refund_execute(refund_pk=refund_pk, via="sent again by the pending-refund sweep")
            except GatewayError as exc:
                log.warning("refund %s still pending: the gateway did not answer (%s)", refund_pk, exc)
                outcome["still_pending"].append(refund_pk)
                continue
            except RefundConflict as exc:  # held for review (REFUND_RETRY_MAX_AGE_SECONDS is below this sweep's age)
                log.error("refund %s not sent again: %s", refund_pk, exc.messages[0])
                outcome["too_old"].append(refund_pk)
                continue
        if refund.status == RefundStatus.SUCCEEDED:
            outcome["succeeded"].append(refund_pk)
        elif refund.status == RefundStatus.FAILED:
            outcome["failed"].append(refund_pk)
        else:  # the gateway refused its key with other parameters and could not say what it made
            outcome["still_pending"].append(refund_pk)
    too_old = set(outcome["too_old"]) | set(
        pending.filter(created_at__lte=now - timedelta(seconds=max_age_seconds)).values_list("pk", flat=True)
    )
    outcome.update(found_at_gateway=[], not_at_gateway=[], too_old=[])
    for refund_pk in sorted(too_old):
        with _retry_claim(refund_pk) as claimed:
            try:
                refund = refund_settle_by_lookup(refund_pk=refund_pk, now=now) if claimed and batch > 0 else None
            except Exception:  # one refund's failure (a bug, a lost connection) must not stop the others' sweep
                log.exception("refund %s: looking it up at the gateway failed", refund_pk)
                refund = None
        batch -= 1
        if refund is not None and refund.status == RefundStatus.SUCCEEDED:
            outcome["found_at_gateway"].append(refund_pk)
        elif refund is not None and refund.status == RefundStatus.FAILED:
            outcome["not_at_gateway"].append(refund_pk)
        else:
            outcome["too_old"].append(refund_pk)
    if outcome["too_old"]:
        log.error(
            "refunds %s pending for over %s seconds are no longer retried automatically; check them at the gateway",
            outcome["too_old"],
            max_age_seconds,
        )
    return outcome


def refund_record_from_gateway(
    *, order: Order, gateway_refund_id: str, amount: int, reason: str, idempotency_key: str = ""
) -> Refund | None:
    """A refund the gateway reports (made in its dashboard, or ours echoed back): book it once.

    Call with the order row locked. Returns None when it is already known.

    A refund of ours whose gateway answer was lost (a timeout after the
    gateway had refunded) is still PENDING, without the gateway's refund id,
    and its amount is already reserved on the order; it is booked with the
    reported id instead of a second refund being created (which would
    reserve the amount twice). Stripe's refunds carry our refund's
    ``idempotency_key`` in their metadata, which names the PENDING refund
    exactly. A report without it (the sandbox's, or a Stripe refund made
    before refunds carried their key) is taken to answer a PENDING refund of
    this order for the same amount, the oldest first. A report carrying a
    key of ours that is no longer pending (the refund was recorded as not
    made) is a refund of its own: the money did go back.
    """
    if Refund.objects.filter(gateway_refund_id=gateway_refund_id).exists():
        return None
    pending = Refund.objects.select_for_update().filter(order=order, status=RefundStatus.PENDING, amount=amount)
    if idempotency_key:
        pending, matched = pending.filter(idempotency_key=idempotency_key), "its idempotency key"
    else:
        pending, matched = pending.order_by("created_at", "pk"), "order and amount"
    pending = pending.first() if amount > 0 else None
    if pending is not None:
        pending.gateway_refund_id = gateway_refund_id
        _apply_refund(
            refund=pending,
            order=order,
            reason=f"gateway refund {gateway_refund_id}, reported by the gateway (matched by {matched})",
        )
        return pending
    remaining = order.amount - order.refunded_amount
    amount = min(amount, remaining)
    if amount <= 0:
        return None
    Order.objects.filter(pk=order.pk).update(refunded_amount=F("refunded_amount") + amount)
    order.refresh_from_db()
    refund = Refund.objects.create(
        order=order,
        amount=amount,
        currency=order.currency,
        reason=reason[:300],
        source="gateway",
        idempotency_key=f"gateway-refund:{gateway_refund_id}",
        gateway_refund_id=gateway_refund_id,
    )
    history_start([refund], reason=f"reported by the gateway: {reason}")
    _apply_refund(refund=refund, order=order, reason=f"gateway refund {gateway_refund_id}")
    return refund


def refund_failed_at_gateway(
    *, order: Order, gateway_refund_id: str, idempotency_key: str, status: str
) -> Refund | None:
    """The gateway reports that the refund it made under ``idempotency_key`` is ``status`` (failed, canceled):
    the PENDING refund of ``order`` that key names fails, its amount no longer reserved (order row locked).
    None when the key names no pending refund of the order."""
    if not idempotency_key:
        return None
    pending = (
        Refund.objects.select_for_update()
        .filter(order=order, status=RefundStatus.PENDING, idempotency_key=idempotency_key)
        .first()
    )
    if pending is None:
        return None
    pending.gateway_refund_id = gateway_refund_id[:120]  # a later report of the same refund is then known
    _fail_refund(
        refund=pending,
        order_pk=order.pk,
        error=f"the gateway reports its refund {gateway_refund_id} {status}",
        reason=f"{status} at the gateway (refund {gateway_refund_id})",
    )
    return pending


def dispute_open(*, order: Order, gateway_dispute_id: str, amount: int, reason: str) -> Dispute | None:
    """The buyer's bank pulled the money back: record it, book it, revoke access. Order row locked."""
    dispute, created = Dispute.objects.get_or_create(
        gateway_dispute_id=gateway_dispute_id,
        # The bank can only pull back what the buyer still has in the trade: not what was already refunded.
        defaults={
            "order": order,
            "amount": max(0, min(amount, order.amount - order.refunded_amount)),
            "currency": order.currency,
            "reason": reason,
        },
    )
    if not created:
        return None
    history_start([dispute], reason=f"opened by the buyer's bank: {reason or 'no reason given'}")
    if order.status == OrderStatus.PENDING_PAYMENT:
        return dispute
    _book_dispute_open(order=order, dispute=dispute)
    return dispute


def _book_dispute_open(*, order: Order, dispute: Dispute) -> None:
    if dispute.amount:  # nothing left to pull back when everything was refunded already
        _post_money_out(
            order=order,
            amount=dispute.amount,
            key=f"dispute:{dispute.pk}",
            kind=JournalKind.DISPUTE,
            memo=f"dispute {dispute.gateway_dispute_id} on order {order.reference}",
        )
    order_transition(order_pk=order.pk, to_status=OrderStatus.DISPUTED, reason=f"dispute {dispute.gateway_dispute_id}")
    if hasattr(order, "entitlement"):
        entitlement_revoke(entitlement_pk=order.entitlement.pk, reason=f"dispute {dispute.gateway_dispute_id}")


def dispute_close(*, order: Order, gateway_dispute_id: str, won: bool) -> Dispute | None:
    """A dispute ended. Won: the money comes back and access is restored. Lost: the order ends refunded."""
    dispute = Dispute.objects.select_for_update().filter(gateway_dispute_id=gateway_dispute_id).first()
    if dispute is None or dispute.status != DisputeStatus.OPEN:
        return None
    dispute.closed_at = timezone.now()
    outcome = "won" if won else "lost"
    status_move(
        dispute, DisputeStatus.WON if won else DisputeStatus.LOST, reason=f"closed: {outcome}", fields=("closed_at",)
    )
    if won:
        withdrawn = JournalEntry.objects.filter(idempotency_key=f"dispute:{dispute.pk}").first()
        if withdrawn is not None:  # a dispute on a trade not yet paid booked nothing to reverse
            # The exact reverse of the withdrawal, leg by leg, naming it: the money goes back where it came from.
            journal_reverse(
                entry=withdrawn,
                idempotency_key=f"dispute_won:{dispute.pk}",
                kind=JournalKind.DISPUTE_WON,
                order=order,
                memo=f"dispute {dispute.gateway_dispute_id} won",
            )
        # Back to where the trade stood: settled, delivered, or still held in escrow.
        back_to = (
            OrderStatus.SETTLED
            if order.settled_at
            else OrderStatus.DELIVERED
            if order.delivered_at
            else OrderStatus.PAID
        )
        order_transition(order_pk=order.pk, to_status=back_to, reason=f"dispute {dispute.gateway_dispute_id} won")
        if hasattr(order, "entitlement"):
            entitlement_restore(entitlement_pk=order.entitlement.pk, reason=f"dispute {dispute.gateway_dispute_id} won")
    else:
        Order.objects.filter(pk=order.pk).update(refunded_amount=F("amount"))
        order_transition(
            order_pk=order.pk, to_status=OrderStatus.REFUNDED, reason=f"dispute {dispute.gateway_dispute_id} lost"
        )
    return dispute


def early_refunds_and_disputes_apply(*, order: Order) -> None:
    """Book refunds and disputes that arrived before the payment (call right after the order became paid)."""
    for refund in order.refunds.filter(status=RefundStatus.SUCCEEDED).order_by("pk"):
        if not JournalEntry.objects.filter(idempotency_key=f"refund:{refund.pk}").exists():
            order.refresh_from_db()
            _book_refund(refund=refund, order=order)
    for dispute in order.disputes.filter(status=DisputeStatus.OPEN).order_by("pk"):
        if not JournalEntry.objects.filter(idempotency_key=f"dispute:{dispute.pk}").exists():
            order.refresh_from_db()
            if order.status != OrderStatus.DISPUTED:
                _book_dispute_open(order=order, dispute=dispute)
