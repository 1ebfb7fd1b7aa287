from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, post_save


class ListingsConfig(AppConfig):
    name = "listings"
    verbose_name = "Listings"

    def ready(self):
        from listings.catalog_cache import catalog_changed
        from listings.models import Category, Listing, ListingVersion, PricingPlan, Tag
        from merchants.models import Merchant

        # Everything the catalog's cached results show (listings.catalog_cache): a change retires them.
        for model in (Listing, ListingVersion, PricingPlan, Category, Tag, Merchant):
            post_save.connect(catalog_changed, sender=model, dispatch_uid=f"catalog_changed_save_{model.__name__}")
            post_delete.connect(catalog_changed, sender=model, dispatch_uid=f"catalog_changed_delete_{model.__name__}")
        m2m_changed.connect(catalog_changed, sender=Listing.tags.through, dispatch_uid="catalog_changed_tags")
