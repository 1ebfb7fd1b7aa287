"""The kinds of a listing's active plans, denormalised for the catalog's price-type facet.

Backfilled here from the plans (one statement); from now on
``listings.search.listing_refresh_catalog_fields`` keeps it current.
"""

from django.db import migrations, models


def backfill(apps, schema_editor):
    Listing = apps.get_model("listings", "Listing")
    PricingPlan = apps.get_model("listings", "PricingPlan")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "UPDATE listings_listing l SET price_kinds = k.kinds FROM ("
            " SELECT listing_id, ',' || string_agg(DISTINCT kind, ',' ORDER BY kind) || ',' AS kinds"
            " FROM listings_pricingplan WHERE is_active GROUP BY listing_id) k WHERE k.listing_id = l.id"
        )
        return
    kinds: dict[int, set[str]] = {}
    for listing_id, kind in PricingPlan.objects.filter(is_active=True).values_list("listing_id", "kind"):
        kinds.setdefault(listing_id, set()).add(kind)
    for listing_id, found in kinds.items():
        Listing.objects.filter(pk=listing_id).update(price_kinds="," + ",".join(sorted(found)) + ",")


class Migration(migrations.Migration):
    dependencies = [("listings", "0004_access_request")]

    operations = [
        migrations.AddField(
            model_name="listing",
            name="price_kinds",
            field=models.CharField(blank=True, editable=False, max_length=80),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
