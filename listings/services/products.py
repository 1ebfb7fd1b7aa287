"""Products: creation, editing, the data dictionary, the status machine and submission for review."""

import datetime

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from listings.choices import (
    EDITABLE_STATUSES,
    LISTING_TRANSITIONS,
    Licence,
    ListingStatus,
    Sensitivity,
    UpdateFrequency,
)
from listings.models import Category, DataFile, Listing, ListingStatusHistory, Tag
from listings.search import listing_refresh_catalog_fields
from listings.selectors import version_columns
from merchants.selectors import merchant_is_member

MAX_TAGS = 10
MAX_TAG_LENGTH = 50
MAX_DESCRIPTION_LENGTH = 20_000
MAX_SCENARIOS = 20
MAX_SCENARIO_LENGTH = 200
MAX_DICTIONARY_ENTRY_LENGTH = 500
# The data dictionary may still be improved after publication: it describes, it does not change the data.
DICTIONARY_EDITABLE_STATUSES = EDITABLE_STATUSES | {ListingStatus.PUBLISHED}

# The fields listing_create / listing_update accept besides the merchant and actor.
PRODUCT_FIELDS = (
    "title",
    "summary",
    "description",
    "category",
    "tags",
    "licence",
    "licence_terms",
    "update_frequency",
    "temporal_start",
    "temporal_end",
    "geographic_coverage",
    "use_scenarios",
    "sensitivity",
    "requires_access_request",
)


class TransitionError(ValidationError):
    """A status move that the transition table does not allow."""


def require_member(listing: Listing, actor) -> None:
    if not merchant_is_member(merchant=listing.merchant, user=actor):
        raise PermissionDenied("Only members of the listing's merchant may change it.")


def require_staff(actor) -> None:
    if not (actor and actor.is_authenticated and actor.is_staff):
        raise PermissionDenied("Only exchange staff may review listings.")


def _unique_slug(title: str) -> str:
    base = slugify(title)[:100] or "dataset"
    slug, n = base, 1
    while Listing.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def listing_transition(*, listing_pk: int, to_status: str, actor=None, reason: str = "") -> Listing:
    """Move a listing to ``to_status`` if the transition table allows it.

    The only function that assigns ``Listing.status``. Locks the row, records
    a history row, and stamps ``published_at`` on first publication.
    """
    with transaction.atomic():
        listing = Listing.objects.select_for_update().get(pk=listing_pk)
        allowed = LISTING_TRANSITIONS.get(listing.status, set())
        if to_status not in allowed:
            raise TransitionError(
                f"A listing cannot go from {listing.get_status_display()} to {ListingStatus(to_status).label}.",
                code="invalid_transition",
            )
        from_status = listing.status
        listing.status = to_status
        fields = ["status", "updated_at"]
        if to_status == ListingStatus.PUBLISHED and listing.published_at is None:
            listing.published_at = timezone.now()
            fields.append("published_at")
        if to_status == ListingStatus.APPROVED and not listing.registration_number:
            # A stable, human-readable product ID: DX-<year>-<zero-padded pk>.
            listing.registration_number = f"DX-{timezone.now():%Y}-{listing.pk:08d}"
            fields.append("registration_number")
        listing.save(update_fields=fields)
        ListingStatusHistory.objects.create(
            listing=listing, from_status=from_status, to_status=to_status, actor=actor, reason=reason
        )
    return listing


# --- Field cleaning ---------------------------------------------------------------------------------
# Each cleaner takes the raw value and returns the value to store, or raises
# ValidationError (with a code). They never touch the database.


