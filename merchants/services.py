from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from audit.models import AuditAction
from audit.services import audit_record
from merchants.choices import MemberRole, VerificationStatus
from merchants.models import Merchant, MerchantMember


def _unique_slug(name: str) -> str:
    base = slugify(name, allow_unicode=False)[:60] or "merchant"
    slug, n = base, 1
    while Merchant.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def merchant_create(*, user, name: str, description: str = "", contact_email: str = "") -> Merchant:
    """Create a merchant organisation with ``user`` as its owner.

    Raises ValidationError when the name is blank or the user already belongs
    to a merchant organisation; nothing is written in that case.
    """
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A merchant needs a name."})
    if MerchantMember.objects.filter(user=user).exists():
        raise ValidationError("You already belong to a merchant organisation.")
    merchant = Merchant.objects.create(
        name=name,
        slug=_unique_slug(name),
        description=description.strip(),
        contact_email=contact_email or user.email,
    )
    try:
        with transaction.atomic():
            MerchantMember.objects.create(merchant=merchant, user=user, role=MemberRole.OWNER)
    except IntegrityError:
        raise ValidationError("You already belong to a merchant organisation.") from None
    return merchant


def _locked(merchant: Merchant) -> Merchant:
    return Merchant.objects.select_for_update().get(pk=merchant.pk)


@transaction.atomic
def merchant_verify(*, merchant: Merchant, actor, note: str = "") -> Merchant:
    """Record that the exchange verified the organisation (KYC); audit-logged with the reviewer and the note.

    A merchant already verified is refused (ValidationError) and nothing is written; a merchant refused
    earlier can be verified once the problem is fixed.
    """
    merchant = _locked(merchant)
    if merchant.verification_status == VerificationStatus.VERIFIED:
        raise ValidationError(f"{merchant.name} is already verified.")
    previous = merchant.verification_status
    merchant.verification_status = VerificationStatus.VERIFIED
    merchant.verified_at = timezone.now()
    merchant.verification_note = (note or "").strip()
    merchant.save(update_fields=["verification_status", "verified_at", "verification_note"])
    audit_record(action=AuditAction.MERCHANT_VERIFIED, actor=actor, obj=merchant, previous=previous)
    return merchant


@transaction.atomic
def merchant_reject(*, merchant: Merchant, actor, reason: str) -> Merchant:
    """Refuse (or withdraw) the organisation's verification, with the reason the merchant is shown.

    The reason is required; a merchant already refused is refused again only with a ValidationError. Either
    error writes nothing. Withdrawing a verification clears ``verified_at``.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the verification is refused; the merchant is shown the reason."})
    merchant = _locked(merchant)
    if merchant.verification_status == VerificationStatus.REJECTED:
        raise ValidationError(f"{merchant.name}'s verification is already refused.")
    previous = merchant.verification_status
    merchant.verification_status = VerificationStatus.REJECTED
    merchant.verified_at = None
    merchant.verification_note = reason
    merchant.save(update_fields=["verification_status", "verified_at", "verification_note"])
    audit_record(action=AuditAction.MERCHANT_REJECTED, actor=actor, obj=merchant, previous=previous, reason=reason)
    return merchant
