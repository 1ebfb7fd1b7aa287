"""The catalog's denormalised fields and full-text search vector.

``listing_refresh_catalog_fields`` recomputes, from the source rows, what the
catalog filters, sorts and searches on: the lowest active price, the primary
file format, the column names of the latest published version and (on
PostgreSQL) the weighted search vector. Every service that changes one of
those sources calls it in the same transaction, so the catalog is current on
write.
"""

from django.contrib.postgres.search import SearchVector
from django.db import connection
from django.db.models import Value

from listings.models import DataFile, Listing, PricingPlan


def _latest_published_files(listing: Listing) -> list[DataFile]:
    version = listing.versions.filter(published_at__isnull=False).order_by("-published_at", "-pk").first()
    if version is None:
        version = listing.versions.order_by("-created_at", "-pk").first()
    return list(version.files.all()) if version else []


def listing_refresh_catalog_fields(*, listing_pk: int) -> None:
    listing = Listing.objects.get(pk=listing_pk)
    cheapest = PricingPlan.objects.filter(listing=listing, is_active=True).order_by("amount", "pk").first()
    files = _latest_published_files(listing)
    columns = []
    for data_file in files:
        columns.extend(column["name"] for column in data_file.columns if column.get("name"))
    fields = {
        "price_from": cheapest.amount if cheapest else None,
        "price_currency": cheapest.currency if cheapest else "",
        "primary_format": files[0].format if files else "",
        "column_names": " ".join(dict.fromkeys(columns)),
    }
    Listing.objects.filter(pk=listing.pk).update(**fields)
    if connection.vendor == "postgresql":
        tags = " ".join(listing.tags.values_list("name", flat=True))
        Listing.objects.filter(pk=listing.pk).update(
            search_vector=SearchVector("title", weight="A", config="simple")
            + SearchVector(Value(tags), weight="A", config="simple")
            + SearchVector("summary", weight="B", config="simple")
            + SearchVector("column_names", weight="C", config="simple")
            + SearchVector("description", weight="D", config="simple")
        )
