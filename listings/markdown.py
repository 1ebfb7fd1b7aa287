"""Merchant-written Markdown, rendered to HTML that is safe to put on the product page.

Markdown passes raw HTML through, so its output is untrusted: nh3 (ammonia)
then keeps only the tags and attributes listed here. Anything else is removed
(script and style elements with their content), URLs are limited to http,
https and mailto (no ``javascript:``, no ``data:`` images), and every link gets
``rel="nofollow noopener"``. The output carries no ``style`` attributes, so it
renders under a strict Content-Security-Policy.
"""

import markdown as markdown_lib
import nh3
from django.utils.safestring import SafeString, mark_safe

EXTENSIONS = ["tables", "fenced_code", "sane_lists"]
# Table column alignment as the ``align`` attribute rather than an inline style (CSP).
EXTENSION_CONFIGS = {"tables": {"use_align_attribute": True}}

ALLOWED_TAGS = {
    "a",
    "abbr",
    "blockquote",
    "br",
    "code",
    "dd",
    "del",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "strong",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "td": {"align"},
    "th": {"align"},
}
URL_SCHEMES = {"http", "https", "mailto"}
# Removed together with everything inside them (not just the tags).
DROPPED_WITH_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "noscript", "svg", "math"}
LINK_REL = "nofollow noopener"


def render_markdown(text: str | None) -> SafeString:
    """Render Markdown ``text`` (tables, fenced code, sane lists) to sanitised HTML."""
    if not text:
        return mark_safe("")
    # A fresh converter per call: Markdown instances keep state and are not thread-safe.
    html = markdown_lib.markdown(text, extensions=EXTENSIONS, extension_configs=EXTENSION_CONFIGS)
    cleaned = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        strip_comments=True,
    )
    return mark_safe(cleaned)  # sanitised by nh3 just above
