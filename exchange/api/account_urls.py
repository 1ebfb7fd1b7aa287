"""The account's exchange side of the REST API: outbound webhook endpoints, notifications (under /api/v1/account/)."""

from django.urls import path

from exchange.api import account_views as views

app_name = "account_exchange_api"

urlpatterns = [
    path("webhooks/", views.WebhookEndpointListCreateView.as_view(), name="webhooks"),
    path("webhooks/<int:pk>/", views.WebhookEndpointDetailView.as_view(), name="webhook"),
    path("webhooks/<int:pk>/rotate-secret/", views.WebhookEndpointRotateSecretView.as_view(), name="webhook-rotate"),
    path("webhooks/<int:pk>/attempts/", views.WebhookAttemptListView.as_view(), name="webhook-attempts"),
    path("notifications/", views.NotificationListView.as_view(), name="notifications"),
    path("notifications/read-all/", views.NotificationsReadAllView.as_view(), name="notifications-read-all"),
    path("notifications/<int:pk>/read/", views.NotificationReadView.as_view(), name="notification-read"),
]
