"""Product fields: create and update through the services; bad input changes nothing."""

import datetime

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms.models import model_to_dict

from listings.choices import ListingStatus, ProfileStatus
from listings.models import Listing, Tag
from listings.services import data_dictionary_update, listing_create, listing_submit, listing_update, products
from tests.factories import csv_upload

pytestmark = pytest.mark.django_db

FULL = {
    "summary": "  Daily bus ridership by line  ",
    "description": "# Ridership\n\nCounted at the gates.",
    "tags": [" Transport", "buses", "transport", "", "Guiyang "],
    "licence": "custom",
    "licence_terms": "Research use only; no resale.",
    "update_frequency": "daily",
    "temporal_start": datetime.date(2023, 1, 1),
    "temporal_end": datetime.date(2024, 12, 31),
    "geographic_coverage": "Guiyang, Guizhou",
    "use_scenarios": "Urban planning\n\n  Academic research \nUrban planning\n",
    "sensitivity": "deidentified",
}


def snapshot(listing: Listing) -> dict:
    listing = Listing.objects.get(pk=listing.pk)
    data = model_to_dict(listing, exclude=["tags", "search_vector"])
    data["tags"] = sorted(listing.tags.values_list("name", flat=True))
    data["updated_at"] = listing.updated_at
    return data


def test_create_with_every_field(merchant, merchant_user, categories):
    listing = listing_create(
        merchant=merchant, actor=merchant_user, title=" Bus ridership ", category=categories["transport"], **FULL
    )
    listing.refresh_from_db()
    assert listing.status == ListingStatus.DRAFT
    assert (listing.title, listing.slug, listing.summary) == (
        "Bus ridership",
        "bus-ridership",
        "Daily bus ridership by line",
    )
    assert listing.description == "# Ridership\n\nCounted at the gates."
    assert listing.category == categories["transport"]
    assert list(listing.tags.order_by("name").values_list("name", flat=True)) == ["buses", "guiyang", "transport"]
    assert (listing.licence, listing.licence_terms) == ("custom", "Research use only; no resale.")
    assert listing.update_frequency == "daily"
    assert (listing.temporal_start, listing.temporal_end) == (datetime.date(2023, 1, 1), datetime.date(2024, 12, 31))
    assert listing.geographic_coverage == "Guiyang, Guizhou"
    assert listing.use_scenarios == "Urban planning\nAcademic research"
    assert listing.scenario_list == ["Urban planning", "Academic research"]
    assert listing.sensitivity == "deidentified"


def test_create_keeps_the_old_signature(merchant, merchant_user):
    listing = listing_create(merchant=merchant, actor=merchant_user, title="Plain", summary="s", description="d")
    assert (listing.title, listing.summary, listing.description, listing.licence) == ("Plain", "s", "d", "CC-BY-4.0")
    assert listing.category is None and listing.tags.count() == 0


def test_create_refreshes_the_catalog_fields(merchant, merchant_user, monkeypatch):
    calls = []
    monkeypatch.setattr(products, "listing_refresh_catalog_fields", lambda *, listing_pk: calls.append(listing_pk))
    listing = listing_create(merchant=merchant, actor=merchant_user, title="Counted")
    listing_update(listing=listing, actor=merchant_user, tags=["a"])
    assert calls == [listing.pk, listing.pk]


def test_update_changes_only_the_given_fields(merchant, merchant_user, draft_listing, categories):
    listing_update(listing=draft_listing, actor=merchant_user, **FULL, category=categories["finance"])
    before = snapshot(draft_listing)
    updated = listing_update(listing=draft_listing, actor=merchant_user, summary="New summary", tags=["Finance"])
    after = snapshot(draft_listing)
    assert updated.summary == "New summary"
    changed = {key for key in after if after[key] != before[key]}
    assert changed == {"summary", "tags", "updated_at"}
    assert after["tags"] == ["finance"]
    assert after["licence_terms"] == "Research use only; no resale."


