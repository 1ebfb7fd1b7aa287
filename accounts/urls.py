from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("account/api-keys/", views.api_keys, name="api_keys"),
    path("account/api-keys/<str:prefix>/revoke/", views.api_key_revoke_view, name="api_key_revoke"),
]
