"""The sandbox gateway: a payment provider inside the app, for the embedded default.

It keeps its own records (checkout sessions, transfers, refunds, disputes) as a
real provider would and answers what it did under an idempotency key
(``payout_lookup``, ``refund_lookup``), serves a checkout page, and reports
outcomes as Stripe-shaped events signed with the webhook secret and handed to
the same ingestion function the webhook endpoint uses, so verification,
deduplication and processing are exactly the production path. Admins can
make it emit the provider-side events a real gateway would (disputes opened,
won and lost; renewals, failed renewals, cancellations) from the admin, and
``emit_refund`` makes a refund of its own, as from a provider's dashboard (for
tests and the shell); such refunds and disputes are on its books too.
"""

import hashlib
import json
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.urls import reverse
from django.utils import timezone

from exchange.choices import RefundStatus, SandboxSessionStatus
from exchange.gateways.base import CheckoutSession, GatewayError, IdempotencyMismatch, PaymentGateway
from exchange.gateways.signing import sign_payload, verify_signature
from exchange.models import (
    Dispute,
    Refund,
    SandboxCheckoutSession,
    SandboxDispute,
    SandboxRefund,
    SandboxTransfer,
)
from listings.choices import BillingInterval, PlanKind

_MODES = {PlanKind.SUBSCRIPTION: "subscription", PlanKind.METERED: "setup"}


