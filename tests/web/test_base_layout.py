"""The site's frame (issue 8, "one visual language"): templates/base.html, its static files and the strict CSP.

Pico CSS is vendored under static/vendor/pico and htmx comes from django-htmx's static files; both are served by
the app itself (whitenoise; tests/settings.py lets it find files without collectstatic). The policy allows no
inline script or style and no eval, and the colours in static/css/exchange.css keep WCAG AA contrast.
"""

import hashlib
import json
import re
from pathlib import Path

import pytest
from django.conf import settings

from exchange.settings_security import DEFAULT_CSP
from tests.web.html import attrs, elements

pytestmark = pytest.mark.django_db

ROOT = Path(settings.BASE_DIR)
STATIC = ROOT / "static"


def served(client, url: str) -> tuple[int, str, bytes]:
    response = client.get(url)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, response.headers.get("Content-Type", ""), body


def test_vendored_css_and_htmx_are_served_by_the_app(client):
    status, content_type, body = served(client, "/static/vendor/pico/pico.min.css")
    assert status == 200 and content_type.startswith("text/css")
    assert body.startswith(b"@charset") and b"Pico CSS" in body and b"v2.1.1" in body
    status, content_type, body = served(client, "/static/django_htmx/htmx-2.min.js")
    assert status == 200 and "javascript" in content_type and b'version:"2.' in body
    status, content_type, _ = served(client, "/static/css/exchange.css")
    assert status == 200 and content_type.startswith("text/css")
    assert served(client, "/static/vendor/pico/no-such-file.css")[0] == 404


def test_vendored_pico_is_the_untouched_release(client):
    """static/vendor/pico/README.md names the release and the sha256 of the file copied from it."""
    readme = (STATIC / "vendor" / "pico" / "README.md").read_text()
    (recorded,) = re.findall(r"sha256 of pico\.min\.css ([0-9a-f]{64})", readme)
    assert hashlib.sha256((STATIC / "vendor" / "pico" / "pico.min.css").read_bytes()).hexdigest() == recorded
    assert "MIT License" in (STATIC / "vendor" / "pico" / "LICENSE.md").read_text()


def test_every_stylesheet_and_script_the_page_links_is_served(client):
    html = client.get("/").content.decode()
    stylesheets = [attrs(link)["href"] for link in elements(html, "link", rel="stylesheet")]
    scripts = [attrs(script)["src"] for script in elements(html, "script")]
    assert stylesheets[:2] == ["/static/vendor/pico/pico.min.css", "/static/css/exchange.css"]
    assert {"/static/css/pages.css", "/static/css/charts.css"} <= set(stylesheets)
    assert {"/static/django_htmx/htmx-2.min.js", "/static/js/timezone.js", "/static/js/enhance.js"} <= set(scripts)
    for url in stylesheets + scripts:
        status, _, body = served(client, url)
        assert status == 200 and body, url
    # Every script is a deferred file: nothing inline for the CSP to refuse.
    for script in elements(html, "script"):
        assert "src" in attrs(script) and "defer" in attrs(script) and not script.children


def test_htmx_is_configured_for_the_strict_policy(client):
    html = client.get("/").content.decode()
    (meta,) = elements(html, "meta", name="htmx-config")
    config = json.loads(attrs(meta)["content"])
    assert config["includeIndicatorStyles"] is False  # htmx would otherwise inject an inline <style>
    assert config["allowEval"] is False and config["allowScriptTags"] is False
    # The catalog's 400 (bad parameters) is shown in place, like any result.
    assert {"code": "400", "swap": True, "error": False} in config["responseHandling"]
    assert ".htmx-indicator" in (STATIC / "css" / "exchange.css").read_text()


def test_csp_header_allows_no_inline_code_and_no_eval(client):
    response = client.get("/")
    header = response.headers.get("Content-Security-Policy") or response.headers["Content-Security-Policy-Report-Only"]
    assert header == DEFAULT_CSP
    directives = {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}
    assert directives["script-src"] == ["'self'"] and directives["style-src"] == ["'self'"]
    assert "'unsafe-inline'" not in header and "'unsafe-eval'" not in header


