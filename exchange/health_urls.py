"""The health-check endpoint (issue 9): GET /healthz, for load balancers, Compose and systemd watchdogs."""

from django.urls import path

from exchange import health

urlpatterns = [path("healthz", health.healthz, name="healthz")]
