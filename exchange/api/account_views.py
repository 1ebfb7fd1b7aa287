"""The account API's exchange side (under ``/api/v1/account/``): outbound webhook endpoints and notifications.

The caller's own only (scope ``read``): anyone else's endpoint or notification is not found. The work is
the services' (exchange.services.outbound, exchange.services.notifications), as in the web pages.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from accounts.api_views import NO_STORE, service_error
from accounts.authentication import HasScope
from common.api import errors
from exchange.api.account_serializers import (
    NotificationQuerySerializer,
    NotificationSerializer,
    NotificationsMarkedSerializer,
    OutboundAttemptSerializer,
    WebhookEndpointCreateSerializer,
    WebhookEndpointSerializer,
    WebhookEndpointUpdateSerializer,
    WebhookEndpointWithSecretSerializer,
)
from exchange.models import Notification, OutboundAttempt, WebhookEndpoint
from exchange.services.notifications import (
    notification_mark_read,
    notifications_for_user,
    notifications_mark_all_read,
)
from exchange.services.outbound import (
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_rotate_secret,
    webhook_endpoint_set_active,
    webhook_endpoints_for_user,
)


class _OwnView(generics.GenericAPIView):
    permission_classes = [IsAuthenticated, HasScope("read")]


# --- webhook endpoints ------------------------------------------------------------------------------------------------


class _EndpointView(_OwnView):
    serializer_class = WebhookEndpointSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return WebhookEndpoint.objects.none()
        return webhook_endpoints_for_user(user=self.request.user)

    def own_endpoint(self) -> WebhookEndpoint:
        # Someone else's endpoint is simply not found: its existence is not disclosed.
        endpoint = self.get_queryset().filter(pk=self.kwargs["pk"]).first()
        if endpoint is None:
            raise NotFound("No such webhook endpoint.")
        return endpoint


class WebhookEndpointListCreateView(_EndpointView):
    """The caller's webhook endpoints, newest first; register one (its signing secret is shown once)."""

    @extend_schema(responses={200: WebhookEndpointSerializer(many=True), **errors(403, 404)})
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        request=WebhookEndpointCreateSerializer,
        responses={201: WebhookEndpointWithSecretSerializer, **errors(400, 403)},
        description=(
            "Register an endpoint: events are POSTed to `url`, signed with the `secret` in this answer (shown once). "
            "The URL must be https on a public address (no loopback, private or link-local address), without "
            "credentials or a #fragment. 400 codes: `required`, `blank`, `max_length`, `invalid_choice` (an unknown "
            "event type), `invalid` (the URL, with the reason in `fields.url`), `too_many` (the per-user limit)."
        ),
    )
    def post(self, request):
        given = WebhookEndpointCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        try:
            endpoint = webhook_endpoint_create(
                user=request.user, url=data["url"], description=data["description"], event_types=data["events"]
            )
        except DjangoValidationError as exc:
            raise service_error(exc, field_of_code={"unknown_type": "events"}) from None
        body = WebhookEndpointWithSecretSerializer(endpoint).data
        return Response(body, status=status.HTTP_201_CREATED, headers=NO_STORE)


class WebhookEndpointDetailView(_EndpointView):
    """One of the caller's endpoints: read it, pause or resume it (``is_active``), delete it."""

    @extend_schema(responses={200: WebhookEndpointSerializer, **errors(403, 404)})
    def get(self, request, pk):
        return Response(self.get_serializer(self.own_endpoint()).data)

    @extend_schema(
        request=WebhookEndpointUpdateSerializer,
        responses={200: WebhookEndpointSerializer, **errors(400, 403, 404)},
        description=(
            "`is_active: false` pauses the endpoint (its events wait); `true` resumes it and sends what waited; "
            "absent: nothing changes. The URL, description and events are fixed (400 `read_only`)."
        ),
    )
    def patch(self, request, pk):
        endpoint = self.own_endpoint()
        given = WebhookEndpointUpdateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        if "is_active" in given.validated_data:
            endpoint = webhook_endpoint_set_active(endpoint=endpoint, active=given.validated_data["is_active"])
        return Response(self.get_serializer(endpoint).data)

    @extend_schema(responses={204: None, **errors(403, 404)})
    def delete(self, request, pk):
        webhook_endpoint_delete(endpoint=self.own_endpoint())
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEndpointRotateSecretView(_EndpointView):
    """Give the endpoint a new signing secret (shown in this answer only); the old one stops signing at once."""

    @extend_schema(request=None, responses={200: WebhookEndpointWithSecretSerializer, **errors(403, 404)})
    def post(self, request, pk):
        endpoint = webhook_endpoint_rotate_secret(endpoint=self.own_endpoint())
        return Response(WebhookEndpointWithSecretSerializer(endpoint).data, headers=NO_STORE)


class WebhookAttemptListView(_EndpointView):
    """The endpoint's delivery attempts, newest first, each with its event (type, status, attempts so far)."""

    serializer_class = OutboundAttemptSerializer

    @extend_schema(responses={200: OutboundAttemptSerializer(many=True), **errors(403, 404)})
    def get(self, request, pk):
        endpoint = self.own_endpoint()
        attempts = OutboundAttempt.objects.filter(event__endpoint=endpoint).select_related("event")
        page = self.paginate_queryset(attempts)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


# --- notifications ----------------------------------------------------------------------------------------------------


class _NotificationView(_OwnView):
    serializer_class = NotificationSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return Notification.objects.none()
        return notifications_for_user(user=self.request.user)


class NotificationListView(_NotificationView):
    """The caller's notifications, newest first; ``?unread=1`` the unread ones only (``?unread=0`` the read ones)."""

    @extend_schema(
        parameters=[NotificationQuerySerializer],
        responses={200: NotificationSerializer(many=True), **errors(400, 403, 404)},
    )
    def get(self, request):
        query = NotificationQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        notifications = self.get_queryset()
        unread = query.validated_data["unread"]
        if unread is not None:
            notifications = notifications.filter(read_at__isnull=unread)
        page = self.paginate_queryset(notifications)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


class NotificationReadView(_NotificationView):
    """Mark one of the caller's notifications read (once: the first read time stays)."""

    @extend_schema(request=None, responses={200: NotificationSerializer, **errors(403, 404)})
    def post(self, request, pk):
        try:
            notification = notification_mark_read(user=request.user, notification_pk=pk)
        except Notification.DoesNotExist:
            raise NotFound("No such notification.") from None
        return Response(self.get_serializer(notification).data)


class NotificationsReadAllView(_NotificationView):
    """Mark every unread notification of the caller read."""

    serializer_class = NotificationsMarkedSerializer

    @extend_schema(request=None, responses={200: NotificationsMarkedSerializer, **errors(403)})
    def post(self, request):
        return Response({"marked": notifications_mark_all_read(user=request.user)})