def test_tags_are_created_on_demand_and_reused(merchant, merchant_user, draft_listing):
    listing_update(listing=draft_listing, actor=merchant_user, tags=["Weather", "air"])
    other = listing_create(merchant=merchant, actor=merchant_user, title="Other", tags=["AIR "])
    assert sorted(Tag.objects.values_list("name", flat=True)) == ["air", "weather"]
    assert other.tags.get().pk == Tag.objects.get(name="air").pk
    listing_update(listing=draft_listing, actor=merchant_user, tags=[])
    assert draft_listing.tags.count() == 0


BAD_INPUT = [
    ({"title": "   "}, "title", "required", "A data product needs a title."),
    ({"title": "x" * 201}, "title", "max_length", "The title is 201 characters long; the limit is 200."),
    ({"summary": "x" * 301}, "summary", "max_length", "The summary is 301 characters long; the limit is 300."),
    (
        {"tags": [f"t{i}" for i in range(11)]},
        "tags",
        "too_many_tags",
        "A data product can have at most 10 tags, not 11.",
    ),
    ({"tags": ["x" * 51]}, "tags", "tag_too_long", "Tags can be at most 50 characters long: xxxxxxxxxxxxxxxxxxxx…."),
    ({"tags": "a,b"}, "tags", "invalid", "Tags must be a list of names."),
    ({"licence": "GPL"}, "licence", "invalid_choice", "'GPL' is not a valid licence."),
    (
        {"licence": "custom", "licence_terms": "  "},
        "licence_terms",
        "terms_required",
        "A custom licence needs its terms: state what buyers may and may not do.",
    ),
    ({"update_frequency": "hourly"}, "update_frequency", "invalid_choice", "'hourly' is not a valid update frequency."),
    (
        {"temporal_start": datetime.date(2024, 2, 1), "temporal_end": datetime.date(2024, 1, 31)},
        "temporal_end",
        "temporal_range",
        "The period covered cannot end before it starts.",
    ),
    (
        {"temporal_start": "2024-13-01"},
        "temporal_start",
        "invalid_date",
        "The start of the period covered must be a date (YYYY-MM-DD).",
    ),
    ({"geographic_coverage": "x" * 201}, "geographic_coverage", "max_length", None),
    ({"use_scenarios": "\n".join(f"use {i}" for i in range(21))}, "use_scenarios", "too_many_scenarios", None),
    ({"use_scenarios": "x" * 201}, "use_scenarios", "scenario_too_long", None),
    ({"sensitivity": "secret"}, "sensitivity", "invalid_choice", "'secret' is not a valid sensitivity."),
    ({"category": "finance"}, "category", "invalid_choice", "Choose one of the exchange's categories."),
    ({"description": "x" * 20_001}, "description", "max_length", None),
]


@pytest.mark.parametrize(("fields", "field", "code", "message"), BAD_INPUT)
def test_update_rejects_bad_input_and_changes_nothing(merchant_user, draft_listing, fields, field, code, message):
    listing_update(listing=draft_listing, actor=merchant_user, tags=["keep"], summary="Kept")
    before = snapshot(draft_listing)
    tags_before = Tag.objects.count()
    with pytest.raises(ValidationError) as exc:
        listing_update(listing=draft_listing, actor=merchant_user, **{"summary": "Changed", **fields})
    errors = exc.value.error_dict
    assert list(errors) == [field]
    assert errors[field][0].code == code
    if message:
        assert errors[field][0].message == message
    assert snapshot(draft_listing) == before
    assert Tag.objects.count() == tags_before


@pytest.mark.parametrize(("fields", "field", "code", "message"), BAD_INPUT)
def test_create_rejects_bad_input_and_creates_nothing(merchant, merchant_user, fields, field, code, message):
    with pytest.raises(ValidationError) as exc:
        listing_create(merchant=merchant, actor=merchant_user, **{"title": "Fine", **fields})
    assert exc.value.error_dict[field][0].code == code
    assert Listing.objects.count() == 0
    assert Tag.objects.count() == 0


