"""Stripe Connect (Express) onboarding: where a merchant's payouts go."""

from django.db import transaction
from django.urls import reverse

from audit.services import audit_record
from exchange.gateways import get_gateway
from merchants.models import Merchant
from merchants.selectors import merchant_is_member


def merchant_connect_start(*, merchant: Merchant, actor) -> str:
    """Create the merchant's Express account once, and return a fresh onboarding link."""
    from django.core.exceptions import PermissionDenied

    if not merchant_is_member(merchant=merchant, user=actor):
        raise PermissionDenied("Only the merchant's members can connect its payout account.")
    gateway = get_gateway()
    with transaction.atomic():
        locked = Merchant.objects.select_for_update().get(pk=merchant.pk)
        if not locked.stripe_account_id:
            # The gateway call is idempotent per merchant, so a retry never makes a second account.
            locked.stripe_account_id = gateway.connect_account_create(merchant=locked)
            locked.save(update_fields=["stripe_account_id"])
            audit_record(action="connect_account_changed", actor=actor, obj=locked, account_id=locked.stripe_account_id)
    page = reverse("exchange:connect")
    return gateway.connect_onboarding_link(account_id=locked.stripe_account_id, return_url=page, refresh_url=page)
