"""Pricing plans: how a product can be bought.

A listing has at most MAX_ACTIVE_PLANS active plans, of four kinds: free,
one-time, subscription (per month or year) and metered (per API call or per
thousand rows, with free units and an optional monthly cap). Plans change
only while the product is a draft or was rejected; a plan that is replaced or
withdrawn is deactivated, never deleted, so orders keep pointing at the plan
they were bought under.
"""

from django.core.exceptions import ValidationError
from django.db import transaction

from common.money import CURRENCY_EXPONENT
from listings.choices import EDITABLE_STATUSES, BillingInterval, MeteredUnit, PlanKind, VersionAccess
from listings.models import Listing, PricingPlan
from listings.search import listing_refresh_catalog_fields
from listings.services.products import require_member

MAX_ACTIVE_PLANS = 6
# 1,000,000,000.00 in a two-decimal currency: far above any real price, far below the column's limit.
MAX_AMOUNT = 100_000_000_000
# Kinds of which a listing offers at most one active plan (the checkout buys "the" one-time plan).
SINGLE_PLAN_KINDS = {PlanKind.FREE, PlanKind.ONE_TIME}


def _lock_editable(listing: Listing) -> Listing:
    """Lock the listing row and check that its plans may change (call inside a transaction)."""
    locked = Listing.objects.select_for_update().get(pk=listing.pk)
    if locked.status not in EDITABLE_STATUSES:
        raise ValidationError(
            "Prices can only be changed while the product is a draft or was rejected.", code="not_editable"
        )
    return locked


def _check_room_for_one_more(listing: Listing, *, replacing: int = 0) -> None:
    active = PricingPlan.objects.filter(listing=listing, is_active=True).count() - replacing
    if active >= MAX_ACTIVE_PLANS:
        raise ValidationError(
            f"A product can offer at most {MAX_ACTIVE_PLANS} active plans; deactivate one first.",
            code="too_many_plans",
        )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@transaction.atomic
def pricing_plan_set(*, listing: Listing, actor, amount: int, currency: str) -> PricingPlan:
    """Set the one-time price (minor units). Replaces the active one-time plan."""
    require_member(listing, actor)
    if currency not in CURRENCY_EXPONENT:
        raise ValidationError(
            {"currency": ValidationError(f"Unsupported currency {currency!r}.", code="invalid_currency")}
        )
    if not _is_count(amount) or amount <= 0:
        raise ValidationError(
            {"amount": ValidationError("A one-time price must be greater than zero.", code="amount_not_positive")}
        )
    if amount > MAX_AMOUNT:
        raise ValidationError({"amount": ValidationError("The price is too large.", code="amount_too_large")})
    locked = _lock_editable(listing)
    current = PricingPlan.objects.filter(listing=locked, kind=PlanKind.ONE_TIME, is_active=True)
    _check_room_for_one_more(locked, replacing=current.count())
    current.update(is_active=False)
    plan = PricingPlan.objects.create(listing=locked, kind=PlanKind.ONE_TIME, amount=amount, currency=currency)
    listing_refresh_catalog_fields(listing_pk=locked.pk)
    return plan


def _plan_errors(
    *,
    kind,
    amount,
    currency,
    name,
    interval,
    metered_unit,
    free_units_per_month,
    monthly_cap_units,
    version_access,
) -> dict[str, ValidationError]:
    """Every problem with a plan's fields, keyed by field (empty when the plan is valid)."""
    errors = {}
    if kind not in PlanKind.values:
        return {"kind": ValidationError(f"{kind!r} is not a kind of plan.", code="invalid_choice")}
    if currency not in CURRENCY_EXPONENT:
        errors["currency"] = ValidationError(f"Unsupported currency {currency!r}.", code="invalid_currency")
    if not isinstance(name, str) or len(name.strip()) > 80:
        errors["name"] = ValidationError("A plan name can be at most 80 characters long.", code="max_length")
    if version_access not in VersionAccess.values:
        errors["version_access"] = ValidationError(
            f"{version_access!r} is not a version access rule.", code="invalid_choice"
        )

    if not _is_count(amount):
        errors["amount"] = ValidationError("The amount must be a whole number of minor units.", code="invalid")
    elif kind == PlanKind.FREE and amount != 0:
        errors["amount"] = ValidationError("A free plan costs nothing: its amount must be 0.", code="free_not_zero")
    elif kind != PlanKind.FREE and amount == 0:
        message = {
            PlanKind.ONE_TIME: "A one-time price must be greater than zero.",
            PlanKind.SUBSCRIPTION: "A subscription price must be greater than zero.",
            PlanKind.METERED: "The price per unit must be greater than zero.",
        }[kind]
        errors["amount"] = ValidationError(message, code="amount_not_positive")
    elif amount > MAX_AMOUNT:
        errors["amount"] = ValidationError("The price is too large.", code="amount_too_large")

    if kind == PlanKind.SUBSCRIPTION:
        if interval not in BillingInterval.values:
            errors["interval"] = ValidationError(
                "A subscription needs a billing interval: month or year.", code="interval_required"
            )
    elif interval:
        errors["interval"] = ValidationError("Only subscriptions have a billing interval.", code="not_applicable")

    if kind == PlanKind.METERED:
        if metered_unit not in MeteredUnit.values:
            errors["metered_unit"] = ValidationError(
                "A metered plan needs a unit: per API call or per 1,000 rows.", code="unit_required"
            )
        if not _is_count(free_units_per_month):
            errors["free_units_per_month"] = ValidationError(
                "Free units per month must be a whole number, 0 or more.", code="invalid"
            )
        if monthly_cap_units is not None:
            if not _is_count(monthly_cap_units) or monthly_cap_units == 0:
                errors["monthly_cap_units"] = ValidationError(
                    "The monthly cap must be a whole number greater than zero.", code="invalid"
                )
            elif _is_count(free_units_per_month) and monthly_cap_units < free_units_per_month:
                errors["monthly_cap_units"] = ValidationError(
                    "The monthly cap cannot be lower than the free units per month.", code="cap_below_free_units"
                )
    else:
        if metered_unit:
            errors["metered_unit"] = ValidationError("Only metered plans have a unit.", code="not_applicable")
        if free_units_per_month != 0:
            errors["free_units_per_month"] = ValidationError(
                "Only metered plans have free units.", code="not_applicable"
            )
        if monthly_cap_units is not None:
            errors["monthly_cap_units"] = ValidationError(
                "Only metered plans have a monthly cap.", code="not_applicable"
            )
    return errors


