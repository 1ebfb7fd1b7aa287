"""Template helpers for listings: embedded JSON-LD, catalog links that keep the filters, prices."""

import json

from django import template
from django.core.serializers.json import DjangoJSONEncoder
from django.http import QueryDict
from django.utils.safestring import mark_safe

from common.money import format_minor
from listings.dcat import listing_jsonld as build_listing_jsonld

register = template.Library()

# Inside <script> the HTML parser ends the element at "</script" and treats
# "<!--" specially; escaping <, > and & as JSON unicode escapes keeps any
# merchant-written text inert while the JSON stays identical once parsed.
_SCRIPT_ESCAPES = {ord("<"): "\\u003C", ord(">"): "\\u003E", ord("&"): "\\u0026"}


def jsonld_script(data: dict) -> str:
    """``data`` as a safe ``<script type="application/ld+json">`` element."""
    payload = json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False).translate(_SCRIPT_ESCAPES)
    return mark_safe(f'<script type="application/ld+json">{payload}</script>')  # escaped above


@register.simple_tag
def listing_jsonld(listing):
    """``{% listing_jsonld listing %}``: the product's schema.org Dataset as embedded JSON-LD."""
    return jsonld_script(build_listing_jsonld(listing))


@register.simple_tag
def catalog_url(params, **changes):
    """The catalog query string with ``changes`` applied (a None or empty value removes the key).

    Any change other than the cursor starts again from the first page.
    """
    query = QueryDict(mutable=True)
    for key, value in params.items():
        if value not in (None, ""):
            query[key] = value
    if "cursor" not in changes:
        query.pop("cursor", None)
    for key, value in changes.items():
        if value in (None, ""):
            query.pop(key, None)
        else:
            query[key] = value
    encoded = query.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.filter
def money(amount, currency):
    """``{{ listing.price_from|money:listing.price_currency }}`` → "¥12.34 CNY"."""
    if amount is None:
        return ""
    return format_minor(amount, currency)
