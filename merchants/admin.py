from django.contrib import admin

from merchants.models import Merchant, MerchantMember


class MerchantMemberInline(admin.TabularInline):
    model = MerchantMember
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Merchant)
class MerchantAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "status", "contact_email", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "slug", "contact_email")
    inlines = [MerchantMemberInline]
