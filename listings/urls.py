from django.urls import path

from listings import views

app_name = "listings"
urlpatterns = [
    path("", views.catalog, name="catalog"),
    path("data/<slug:slug>/", views.listing_detail, name="detail"),
    path("merchants/<slug:slug>/", views.merchant_profile, name="merchant_profile"),
    path("console/", views.console, name="console"),
    path("console/products/new/", views.listing_new, name="new"),
    path("console/products/<int:pk>/", views.listing_manage, name="manage"),
    path("console/products/<int:pk>/upload/", views.listing_upload, name="upload"),
    path("console/products/<int:pk>/price/", views.listing_price, name="price"),
    path("console/products/<int:pk>/submit/", views.listing_submit_view, name="submit"),
]