@pytest.mark.parametrize("template", ["base.html", "listings/catalog.html"])
def test_frame_and_catalog_templates_carry_no_inline_style_or_script(template):
    source = (ROOT / "templates" / template).read_text()
    assert 'style="' not in source and "<style" not in source
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", source) == []
    assert " hx-on" not in source and "js:" not in source


def test_page_frame_has_language_skip_link_menus_and_footer(client):
    html = client.get("/").content.decode()
    (root,) = elements(html, "html")
    assert attrs(root)["lang"] == "en"
    (skip,) = elements(html, "a", **{"class": "skip-link"})
    assert attrs(skip)["href"] == "#main" and elements(html, "main", id="main")
    # The menu twice: in the bar on wide screens, folded into a <details> on phones (CSS picks one).
    assert len(elements(html, "nav", **{"class": "nav-wide"})) == 1
    (narrow,) = elements(html, "details", **{"class": "nav-narrow"})
    assert elements(str(narrow), "summary") and 'href="/accounts/login/"' in str(narrow)


def test_language_switcher_is_a_plain_form(client):
    html = client.get("/?q=budget").content.decode()
    (form,) = elements(html, "form", **{"class": "language-switch"})
    form_html = str(form)
    assert attrs(form)["method"] == "post" and attrs(form)["action"] == "/i18n/setlang/"
    assert elements(form_html, "input", type="hidden", name="csrfmiddlewaretoken")
    assert elements(form_html, "input", type="hidden", name="next", value="/?q=budget")
    (select,) = elements(form_html, "select", name="language")
    options = {attrs(option)["value"]: attrs(option) for option in select.children if not isinstance(option, str)}
    assert set(options) == {code for code, _ in settings.LANGUAGES}
    assert "selected" in options["en"] and "selected" not in options["zh-hans"]
    assert elements(form_html, "button", type="submit")
    (label,) = elements(form_html, "label")
    assert attrs(label)["for"] == attrs(select)["id"]


def test_language_switcher_works_without_javascript(client):
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/?q=budget"})
    assert response.status_code == 302 and response.headers["Location"] == "/?q=budget"
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"
    html = client.get("/").content.decode()
    (root,) = elements(html, "html")
    assert attrs(root)["lang"] == "zh-hans"
    (select,) = elements(html, "select", name="language")
    chosen = [attrs(o)["value"] for o in select.children if not isinstance(o, str) and "selected" in attrs(o)]
    assert chosen == ["zh-hans"]


def test_language_switcher_refuses_an_unknown_language_and_changes_nothing(client):
    response = client.post("/i18n/setlang/", {"language": "xx-klingon", "next": "/"})
    assert response.status_code == 302
    assert settings.LANGUAGE_COOKIE_NAME not in response.cookies
    assert attrs(elements(client.get("/").content.decode(), "html")[0])["lang"] == "en"


# --- colour contrast ---------------------------------------------------------------------------------------------


def _luminance(colour: str) -> float:
    """WCAG 2 relative luminance of a #rrggbb colour."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(foreground: str, background: str) -> float:
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_contrast_helper_matches_known_ratios():
    assert round(contrast("#000000", "#ffffff"), 1) == 21.0
    assert round(contrast("#777777", "#ffffff"), 2) == 4.48  # the classic just-too-light grey


def test_text_colours_meet_wcag_aa():
    """Each text/background pair exchange.css lists in its "contrast pairs" comment reaches 4.5:1."""
    css = (STATIC / "css" / "exchange.css").read_text()
    root = re.search(r":root \{(.*?)\}", css, re.S).group(1)
    palette = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6});", root))
    listed = re.search(r"contrast pairs \(text on background\):(.*?)\*/", css, re.S).group(1)
    pairs = re.findall(r"([a-z-]+)/([a-z-]+)", listed)
    assert len(pairs) >= 12
    failing = {
        f"{fg} on {bg}": round(contrast(palette[fg], palette[bg]), 2)
        for fg, bg in pairs
        if contrast(palette[fg], palette[bg]) < 4.5
    }
    assert failing == {}