class SandboxGateway(PaymentGateway):
    name = "sandbox"

    @property
    def secret(self) -> str:
        return settings.SANDBOX_WEBHOOK_SECRET

    def checkout_create(self, *, order, success_url: str, cancel_url: str) -> CheckoutSession:
        session = SandboxCheckoutSession.objects.create(
            id=f"cs_sbx_{secrets.token_hex(12)}",
            order_public_id=order.public_id,
            amount=order.amount,
            currency=order.currency,
            description=order.listing.title[:300],
            success_url=success_url,
            cancel_url=cancel_url,
            mode=_MODES.get(order.plan_kind, "payment"),
            interval=order.plan.interval if order.plan_kind == PlanKind.SUBSCRIPTION else "",
        )
        return CheckoutSession(id=session.id, url=reverse("exchange:sandbox_checkout", args=[session.id]))

    def webhook_verify(self, *, body: bytes, signature_header: str | None) -> dict:
        verify_signature(
            body=body, header=signature_header, secret=self.secret, tolerance=settings.WEBHOOK_TOLERANCE_SECONDS
        )
        return json.loads(body)

    def payout_create(self, *, payout) -> str:
        transfer, _ = SandboxTransfer.objects.get_or_create(
            idempotency_key=payout.idempotency_key,
            defaults={
                "id": f"tr_sbx_{secrets.token_hex(12)}",
                "merchant_id": payout.merchant_id,
                "amount": payout.amount,
                "currency": payout.currency,
            },
        )
        if transfer.amount != payout.amount or transfer.currency != payout.currency:
            raise IdempotencyMismatch("Idempotency key reused with different parameters.")
        return transfer.id

    def payout_lookup(self, *, payout) -> str | None:
        transfer = SandboxTransfer.objects.filter(idempotency_key=payout.idempotency_key).first()
        if transfer is None:
            return None  # the sandbox has kept every transfer it made since its first migration
        if transfer.amount != payout.amount or transfer.currency != payout.currency:
            raise GatewayError(
                f"Transfer {transfer.id} was made under payout {payout.pk}'s key for "
                f"{transfer.amount} {transfer.currency}, not {payout.amount} {payout.currency}."
            )
        return transfer.id

    @staticmethod
    def _charge_of(payment_id: str, idempotency_key: str) -> tuple[str, object]:
        """(currency, order public id) of the payment a refund is for, as far as the sandbox can tell.

        Its own checkout session first (by payment intent; by session id for a
        payment without one). A renewal invoice's payment is not on its books (it
        keeps no invoices, and the exchange names no payment for it), so the
        currency is taken from the exchange's refund request under the same key,
        a stand-in for the charge Stripe would look up. Neither: ("", None).
        """
        session = None
        if payment_id:
            session = (
                SandboxCheckoutSession.objects.filter(payment_intent=payment_id).first()
                or SandboxCheckoutSession.objects.filter(pk=payment_id).first()
            )
        if session is not None:
            return session.currency, session.order_public_id
        request = Refund.objects.filter(idempotency_key=idempotency_key).select_related("order").first()
        if request is not None:
            return request.currency, request.order.public_id
        return "", None

    def refund_create(self, *, payment_id: str, amount: int, idempotency_key: str) -> str:
        # Deterministic per key, as before the sandbox kept records: a repeated call names the same refund (as
        # Stripe's idempotency does), and refunds made before then keep recognisable ids.
        refund_id = "re_sbx_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        refund = SandboxRefund.objects.filter(idempotency_key=idempotency_key).first()
        if refund is None:
            currency, order_public_id = self._charge_of(payment_id, idempotency_key)
            refund, _ = SandboxRefund.objects.get_or_create(
                idempotency_key=idempotency_key,
                defaults={
                    "id": refund_id,
                    "payment_intent": payment_id,
                    "order_public_id": order_public_id,
                    "amount": amount,
                    "currency": currency,
                },
            )
        if refund.amount != amount or refund.payment_intent != payment_id:
            raise IdempotencyMismatch("Idempotency key reused with different parameters.")
        return refund.id

    def refund_lookup(self, *, refund, payment_id: str) -> str | None:
        made = SandboxRefund.objects.filter(idempotency_key=refund.idempotency_key).first()
        if made is None:
            # Before its refund records the sandbox made a refund for every call and remembered none, so for a
            # refund created before then, no record does not mean no refund: it cannot tell. From then on every
            # refund it made is on its books, and no record means none was made.
            since = SandboxRefund.records_since()
            if since is not None and refund.created_at < since:
                raise GatewayError(
                    f"Refund {refund.pk} was created before the sandbox kept refund records "
                    f"({since:%Y-%m-%d %H:%M} UTC): it cannot tell whether it made it."
                )
            return None
        if (
            made.amount != refund.amount
            or made.payment_intent != payment_id
            or (made.currency and made.currency != refund.currency)
        ):
            raise GatewayError(
                f"Refund {made.id} was made under refund {refund.pk}'s key for {made.amount} "
                f"{made.currency or '(currency unknown)'} of payment {made.payment_intent or '(none named)'}, "
                f"not {refund.amount} {refund.currency} of {payment_id or '(none named)'}."
            )
        return made.id

    # --- the sandbox's own "provider side" --------------------------------

    def signed(self, event_type: str, obj: dict) -> tuple[bytes, str]:
        """A signed, Stripe-shaped event: (raw body, signature header)."""
        event = {
            "id": f"evt_sbx_{secrets.token_hex(12)}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {"object": obj},
        }
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        return body, sign_payload(body=body, secret=self.secret)

    def notify(self, event_type: str, obj: dict):
        """Deliver an event through the same ingestion the webhook endpoint uses."""
        from exchange.services.payments import webhook_ingest

        body, signature = self.signed(event_type, obj)
        with transaction.atomic():
            return webhook_ingest(gateway_name=self.name, body=body, signature_header=signature)[0]

    def session_resolve(self, *, session_id: str, approve: bool) -> tuple[bytes, str]:
        """The buyer approved or declined on the sandbox page; build the event once."""
        with transaction.atomic():
            session = SandboxCheckoutSession.objects.select_for_update().get(pk=session_id)
            if session.status != SandboxSessionStatus.OPEN:
                raise GatewayError("This checkout session is already closed.")
            session.status = SandboxSessionStatus.COMPLETE if approve else SandboxSessionStatus.DECLINED
            if approve and session.mode == "payment":
                session.payment_intent = f"pi_sbx_{secrets.token_hex(12)}"
            if approve and session.mode == "subscription":
                session.payment_intent = f"pi_sbx_{secrets.token_hex(12)}"
                session.subscription_id = f"sub_sbx_{secrets.token_hex(12)}"
            session.save(update_fields=["status", "payment_intent", "subscription_id"])
        paid_status = "no_payment_required" if session.mode == "setup" else "paid"
        obj = {
            "id": session.id,
            "object": "checkout.session",
            "mode": session.mode,
            "amount_total": session.amount,
            "currency": session.currency.lower(),
            "payment_status": paid_status if approve else "unpaid",
            "payment_intent": session.payment_intent or None,
            "subscription": session.subscription_id or None,
            "metadata": {"order_id": str(session.order_public_id)},
        }
        event_type = "checkout.session.completed" if approve else "checkout.session.async_payment_failed"
        return self.signed(event_type, obj)

    def session_resolve_and_notify(self, *, session_id: str, approve: bool) -> None:
        from exchange.services.payments import webhook_ingest

        body, signature = self.session_resolve(session_id=session_id, approve=approve)
        with transaction.atomic():
            webhook_ingest(gateway_name=self.name, body=body, signature_header=signature)

    # Provider-side events an admin can trigger on a sandbox order.

    def _charge(self, order) -> dict:
        return {"payment_intent": order.gateway_payment_id or None, "metadata": {"order_id": str(order.public_id)}}

    def emit_refund(self, *, order, amount: int, reason: str = "requested_by_customer"):
        # The sandbox refunds on its own (as in a provider's dashboard): on its books first, then reported. No key
        # of ours names it, so its key is left empty.
        made = SandboxRefund.objects.create(
            id=f"re_sbx_{secrets.token_hex(12)}",
            idempotency_key=None,
            payment_intent=order.gateway_payment_id or "",
            order_public_id=order.public_id,
            amount=amount,
            currency=order.currency,
        )
        refund = {"id": made.id, "amount": amount, "reason": reason}
        obj = {
            "id": f"ch_sbx_{order.public_id.hex[:16]}",
            "object": "charge",
            "amount": order.amount,
            "amount_refunded": order.refunded_amount + amount,
            "refunds": {"data": [refund]},
            **self._charge(order),
        }
        return self.notify("charge.refunded", obj)

    def emit_dispute(self, *, order, status: str = "needs_response", closed: bool = False, dispute_id: str = ""):
        """The buyer's bank opens a dispute on ``order``'s charge, or (``closed``) the dispute ``dispute_id`` ends
        ``won`` or ``lost``: on the sandbox's books first (a SandboxDispute), then reported.

        Opening records the dispute once per id (the same id again records
        nothing more and reports it again; under another order it is refused).
        Closing sets the record's status and closed_at; a dispute already closed
        stays as it was closed (the event is sent again, a replay the exchange
        ignores). Closing an id the sandbox never opened is refused, unless the
        exchange recorded that dispute before the sandbox kept dispute records:
        then the closing is reported with no record made up for it (and opening
        such a dispute again is refused). A refusal (GatewayError) records and
        sends nothing.
        """
        if closed:
            record = self._dispute_close(order=order, status=status, dispute_id=dispute_id)
        else:
            record = self._dispute_open(order=order, status=status, dispute_id=dispute_id)
        obj = {
            "id": record.id if record is not None else dispute_id,
            "object": "dispute",
            "amount": order.amount,  # the disputed amount: the charge's, as Stripe's dispute names it
            "currency": order.currency.lower(),
            "reason": "fraudulent",
            "status": status,
            **self._charge(order),
        }
        return self.notify("charge.dispute.closed" if closed else "charge.dispute.created", obj)

    @staticmethod
    def _refunded_of(order) -> int:
        """What the sandbox has refunded of ``order``'s charge: by its own refund records, and, for refunds made
        before it kept them, by the exchange's record of the refunds it made then (the sandbox's ids, unrecorded)."""
        of_order = Q(order_public_id=order.public_id)
        if order.gateway_payment_id:
            of_order |= Q(payment_intent=order.gateway_payment_id)
        recorded = SandboxRefund.objects.filter(of_order)
        before_records = (
            Refund.objects.filter(
                order=order,
                status=RefundStatus.SUCCEEDED,
                gateway_refund_id__startswith="re_sbx_",
                created_at__lt=SandboxRefund.records_since(),
            )
            .exclude(gateway_refund_id__in=recorded.values("id"))
            .aggregate(total=Sum("amount"))["total"]
        )
        return (recorded.aggregate(total=Sum("amount"))["total"] or 0) + (before_records or 0)

    @staticmethod
    def _opened_before_records(dispute_id: str) -> bool:
        """Whether the exchange recorded the dispute ``dispute_id`` before the sandbox kept dispute records."""
        since = SandboxDispute.records_since()
        return (
            since is not None and Dispute.objects.filter(gateway_dispute_id=dispute_id, created_at__lt=since).exists()
        )

    def _dispute_open(self, *, order, status: str, dispute_id: str) -> SandboxDispute:
        if status not in SandboxDispute.OPEN_STATUSES:
            raise GatewayError(f"A dispute opens as one of {', '.join(SandboxDispute.OPEN_STATUSES)}, not {status!r}.")
        if (
            dispute_id
            and not SandboxDispute.objects.filter(pk=dispute_id).exists()
            and self._opened_before_records(dispute_id)
        ):
            raise GatewayError(
                f"Dispute {dispute_id} was opened before the sandbox kept dispute records: it has none to reopen."
            )
        with transaction.atomic():
            record, _ = SandboxDispute.objects.get_or_create(
                id=dispute_id or f"dp_sbx_{secrets.token_hex(12)}",
                defaults={
                    "payment_intent": order.gateway_payment_id or "",
                    "order_public_id": order.public_id,
                    # A provider withdraws what is left of the charge: not what it already gave back.
                    "amount": max(0, order.amount - self._refunded_of(order)),
                    "currency": order.currency,
                    "status": status,
                },
            )
        if record.order_public_id != order.public_id:
            raise GatewayError(f"Dispute {record.id} was opened on another order, not on order {order.public_id}.")
        return record

    def _dispute_close(self, *, order, status: str, dispute_id: str) -> SandboxDispute | None:
        if status not in SandboxDispute.CLOSED_STATUSES:
            raise GatewayError(f"A dispute closes won or lost, not {status!r}.")
        if not dispute_id:
            raise GatewayError("Which dispute to close: a dispute id is needed.")
        with transaction.atomic():
            record = SandboxDispute.objects.select_for_update().filter(pk=dispute_id).first()
            if record is None:
                # A dispute the sandbox opened before it kept dispute records is closed without one; any other
                # id it never opened.
                if self._opened_before_records(dispute_id):
                    return None
                raise GatewayError(f"The sandbox opened no dispute {dispute_id}: there is none to close.")
            if record.order_public_id != order.public_id:
                raise GatewayError(f"Dispute {record.id} was opened on another order, not on order {order.public_id}.")
            if record.closed_at is None:
                record.status, record.closed_at = status, timezone.now()
                record.save(update_fields=["status", "closed_at"])
        return record

    def _invoice(self, subscription, *, billing_reason: str) -> dict:
        start = subscription.current_period_end
        days = 365 if subscription.plan.interval == BillingInterval.YEAR else 30
        end = start + timedelta(days=days)
        return {
            "id": f"in_sbx_{secrets.token_hex(12)}",
            "object": "invoice",
            "subscription": subscription.gateway_subscription_id,
            "billing_reason": billing_reason,
            "amount_paid": subscription.plan.amount,
            "currency": subscription.plan.currency.lower(),
            "lines": {"data": [{"period": {"start": int(start.timestamp()), "end": int(end.timestamp())}}]},
        }

    def emit_renewal(self, *, subscription):
        return self.notify("invoice.paid", self._invoice(subscription, billing_reason="subscription_cycle"))

    def emit_renewal_failed(self, *, subscription):
        obj = self._invoice(subscription, billing_reason="subscription_cycle")
        obj["amount_paid"] = 0
        return self.notify("invoice.payment_failed", obj)

    def emit_subscription_cancelled(self, *, subscription):
        obj = {
            "id": subscription.gateway_subscription_id,
            "object": "subscription",
            "status": "canceled",
            "canceled_at": int(timezone.now().timestamp()),
        }
        return self.notify("customer.subscription.deleted", obj)
