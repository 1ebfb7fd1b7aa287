"""Pricing plans: every kind, valid and invalid; at most six; deactivation; what buyers see."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from listings.models import Listing, PricingPlan
from listings.selectors import listing_active_plan, listing_plans
from listings.services import pricing_plan_create, pricing_plan_deactivate, pricing_plan_replace, pricing_plan_set

pytestmark = pytest.mark.django_db


def plans_state():
    return list(PricingPlan.objects.order_by("pk").values_list("pk", "kind", "amount", "is_active"))


VALID = [
    ({"kind": "free", "amount": 0, "currency": "CNY"}, "Free", "Free"),
    ({"kind": "one_time", "amount": 9990, "currency": "CNY"}, "One-time purchase", "¥99.90 CNY"),
    (
        {"kind": "subscription", "amount": 1500, "currency": "USD", "interval": "month", "name": "Monthly feed"},
        "Monthly feed",
        "$15.00 USD / month",
    ),
    (
        {"kind": "subscription", "amount": 150000, "currency": "EUR", "interval": "year"},
        "Subscription",
        "€1,500.00 EUR / year",
    ),
    (
        {"kind": "metered", "amount": 5, "currency": "CNY", "metered_unit": "call", "free_units_per_month": 1000},
        "Metered (pay per use)",
        "¥0.05 CNY per API call",
    ),
    (
        {
            "kind": "metered",
            "amount": 200,
            "currency": "CNY",
            "metered_unit": "thousand_rows",
            "free_units_per_month": 10,
            "monthly_cap_units": 10,
            "version_access": "latest",
        },
        "Metered (pay per use)",
        "¥2.00 CNY per 1,000 rows",
    ),
]


@pytest.mark.parametrize(("kwargs", "display_name", "price_display"), VALID)
def test_every_kind_of_plan(merchant_user, draft_listing, kwargs, display_name, price_display):
    plan = pricing_plan_create(listing=draft_listing, actor=merchant_user, **kwargs)
    plan.refresh_from_db()
    assert plan.is_active
    assert (plan.display_name, plan.price_display) == (display_name, price_display)
    for key, value in kwargs.items():
        assert getattr(plan, key) == value
    listing = Listing.objects.get(pk=draft_listing.pk)
    assert (listing.price_from, listing.price_currency) == (kwargs["amount"], kwargs["currency"])


INVALID = [
    ({"kind": "barter"}, "kind", "invalid_choice"),
    ({"kind": "free", "amount": 100}, "amount", "free_not_zero"),
    ({"kind": "one_time", "amount": 0}, "amount", "amount_not_positive"),
    ({"kind": "one_time", "amount": -5}, "amount", "invalid"),
    ({"kind": "one_time", "amount": 9.99}, "amount", "invalid"),
    ({"kind": "one_time", "amount": True}, "amount", "invalid"),
    ({"kind": "one_time", "amount": 10**15}, "amount", "amount_too_large"),
    ({"kind": "one_time", "currency": "JPY"}, "currency", "invalid_currency"),
    ({"kind": "one_time", "interval": "month"}, "interval", "not_applicable"),
    ({"kind": "one_time", "name": "x" * 81}, "name", "max_length"),
    ({"kind": "one_time", "version_access": "forever"}, "version_access", "invalid_choice"),
    ({"kind": "subscription"}, "interval", "interval_required"),
    ({"kind": "subscription", "interval": "week"}, "interval", "interval_required"),
    ({"kind": "subscription", "interval": "month", "amount": 0}, "amount", "amount_not_positive"),
    ({"kind": "metered"}, "metered_unit", "unit_required"),
    ({"kind": "metered", "metered_unit": "byte"}, "metered_unit", "unit_required"),
    ({"kind": "metered", "metered_unit": "call", "amount": 0}, "amount", "amount_not_positive"),
    ({"kind": "metered", "metered_unit": "call", "free_units_per_month": -1}, "free_units_per_month", "invalid"),
    (
        {"kind": "metered", "metered_unit": "call", "free_units_per_month": 100, "monthly_cap_units": 99},
        "monthly_cap_units",
        "cap_below_free_units",
    ),
    ({"kind": "metered", "metered_unit": "call", "monthly_cap_units": 0}, "monthly_cap_units", "invalid"),
    ({"kind": "subscription", "interval": "year", "metered_unit": "call"}, "metered_unit", "not_applicable"),
    ({"kind": "one_time", "free_units_per_month": 5}, "free_units_per_month", "not_applicable"),
    ({"kind": "free", "amount": 0, "monthly_cap_units": 5}, "monthly_cap_units", "not_applicable"),
]


@pytest.mark.parametrize(("overrides", "field", "code"), INVALID)
def test_invalid_plans_are_refused_and_nothing_is_written(merchant_user, draft_listing, overrides, field, code):
    pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=500, currency="CNY")
    before = plans_state()
    kwargs = {"amount": 100, "currency": "CNY", **overrides}
    with pytest.raises(ValidationError) as exc:
        pricing_plan_create(listing=draft_listing, actor=merchant_user, **kwargs)
    assert exc.value.error_dict[field][0].code == code
    assert plans_state() == before
    assert Listing.objects.get(pk=draft_listing.pk).price_from == 500


def test_error_messages_are_clear(merchant_user, draft_listing):
    with pytest.raises(ValidationError) as exc:
        pricing_plan_create(listing=draft_listing, actor=merchant_user, kind="subscription", amount=0, currency="CNY")
    assert exc.value.message_dict == {
        "amount": ["A subscription price must be greater than zero."],
        "interval": ["A subscription needs a billing interval: month or year."],
    }


def test_at_most_six_active_plans(merchant_user, draft_listing):
    for amount in range(1, 7):
        pricing_plan_create(
            listing=draft_listing,
            actor=merchant_user,
            kind="subscription",
            interval="month",
            amount=amount,
            currency="CNY",
        )
    with pytest.raises(ValidationError) as exc:
        pricing_plan_create(listing=draft_listing, actor=merchant_user, kind="free", amount=0, currency="CNY")
    assert exc.value.code == "too_many_plans"
    with pytest.raises(ValidationError) as exc:
        pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=100, currency="CNY")
    assert exc.value.code == "too_many_plans"
    assert PricingPlan.objects.filter(is_active=True).count() == 6
    # A deactivated plan frees its place.
    pricing_plan_deactivate(plan=draft_listing.plans.first(), actor=merchant_user)
    pricing_plan_create(listing=draft_listing, actor=merchant_user, kind="free", amount=0, currency="CNY")
    assert PricingPlan.objects.filter(is_active=True).count() == 6


def test_one_active_one_time_and_free_plan(merchant_user, draft_listing):
    pricing_plan_create(listing=draft_listing, actor=merchant_user, kind="one_time", amount=100, currency="CNY")
    pricing_plan_create(listing=draft_listing, actor=merchant_user, kind="free", amount=0, currency="CNY")
    for kind, amount in (("one_time", 200), ("free", 0)):
        with pytest.raises(ValidationError) as exc:
            pricing_plan_create(listing=draft_listing, actor=merchant_user, kind=kind, amount=amount, currency="CNY")
        assert exc.value.code == "duplicate_kind"
    assert PricingPlan.objects.count() == 2
    # pricing_plan_set replaces the one-time price instead.
    plan = pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=300, currency="CNY")
    assert list(PricingPlan.objects.filter(is_active=True, kind="one_time")) == [plan]


def test_deactivate(merchant_user, draft_listing):
    cheap = pricing_plan_create(
        listing=draft_listing, actor=merchant_user, kind="metered", metered_unit="call", amount=2, currency="CNY"
    )
    pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=900, currency="CNY")
    assert Listing.objects.get(pk=draft_listing.pk).price_from == 2
    pricing_plan_deactivate(plan=cheap, actor=merchant_user)
    cheap.refresh_from_db()
    assert cheap.is_active is False
    assert Listing.objects.get(pk=draft_listing.pk).price_from == 900
    # Again: nothing to do, not an error.
    assert pricing_plan_deactivate(plan=cheap, actor=merchant_user).is_active is False
    assert PricingPlan.objects.count() == 2


def test_plans_change_only_in_editable_statuses(merchant_user, published_listing):
    plan = published_listing.plans.get()
    before = plans_state()
    with pytest.raises(ValidationError) as exc:
        pricing_plan_create(listing=published_listing, actor=merchant_user, kind="free", amount=0, currency="CNY")
    assert exc.value.code == "not_editable"
    with pytest.raises(ValidationError) as exc:
        pricing_plan_deactivate(plan=plan, actor=merchant_user)
    assert exc.value.code == "not_editable"
    with pytest.raises(ValidationError) as exc:
        pricing_plan_set(listing=published_listing, actor=merchant_user, amount=1, currency="CNY")
    assert exc.value.code == "not_editable"
    assert plans_state() == before


@pytest.mark.parametrize("persona", ["other_merchant_user", "buyer", "staff"])
def test_only_members_change_plans(request, draft_listing, merchant_user, persona):
    plan = pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=100, currency="CNY")
    user = request.getfixturevalue(persona)
    before = plans_state()
    with pytest.raises(PermissionDenied):
        pricing_plan_create(listing=draft_listing, actor=user, kind="free", amount=0, currency="CNY")
    with pytest.raises(PermissionDenied):
        pricing_plan_deactivate(plan=plan, actor=user)
    assert plans_state() == before


def test_checkout_plan_is_the_one_time_plan(merchant_user, draft_listing):
    pricing_plan_create(listing=draft_listing, actor=merchant_user, kind="free", amount=0, currency="CNY")
    pricing_plan_create(
        listing=draft_listing, actor=merchant_user, kind="subscription", interval="month", amount=50, currency="CNY"
    )
    assert listing_active_plan(listing=draft_listing) is None
    one_time = pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=5000, currency="CNY")
    assert listing_active_plan(listing=draft_listing) == one_time
    assert [p.kind for p in listing_plans(listing=draft_listing)] == ["free", "one_time", "subscription"]


def test_replace_withdraws_the_plan_and_adds_one_with_the_changes(merchant_user, draft_listing):
    old = pricing_plan_create(
        listing=draft_listing, actor=merchant_user, kind="subscription", amount=1500, currency="USD", interval="month"
    )
    new = pricing_plan_replace(plan=old, actor=merchant_user, changes={"amount": 1800, "name": "Monthly feed"})
    old.refresh_from_db()
    assert not old.is_active and new.pk != old.pk and new.is_active
    assert (new.kind, new.amount, new.currency, new.interval, new.name) == (
        "subscription",
        1800,
        "USD",
        "month",
        "Monthly feed",
    )


def test_a_refused_replacement_leaves_the_old_plan_active(merchant_user, draft_listing):
    old = pricing_plan_create(listing=draft_listing, actor=merchant_user, kind="one_time", amount=900, currency="CNY")
    before = plans_state()
    with pytest.raises(ValidationError) as exc:
        pricing_plan_replace(plan=old, actor=merchant_user, changes={"amount": 0})
    assert "amount" in exc.value.message_dict
    with pytest.raises(ValueError, match="Not a plan term: kind"):
        pricing_plan_replace(plan=old, actor=merchant_user, changes={"kind": "free"})
    assert plans_state() == before
