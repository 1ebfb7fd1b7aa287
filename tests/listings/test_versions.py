from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from listings.choices import ListingStatus, ProfileStatus
from listings.models import DataFile, Listing, ListingVersion
from listings.profiling import datafile_profile_run
from listings.services import listing_transition, version_publish, version_upload
from tests.factories import make_listing

V2_CSV = b"city,year,area\nGuiyang,2024,8034\nShanghai,2024,6340\n"
V3_CSV = b"city,area\nGuiyang,8034\n"


def _stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _csv(content: bytes = V2_CSV, name: str = "v.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/csv")


@pytest.fixture
def upload_profiled(merchant_user, django_capture_on_commit_callbacks):
    def upload(listing: Listing, content: bytes = V2_CSV) -> ListingVersion:
        with django_capture_on_commit_callbacks(execute=True):
            version = version_upload(listing=listing, actor=merchant_user, uploaded_file=_csv(content))
        version.refresh_from_db()
        return version

    return upload


def _snapshot(listing: Listing):
    return (
        list(ListingVersion.objects.filter(listing=listing).order_by("pk").values()),
        list(DataFile.objects.filter(version__listing=listing).order_by("pk").values()),
    )


def test_a_published_listing_gets_a_new_unpublished_version(published_listing, merchant_user, upload_profiled):
    v1 = published_listing.versions.get()
    v1_before = ListingVersion.objects.filter(pk=v1.pk).values().get()
    v1_files_before = list(DataFile.objects.filter(version=v1).values())
    v2 = upload_profiled(published_listing)
    assert (v2.label, v2.published_at) == ("v2", None)
    assert v2.files.get().profile_status == ProfileStatus.DONE
    assert ListingVersion.objects.filter(pk=v1.pk).values().get() == v1_before  # the published version is untouched
    assert list(DataFile.objects.filter(version=v1).values()) == v1_files_before
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.PUBLISHED
    assert published_listing.column_names == "city year population"  # still v1's: v2 is not published


@pytest.mark.parametrize("status", [ListingStatus.SUBMITTED, ListingStatus.SUSPENDED])
def test_uploads_are_refused_while_in_review_or_suspended(
    merchant, merchant_user, staff, _private_storage, django_capture_on_commit_callbacks, status
):
    target = ListingStatus.PUBLISHED if status == ListingStatus.SUSPENDED else status
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, status=target)
    if status == ListingStatus.SUSPENDED:  # make_listing stops at published; suspend it
        listing = listing_transition(listing_pk=listing.pk, to_status=status, actor=staff)
    before, stored = _snapshot(listing), _stored_files(_private_storage)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(ValidationError) as exc:
        version_upload(listing=listing, actor=merchant_user, uploaded_file=_csv())
    assert exc.value.code == "not_editable"
    assert callbacks == []
    assert _snapshot(listing) == before
    assert _stored_files(_private_storage) == stored


def test_a_bad_file_for_a_published_listing_changes_nothing(published_listing, merchant_user, _private_storage):
    before, stored = _snapshot(published_listing), _stored_files(_private_storage)
    with pytest.raises(ValidationError) as exc:
        version_upload(listing=published_listing, actor=merchant_user, uploaded_file=_csv(b"a,b\n1,2,3\n"))
    assert exc.value.code == "malformed_csv"
    assert _snapshot(published_listing) == before
    assert _stored_files(_private_storage) == stored


def test_publish_a_profiled_version(published_listing, merchant_user, upload_profiled):
    v1 = published_listing.versions.get()
    datafile_profile_run(data_file_pk=v1.files.get().pk)
    v2 = upload_profiled(published_listing)
    published_listing.refresh_from_db()
    assert published_listing.column_names == "city year population"
    published = version_publish(version=v2, actor=merchant_user)
    assert published.pk == v2.pk
    assert published.published_at > v1.published_at
    v2.refresh_from_db()
    assert v2.published_at == published.published_at
    published_listing.refresh_from_db()
    assert published_listing.column_names == "city year area"  # the catalog follows the latest publication
    assert published_listing.status == ListingStatus.PUBLISHED


