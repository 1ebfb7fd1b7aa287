"""The sandbox gateway: a payment provider inside the app, for the embedded default.

It keeps its own records (checkout sessions, transfers) as a real provider
would, serves a checkout page, and reports outcomes as Stripe-shaped events
signed with the webhook secret and handed to the same ingestion function the
webhook endpoint uses, so verification, deduplication and processing are
exactly the production path.
"""

import json
import secrets
import time

from django.conf import settings
from django.db import transaction
from django.urls import reverse

from exchange.choices import SandboxSessionStatus
from exchange.gateways.base import CheckoutSession, GatewayError, PaymentGateway
from exchange.gateways.signing import sign_payload, verify_signature
from exchange.models import SandboxCheckoutSession, SandboxTransfer


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

    # --- the sandbox's own "provider side" --------------------------------

    def build_event(self, *, event_type: str, session: SandboxCheckoutSession) -> tuple[bytes, str]:
        """A signed, Stripe-shaped event about ``session``: (raw body, signature header)."""
        event = {
            "id": f"evt_sbx_{secrets.token_hex(12)}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": session.id,
                    "object": "checkout.session",
                    "amount_total": session.amount,
                    "currency": session.currency.lower(),
                    "payment_status": "paid" if event_type == "checkout.session.completed" else "unpaid",
                    "metadata": {"order_id": str(session.order_public_id)},
                }
            },
        }
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        return body, sign_payload(body=body, secret=self.secret)

    def session_resolve(self, *, session_id: str, approve: bool) -> tuple[bytes, str]:
        """The buyer approved or declined on the sandbox page; emit the event once."""
        with transaction.atomic():
            session = SandboxCheckoutSession.objects.select_for_update().get(pk=session_id)
            if session.status != SandboxSessionStatus.OPEN:
                raise GatewayError("This checkout session is already closed.")
            session.status = SandboxSessionStatus.COMPLETE if approve else SandboxSessionStatus.DECLINED
            session.save(update_fields=["status"])
        event_type = "checkout.session.completed" if approve else "checkout.session.async_payment_failed"
        return self.build_event(event_type=event_type, session=session)
