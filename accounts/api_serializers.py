"""Serializers of the account API's keys: what a key shows (never its secret or hash), and what creating one takes."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey
from accounts.services import SCOPE_LABELS, SCOPES, api_key_is_active

_SCOPES_HELP = "; ".join(SCOPE_LABELS[scope] for scope in SCOPES) + "."


class ApiKeySerializer(serializers.ModelSerializer):
    """A key as its owner sees it in lists: named by its prefix (``dx_<prefix>.…``)."""

    scopes = serializers.ListField(child=serializers.ChoiceField(choices=SCOPES), help_text=_SCOPES_HELP)
    active = serializers.SerializerMethodField(help_text="Not revoked and not past its expiry: it authenticates.")

    class Meta:
        model = ApiKey
        fields = ["prefix", "name", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at", "active"]
        read_only_fields = fields

    def get_active(self, key) -> bool:
        return api_key_is_active(key)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """A key just created, with the key itself: shown in this answer only, never again."""

    key = serializers.SerializerMethodField(help_text="`dx_<prefix>.<secret>`: store it now; it cannot be shown again.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    def get_key(self, key) -> str:
        return self.context["raw_key"]


@extend_schema_field({"type": "array", "items": {"type": "string", "enum": list(SCOPES)}, "minItems": 1})
class ScopesField(serializers.ListField):
    """The scopes as given; the service checks them (``no_scope``, ``unknown_scope``, ``scope_not_held``)."""

    child = serializers.CharField(max_length=20)


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=ApiKey._meta.get_field("name").max_length)
    scopes = ScopesField(
        allow_empty=True, help_text=_SCOPES_HELP + " A key can only create keys within its own scopes."
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="In the future; null: never.")
