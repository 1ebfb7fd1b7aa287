"""The payment gateway interface. Sandbox implements it now; Stripe later."""

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class GatewayError(Exception):
    """A gateway call failed; ``transient`` says whether retrying may help."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class PaymentGateway:
    name: str

    def checkout_create(self, *, order, success_url: str, cancel_url: str) -> CheckoutSession:
        raise NotImplementedError

    def webhook_verify(self, *, body: bytes, signature_header: str | None) -> dict:
        """Verify a webhook and return the parsed event; raise SignatureError if invalid."""
        raise NotImplementedError

    def payout_create(self, *, payout) -> str:
        """Send a payout; return the gateway's reference. Must be idempotent by payout.idempotency_key."""
        raise NotImplementedError
