from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the log is evidence, so nobody adds, edits or deletes an event (the database refuses too)."""

    list_display = ("at", "action", "actor", "ip", "object_type", "object_repr")
    list_filter = ("action", ("actor", admin.RelatedOnlyFieldListFilter), "at")
    date_hierarchy = "at"
    search_fields = ("object_repr", "object_id", "actor__email", "ip")
    list_select_related = ("actor",)
    readonly_fields = ("at", "action", "actor", "ip", "object_type", "object_id", "object_repr", "details")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
