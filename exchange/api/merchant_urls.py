"""The merchant's money side of the REST API: sales, payouts, statements, aggregated usage (under /api/v1/merchant/)."""

from django.urls import path

from exchange.api import merchant_views as views

app_name = "merchant_money_api"

urlpatterns = [
    path("sales/", views.SaleListView.as_view(), name="sale-list"),
    path("payouts/", views.PayoutListView.as_view(), name="payout-list"),
    path("statements/", views.StatementView.as_view(), name="statement"),
    path("usage/", views.UsageView.as_view(), name="usage"),
]
