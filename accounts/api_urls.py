"""The account's side of the REST API: API keys (webhook endpoints and notifications: exchange.api.account_urls)."""

from django.urls import path

from accounts import api_views as views

app_name = "account_api"

urlpatterns = [
    path("keys/", views.ApiKeyListCreateView.as_view(), name="keys"),
    path("keys/<str:prefix>/revoke/", views.ApiKeyRevokeView.as_view(), name="key-revoke"),
]