def test_custom_terms_can_be_given_before_the_licence(merchant_user, draft_listing):
    listing_update(listing=draft_listing, actor=merchant_user, licence_terms="No resale.")
    listing_update(listing=draft_listing, actor=merchant_user, licence="custom")
    with pytest.raises(ValidationError) as exc:
        listing_update(listing=draft_listing, actor=merchant_user, licence_terms="")
    assert exc.value.error_dict["licence_terms"][0].code == "terms_required"
    draft_listing.refresh_from_db()
    assert (draft_listing.licence, draft_listing.licence_terms) == ("custom", "No resale.")


def test_temporal_range_is_checked_against_the_stored_end(merchant_user, draft_listing):
    listing_update(listing=draft_listing, actor=merchant_user, temporal_end=datetime.date(2020, 1, 1))
    with pytest.raises(ValidationError) as exc:
        listing_update(listing=draft_listing, actor=merchant_user, temporal_start=datetime.date(2021, 1, 1))
    assert exc.value.error_dict["temporal_end"][0].code == "temporal_range"
    assert Listing.objects.get(pk=draft_listing.pk).temporal_start is None


def test_several_bad_fields_are_reported_together(merchant_user, draft_listing):
    with pytest.raises(ValidationError) as exc:
        listing_update(listing=draft_listing, actor=merchant_user, title="", sensitivity="x", licence="y")
    assert sorted(exc.value.error_dict) == ["licence", "sensitivity", "title"]


def test_unknown_field_is_a_programming_error(merchant_user, draft_listing):
    with pytest.raises(TypeError):
        listing_update(listing=draft_listing, actor=merchant_user, status="published")
    assert Listing.objects.get(pk=draft_listing.pk).status == ListingStatus.DRAFT


@pytest.mark.parametrize("persona", ["other_merchant_user", "buyer", "staff"])
def test_only_members_may_create_or_update(request, merchant, draft_listing, persona):
    user = request.getfixturevalue(persona)
    before = snapshot(draft_listing)
    with pytest.raises(PermissionDenied):
        listing_update(listing=draft_listing, actor=user, title="Taken over", tags=["x"])
    with pytest.raises(PermissionDenied):
        listing_create(merchant=merchant, actor=user, title="Planted")
    with pytest.raises(PermissionDenied):
        data_dictionary_update(listing=draft_listing, actor=user, descriptions={})
    assert snapshot(draft_listing) == before
    assert Listing.objects.count() == 1
    assert Tag.objects.count() == 0


def test_published_listing_cannot_be_edited(merchant_user, published_listing):
    before = snapshot(published_listing)
    with pytest.raises(ValidationError) as exc:
        listing_update(listing=published_listing, actor=merchant_user, title="Renamed")
    assert exc.value.code == "not_editable"
    assert exc.value.message == "Only a draft or a rejected product can be edited; this one is published."
    assert snapshot(published_listing) == before


def test_rejected_listing_can_be_edited(merchant, merchant_user, staff):
    from listings.services import listing_reject
    from tests.factories import make_listing

    listing = make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)
    listing_reject(listing=listing, reviewer=staff, reason="Say where the data comes from.")
    updated = listing_update(
        listing=listing, actor=merchant_user, description="Collected at the gates by the operator."
    )
    assert updated.description == "Collected at the gates by the operator."


def _profile(listing, columns):
    data_file = listing.versions.order_by("-created_at", "-pk").first().files.get()
    data_file.profile_status = ProfileStatus.DONE
    data_file.columns = [{"name": name, "type": "VARCHAR"} for name in columns]
    data_file.save()
    return data_file


