from django.urls import path

from listings.api import views

app_name = "catalog_api"

listing_list = views.CatalogListingViewSet.as_view({"get": "list"})
listing_detail = views.CatalogListingViewSet.as_view({"get": "retrieve"})

urlpatterns = [
    path("listings/", listing_list, name="listing-list"),
    path("listings/<slug:slug>/", listing_detail, name="listing-detail"),
]