def _text(value, *, field: str, max_length: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(f"The {field} must be text.", code="invalid")
    value = value.strip()
    if required and not value:
        raise ValidationError(f"A data product needs a {field}.", code="required")
    if len(value) > max_length:
        raise ValidationError(
            f"The {field} is {len(value)} characters long; the limit is {max_length}.", code="max_length"
        )
    return value


def _choice(value, *, field: str, choices) -> str:
    if value not in choices.values:
        raise ValidationError(f"{value!r} is not a valid {field}.", code="invalid_choice")
    return str(value)


def normalise_tags(names) -> list[str]:
    """Tag names stripped, lowercased and deduplicated (first occurrence wins), empties dropped.

    Raises ValidationError for more than MAX_TAGS tags or a tag longer than MAX_TAG_LENGTH.
    """
    if names is None:
        names = []
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise ValidationError("Tags must be a list of names.", code="invalid")
    cleaned = list(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    too_long = [name for name in cleaned if len(name) > MAX_TAG_LENGTH]
    if too_long:
        raise ValidationError(
            f"Tags can be at most {MAX_TAG_LENGTH} characters long: {too_long[0][:20]}….", code="tag_too_long"
        )
    if len(cleaned) > MAX_TAGS:
        raise ValidationError(
            f"A data product can have at most {MAX_TAGS} tags, not {len(cleaned)}.", code="too_many_tags"
        )
    return cleaned


def _date(value, *, field: str) -> datetime.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"The {field} must be a date (YYYY-MM-DD).", code="invalid_date") from None
    if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
        raise ValidationError(f"The {field} must be a date (YYYY-MM-DD).", code="invalid_date")
    return value


def _scenarios(value) -> str:
    if value is None:
        value = ""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(line, str) for line in value):
            raise ValidationError("Use scenarios must be text, one per line.", code="invalid")
        value = "\n".join(value)
    if not isinstance(value, str):
        raise ValidationError("Use scenarios must be text, one per line.", code="invalid")
    lines = list(dict.fromkeys(line.strip() for line in value.splitlines() if line.strip()))
    if len(lines) > MAX_SCENARIOS:
        raise ValidationError(
            f"List at most {MAX_SCENARIOS} use scenarios, not {len(lines)}.", code="too_many_scenarios"
        )
    if any(len(line) > MAX_SCENARIO_LENGTH for line in lines):
        raise ValidationError(
            f"Each use scenario can be at most {MAX_SCENARIO_LENGTH} characters long.", code="scenario_too_long"
        )
    return "\n".join(lines)


def _category(value) -> Category | None:
    if value is None or isinstance(value, Category):
        return value
    raise ValidationError("Choose one of the exchange's categories.", code="invalid_choice")


_CLEANERS = {
    "title": lambda v: _text(v, field="title", max_length=200, required=True),
    "summary": lambda v: _text(v, field="summary", max_length=300),
    "description": lambda v: _text(v, field="description", max_length=MAX_DESCRIPTION_LENGTH),
    "category": _category,
    "tags": normalise_tags,
    "licence": lambda v: _choice(v, field="licence", choices=Licence),
    "licence_terms": lambda v: _text(v, field="licence terms", max_length=MAX_DESCRIPTION_LENGTH),
    "update_frequency": lambda v: _choice(v, field="update frequency", choices=UpdateFrequency),
    "temporal_start": lambda v: _date(v, field="start of the period covered"),
    "temporal_end": lambda v: _date(v, field="end of the period covered"),
    "geographic_coverage": lambda v: _text(v, field="geographic coverage", max_length=200),
    "use_scenarios": _scenarios,
    "sensitivity": lambda v: _choice(v, field="sensitivity", choices=Sensitivity),
    "requires_access_request": bool,
}


def _clean_product_fields(fields: dict, *, current: Listing) -> dict:
    """Clean ``fields`` and check the rules that span fields against ``current`` (the stored values).

    Returns the cleaned values; raises one ValidationError with every field's problem.
    """
    unknown = set(fields) - set(PRODUCT_FIELDS)
    if unknown:
        raise TypeError(f"Unknown product fields: {', '.join(sorted(unknown))}")
    cleaned, errors = {}, {}
    for name, value in fields.items():
        try:
            cleaned[name] = _CLEANERS[name](value)
        except ValidationError as exc:
            errors[name] = exc
    if not errors:

        def final(name):
            return cleaned.get(name, getattr(current, name))

        if final("licence") == Licence.CUSTOM and not final("licence_terms"):
            errors["licence_terms"] = ValidationError(
                "A custom licence needs its terms: state what buyers may and may not do.", code="terms_required"
            )
        start, end = final("temporal_start"), final("temporal_end")
        if start and end and start > end:
            errors["temporal_end"] = ValidationError(
                "The period covered cannot end before it starts.", code="temporal_range"
            )
    if errors:
        raise ValidationError(errors)
    return cleaned


def _save_product_fields(listing: Listing, cleaned: dict) -> None:
    tag_names = cleaned.pop("tags", None)
    for name, value in cleaned.items():
        setattr(listing, name, value)
    listing.save(update_fields=[*cleaned, "updated_at"] if listing.pk else None)
    if tag_names is not None:
        listing.tags.set([Tag.objects.get_or_create(name=name)[0] for name in tag_names])


# --- Services --------------------------------------------------------------------------------------


def listing_create(*, merchant, actor, title: str, **fields) -> Listing:
    """Create a draft data product for ``merchant``.

    Accepts every field of ``listing_update`` (see PRODUCT_FIELDS); raises
    ValidationError (a dict keyed by field) and writes nothing on bad input,
    PermissionDenied when ``actor`` is not a member of ``merchant``.
    """
    if not merchant_is_member(merchant=merchant, user=actor):
        raise PermissionDenied("Only members of a merchant may create its listings.")
    cleaned = _clean_product_fields({"title": title, **fields}, current=Listing())
    with transaction.atomic():
        listing = Listing(merchant=merchant, slug=_unique_slug(cleaned["title"]))
        _save_product_fields(listing, cleaned)
        listing_refresh_catalog_fields(listing_pk=listing.pk)
    return listing


