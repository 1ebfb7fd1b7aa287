"""Serializers of the account API's exchange side: webhook endpoints, their delivery attempts, notifications."""

from django.conf import settings
from rest_framework import serializers

from exchange.choices import NotificationKind, OutboundEventStatus
from exchange.models import Notification, OutboundAttempt, OutboundEvent, WebhookEndpoint

_EVENTS_HELP = "The event types sent to the endpoint; empty: every type."


class WebhookEndpointSerializer(serializers.ModelSerializer):
    """An endpoint as its owner sees it (never its signing secret, which is shown once)."""

    events = serializers.ListField(
        child=serializers.ChoiceField(choices=NotificationKind.choices), source="event_types", help_text=_EVENTS_HELP
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "events", "is_active", "created_at", "disabled_at"]
        read_only_fields = fields


class WebhookEndpointWithSecretSerializer(WebhookEndpointSerializer):
    """An endpoint just created (or given a new secret), with the secret that signs its events: shown this once."""

    secret = serializers.CharField(help_text="`whsec_...`: verify `X-Exchange-Signature` with it; store it now.")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class WebhookEndpointCreateSerializer(serializers.Serializer):
    # The URL's rules (https only, no private or local address...) are the service's, which says what is wrong.
    url = serializers.CharField(max_length=500, help_text="https:// on a public address.")
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=NotificationKind.choices),
        required=False,
        allow_empty=True,
        default=list,
        help_text=_EVENTS_HELP,
    )


class WebhookEndpointUpdateSerializer(serializers.Serializer):
    """What can change on an endpoint: paused (``false``: events wait) or sending (``true``: waiting events go)."""

    is_active = serializers.BooleanField(required=False)

    # The endpoint's other fields are fixed: saying otherwise is refused rather than silently ignored.
    FIXED = ("id", "url", "description", "events", "secret", "created_at", "disabled_at")

    def to_internal_value(self, data):
        if isinstance(data, dict):
            fixed = [name for name in self.FIXED if name in data]
            if fixed:
                message = "Only is_active can be changed; register a new endpoint for another URL or other events."
                raise serializers.ValidationError(
                    {name: [serializers.ErrorDetail(message, code="read_only")] for name in fixed}
                )
        return super().to_internal_value(data)


class OutboundEventRefSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", help_text="The `X-Exchange-Delivery` header of its requests.")
    status = serializers.ChoiceField(choices=OutboundEventStatus.choices)

    class Meta:
        model = OutboundEvent
        fields = ["id", "type", "status", "attempts", "created_at", "delivered_at"]
        read_only_fields = fields


class OutboundAttemptSerializer(serializers.ModelSerializer):
    """One delivery attempt: what the endpoint answered (``status_code``), or why nothing was answered (``error``)."""

    event = OutboundEventRefSerializer()

    class Meta:
        model = OutboundAttempt
        fields = ["id", "event", "attempted_at", "status_code", "error", "response_excerpt", "duration_ms"]
        read_only_fields = fields


class NotificationSerializer(serializers.ModelSerializer):
    kind = serializers.ChoiceField(choices=NotificationKind.choices)
    kind_label = serializers.CharField(source="get_kind_display")
    url = serializers.SerializerMethodField(help_text="The page it is about, or null.")

    class Meta:
        model = Notification
        fields = ["id", "kind", "kind_label", "title", "body", "url", "data", "created_at", "read_at"]
        read_only_fields = fields

    def get_url(self, notification) -> str | None:
        # Stored as a site path; the API answers a full URL.
        url = notification.url
        if not url:
            return None
        return settings.SITE_URL + url if url.startswith("/") else url


class NotificationQuerySerializer(serializers.Serializer):
    unread = serializers.BooleanField(required=False, allow_null=True, default=None, help_text="1: unread ones only.")


class NotificationsMarkedSerializer(serializers.Serializer):
    marked = serializers.IntegerField(help_text="How many notifications were unread and are now read.")
