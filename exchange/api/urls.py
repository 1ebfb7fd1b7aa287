"""The buyer's side of the REST API: orders, access requests, entitlements, deliveries, receipts, certificates."""

from django.urls import path

from exchange.api import views

app_name = "buyer_api"

orders = views.OrderViewSet
access_requests = views.AccessRequestViewSet
entitlements = views.EntitlementViewSet
deliveries = views.DeliveryViewSet

urlpatterns = [
    path("orders/", orders.as_view({"get": "list", "post": "create"}), name="order-list"),
    path("orders/<uuid:public_id>/", orders.as_view({"get": "retrieve"}), name="order-detail"),
    path("orders/<uuid:public_id>/checkout/", orders.as_view({"post": "checkout"}), name="order-checkout"),
    path("orders/<uuid:public_id>/cancel/", orders.as_view({"post": "cancel"}), name="order-cancel"),
    path("orders/<uuid:public_id>/confirm/", orders.as_view({"post": "confirm"}), name="order-confirm"),
    path("access-requests/", access_requests.as_view({"get": "list", "post": "create"}), name="access-request-list"),
    path("access-requests/<int:pk>/", access_requests.as_view({"get": "retrieve"}), name="access-request-detail"),
    path("entitlements/", entitlements.as_view({"get": "list"}), name="entitlement-list"),
    path("entitlements/<int:pk>/", entitlements.as_view({"get": "retrieve"}), name="entitlement-detail"),
    path("deliveries/", deliveries.as_view({"get": "list"}), name="delivery-list"),
    path("deliveries/<int:pk>/", deliveries.as_view({"get": "retrieve"}), name="delivery-detail"),
    path("deliveries/<int:pk>/receipt/", deliveries.as_view({"get": "receipt"}), name="delivery-receipt"),
    path("downloads/<str:token>/", views.DownloadView.as_view(), name="download"),
    path("certificates/", views.CertificateListView.as_view(), name="certificate-list"),
]
