from django.conf import settings
from django.db import models

from merchants.choices import MemberRole, MerchantStatus


class Merchant(models.Model):
    """A data merchant (数商): the organisation that lists and sells data products."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    contact_email = models.EmailField(blank=True)
    status = models.CharField(max_length=20, choices=MerchantStatus.choices, default=MerchantStatus.ACTIVE)
    # Stripe Connect (Express) account that receives payouts; set by onboarding.
    stripe_account_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class MerchantMember(models.Model):
    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="merchant_memberships")
    role = models.CharField(max_length=20, choices=MemberRole.choices, default=MemberRole.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["merchant", "user"], name="merchant_member_unique"),
            # One organisation per user for now: the console acts for "your" merchant.
            models.UniqueConstraint(fields=["user"], name="merchant_member_one_org_per_user"),
        ]

    def __str__(self):
        return f"{self.user} @ {self.merchant} ({self.role})"
