"""Versions and their files: upload (validated, streamed to storage, then profiled) and publication."""

from functools import partial

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from listings.choices import EDITABLE_STATUSES, ListingStatus, ProfileStatus
from listings.models import DataFile, Listing, ListingVersion
from listings.search import listing_refresh_catalog_fields
from listings.services.products import require_member
from listings.uploads import inspect_upload, merchant_storage_used, storage_quota_check, store_upload
from merchants.models import Merchant

# A draft (or rejected) product gets files for its review; a published one gets
# new versions, which its merchant publishes with version_publish.
UPLOADABLE_STATUSES = {*EDITABLE_STATUSES, ListingStatus.PUBLISHED}


def _refuse_upload(status: str) -> None:
    if status not in UPLOADABLE_STATUSES:
        raise ValidationError(
            "Files can only be uploaded while the product is a draft, was rejected, or is published.",
            code="not_editable",
        )


def version_upload(*, listing: Listing, actor, uploaded_file, changelog: str = "") -> ListingVersion:
    """Validate ``uploaded_file`` and store it as the listing's next, unpublished version.

    The whole file is checked before anything is written; if the database
    write fails after the bytes were stored, the stored file is removed, so a
    failed upload leaves nothing behind. A published version is never
    changed: every upload makes a new version. Profiling is scheduled once
    the transaction commits.

    The merchant's stored files and this one must fit in
    MERCHANT_STORAGE_QUOTA_BYTES ("quota_exceeded"): checked before storing,
    and again under a lock of the merchant's row in the transaction that
    creates the version, so concurrent uploads cannot together pass the quota.
    """
    from listings.tasks import datafile_profile  # imported here to avoid an import cycle

    require_member(listing, actor)
    _refuse_upload(listing.status)
    facts = inspect_upload(uploaded_file)
    # Early and unlocked: a file that cannot fit is refused before its bytes are copied to storage.
    storage_quota_check(used=merchant_storage_used(merchant_pk=listing.merchant_id), adding=facts["size"])
    path = store_upload(
        uploaded_file, merchant_pk=listing.merchant_id, listing_pk=listing.pk, extension=facts["format"]
    )
    try:
        with transaction.atomic():
            # The merchant's row first (then the listing's): uploads to any of its products queue here.
            Merchant.objects.select_for_update().only("pk").get(pk=listing.merchant_id)
            storage_quota_check(used=merchant_storage_used(merchant_pk=listing.merchant_id), adding=facts["size"])
            locked = Listing.objects.select_for_update().get(pk=listing.pk)
            if locked.status not in UPLOADABLE_STATUSES:
                raise ValidationError("The product changed state during the upload.", code="not_editable")
            number = locked.versions.count() + 1
            version = ListingVersion.objects.create(listing=locked, label=f"v{number}", changelog=changelog.strip())
            data_file = DataFile.objects.create(
                version=version,
                original_name=facts["original_name"],
                file=path,
                size=facts["size"],
                sha256=facts["sha256"],
                content_type=facts["content_type"],
                format=facts["format"],
                encoding=facts["encoding"],
            )
            listing_refresh_catalog_fields(listing_pk=locked.pk)
            # robust: a broker outage must not turn a committed upload into an
            # error page; datafile_profile_sweep picks the file up later.
            transaction.on_commit(partial(datafile_profile.delay, data_file.pk), robust=True)
    except BaseException:
        default_storage.delete(path)
        raise
    return version


def version_publish(*, version: ListingVersion, actor) -> ListingVersion:
    """Publish a new version of a published product; once published it is immutable.

    Only a member of the merchant may publish, only while the product is
    published, only once every file of the version is profiled, and only once
    (``published_at`` is set a single time). A version older than one already
    published cannot be published: the catalog shows the latest publication.
    Drafts' versions are published by the reviewer's approval instead.
    """
    require_member(version.listing, actor)
    with transaction.atomic():
        listing = Listing.objects.select_for_update().get(pk=version.listing_id)
        locked = ListingVersion.objects.select_for_update().get(pk=version.pk)
        if locked.published_at is not None:
            raise ValidationError(f"Version {locked.label} is already published.", code="already_published")
        if listing.status != ListingStatus.PUBLISHED:
            raise ValidationError(
                "Only versions of a published product can be published; a draft's versions are published "
                "when the review approves it.",
                code="listing_not_published",
            )
        newer_published = (
            ListingVersion.objects.filter(listing=listing, published_at__isnull=False, created_at__gt=locked.created_at)
            .exclude(pk=locked.pk)
            .exists()
        )
        if newer_published:
            raise ValidationError(f"A version newer than {locked.label} is already published.", code="superseded")
        files = list(locked.files.all())
        pending = [f.original_name for f in files if f.profile_status != ProfileStatus.DONE]
        if not files or pending:
            raise ValidationError(
                f"Version {locked.label} cannot be published until its files are profiled"
                + (f" ({', '.join(pending)})." if pending else "; it has no files."),
                code="not_profiled",
            )
        locked.published_at = timezone.now()
        locked.save(update_fields=["published_at"])
        listing_refresh_catalog_fields(listing_pk=listing.pk)
        version_published_hooks_schedule(version_pk=locked.pk)
    return locked


def version_published_hooks_schedule(*, version_pk: int) -> None:
    """Once the transaction commits, hand a newly published version's pk to each task in VERSION_PUBLISHED_TASKS.

    Call inside the transaction that publishes the version, once per
    publication. The tasks are named in settings (not imported) because
    listings never imports the exchange; a name that does not resolve raises
    here, so the publication fails loudly rather than delivering nothing.
    The tasks are queued with ``robust`` on-commit callbacks: a broker outage
    does not undo a committed publication.
    """
    for name in settings.VERSION_PUBLISHED_TASKS:
        task = import_string(name)
        transaction.on_commit(partial(task.delay, version_pk), robust=True)
