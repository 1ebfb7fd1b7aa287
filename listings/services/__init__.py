"""Writes for listings (DESIGN.md §5.1), one module per concern; import from here."""

from listings.services.pricing import pricing_plan_set
from listings.services.products import (
    TransitionError,
    listing_create,
    listing_submit,
    listing_transition,
    require_member,
    require_staff,
)
from listings.services.review import listing_approve, listing_reject
from listings.services.versions import version_upload

__all__ = [
    "TransitionError",
    "listing_approve",
    "listing_create",
    "listing_reject",
    "listing_submit",
    "listing_transition",
    "pricing_plan_set",
    "require_member",
    "require_staff",
    "version_upload",
]
