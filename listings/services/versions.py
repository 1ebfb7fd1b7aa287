"""Versions and their files: upload (validated, streamed to storage) and publication."""

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction

from listings.choices import EDITABLE_STATUSES
from listings.models import DataFile, Listing, ListingVersion
from listings.search import listing_refresh_catalog_fields
from listings.services.products import require_member
from listings.uploads import inspect_upload, store_upload


def version_upload(*, listing: Listing, actor, uploaded_file, changelog: str = "") -> ListingVersion:
    """Validate ``uploaded_file`` and store it as the listing's next version.

    The whole file is checked before anything is written; if the database
    write fails after the bytes were stored, the stored file is removed, so a
    failed upload leaves nothing behind.
    """
    require_member(listing, actor)
    if listing.status not in EDITABLE_STATUSES:
        raise ValidationError(
            "Files can only be changed while the product is a draft or was rejected.", code="not_editable"
        )
    facts = inspect_upload(uploaded_file)
    path = store_upload(
        uploaded_file, merchant_pk=listing.merchant_id, listing_pk=listing.pk, extension=facts["format"]
    )
    try:
        with transaction.atomic():
            locked = Listing.objects.select_for_update().get(pk=listing.pk)
            if locked.status not in EDITABLE_STATUSES:
                raise ValidationError("The product changed state during the upload.", code="not_editable")
            number = locked.versions.count() + 1
            version = ListingVersion.objects.create(listing=locked, label=f"v{number}", changelog=changelog.strip())
            DataFile.objects.create(
                version=version,
                original_name=facts["original_name"],
                file=path,
                size=facts["size"],
                sha256=facts["sha256"],
                content_type=facts["content_type"],
                format=facts["format"],
            )
            listing_refresh_catalog_fields(listing_pk=locked.pk)
    except BaseException:
        default_storage.delete(path)
        raise
    return version
