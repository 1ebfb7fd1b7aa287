from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.utils.translation import gettext_lazy as _

from accounts.models import ApiKey
from accounts.services import User, api_key_revoke


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "display_name", "is_staff", "is_active", "date_joined")
    search_fields = ("email", "display_name")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Profile"), {"fields": ("display_name", "first_name", "last_name")}),
        (_("Permissions"), {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        (_("Dates"), {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.action(description=_("Revoke the selected API keys"))
def revoke_keys(modeladmin, request, queryset):
    # Through the service, key by key, so each revocation is audit-logged with the staff member and address;
    # keys already revoked keep their first revocation time.
    active = list(queryset.filter(revoked_at__isnull=True).select_related("user"))
    for key in active:
        api_key_revoke(user=key.user, prefix=key.prefix)
    messages.success(
        request, _("%(count)s API key(s) revoked; they fail from the next request.") % {"count": len(active)}
    )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created by their owners only (the secret is shown to them once); admins see and revoke.

    The hash is not shown at all: it is of no use to an admin and must never be edited.
    """

    list_display = ("prefix", "name", "user", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("revoked_at",)
    list_select_related = ("user",)
    search_fields = ("prefix", "name", "user__email")
    fields = ("prefix", "name", "user", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at")
    readonly_fields = fields
    actions = [revoke_keys]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
