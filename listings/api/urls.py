from django.urls import path

from listings.api import views

app_name = "catalog_api"

listing_list = views.CatalogListingViewSet.as_view({"get": "list"})
listing_detail = views.CatalogListingViewSet.as_view({"get": "retrieve"})

urlpatterns = [
    path("listings/", listing_list, name="listing-list"),
    path("listings/<slug:slug>/", listing_detail, name="listing-detail"),
    path("listings/<slug:slug>/versions/", views.ListingVersionsView.as_view(), name="listing-versions"),
    path("listings/<slug:slug>/schema/", views.ListingSchemaView.as_view(), name="listing-schema"),
    path("listings/<slug:slug>/sample/", views.ListingSampleView.as_view(), name="listing-sample"),
    path("listings/<slug:slug>/plans/", views.ListingPlansView.as_view(), name="listing-plans"),
    path("merchants/<slug:slug>/", views.MerchantProfileView.as_view(), name="merchant-detail"),
]