@transaction.atomic
def pricing_plan_create(
    *,
    listing: Listing,
    actor,
    kind: str,
    amount: int,
    currency: str,
    name: str = "",
    interval: str = "",
    metered_unit: str = "",
    free_units_per_month: int = 0,
    monthly_cap_units: int | None = None,
    version_access: str = VersionAccess.ALL,
) -> PricingPlan:
    """Add an active plan to a draft or rejected listing.

    ``amount`` is in minor units: the price (one-time), the price per interval
    (subscription), the price per unit (metered) or 0 (free). Raises
    PermissionDenied for non-members; ValidationError with a code otherwise
    (``not_editable``, ``too_many_plans``, ``duplicate_kind`` or a dict keyed
    by field); on error nothing is written.
    """
    require_member(listing, actor)
    errors = _plan_errors(
        kind=kind,
        amount=amount,
        currency=currency,
        name=name,
        interval=interval,
        metered_unit=metered_unit,
        free_units_per_month=free_units_per_month,
        monthly_cap_units=monthly_cap_units,
        version_access=version_access,
    )
    if errors:
        raise ValidationError(errors)
    locked = _lock_editable(listing)
    _check_room_for_one_more(locked)
    if kind in SINGLE_PLAN_KINDS and PricingPlan.objects.filter(listing=locked, kind=kind, is_active=True).exists():
        raise ValidationError(
            f"This product already has an active {PlanKind(kind).label.lower()} plan; deactivate it first.",
            code="duplicate_kind",
        )
    plan = PricingPlan.objects.create(
        listing=locked,
        kind=kind,
        amount=amount,
        currency=currency,
        name=name.strip(),
        interval=interval if kind == PlanKind.SUBSCRIPTION else "",
        metered_unit=metered_unit if kind == PlanKind.METERED else "",
        free_units_per_month=free_units_per_month,
        monthly_cap_units=monthly_cap_units,
        version_access=version_access,
    )
    listing_refresh_catalog_fields(listing_pk=locked.pk)
    return plan


# A plan's terms (what pricing_plan_create takes besides listing, actor and kind).
PLAN_TERMS = (
    "amount",
    "currency",
    "name",
    "interval",
    "metered_unit",
    "free_units_per_month",
    "monthly_cap_units",
    "version_access",
)


@transaction.atomic
def pricing_plan_replace(*, plan: PricingPlan, actor, changes: dict) -> PricingPlan:
    """Change an active plan's terms: withdraw it and add a plan of the same kind with ``changes`` applied.

    Plans are never edited in place (orders point at them). Both steps or
    neither: a refused new plan (pricing_plan_create's errors) leaves the old
    one active. ``changes`` may only name PLAN_TERMS (ValueError otherwise).
    """
    unknown = set(changes) - set(PLAN_TERMS)
    if unknown:
        raise ValueError(f"Not a plan term: {', '.join(sorted(unknown))}")
    terms = {name: getattr(plan, name) for name in PLAN_TERMS} | changes
    pricing_plan_deactivate(plan=plan, actor=actor)
    return pricing_plan_create(listing=plan.listing, actor=actor, kind=plan.kind, **terms)


@transaction.atomic
def pricing_plan_deactivate(*, plan: PricingPlan, actor) -> PricingPlan:
    """Withdraw a plan from a draft or rejected listing (kept for the orders made under it).

    Deactivating an inactive plan changes nothing and is not an error.
    """
    require_member(plan.listing, actor)
    locked_listing = _lock_editable(plan.listing)
    locked = PricingPlan.objects.select_for_update().get(pk=plan.pk, listing=locked_listing)
    if locked.is_active:
        locked.is_active = False
        locked.save(update_fields=["is_active"])
        listing_refresh_catalog_fields(listing_pk=locked_listing.pk)
    return locked
