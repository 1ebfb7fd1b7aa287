from django.urls import path

from listings import dcat, views

app_name = "listings"
urlpatterns = [
    path("", views.catalog, name="catalog"),
    path("catalog.jsonld", dcat.catalog_dcat, name="catalog_dcat"),
    path("data/<slug:slug>/", views.listing_detail, name="detail"),
    path("merchants/<slug:slug>/", views.merchant_profile, name="merchant_profile"),
    path("console/", views.console, name="console"),
    path("console/products/new/", views.listing_new, name="new"),
    path("console/products/<int:pk>/", views.listing_manage, name="manage"),
    path("console/products/<int:pk>/edit/", views.listing_edit, name="edit"),
    path("console/products/<int:pk>/dictionary/", views.listing_dictionary, name="dictionary"),
    path("console/products/<int:pk>/plans/", views.listing_plan_add, name="plan_add"),
    path(
        "console/products/<int:pk>/plans/<int:plan_pk>/deactivate/",
        views.listing_plan_deactivate,
        name="plan_deactivate",
    ),
    path("console/products/<int:pk>/upload/", views.listing_upload, name="upload"),
    path("console/products/<int:pk>/price/", views.listing_price, name="price"),
    path("console/products/<int:pk>/submit/", views.listing_submit_view, name="submit"),
    path(
        "console/products/<int:pk>/versions/<int:version_pk>/publish/",
        views.listing_version_publish,
        name="version_publish",
    ),
]
