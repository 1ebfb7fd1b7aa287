from django.conf import settings

from exchange.gateways.base import CheckoutSession, GatewayError, IdempotencyMismatch, PaymentGateway
from exchange.gateways.sandbox import SandboxGateway
from exchange.gateways.signing import SignatureError
from exchange.gateways.stripe_gateway import StripeGateway

_GATEWAYS = {"sandbox": SandboxGateway, "stripe": StripeGateway}


def get_gateway(name: str | None = None) -> PaymentGateway:
    """The gateway called ``name`` (default: settings.PAYMENT_GATEWAY)."""
    name = name or settings.PAYMENT_GATEWAY
    try:
        return _GATEWAYS[name]()
    except KeyError:
        raise LookupError(f"Unknown payment gateway {name!r}") from None


def gateway_class(name: str) -> type[PaymentGateway]:
    """The class of the gateway called ``name`` (its constants, without constructing it)."""
    try:
        return _GATEWAYS[name]
    except KeyError:
        raise LookupError(f"Unknown payment gateway {name!r}") from None


def gateway_names() -> list[str]:
    return list(_GATEWAYS)


__all__ = [
    "CheckoutSession",
    "GatewayError",
    "IdempotencyMismatch",
    "PaymentGateway",
    "SignatureError",
    "gateway_class",
    "gateway_names",
    "get_gateway",
]