def listing_update(*, listing: Listing, actor, **fields) -> Listing:
    """Change the given product fields of a draft or rejected listing; return the saved listing.

    Fields not passed keep their values. ``tags`` replaces the whole tag list.
    Raises PermissionDenied for non-members and ValidationError (code
    ``not_editable``, or a dict keyed by field) otherwise; on any error nothing
    is written.
    """
    require_member(listing, actor)
    with transaction.atomic():
        locked = Listing.objects.select_for_update().get(pk=listing.pk)
        if locked.status not in EDITABLE_STATUSES:
            raise ValidationError(
                f"Only a draft or a rejected product can be edited; this one is {locked.get_status_display().lower()}.",
                code="not_editable",
            )
        cleaned = _clean_product_fields(fields, current=locked)
        _save_product_fields(locked, cleaned)
        listing_refresh_catalog_fields(listing_pk=locked.pk)
    locked.refresh_from_db()
    return locked


def listing_columns(*, listing: Listing) -> list[str]:
    """Names of the columns profiled in the listing's latest version, in file and column order."""
    version = listing.versions.order_by("-created_at", "-pk").first()
    return [column["name"] for column in version_columns(version=version)] if version else []


def data_dictionary_update(*, listing: Listing, actor, descriptions: dict[str, str]) -> Listing:
    """Describe columns of the latest version: ``{column name: description}``.

    Merges into the stored dictionary; an empty description removes the entry.
    Only columns profiled in the latest version may be described. Allowed while
    the product is a draft, rejected or published. On any error nothing is saved.
    """
    require_member(listing, actor)
    if not isinstance(descriptions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in descriptions.items()
    ):
        raise ValidationError(
            {"descriptions": ValidationError("Descriptions must map column names to text.", code="invalid")}
        )
    with transaction.atomic():
        locked = Listing.objects.select_for_update().get(pk=listing.pk)
        if locked.status not in DICTIONARY_EDITABLE_STATUSES:
            raise ValidationError(
                "The data dictionary can be edited while the product is a draft, rejected or published; this one is "
                f"{locked.get_status_display().lower()}.",
                code="not_editable",
            )
        known = set(listing_columns(listing=locked))
        unknown = sorted(name for name in descriptions if name not in known)
        if unknown:
            raise ValidationError(
                {
                    "descriptions": ValidationError(
                        f"These columns are not in the latest profiled version: {', '.join(unknown)}.",
                        code="unknown_column",
                    )
                }
            )
        too_long = [name for name, text in descriptions.items() if len(text.strip()) > MAX_DICTIONARY_ENTRY_LENGTH]
        if too_long:
            raise ValidationError(
                {
                    "descriptions": ValidationError(
                        f"A column description can be at most {MAX_DICTIONARY_ENTRY_LENGTH} characters "
                        f"({', '.join(sorted(too_long))}).",
                        code="max_length",
                    )
                }
            )
        dictionary = dict(locked.data_dictionary or {})
        for name, text in descriptions.items():
            if text.strip():
                dictionary[name] = text.strip()
            else:
                dictionary.pop(name, None)
        locked.data_dictionary = dictionary
        locked.save(update_fields=["data_dictionary", "updated_at"])
        listing_refresh_catalog_fields(listing_pk=locked.pk)
    return locked


def listing_submission_problems(*, listing: Listing) -> list[str]:
    """What the listing still lacks before it can be submitted for review (empty when ready)."""
    problems = []
    if not DataFile.objects.filter(version__listing=listing).exists():
        problems.append("Upload at least one data file.")
    if not listing.plans.filter(is_active=True).exists():
        problems.append("Set a price.")
    if listing.category_id is None:
        problems.append("Choose a category.")
    if listing.licence == Licence.CUSTOM and not listing.licence_terms.strip():
        problems.append("State the terms of the custom licence.")
    return problems


def listing_submit(*, listing: Listing, actor) -> Listing:
    """Submit a draft for compliance review; it needs a file, a price, a category and licence terms."""
    require_member(listing, actor)
    listing.refresh_from_db(fields=["status", "category", "licence", "licence_terms"])
    problems = listing_submission_problems(listing=listing)
    if problems:
        raise ValidationError(problems, code="incomplete")
    from listings.services.review import review_open

    with transaction.atomic():
        if listing.status == ListingStatus.REJECTED:
            listing_transition(listing_pk=listing.pk, to_status=ListingStatus.DRAFT, actor=actor, reason="resubmitted")
        submitted = listing_transition(listing_pk=listing.pk, to_status=ListingStatus.SUBMITTED, actor=actor)
        review_open(listing=submitted, submitted_by=actor)
    return submitted
