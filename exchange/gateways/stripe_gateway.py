"""The Stripe gateway: Checkout Sessions, signed webhooks, Connect transfers and refunds.

Charges land on the platform account (separate charges and transfers, one
``transfer_group`` per order) so the exchange holds the money until delivery
is confirmed, then pays merchants with transfers to their Connect accounts.
Every call that creates money movement carries an idempotency key that was
stored before the call, so a call that timed out after succeeding is never
repeated as a second movement: retrying with the same key returns the first
result.
"""

import json
from datetime import timedelta

import stripe
from django.conf import settings

from exchange.gateways.base import (
    REFUND_MADE_STATES,
    REFUND_NOT_MADE_STATES,
    CheckoutSession,
    GatewayError,
    IdempotencyMismatch,
    PaymentGateway,
    RefundFailed,
)
from exchange.gateways.signing import SignatureError
from listings.choices import PlanKind


def _client() -> stripe.StripeClient:
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
    )


def _translate(exc: stripe.StripeError) -> GatewayError:
    """Connection problems and 5xx/429 answers may pass, and so does a 409: another request with the same
    idempotency key is still in progress (a retry after a timeout), and asking again later returns its outcome.
    Anything else will not; an idempotency_error (the key was first used with other parameters) is not a refusal
    but IdempotencyMismatch: the first request may have moved money."""
    message = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.IdempotencyError):
        return IdempotencyMismatch(f"Stripe: {message}", transient=False)
    status = getattr(exc, "http_status", None)
    transient = (
        isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or status == 409 or (status or 0) >= 500
    )
    return GatewayError(f"Stripe: {message}", transient=transient)


def _metadata(obj: stripe.StripeObject) -> dict:
    metadata = getattr(obj, "metadata", None)
    return metadata.to_dict() if metadata else {}


def _names_payout(metadata: dict, payout) -> bool:
    """A transfer made for ``payout``: its metadata names the payout and its run, and its key when it carries one
    (transfers made before they carried their key do not)."""
    return (
        metadata.get("payout_id") == str(payout.pk)
        and metadata.get("run_id") == str(payout.run_id)
        and metadata.get("idempotency_key", payout.idempotency_key) == payout.idempotency_key
    )


# Stripe keeps an idempotency key for at least 24 hours after its first use, which comes after the payout or refund
# was created: 23 hours from creation is inside that window with an hour to spare.
KEY_WINDOW = timedelta(hours=23)
# A payout is sent only while its key is trusted, so its transfer, if any, was created in that window; the margin
# covers clocks and a call under way as the window closed.
LOOKUP_MARGIN = timedelta(hours=1)