def test_publishing_twice_is_refused(published_listing, merchant_user, upload_profiled):
    v2 = upload_profiled(published_listing)
    first = version_publish(version=v2, actor=merchant_user).published_at
    with pytest.raises(ValidationError) as exc:
        version_publish(version=v2, actor=merchant_user)
    assert (exc.value.code, exc.value.messages) == ("already_published", ["Version v2 is already published."])
    v2.refresh_from_db()
    assert v2.published_at == first


def test_a_version_published_by_the_review_cannot_be_published_again(published_listing, merchant_user):
    v1 = published_listing.versions.get()
    before = _snapshot(published_listing)
    with pytest.raises(ValidationError) as exc:
        version_publish(version=v1, actor=merchant_user)
    assert exc.value.code == "already_published"
    assert _snapshot(published_listing) == before


def test_an_unprofiled_version_cannot_be_published(published_listing, merchant_user):
    v2 = version_upload(listing=published_listing, actor=merchant_user, uploaded_file=_csv(name="v2.csv"))
    before = _snapshot(published_listing)
    with pytest.raises(ValidationError) as exc:
        version_publish(version=v2, actor=merchant_user)
    assert exc.value.code == "not_profiled"
    assert exc.value.messages == ["Version v2 cannot be published until its files are profiled (v2.csv)."]
    assert _snapshot(published_listing) == before


def test_a_version_whose_profiling_failed_cannot_be_published(published_listing, merchant_user, upload_profiled):
    late_ragged = b"a,b\n" + b"1,2\n" * 20000 + b"1,2,3\n"
    v2 = upload_profiled(published_listing, late_ragged)
    assert v2.files.get().profile_status == ProfileStatus.FAILED
    with pytest.raises(ValidationError) as exc:
        version_publish(version=v2, actor=merchant_user)
    assert exc.value.code == "not_profiled"
    v2.refresh_from_db()
    assert v2.published_at is None


def test_only_members_publish(published_listing, merchant_user, other_merchant_user, upload_profiled):
    v2 = upload_profiled(published_listing)
    before = _snapshot(published_listing)
    with pytest.raises(PermissionDenied):
        version_publish(version=v2, actor=other_merchant_user)
    assert _snapshot(published_listing) == before


def test_a_drafts_version_is_published_by_the_review_not_by_the_merchant(draft_listing, merchant_user, upload_profiled):
    version = upload_profiled(draft_listing)
    assert version.files.get().profile_status == ProfileStatus.DONE
    with pytest.raises(ValidationError) as exc:
        version_publish(version=version, actor=merchant_user)
    assert exc.value.code == "listing_not_published"
    version.refresh_from_db()
    assert version.published_at is None


def test_an_older_version_cannot_be_published_after_a_newer_one(published_listing, merchant_user, upload_profiled):
    v2 = upload_profiled(published_listing)
    v3 = upload_profiled(published_listing, V3_CSV)
    version_publish(version=v3, actor=merchant_user)
    with pytest.raises(ValidationError) as exc:
        version_publish(version=v2, actor=merchant_user)
    assert (exc.value.code, exc.value.messages) == ("superseded", ["A version newer than v2 is already published."])
    v2.refresh_from_db()
    assert v2.published_at is None
    published_listing.refresh_from_db()
    assert published_listing.column_names == "city area"


def test_merchant_publishes_a_new_version_from_the_manage_page(
    client, published_listing, merchant_user, other_merchant_user, upload_profiled
):
    v2 = upload_profiled(published_listing)
    url = reverse("listings:version_publish", args=[published_listing.pk, v2.pk])
    client.force_login(other_merchant_user)
    assert client.post(url).status_code == 404
    assert ListingVersion.objects.get(pk=v2.pk).published_at is None
    client.force_login(merchant_user)
    page = client.get(reverse("listings:manage", args=[published_listing.pk])).content.decode()
    assert f"Publish {v2.label}" in page
    client.post(url)
    assert ListingVersion.objects.get(pk=v2.pk).published_at is not None
    again = client.post(url, follow=True)
    assert "already published" in again.content.decode()
