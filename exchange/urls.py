from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from exchange import views
from exchange.middleware import inline_styles_allowed
from listings.api import views as catalog_api_views

exchange_patterns = (
    [
        path("buy/<slug:slug>/", views.order_buy, name="order_buy"),
        path("orders/<uuid:public_id>/", views.order_detail, name="order_detail"),
        path("orders/<uuid:public_id>/<slug:action>/", views.order_action, name="order_action"),
        path("access/<slug:slug>/", views.access_request_new, name="access_request_new"),
        path("console/access-requests/", views.access_requests, name="access_requests"),
        path("console/payouts/connect/", views.connect_onboarding, name="connect"),
        path("library/", views.library, name="library"),
        path("library/deliveries/<int:pk>/receipt.json", views.receipt_json, name="receipt_json"),
        path("library/deliveries/<int:pk>/receipt/", views.receipt_page, name="receipt"),
        path("download/<str:token>/", views.download, name="download"),
        path("webhooks/<slug:gateway>/", views.webhook, name="webhook"),
        path("sandbox/checkout/<str:session_id>/", views.sandbox_checkout, name="sandbox_checkout"),
        path("console/sales/", views.sales, name="sales"),
    ],
    "exchange",
)

admin.site.site_header = "Data Exchange administration"
admin.site.site_title = "Data Exchange admin"

urlpatterns = [
    path("", include("exchange.health_urls")),
    path("admin/", admin.site.urls),
    path("i18n/", include("exchange.i18n")),
    path("accounts/", include("allauth.urls")),
    path("merchants/", include("merchants.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    # Swagger UI and Redoc inject inline styles: only their two pages allow them (exchange.middleware).
    path(
        "api/docs/", inline_styles_allowed(SpectacularSwaggerSplitView.as_view(url_name="api_schema")), name="api_docs"
    ),
    path("api/redoc/", inline_styles_allowed(SpectacularRedocView.as_view(url_name="api_schema")), name="api_redoc"),
    path("api/v1/", include("exchange.api.urls")),
    path("api/v1/merchant/", include("listings.api.merchant_urls")),
    path("api/v1/merchant/", include("exchange.api.merchant_urls")),
    path("api/v1/account/", include("accounts.api_urls")),
    path("api/v1/account/", include("exchange.api.account_urls")),
    path("api/v1/catalog/", include("listings.api.urls")),
    path("api/v1/ping/", catalog_api_views.ping, name="api_ping"),
    path("api/v1/data/", include("exchange.data_api.urls")),
    path("", include("exchange.notify_urls")),
    path("", include("accounts.urls")),
    path("", include("exchange.usage_urls")),
    path("", include("exchange.certificate_urls")),
    path("", include("exchange.statement_urls")),
    path("", include(exchange_patterns)),
    path("", include("listings.urls")),
]

handler404 = "common.api.not_found_handler"
