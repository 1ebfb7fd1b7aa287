from django import template

from exchange.models import AccessRequest

register = template.Library()


@register.simple_tag
def buyer_access_request(listing, user):
    """The signed-in buyer's latest access request for ``listing`` (or None)."""
    if not user.is_authenticated:
        return None
    return AccessRequest.objects.filter(listing=listing, buyer=user).order_by("-created_at", "-pk").first()
