import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from listings.choices import REVIEW_CHECKLIST, ListingStatus, ProfileStatus, ReviewDecision
from listings.models import DataFile, Listing, ListingReview, ListingStatusHistory
from listings.services import listing_approve, listing_reject, listing_submit, listing_transition
from tests.factories import FULL_CHECKLIST, make_listing

pytestmark = pytest.mark.django_db


@pytest.fixture
def submitted(merchant, merchant_user, categories):
    return make_listing(merchant=merchant, owner=merchant_user, status=ListingStatus.SUBMITTED)


def _review_url(listing):
    return reverse("admin:listings_listingreview_change", args=[listing.reviews.get(decision="pending").pk])


def _decide(client, listing, button, notes="", checked=REVIEW_CHECKLIST):
    data = {field: "on" for field in checked}
    data.update({"notes": notes, button: "1"})
    return client.post(_review_url(listing), data)


def test_submission_opens_one_pending_review_for_the_version(submitted):
    review = ListingReview.objects.get()
    assert (review.listing, review.decision) == (submitted, ReviewDecision.PENDING)
    assert review.version == submitted.versions.get()
    assert review.manifest == []


def test_merchant_submits_incomplete_product_through_the_console(client, merchant_user, draft_listing):
    client.force_login(merchant_user)
    response = client.post(reverse("listings:submit", args=[draft_listing.pk]), follow=True)
    assert "Upload at least one data file." in response.content.decode()
    assert Listing.objects.get(pk=draft_listing.pk).status == ListingStatus.DRAFT
    assert ListingStatusHistory.objects.filter(listing=draft_listing).count() == 0
    assert ListingReview.objects.count() == 0


def test_queue_shows_pending_reviews_with_profiling_beside_the_checklist(client, staff, submitted):
    client.force_login(staff)
    queue = client.get(reverse("admin:listings_listingreview_changelist"), follow=True)
    assert submitted.title in queue.content.decode()
    page = client.get(_review_url(submitted)).content.decode()
    for question in REVIEW_CHECKLIST.values():
        assert question in page
    data_file = DataFile.objects.get()
    for column in data_file.columns:
        assert column["name"] in page
    assert data_file.sha256 in page


def test_admin_approval_publishes_with_registration_number_and_manifest(
    client, staff, submitted, merchant_user, django_capture_on_commit_callbacks
):
    client.force_login(staff)
    with django_capture_on_commit_callbacks(execute=True):
        response = _decide(client, submitted, "_approve", notes="All documents in order.")
    assert response.status_code == 302
    submitted.refresh_from_db()
    assert submitted.status == ListingStatus.PUBLISHED
    assert submitted.registration_number == f"DX-{submitted.published_at:%Y}-{submitted.pk:08d}"
    review = ListingReview.objects.get()
    data_file = DataFile.objects.get()
    assert review.decision == ReviewDecision.APPROVED and review.reviewer == staff
    assert review.manifest == [
        {"name": data_file.original_name, "size": data_file.size, "sha256": data_file.sha256, "format": "csv"}
    ]
    assert all(ok for _, _, ok in review.checklist)
    moves = list(ListingStatusHistory.objects.filter(listing=submitted).values_list("to_status", flat=True))
    assert moves == ["submitted", "in_review", "approved", "published"]
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [merchant_user.email]
    assert "approved" in mail.outbox[0].subject and data_file.sha256 in mail.outbox[0].body
    assert client.get(reverse("listings:catalog")).content.decode().count(submitted.title) >= 1


def test_approval_with_an_unchecked_item_changes_nothing(client, staff, submitted):
    client.force_login(staff)
    unchecked = list(REVIEW_CHECKLIST)[1:]
    response = _decide(client, submitted, "_approve", checked=unchecked)
    assert response.status_code == 200
    assert "Confirm every checklist item" in response.content.decode()
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
    assert ListingReview.objects.get().decision == ReviewDecision.PENDING
    assert mail.outbox == []


def test_approval_waits_for_profiling(staff, submitted):
    DataFile.objects.update(profile_status=ProfileStatus.PENDING)
    with pytest.raises(ValidationError) as exc:
        listing_approve(listing=submitted, reviewer=staff, checklist=FULL_CHECKLIST)
    assert exc.value.code == "not_profiled"
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
    assert ListingReview.objects.get().decision == ReviewDecision.PENDING


def test_rejection_needs_a_reason_and_tells_the_merchant(
    client, staff, submitted, merchant_user, django_capture_on_commit_callbacks
):
    client.force_login(staff)
    empty = _decide(client, submitted, "_reject", notes="  ", checked=[])
    assert empty.status_code == 200
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
    assert mail.outbox == []
    with django_capture_on_commit_callbacks(execute=True):
        done = _decide(client, submitted, "_reject", notes="The authorisation chain is missing.", checked=[])
    assert done.status_code == 302
    submitted.refresh_from_db()
    assert submitted.status == ListingStatus.REJECTED
    assert ListingReview.objects.get().notes == "The authorisation chain is missing."
    assert "authorisation chain is missing" in mail.outbox[0].body
    client.force_login(merchant_user)
    page = client.get(reverse("listings:manage", args=[submitted.pk])).content.decode()
    assert "The authorisation chain is missing." in page


def test_rejected_listing_can_be_resubmitted_for_a_new_review(merchant_user, staff, submitted):
    listing_reject(listing=submitted, reviewer=staff, reason="Missing authorisation chain.")
    listing_submit(listing=submitted, actor=merchant_user)
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
    assert list(ListingReview.objects.order_by("pk").values_list("decision", flat=True)) == ["rejected", "pending"]


def test_only_staff_review_and_transitions_follow_the_table(client, merchant_user, staff, submitted, draft_listing):
    with pytest.raises(PermissionDenied):
        listing_approve(listing=submitted, reviewer=merchant_user, checklist=FULL_CHECKLIST)
    with pytest.raises(ValidationError):
        listing_reject(listing=submitted, reviewer=staff, reason="  ")
    with pytest.raises(ValidationError) as exc:
        listing_transition(listing_pk=draft_listing.pk, to_status=ListingStatus.PUBLISHED, actor=staff)
    assert exc.value.code == "invalid_transition"
    client.force_login(merchant_user)
    response = client.post(_review_url(submitted), {**{f: "on" for f in REVIEW_CHECKLIST}, "_approve": "1"})
    assert response.status_code == 302 and "/admin/login/" in response.url
    assert Listing.objects.get(pk=submitted.pk).status == ListingStatus.SUBMITTED
    assert Listing.objects.get(pk=draft_listing.pk).status == ListingStatus.DRAFT


def test_suspend_and_reinstate_from_the_admin(client, staff, published_listing):
    client.force_login(staff)
    url = reverse("admin:listings_listing_changelist")
    form = client.post(url, {"action": "suspend_listings", "_selected_action": [published_listing.pk]})
    assert form.status_code == 200 and b"reason" in form.content
    client.post(
        url,
        {"action": "suspend_listings", "_selected_action": [published_listing.pk], "apply": "1", "reason": "Complaint"},
    )
    assert Listing.objects.get(pk=published_listing.pk).status == ListingStatus.SUSPENDED
    assert client.get(reverse("listings:detail", args=[published_listing.slug])).status_code == 200  # staff
    client.logout()
    assert client.get(reverse("listings:detail", args=[published_listing.slug])).status_code == 404
    client.force_login(staff)
    client.post(
        url,
        {"action": "reinstate_listings", "_selected_action": [published_listing.pk], "apply": "1", "reason": "Fixed"},
    )
    assert Listing.objects.get(pk=published_listing.pk).status == ListingStatus.PUBLISHED
