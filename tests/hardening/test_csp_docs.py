"""The strict Content-Security-Policy, and the one relaxation: the API docs pages may use inline styles."""

import pytest

from exchange.middleware import _with_inline_styles

pytestmark = pytest.mark.django_db

HEADER = "Content-Security-Policy-Report-Only"


def _style_src(policy: str) -> list[str]:
    for directive in policy.split(";"):
        name, *sources = directive.split()
        if name == "style-src":
            return sources
    raise AssertionError(f"no style-src in {policy!r}")


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_the_api_docs_pages_allow_inline_styles_and_nothing_else_changes(client, settings, url):
    settings.CSP_REPORT_ONLY = True
    policy = client.get(url)[HEADER]
    assert _style_src(policy) == ["'self'", "'unsafe-inline'"]
    assert policy.replace(" 'unsafe-inline'", "") == settings.CSP_POLICY.replace("; ", "; ").strip()
    assert "'unsafe-eval'" not in policy


def test_every_other_page_keeps_the_strict_policy(client, settings):
    settings.CSP_REPORT_ONLY = False
    for url in ("/", "/accounts/login/", "/api/v1/schema/"):
        policy = client.get(url)["Content-Security-Policy"]
        assert "'unsafe-inline'" not in policy, url
        assert "'unsafe-eval'" not in policy, url


def test_a_policy_without_style_src_gets_one():
    assert _with_inline_styles("default-src 'self'") == "default-src 'self'; style-src 'self' 'unsafe-inline'"
    assert _with_inline_styles("style-src 'self' 'unsafe-inline'") == "style-src 'self' 'unsafe-inline'"


def test_no_policy_sends_no_header(client, settings):
    settings.CSP_POLICY = ""
    response = client.get("/api/redoc/")
    assert HEADER not in response.headers
    assert "Content-Security-Policy" not in response.headers
