"""Pricing plans: how a product can be bought."""

from django.core.exceptions import ValidationError
from django.db import transaction

from common.money import CURRENCY_EXPONENT
from listings.choices import EDITABLE_STATUSES, PlanKind
from listings.models import Listing, PricingPlan
from listings.search import listing_refresh_catalog_fields
from listings.services.products import require_member


@transaction.atomic
def pricing_plan_set(*, listing: Listing, actor, amount: int, currency: str) -> PricingPlan:
    """Set the one-time price (minor units). Replaces the active one-time plan.

    Earlier plans are deactivated, not deleted: orders keep pointing at the
    plan they were bought under.
    """
    require_member(listing, actor)
    if listing.status not in EDITABLE_STATUSES:
        raise ValidationError("Prices can only be changed while the product is a draft.", code="not_editable")
    if currency not in CURRENCY_EXPONENT:
        raise ValidationError({"currency": f"Unsupported currency {currency!r}."})
    if not isinstance(amount, int) or amount <= 0:
        raise ValidationError({"amount": "A one-time price must be greater than zero."})
    PricingPlan.objects.filter(listing=listing, kind=PlanKind.ONE_TIME, is_active=True).update(is_active=False)
    plan = PricingPlan.objects.create(listing=listing, kind=PlanKind.ONE_TIME, amount=amount, currency=currency)
    listing_refresh_catalog_fields(listing_pk=listing.pk)
    return plan
