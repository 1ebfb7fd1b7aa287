from django.urls import path

from exchange.data_api import views

app_name = "data_api"

urlpatterns = [
    path("files/<int:file_pk>/rows/", views.FileRowsView.as_view(), name="file_rows"),
    path("keys/", views.KeysView.as_view(), name="keys"),
    path("keys/<str:prefix>/revoke/", views.KeyRevokeView.as_view(), name="key_revoke"),
    path("usage/", views.UsageView.as_view(), name="usage"),
]
