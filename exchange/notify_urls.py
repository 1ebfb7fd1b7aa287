from django.urls import path

from exchange import notify_views as views

app_name = "notify"

urlpatterns: list = [
    path("notifications/", views.notifications, name="notifications"),
    path("notifications/read-all/", views.notifications_read_all, name="notifications_read_all"),
    path("notifications/<int:pk>/read/", views.notification_read, name="notification_read"),
    path("account/webhooks/", views.webhooks, name="webhooks"),
    path("account/webhooks/create/", views.webhook_create, name="webhook_create"),
    path("account/webhooks/<int:pk>/", views.webhook_detail, name="webhook_detail"),
    # disable, enable, rotate-secret, send-test, delete (POST)
    path("account/webhooks/<int:pk>/<slug:action>/", views.webhook_action, name="webhook_action"),
]
