from allauth.account.models import EmailAddress
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Exists, OuterRef, Q, Subquery
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.translation import gettext_lazy as _

from merchants.choices import MemberRole, VerificationStatus
from merchants.models import Merchant, MerchantMember
from merchants.services import merchant_reject, merchant_verify

# The admin's own stylesheet (CSP-friendly: no inline styles in the admin templates).
ADMIN_CSS = {"all": ("admin_ext/admin.css",)}


class MerchantMemberInline(admin.TabularInline):
    model = MerchantMember
    extra = 0
    autocomplete_fields = ("user",)


class VerificationForm(forms.Form):
    """The reviewer's decision on a merchant's verification; a refusal needs the reason the merchant is shown."""

    decision = forms.ChoiceField(
        label=_("Decision"),
        choices=(("verify", _("Verify the merchant")), ("reject", _("Refuse the verification"))),
        widget=forms.RadioSelect,
    )
    note = forms.CharField(
        label=_("Note or reason"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_("What you checked (verify), or why the verification is refused (required; shown to the merchant)."),
    )


def _error_text(exc: ValidationError) -> str:
    return " ".join(exc.messages)


class PayoutAccountFilter(admin.SimpleListFilter):
    """Whether the merchant has connected a payout (Stripe Connect) account."""

    title = _("payout account")
    parameter_name = "payout_account"

    def lookups(self, request, model_admin):
        return (("yes", _("connected")), ("no", _("not connected")))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(stripe_account_id="")
        if self.value() == "no":
            return queryset.filter(stripe_account_id="")
        return queryset


@admin.register(Merchant)
class MerchantAdmin(admin.ModelAdmin):
    """Merchant verification: the evidence a reviewer checks for each organisation, one row each (owner and
    whether the owner's email address is verified, members, payout account, products) — counted in the list
    query, so the page costs the same number of queries for any number of merchants."""

    list_display = (
        "name",
        "verification_status",
        "status",
        "owner_email",
        "owner_verified",
        "member_count",
        "payout_account",
        "published_count",
        "listing_count",
        "contact_email",
        "created_at",
    )
    list_filter = ("verification_status", "status", PayoutAccountFilter)
    search_fields = ("name", "slug", "contact_email", "members__user__email")
    # Verification changes only through its page (merchants.services), so it is audit-logged.
    readonly_fields = ("verification_status", "verified_at", "verification_note", "stripe_account_id", "created_at")
    actions = ("verify_selected",)
    change_form_template = "admin/merchants/merchant/change_form.html"
    inlines = [MerchantMemberInline]

    class Media:
        css = ADMIN_CSS

    def get_queryset(self, request):
        owners = MerchantMember.objects.filter(merchant=OuterRef("pk"), role=MemberRole.OWNER).order_by("pk")
        verified = EmailAddress.objects.filter(
            user__merchant_memberships__merchant=OuterRef("pk"),
            user__merchant_memberships__role=MemberRole.OWNER,
            verified=True,
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                _owner_email=Subquery(owners.values("user__email")[:1]),
                _owner_verified=Exists(verified),
                _members=Count("members", distinct=True),
                _listings=Count("listings", distinct=True),
                # The status by value: merchants must not import listings (dependencies point one way).
                _published=Count("listings", filter=Q(listings__status="published"), distinct=True),
            )
        )

    @admin.display(description=_("owner"), ordering="_owner_email")
    def owner_email(self, merchant):
        return merchant._owner_email or "—"

    @admin.display(description=_("owner's email verified"), boolean=True, ordering="_owner_verified")
    def owner_verified(self, merchant):
        return merchant._owner_verified

    @admin.display(description=_("members"), ordering="_members")
    def member_count(self, merchant):
        return merchant._members

    @admin.display(description=_("payout account"), boolean=True, ordering="stripe_account_id")
    def payout_account(self, merchant):
        return bool(merchant.stripe_account_id)

    @admin.display(description=_("published products"), ordering="_published")
    def published_count(self, merchant):
        return merchant._published

    @admin.display(description=_("products"), ordering="_listings")
    def listing_count(self, merchant):
        return merchant._listings

    def has_verify_permission(self, request) -> bool:
        return request.user.has_perm("merchants.change_merchant")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/verification/", wrap(self.verification_view), name="merchants_merchant_verification"
            ),
            *super().get_urls(),
        ]

    def verification_view(self, request, object_id):
        """GET: the merchant's evidence and the decision form; POST: verify or refuse through the services."""
        merchant = self.get_object(request, object_id)
        if merchant is None:
            raise Http404(_("No such merchant."))
        if not self.has_verify_permission(request):
            raise PermissionDenied
        status = 200
        if request.method == "POST":
            form = VerificationForm(request.POST)
            if form.is_valid():
                decision, note = form.cleaned_data["decision"], form.cleaned_data["note"]
                try:
                    if decision == "verify":
                        merchant_verify(merchant=merchant, actor=request.user, note=note)
                    else:
                        merchant_reject(merchant=merchant, actor=request.user, reason=note)
                except ValidationError as exc:
                    form.add_error(None, _error_text(exc))
                else:
                    done = (
                        _("%(name)s is verified.") if decision == "verify" else _("%(name)s's verification is refused.")
                    )
                    messages.success(request, done % {"name": merchant.name})
                    return redirect("admin:merchants_merchant_change", merchant.pk)
            status = 400
        else:
            form = VerificationForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "merchant": merchant,
            "form": form,
            "members": merchant.members.select_related("user").order_by("pk"),
            "verified_emails": set(
                EmailAddress.objects.filter(user__merchant_memberships__merchant=merchant, verified=True).values_list(
                    "email", flat=True
                )
            ),
        }
        return TemplateResponse(request, "admin/merchants/merchant/verification.html", context, status=status)

    @admin.action(description=_("Verify the selected merchants"), permissions=["verify"])
    def verify_selected(self, request, queryset):
        done, skipped = 0, 0
        for merchant in queryset.exclude(verification_status=VerificationStatus.VERIFIED):
            merchant_verify(merchant=merchant, actor=request.user, note=str(_("Verified in bulk from the list.")))
            done += 1
        skipped = queryset.filter(verification_status=VerificationStatus.VERIFIED).count() - done
        messages.success(request, _("%(done)s merchant(s) verified.") % {"done": done})
        if skipped > 0:
            messages.info(request, _("%(skipped)s were already verified.") % {"skipped": skipped})