class StripeGateway(PaymentGateway):
    name = "stripe"
    key_window = KEY_WINDOW

    def checkout_create(self, *, order, success_url: str, cancel_url: str) -> CheckoutSession:
        """A Checkout Session for the order's plan.

        One-time: payment mode, the charge lands on the platform with a
        per-order transfer_group (held until delivery). Subscription:
        subscription mode with a recurring price. Metered: setup mode, which
        only saves a payment method (usage is billed later).
        """
        order_meta = {"order_id": str(order.public_id)}
        params = {
            "client_reference_id": str(order.public_id),
            "success_url": settings.SITE_URL + success_url,
            "cancel_url": settings.SITE_URL + cancel_url,
            "metadata": order_meta,
        }
        price_data = {
            "currency": order.currency.lower(),
            "unit_amount": order.amount - order.service_fee,
            "product_data": {"name": order.listing.title[:250]},
        }
        # The buyer service fee is its own line, so the buyer sees what the product costs and what the fee is.
        fee_line = [
            {
                "quantity": 1,
                "price_data": {
                    "currency": order.currency.lower(),
                    "unit_amount": order.service_fee,
                    "product_data": {"name": "Buyer service fee"},
                },
            }
        ]
        if order.plan_kind == PlanKind.SUBSCRIPTION:
            price_data["recurring"] = {"interval": order.plan.interval}
            params.update(
                mode="subscription",
                line_items=[{"quantity": 1, "price_data": price_data}],
                subscription_data={"metadata": order_meta},
            )
        elif order.plan_kind == PlanKind.METERED:
            params.update(mode="setup", currency=order.currency.lower(), setup_intent_data={"metadata": order_meta})
        else:
            params.update(
                mode="payment",
                line_items=[{"quantity": 1, "price_data": price_data}, *(fee_line if order.service_fee else [])],
                payment_intent_data={"transfer_group": f"order-{order.public_id}", "metadata": order_meta},
            )
        try:
            session = _client().v1.checkout.sessions.create(
                params=params, options={"idempotency_key": f"checkout-{order.public_id}"}
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return CheckoutSession(id=session.id, url=session.url)

    def webhook_verify(self, *, body: bytes, signature_header: str | None) -> dict:
        if not signature_header:
            raise SignatureError("Missing signature header.")
        try:
            stripe.WebhookSignature.verify_header(
                body.decode("utf-8"),
                signature_header,
                settings.STRIPE_WEBHOOK_SECRET,
                tolerance=settings.WEBHOOK_TOLERANCE_SECONDS,
            )
        except stripe.SignatureVerificationError as exc:
            raise SignatureError(str(exc) or "Signature does not match the payload.") from None
        except UnicodeDecodeError:
            raise SignatureError("The payload is not UTF-8.") from None
        return json.loads(body)

    def payout_create(self, *, payout) -> str:
        account = payout.merchant.stripe_account_id
        if not account:
            raise GatewayError(f"{payout.merchant.name} has not connected a Stripe account yet.", transient=False)
        try:
            transfer = _client().v1.transfers.create(
                params={
                    "amount": payout.amount,
                    "currency": payout.currency.lower(),
                    "destination": account,
                    "metadata": {
                        "payout_id": str(payout.pk),
                        "run_id": str(payout.run_id),
                        "idempotency_key": payout.idempotency_key,
                    },
                },
                options={"idempotency_key": payout.idempotency_key},
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return transfer.id

    def payout_lookup(self, *, payout) -> str | None:
        """The transfer whose metadata names ``payout`` (its id and run), among the platform's transfers created
        while the payout could have been sent (from its creation until its idempotency window had passed)."""
        start = payout.created_at - LOOKUP_MARGIN
        end = payout.created_at + KEY_WINDOW + LOOKUP_MARGIN
        params = {"created": {"gte": int(start.timestamp()), "lte": int(end.timestamp())}, "limit": 100}
        try:
            listed = _client().v1.transfers.list(params=params)
            found = [transfer for transfer in listed.auto_paging_iter() if _names_payout(_metadata(transfer), payout)]
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        if not found:
            return None
        ids = ", ".join(sorted(transfer.id for transfer in found))
        if len(found) > 1:
            raise GatewayError(f"Stripe shows {len(found)} transfers for payout {payout.pk} ({ids}).")
        transfer = found[0]
        if transfer.amount != payout.amount or transfer.currency.upper() != payout.currency.upper():
            raise GatewayError(
                f"Stripe's transfer {transfer.id} for payout {payout.pk} is of {transfer.amount} "
                f"{transfer.currency.upper()}, not {payout.amount} {payout.currency.upper()}."
            )
        return transfer.id

    def refund_create(self, *, payment_id: str, amount: int, idempotency_key: str) -> str:
        try:
            refund = _client().v1.refunds.create(
                params={
                    "payment_intent": payment_id,
                    "amount": amount,
                    "metadata": {"idempotency_key": idempotency_key},
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        if refund.status in REFUND_NOT_MADE_STATES:
            raise RefundFailed(f"Stripe: refund {refund.id} is {refund.status}.", refund_id=refund.id)
        return refund.id

    def refund_lookup(self, *, refund, payment_id: str) -> str | None:
        """The payment's refund whose metadata carries ``refund``'s idempotency key.

        None only when every refund of the payment is accounted for: one that
        carries another key of ours, or one the exchange already knows by its
        id (made in Stripe's dashboard and reported by webhook). A refund that
        carries no key and is unknown (made before refunds carried their key,
        or not reported yet) could be this one, so Stripe cannot tell.
        """
        from exchange.models import Refund

        if not payment_id:
            raise GatewayError(f"Refund {refund.pk}'s order has no Stripe payment to look it up on.")
        try:
            listed = _client().v1.refunds.list(params={"payment_intent": payment_id, "limit": 100})
            refunds = list(listed.auto_paging_iter())
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        found = [r for r in refunds if _metadata(r).get("idempotency_key") == refund.idempotency_key]
        if len(found) > 1:
            raise GatewayError(f"Stripe shows {len(found)} refunds carrying refund {refund.pk}'s key.")
        if found:
            made = found[0]
            if made.amount != refund.amount:
                raise GatewayError(
                    f"Stripe's refund {made.id} carrying refund {refund.pk}'s key is of {made.amount}, "
                    f"not {refund.amount}."
                )
            if made.status in REFUND_NOT_MADE_STATES:
                return None  # Stripe made it and it did not go through: no money went back
            if made.status not in REFUND_MADE_STATES:
                raise GatewayError(f"Stripe's refund {made.id} for refund {refund.pk} is {made.status!r}.")
            return made.id
        # Keyless refunds that did not go through moved no money: they cannot be this one.
        keyless = {
            r.id for r in refunds if not _metadata(r).get("idempotency_key") and r.status not in REFUND_NOT_MADE_STATES
        }
        unknown = keyless - set(
            Refund.objects.filter(gateway_refund_id__in=keyless).values_list("gateway_refund_id", flat=True)
        )
        if unknown:
            raise GatewayError(
                f"Stripe cannot tell: payment {payment_id} has refunds that carry no key "
                f"({', '.join(sorted(unknown))}); one of them may be refund {refund.pk}."
            )
        return None

    def connect_account_create(self, *, merchant) -> str:
        """Create an Express account for ``merchant`` (idempotent per merchant)."""
        try:
            account = _client().v1.accounts.create(
                params={"type": "express", "email": merchant.contact_email, "metadata": {"merchant_id": merchant.pk}},
                options={"idempotency_key": f"connect-account-{merchant.pk}"},
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return account.id

    def connect_onboarding_link(self, *, account_id: str, return_url: str, refresh_url: str) -> str:
        try:
            link = _client().v1.account_links.create(
                params={
                    "account": account_id,
                    "type": "account_onboarding",
                    "return_url": settings.SITE_URL + return_url,
                    "refresh_url": settings.SITE_URL + refresh_url,
                }
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return link.url
