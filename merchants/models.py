from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from merchants.choices import MemberRole, MerchantStatus, VerificationStatus


class Merchant(models.Model):
    """A data merchant (数商): the organisation that lists and sells data products."""

    name = models.CharField(verbose_name=_("name"), max_length=200)
    slug = models.SlugField(verbose_name=_("slug"), max_length=80, unique=True)
    description = models.TextField(verbose_name=_("description"), blank=True)
    contact_email = models.EmailField(verbose_name=_("contact email"), blank=True)
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=MerchantStatus.choices, default=MerchantStatus.ACTIVE
    )
    # The exchange's verification of the organisation (merchants.services.merchant_verify / merchant_reject).
    verification_status = models.CharField(
        verbose_name=_("verification"),
        max_length=20,
        choices=VerificationStatus.choices,
        default=VerificationStatus.PENDING,
        db_index=True,
    )
    verified_at = models.DateTimeField(verbose_name=_("verified at"), null=True, blank=True)
    verification_note = models.TextField(
        verbose_name=_("verification note"),
        blank=True,
        help_text=_("What the reviewer checked, or why the verification was refused (shown to the merchant)."),
    )
    # Stripe Connect (Express) account that receives payouts; set by onboarding.
    stripe_account_id = models.CharField(verbose_name=_("stripe account id"), max_length=64, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("merchant")
        verbose_name_plural = _("merchants")
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def is_verified(self) -> bool:
        return self.verification_status == VerificationStatus.VERIFIED


class MerchantMember(models.Model):
    merchant = models.ForeignKey(Merchant, verbose_name=_("merchant"), on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.CASCADE, related_name="merchant_memberships"
    )
    role = models.CharField(
        verbose_name=_("role"), max_length=20, choices=MemberRole.choices, default=MemberRole.MEMBER
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("merchant member")
        verbose_name_plural = _("merchant members")
        constraints = [
            models.UniqueConstraint(fields=["merchant", "user"], name="merchant_member_unique"),
            # One organisation per user for now: the console acts for "your" merchant.
            models.UniqueConstraint(fields=["user"], name="merchant_member_one_org_per_user"),
        ]

    def __str__(self):
        return f"{self.user} @ {self.merchant} ({self.role})"
