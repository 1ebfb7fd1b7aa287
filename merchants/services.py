from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from merchants.choices import MemberRole
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