def test_data_dictionary_on_a_published_listing(merchant_user, published_listing):
    _profile(published_listing, ["city", "year", "population"])
    updated = data_dictionary_update(
        listing=published_listing,
        actor=merchant_user,
        descriptions={"city": "  City name (Chinese)  ", "population": "Residents at year end"},
    )
    assert updated.data_dictionary == {"city": "City name (Chinese)", "population": "Residents at year end"}
    # Merges; an empty description removes the entry.
    data_dictionary_update(listing=published_listing, actor=merchant_user, descriptions={"city": "", "year": "Year"})
    published_listing.refresh_from_db()
    assert published_listing.data_dictionary == {"population": "Residents at year end", "year": "Year"}
    assert published_listing.status == ListingStatus.PUBLISHED


def test_data_dictionary_rejects_unknown_columns_and_long_text(merchant_user, published_listing):
    _profile(published_listing, ["city", "year"])
    data_dictionary_update(listing=published_listing, actor=merchant_user, descriptions={"city": "City"})
    with pytest.raises(ValidationError) as exc:
        data_dictionary_update(
            listing=published_listing, actor=merchant_user, descriptions={"year": "Year", "zip": "?", "age": "?"}
        )
    error = exc.value.error_dict["descriptions"][0]
    assert (error.code, error.message) == (
        "unknown_column",
        "These columns are not in the latest profiled version: age, zip.",
    )
    with pytest.raises(ValidationError) as exc:
        data_dictionary_update(listing=published_listing, actor=merchant_user, descriptions={"year": "y" * 501})
    assert exc.value.error_dict["descriptions"][0].code == "max_length"
    assert Listing.objects.get(pk=published_listing.pk).data_dictionary == {"city": "City"}


def test_data_dictionary_needs_profiled_columns(merchant_user, draft_listing):
    from listings.services import version_upload

    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload())
    # Uploaded but not profiled yet: no column can be described.
    with pytest.raises(ValidationError) as exc:
        data_dictionary_update(listing=draft_listing, actor=merchant_user, descriptions={"city": "City"})
    assert exc.value.error_dict["descriptions"][0].code == "unknown_column"
    assert Listing.objects.get(pk=draft_listing.pk).data_dictionary == {}


def test_data_dictionary_not_while_in_review(merchant, merchant_user):
    from tests.factories import make_listing

    listing = make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)
    _profile(listing, ["city"])
    with pytest.raises(ValidationError) as exc:
        data_dictionary_update(listing=listing, actor=merchant_user, descriptions={"city": "City"})
    assert exc.value.code == "not_editable"
    assert Listing.objects.get(pk=listing.pk).data_dictionary == {}


def test_submit_requires_custom_licence_terms(merchant, merchant_user, draft_listing):
    from listings.services import pricing_plan_set, version_upload

    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload())
    pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=100, currency="CNY")
    # The licence check runs on the stored row (written directly: the services refuse this state).
    Listing.objects.filter(pk=draft_listing.pk).update(licence="custom", licence_terms="")
    with pytest.raises(ValidationError) as exc:
        listing_submit(listing=draft_listing, actor=merchant_user)
    assert exc.value.messages == ["State the terms of the custom licence."]
    assert Listing.objects.get(pk=draft_listing.pk).status == ListingStatus.DRAFT


def test_submit_requires_a_category(merchant_user, draft_listing, categories):
    from listings.services import pricing_plan_set, version_upload

    Listing.objects.filter(pk=draft_listing.pk).update(category=None)
    version_upload(listing=draft_listing, actor=merchant_user, uploaded_file=csv_upload())
    pricing_plan_set(listing=draft_listing, actor=merchant_user, amount=100, currency="CNY")
    with pytest.raises(ValidationError) as exc:
        listing_submit(listing=draft_listing, actor=merchant_user)
    assert exc.value.messages == ["Choose a category."]
    assert Listing.objects.get(pk=draft_listing.pk).status == ListingStatus.DRAFT
    listing_update(listing=draft_listing, actor=merchant_user, category=categories["government"])
    # The caller's copy is stale; submission reads the stored row.
    assert listing_submit(listing=draft_listing, actor=merchant_user).status == ListingStatus.SUBMITTED
