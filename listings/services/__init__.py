"""Writes for listings (DESIGN.md §5.1), one module per concern; import from here."""

from listings.services.pricing import (
    pricing_plan_create,
    pricing_plan_deactivate,
    pricing_plan_replace,
    pricing_plan_set,
)
from listings.services.products import (
    TransitionError,
    data_dictionary_update,
    listing_create,
    listing_submit,
    listing_transition,
    listing_update,
    require_member,
    require_staff,
)
from listings.services.review import (
    listing_approve,
    listing_reinstate,
    listing_reject,
    listing_suspend,
    review_open,
    version_manifest,
)
from listings.services.versions import version_publish, version_upload

__all__ = [
    "TransitionError",
    "data_dictionary_update",
    "listing_approve",
    "listing_create",
    "listing_reinstate",
    "listing_reject",
    "listing_submit",
    "listing_suspend",
    "listing_transition",
    "listing_update",
    "pricing_plan_create",
    "pricing_plan_deactivate",
    "pricing_plan_replace",
    "pricing_plan_set",
    "require_member",
    "require_staff",
    "review_open",
    "version_manifest",
    "version_publish",
    "version_upload",
]
