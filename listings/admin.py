from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect
from django.template.response import TemplateResponse

from listings.choices import ListingStatus
from listings.forms import RejectForm
from listings.models import DataFile, Listing, ListingStatusHistory, ListingVersion, PricingPlan
from listings.services import listing_approve, listing_reject


class ListingStatusHistoryInline(admin.TabularInline):
    model = ListingStatusHistory
    extra = 0
    can_delete = False
    readonly_fields = ("from_status", "to_status", "actor", "reason", "created_at")

    def has_add_permission(self, request, obj=None):
        return False


class PricingPlanInline(admin.TabularInline):
    model = PricingPlan
    extra = 0
    readonly_fields = ("kind", "amount", "currency", "is_active", "created_at")
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class ListingVersionInline(admin.TabularInline):
    model = ListingVersion
    extra = 0
    readonly_fields = ("label", "changelog", "created_at", "published_at")
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


def _apply_review(modeladmin, request, queryset, action, **kwargs):
    done = 0
    for listing in queryset:
        try:
            action(listing=listing, reviewer=request.user, **kwargs)
            done += 1
        except (ValidationError, PermissionDenied) as exc:
            messages.error(request, f"{listing}: {'; '.join(getattr(exc, 'messages', [str(exc)]))}")
    return done


@admin.action(description="Approve and publish selected listings")
def approve_listings(modeladmin, request, queryset):
    done = _apply_review(modeladmin, request, queryset, listing_approve)
    if done:
        messages.success(request, f"Approved and published {done} listing(s).")


@admin.action(description="Reject selected listings…")
def reject_listings(modeladmin, request, queryset):
    form = RejectForm(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        done = _apply_review(modeladmin, request, queryset, listing_reject, reason=form.cleaned_data["reason"])
        if done:
            messages.success(request, f"Rejected {done} listing(s).")
        return None
    return TemplateResponse(
        request,
        "admin/listings/reject.html",
        {**modeladmin.admin_site.each_context(request), "form": form, "listings": queryset, "opts": Listing._meta},
    )


@admin.register(Listing)
class ListingAdmin(admin.ModelAdmin):
    list_display = ("title", "merchant", "status", "registration_number", "created_at", "published_at")
    list_filter = ("status", "merchant")
    search_fields = ("title", "slug", "registration_number", "merchant__name")
    readonly_fields = ("status", "registration_number", "published_at", "created_at", "updated_at")
    inlines = [PricingPlanInline, ListingVersionInline, ListingStatusHistoryInline]
    actions = [approve_listings, reject_listings]
    list_select_related = ("merchant",)

    def changelist_view(self, request, extra_context=None):
        # Reviewers land on the queue: submitted listings first.
        if not request.GET and request.method == "GET":
            return redirect(f"{request.path}?status__exact={ListingStatus.SUBMITTED}")
        return super().changelist_view(request, extra_context)


class DataFileInline(admin.TabularInline):
    model = DataFile
    extra = 0
    can_delete = False
    readonly_fields = ("original_name", "file", "size", "sha256", "content_type", "format", "created_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ListingVersion)
class ListingVersionAdmin(admin.ModelAdmin):
    list_display = ("listing", "label", "created_at", "published_at")
    readonly_fields = ("listing", "label", "changelog", "created_at", "published_at")
    inlines = [DataFileInline]
