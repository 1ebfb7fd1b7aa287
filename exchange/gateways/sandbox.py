"""The sandbox gateway: a payment provider inside the app, for the embedded default.

It keeps its own records (checkout sessions, transfers) as a real provider
would, serves a checkout page, and reports outcomes as Stripe-shaped events
signed with the webhook secret and handed to the same ingestion function the
webhook endpoint uses, so verification, deduplication and processing are
exactly the production path. Admins can make it emit the provider-side events
a real gateway would (refunds, disputes, renewals, failed renewals,
cancellations) from the order admin.
"""

import hashlib
import json
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from exchange.choices import SandboxSessionStatus
from exchange.gateways.base import CheckoutSession, GatewayError, PaymentGateway
from exchange.gateways.signing import sign_payload, verify_signature
from exchange.models import SandboxCheckoutSession, SandboxTransfer
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
            raise GatewayError("Idempotency key reused with different parameters.")
        return transfer.id

    def refund_create(self, *, payment_id: str, amount: int, idempotency_key: str) -> str:
        # Deterministic per key: a repeated call names the same refund, as Stripe's idempotency does.
        return "re_sbx_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]

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
        refund = {"id": f"re_sbx_{secrets.token_hex(12)}", "amount": amount, "reason": reason}
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
        obj = {
            "id": dispute_id or f"dp_sbx_{secrets.token_hex(12)}",
            "object": "dispute",
            "amount": order.amount,
            "currency": order.currency.lower(),
            "reason": "fraudulent",
            "status": status,
            **self._charge(order),
        }
        return self.notify("charge.dispute.closed" if closed else "charge.dispute.created", obj)

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
