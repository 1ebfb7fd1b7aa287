from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from listings.choices import REVIEW_CHECKLIST, ListingStatus, ReviewDecision
from listings.models import (
    Category,
    DataFile,
    Listing,
    ListingReview,
    ListingStatusHistory,
    ListingVersion,
    PricingPlan,
    Tag,
)
from listings.services import listing_approve, listing_reinstate, listing_reject, listing_suspend

# The admin's own stylesheet (CSP-friendly: no inline styles in the admin templates).
ADMIN_CSS = {"all": ("admin_ext/admin.css",)}


class ReasonForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))


class ReviewDecisionForm(forms.Form):
    """The reviewer's checklist and decision; fields follow REVIEW_CHECKLIST."""

    notes = forms.CharField(
        label=_("Notes / reason"),
        widget=forms.Textarea(attrs={"rows": 4, "class": "review-notes"}),
        required=False,
        help_text=_("Required when rejecting: the merchant sees it and can act on it."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field, question in REVIEW_CHECKLIST.items():
            # The questions are catalogued in listings.models (_CHECKLIST_MESSAGES).
            self.fields[field] = forms.BooleanField(label=_(question), required=False)

    def checklist(self) -> dict[str, bool]:
        return {field: self.cleaned_data.get(field, False) for field in REVIEW_CHECKLIST}


# --- reviews: the compliance queue ---------------------------------------------


@admin.register(ListingReview)
class ListingReviewAdmin(admin.ModelAdmin):
    """The review queue. Opening a review shows the product, its profiling results and
    PII flags beside the checklist; the decision goes through the review services."""

    list_display = ("listing_link", "merchant", "sensitivity", "pii_summary", "submitted_at", "decision", "reviewer")
    list_filter = ("decision", "listing__sensitivity", "listing__category")
    search_fields = ("listing__title", "listing__merchant__name", "listing__registration_number")
    list_select_related = ("listing__merchant", "reviewer", "version")
    ordering = ("submitted_at",)

    class Media:
        css = ADMIN_CSS

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        # Reviewers land on the queue of pending reviews, oldest first.
        if not request.GET and request.method == "GET":
            return redirect(f"{request.path}?decision__exact={ReviewDecision.PENDING}")
        return super().changelist_view(request, extra_context)

    @admin.display(description=_("Listing"), ordering="listing__title")
    def listing_link(self, obj):
        return obj.listing.title

    @admin.display(description=_("Merchant"), ordering="listing__merchant__name")
    def merchant(self, obj):
        return obj.listing.merchant

    @admin.display(description=_("Declared sensitivity"))
    def sensitivity(self, obj):
        return obj.listing.get_sensitivity_display()

    @admin.display(description=_("PII flags found"))
    def pii_summary(self, obj):
        if obj.version_id is None:
            return "—"
        flags = sorted({flag for f in obj.version.files.all() for c in f.columns for flag in c.get("pii") or []})
        return ", ".join(flags) or _("none")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        review = get_object_or_404(
            ListingReview.objects.select_related("listing__merchant", "listing__category", "version", "reviewer"),
            pk=object_id,
        )
        if not self.has_view_permission(request, review):
            raise PermissionDenied
        listing = review.listing
        pending = review.decision == ReviewDecision.PENDING
        form = ReviewDecisionForm(request.POST if request.method == "POST" and pending else None)
        if request.method == "POST" and pending and form.is_valid():
            try:
                if "_approve" in request.POST:
                    listing_approve(
                        listing=listing,
                        reviewer=request.user,
                        checklist=form.checklist(),
                        notes=form.cleaned_data["notes"],
                    )
                    messages.success(request, _("Approved and published “%(title)s”.") % {"title": listing.title})
                elif "_reject" in request.POST:
                    listing_reject(
                        listing=listing,
                        reviewer=request.user,
                        reason=form.cleaned_data["notes"],
                        checklist=form.checklist(),
                    )
                    messages.success(
                        request, _("Rejected “%(title)s”; the merchant has been told why.") % {"title": listing.title}
                    )
                else:
                    raise ValidationError(_("Choose Approve or Reject."))
            except ValidationError as exc:
                for message in exc.messages:
                    form.add_error(None, message)
            else:
                return redirect(reverse("admin:listings_listingreview_changelist"))
        files = list(review.version.files.all()) if review.version_id else []
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Review: %(title)s") % {"title": listing.title},
            "review": review,
            "listing": listing,
            "files": files,
            "form": form,
            "pending": pending,
            "pii_flags": sorted({flag for f in files for c in f.columns for flag in c.get("pii") or []}),
            "history": listing.history.select_related("actor"),
            "previous_reviews": listing.reviews.exclude(pk=review.pk).select_related("reviewer"),
        }
        return TemplateResponse(request, "admin/listings/listingreview/review.html", context)


# --- listings ------------------------------------------------------------------


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
    fields = ("kind", "name", "amount", "currency", "interval", "metered_unit", "is_active", "created_at")
    readonly_fields = fields
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


def _reason_action(modeladmin, request, queryset, *, service, verb, button, action_name):
    form = ReasonForm(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        done = 0
        for listing in queryset:
            try:
                service(listing=listing, reviewer=request.user, reason=form.cleaned_data["reason"])
                done += 1
            except (ValidationError, PermissionDenied) as exc:
                text = "; ".join(getattr(exc, "messages", [str(exc)]))
                messages.error(request, _("%(listing)s: %(error)s") % {"listing": listing, "error": text})
        if done:
            messages.success(request, _("%(verb)s %(count)s listing(s).") % {"verb": verb, "count": done})
        return None
    return TemplateResponse(
        request,
        "admin/listings/reason.html",
        {
            **modeladmin.admin_site.each_context(request),
            "form": form,
            "listings": queryset,
            "opts": Listing._meta,
            "verb": verb,
            "button": button,
            "action_name": action_name,
        },
    )


@admin.action(description=_("Suspend selected listings (take out of the catalog)…"))
def suspend_listings(modeladmin, request, queryset):
    return _reason_action(
        modeladmin,
        request,
        queryset,
        service=listing_suspend,
        verb=_("Suspended"),
        button=_("Suspend"),
        action_name="suspend_listings",
    )


@admin.action(description=_("Reinstate selected suspended listings…"))
def reinstate_listings(modeladmin, request, queryset):
    return _reason_action(
        modeladmin,
        request,
        queryset,
        service=listing_reinstate,
        verb=_("Reinstated"),
        button=_("Reinstate"),
        action_name="reinstate_listings",
    )


@admin.register(Listing)
class ListingAdmin(admin.ModelAdmin):
    list_display = ("title", "merchant", "category", "status", "registration_number", "review_link", "published_at")
    list_filter = ("status", "category", "sensitivity", "licence", "merchant")
    search_fields = ("title", "slug", "registration_number", "merchant__name")
    readonly_fields = (
        "status",
        "registration_number",
        "published_at",
        "created_at",
        "updated_at",
        "price_from",
        "primary_format",
    )
    exclude = ("search_vector", "column_names", "price_currency")
    inlines = [PricingPlanInline, ListingVersionInline, ListingStatusHistoryInline]
    actions = [suspend_listings, reinstate_listings]
    list_select_related = ("merchant", "category")
    autocomplete_fields = ("tags",)

    @admin.display(description=_("Review"))
    def review_link(self, obj):
        review = obj.reviews.filter(decision=ReviewDecision.PENDING).first()
        if review is None:
            return "—"
        url = reverse("admin:listings_listingreview_change", args=[review.pk])
        return format_html('<a href="{}">{}</a>', url, _("Open review"))


class DataFileInline(admin.TabularInline):
    model = DataFile
    extra = 0
    can_delete = False
    fields = ("original_name", "size", "sha256", "format", "encoding", "profile_status", "row_count")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ListingVersion)
class ListingVersionAdmin(admin.ModelAdmin):
    list_display = ("listing", "label", "created_at", "published_at")
    readonly_fields = ("listing", "label", "changelog", "created_at", "published_at", "schema_diff")
    inlines = [DataFileInline]

    def has_add_permission(self, request):
        return False


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "name_zh", "slug", "position", "listing_count")
    list_editable = ("position",)
    search_fields = ("name", "name_zh", "slug")
    prepopulated_fields = {"slug": ("name",)}

    def get_queryset(self, request):
        published = Q(listings__status=ListingStatus.PUBLISHED)
        return super().get_queryset(request).annotate(_listings=Count("listings", filter=published))

    @admin.display(description=_("Published listings"), ordering="_listings")
    def listing_count(self, obj):
        return obj._listings


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ("name",)
