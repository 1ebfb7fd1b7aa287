from django.urls import path

from exchange import usage_views

app_name = "usage"

urlpatterns = [
    path("library/usage/", usage_views.buyer_usage_page, name="buyer"),
    path("console/usage/", usage_views.merchant_usage_page, name="merchant"),
]
