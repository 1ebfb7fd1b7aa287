"""Which entitlement lets a buyer read a data file through the API."""

from exchange.choices import DeliveryStatus
from exchange.models import Delivery, Entitlement
from exchange.services.delivery import delivery_version_allowed
from exchange.services.entitlements import usable_q
from listings.choices import PlanKind, ProfileStatus
from listings.models import DataFile


def data_file_for_buyer(*, user, file_pk: int) -> tuple[DataFile, Entitlement] | None:
    """The profiled file ``file_pk`` and the usable entitlement of ``user`` whose version rule covers it; else None.

    None is the answer for a missing file, an unpublished version, a file not
    yet profiled, no entitlement, a revoked or lapsed one, or a rule that
    excludes the version: the API answers 404 alike, revealing nothing.
    Where several entitlements qualify, a flat-priced one (free, one-time,
    subscription) is used before a metered one, so the buyer is not billed
    for what they already hold, then the oldest.
    """
    if not user.is_authenticated:
        return None
    data_file = (
        DataFile.objects.select_related("version")
        .filter(pk=file_pk, version__published_at__isnull=False, profile_status=ProfileStatus.DONE)
        .first()
    )
    if data_file is None:
        return None
    candidates = (
        Entitlement.objects.filter(usable_q(), buyer=user, listing_id=data_file.version.listing_id)
        .select_related("plan")
        .order_by("granted_at", "pk")
    )
    ordered = sorted(candidates, key=lambda e: e.plan is not None and e.plan.kind == PlanKind.METERED)
    for entitlement in ordered:
        if delivery_version_allowed(entitlement, data_file.version):
            return data_file, entitlement
    return None


def delivery_to_confirm(*, entitlement: Entitlement, version_pk: int) -> Delivery | None:
    """The entitlement's delivery of that version while it still waits for its first hand-over."""
    return Delivery.objects.filter(entitlement=entitlement, version_id=version_pk, status=DeliveryStatus.READY).first()
