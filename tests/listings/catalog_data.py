"""Published listings with the attributes the catalog filters on, built through the services."""

from listings.catalog_cache import catalog_generation_bump
from listings.models import DataFile, Listing, Tag
from listings.search import listing_refresh_catalog_fields
from tests.factories import make_listing


def publish(
    *,
    merchant,
    owner,
    reviewer,
    title: str,
    price: int = 1000,
    currency: str = "CNY",
    summary: str | None = None,
    description: str | None = None,
    category=None,
    licence: str | None = None,
    update_frequency: str | None = None,
    tags: tuple[str, ...] = (),
    columns: list[str] | None = None,
) -> Listing:
    """A published listing; the descriptive fields are set as the merchant's edit form would, then refreshed."""
    listing = make_listing(
        merchant=merchant, owner=owner, title=title, price=price, currency=currency, reviewer=reviewer
    )
    fields = {
        key: value
        for key, value in {
            "summary": summary,
            "description": description,
            "category": category,
            "licence": licence,
            "update_frequency": update_frequency,
        }.items()
        if value is not None
    }
    # The factory files every listing under a category (submission needs one); keep only the one asked for.
    fields["category"] = category
    Listing.objects.filter(pk=listing.pk).update(**fields)
    if tags:
        listing.tags.add(*[Tag.objects.get_or_create(name=name)[0] for name in tags])
    if columns is not None:
        DataFile.objects.filter(version__listing=listing).update(
            columns=[{"name": name, "type": "VARCHAR"} for name in columns]
        )
    listing_refresh_catalog_fields(listing_pk=listing.pk)
    listing.refresh_from_db()
    return listing


def without_catalog_bumps(callbacks: list) -> list:
    """The on-commit callbacks other than the catalog cache's generation bump (listings.catalog_cache), which
    any change to what the catalog shows schedules."""
    return [callback for callback in callbacks if callback is not catalog_generation_bump]
