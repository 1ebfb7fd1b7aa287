"""The payment gateway interface, implemented by the sandbox and by Stripe."""

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class GatewayError(Exception):
    """A gateway call failed; ``transient`` says whether retrying may help."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class RefundFailed(GatewayError):
    """The gateway made the refund, and it failed at once (no money went back): not transient, and its id is kept
    on the exchange's refund so a later report of the same refund is known."""

    def __init__(self, message: str, *, refund_id: str):
        super().__init__(message, transient=False)
        self.refund_id = refund_id


class IdempotencyMismatch(GatewayError):
    """The gateway refused an idempotency key it has seen with other parameters (Stripe's idempotency_error): the
    first request under that key may have moved money, so this is not a refusal; look up what it made."""


# A refund in these states has gone back, or is going back, to the buyer; in the second set it has not.
REFUND_MADE_STATES = frozenset({"succeeded", "pending", "requires_action"})
REFUND_NOT_MADE_STATES = frozenset({"failed", "canceled"})


class PaymentGateway:
    name: str
    # How long after its creation a payout's stored idempotency key is trusted to return the first result (None:
    # the gateway keeps its keys for good). Past it the payout is looked up, never sent again. (Refunds are held
    # after REFUND_RETRY_MAX_AGE_SECONDS on every gateway.)
    key_window: timedelta | None = None

    def checkout_create(self, *, order, success_url: str, cancel_url: str) -> CheckoutSession:
        raise NotImplementedError

    def webhook_verify(self, *, body: bytes, signature_header: str | None) -> dict:
        """Verify a webhook and return the parsed event; raise SignatureError if invalid."""
        raise NotImplementedError

    def payout_create(self, *, payout) -> str:
        """Send a payout; return the gateway's reference. Must be idempotent by payout.idempotency_key."""
        raise NotImplementedError

    def refund_create(self, *, payment_id: str, amount: int, idempotency_key: str) -> str:
        """Refund ``amount`` of a payment; return the gateway's refund id. Idempotent by ``idempotency_key``."""
        raise NotImplementedError

    # Looking up what an earlier call did, for a payout or refund whose idempotency key may have expired at the
    # gateway (held for review): asking again with the key could move the money twice, asking what exists cannot.

    def payout_lookup(self, *, payout) -> str | None:
        """The id of the transfer the gateway made for ``payout``, or None when it made none.

        Raises GatewayError when it cannot tell: ``transient`` when the gateway
        did not answer; not transient when what it shows is ambiguous (a
        transfer that names the payout but differs in amount or currency).
        """
        raise GatewayError(f"The {self.name} gateway cannot look payouts up.")

    def refund_lookup(self, *, refund, payment_id: str) -> str | None:
        """The id of the refund the gateway made for ``refund`` (by its idempotency key), or None when it made none.

        Raises GatewayError when it cannot tell, as ``payout_lookup``.
        """
        raise GatewayError(f"The {self.name} gateway cannot look refunds up.")
