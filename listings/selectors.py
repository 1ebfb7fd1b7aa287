from django.db.models import Q, QuerySet
from django.http import Http404

from listings.choices import ListingStatus
from listings.models import DataFile, Listing, PricingPlan
from merchants.selectors import merchant_is_member


def listings_published() -> QuerySet[Listing]:
    return Listing.objects.filter(status=ListingStatus.PUBLISHED).select_related("merchant")


def catalog_search(*, query: str = "") -> QuerySet[Listing]:
    """Published listings matching ``query`` (a simple search; full text arrives with the listings issue)."""
    qs = listings_published()
    query = (query or "").strip()
    if query:
        qs = qs.filter(Q(title__icontains=query) | Q(summary__icontains=query))
    return qs.order_by("-published_at", "-pk")


def listing_visible(*, slug: str, user) -> Listing:
    """The listing with ``slug`` if ``user`` may see it, else Http404.

    Published listings are public; others only to the merchant's members and staff.
    """
    listing = Listing.objects.select_related("merchant").filter(slug=slug).first()
    if listing is None:
        raise Http404("No such data product.")
    if listing.is_published or (user.is_authenticated and user.is_staff):
        return listing
    if merchant_is_member(merchant=listing.merchant, user=user):
        return listing
    raise Http404("No such data product.")


def listing_for_member(*, pk: int, user) -> Listing:
    """A listing the user may edit (a member of its merchant), else Http404."""
    listing = Listing.objects.select_related("merchant").filter(pk=pk).first()
    if listing is None or not merchant_is_member(merchant=listing.merchant, user=user):
        raise Http404("No such data product.")
    return listing


def listing_active_plan(*, listing: Listing) -> PricingPlan | None:
    return listing.plans.filter(is_active=True).first()


def listing_latest_files(*, listing: Listing, published_only: bool = True) -> list[DataFile]:
    """Files of the newest (published) version."""
    versions = listing.versions.all()
    if published_only:
        versions = versions.filter(published_at__isnull=False)
    version = versions.order_by("-created_at", "-pk").first()
    return list(version.files.all()) if version else []
