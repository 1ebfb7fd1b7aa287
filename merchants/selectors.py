from merchants.models import Merchant


def merchant_for_user(*, user) -> Merchant | None:
    """The merchant organisation ``user`` belongs to, or None."""
    if not user.is_authenticated:
        return None
    return Merchant.objects.filter(members__user=user).first()


def merchant_is_member(*, merchant: Merchant, user) -> bool:
    return user.is_authenticated and merchant.members.filter(user=user).exists()
