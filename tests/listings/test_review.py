import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from listings.choices import ListingStatus
from listings.models import Listing, ListingStatusHistory
from listings.services import listing_approve, listing_reject, listing_submit, listing_transition
from tests.factories import make_listing

pytestmark = pytest.mark.django_db


@pytest.fixture
def submitted(merchant, merchant_user):
    return make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)


def test_merchant_submits_through_the_console(client, merchant_user, draft_listing):
    client.force_login(merchant_user)
    response = client.post(reverse("listings:submit", args=[draft_listing.pk]), follow=True)
    assert "Upload at least one data file." in response.content.decode()
    assert "Set a price." in response.content.decode()
    assert Listing.objects.get(pk=draft_listing.pk).status == ListingStatus.DRAFT
    assert ListingStatusHistory.objects.filter(listing=draft_listing).count() == 0


def test_price_form_rejects_bad_amounts(client, merchant_user, draft_listing):
    client.force_login(merchant_user)
    for price in ("-1", "0", "abc", "1.234", "NaN"):
        response = client.post(reverse("listings:price", args=[draft_listing.pk]), {"price": price, "currency": "CNY"})
        assert response.status_code == 400, price
    assert draft_listing.plans.count() == 0
    ok = client.post(reverse("listings:price", args=[draft_listing.pk]), {"price": "99.90", "currency": "USD"})
    assert ok.status_code == 302
    plan = draft_listing.plans.get()
    assert (plan.amount, plan.currency, plan.price_display) == (9990, "USD", "$99.90 USD")


def test_admin_approve_action_publishes_with_registration_number(client, staff, submitted):
    client.force_login(staff)
    queue = client.get(reverse("admin:listings_listing_changelist"), follow=True)
    assert submitted.title in queue.content.decode()
    response = client.post(
        reverse("admin:listings_listing_changelist") + "?status__exact=submitted",
        {"action": "approve_listings", "_selected_action": [submitted.pk]},
    )
    assert response.status_code == 302
    submitted.refresh_from_db()
    assert submitted.status == ListingStatus.PUBLISHED
    assert submitted.registration_number == f"DX-{submitted.published_at:%Y}-{submitted.pk:08d}"
    moves = list(ListingStatusHistory.objects.filter(listing=submitted).values_list("to_status", flat=True))
    assert moves == ["submitted", "in_review", "approved", "published"]
    assert client.get(reverse("listings:catalog")).content.decode().count(submitted.title) == 1


def test_admin_reject_needs_a_reason(client, staff, submitted):
    client.force_login(staff)
    url = reverse("admin:listings_listing_changelist")
    form = client.post(url, {"action": "reject_listings", "_selected_action": [submitted.pk]})
    assert form.status_code == 200 and b"reason" in form.content
    empty = client.post(url, {"action": "reject_listings", "_selected_action": [submitted.pk], "apply": "1"})
    assert empty.status_code == 200
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
    done = client.post(
        url,
        {"action": "reject_listings", "_selected_action": [submitted.pk], "apply": "1", "reason": "No licence."},
    )
    assert done.status_code == 302
    submitted.refresh_from_db()
    assert submitted.status == ListingStatus.REJECTED
    assert ListingStatusHistory.objects.filter(listing=submitted).last().reason == "No licence."


def test_rejected_listing_can_be_resubmitted(merchant_user, staff, submitted):
    listing_reject(listing=submitted, reviewer=staff, reason="Missing authorisation chain.")
    listing_submit(listing=submitted, actor=merchant_user)
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED


def test_only_staff_review_and_transitions_follow_the_table(merchant_user, staff, submitted, draft_listing):
    with pytest.raises(PermissionDenied):
        listing_approve(listing=submitted, reviewer=merchant_user)
    with pytest.raises(ValidationError):
        listing_reject(listing=submitted, reviewer=staff, reason="  ")
    with pytest.raises(ValidationError) as exc:
        listing_transition(listing_pk=draft_listing.pk, to_status=ListingStatus.PUBLISHED, actor=staff)
    assert exc.value.code == "invalid_transition"
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
    assert Listing.objects.get(pk=draft_listing.pk).status == ListingStatus.DRAFT
