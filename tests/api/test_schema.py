"""The OpenAPI schema: generated without a warning, served, documented with local static files only.

Every operation of /api/v1/ is checked for what the API promises everywhere: the ApiKey scheme, a 401 and a
429 (any request can carry a bad key or come too often), a 404 on routes naming an object, and errors in the
one shape (the ``Error`` component).
"""

import re
from html.parser import HTMLParser

import pytest
import yaml
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client

from tests.api.conftest import API_PREFIX, api_routes, api_schema, documented_path

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ERROR_REF = "#/components/schemas/Error"


def _operations():
    return [
        pytest.param(path, method, operation, id=f"{method.upper()} {path}")
        for path, item in api_schema()["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_the_schema_generates_and_validates_without_a_warning(tmp_path):
    """``manage.py spectacular --validate --fail-on-warn``: any warning or error of any view fails here."""
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    info = (schema["openapi"], schema["info"]["title"], schema["info"]["version"])
    assert info == ("3.0.3", "Data Exchange API", "1")
    assert all(path.startswith(API_PREFIX) for path in schema["paths"])


def test_the_schema_is_served(db):
    response = Client().get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == "application/vnd.oai.openapi+json"
    body = response.json()
    assert body["info"]["title"] == "Data Exchange API"
    assert sorted(body["paths"]) == sorted(api_schema()["paths"])
    as_yaml = Client().get("/api/v1/schema/")
    assert (as_yaml.status_code, as_yaml["Content-Type"]) == (200, "application/vnd.oai.openapi; charset=utf-8")
    assert yaml.safe_load(as_yaml.content)["paths"].keys() == body["paths"].keys()


class _Assets(HTMLParser):
    """The URLs of the scripts, stylesheets and icons a page loads."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])


def _assets(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize(("url", "marker"), [("/api/docs/", "swagger-ui"), ("/api/redoc/", "redoc")])
def test_the_docs_render_from_local_static_files(db, url, marker):
    response = Client().get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert marker in html.lower()
    assets = _assets(html)
    assert any(a.endswith(".js") for a in assets), assets  # the viewer's own script, at least
    remote = [a for a in assets if re.match(r"^(https?:)?//", a) or re.search(r"cdn|jsdelivr|unpkg", a)]
    assert remote == []
    # Nothing in the page (inline scripts included) fetches from a CDN either.
    assert re.findall(r"(?:cdn\.|jsdelivr|unpkg|https?://)[^\s\"']*", html) == []
    missing = []
    for asset in assets:
        if not asset.startswith(settings.STATIC_URL):
            # Swagger UI's start-up script comes from the docs view itself (no inline script, for the CSP).
            assert asset.startswith(url), asset
            assert Client().get(asset).status_code == 200, asset
            continue
        name = asset[len(settings.STATIC_URL) :].split("?")[0]
        if finders.find(name) is None:
            missing.append(name)
        else:
            assert Client().get(asset).status_code == 200, asset
    assert missing == []


def test_the_api_key_scheme_is_declared():
    schemes = api_schema()["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Api-Key <your key>` (shown once when created under *API keys*).",
    }


def test_every_api_route_is_in_the_schema():
    """A route the schema leaves out would escape schemathesis and the clients generated from the schema."""
    assert [f"{route.name} {route.path}" for route in api_routes() if documented_path(route) is None] == []


@pytest.mark.parametrize(("path", "method", "operation"), _operations())
def test_every_operation_declares_its_errors(path, method, operation):
    statuses = set(operation["responses"])
    needed = {"401", "429"} | ({"404"} if "{" in path else set())
    assert sorted(needed - statuses) == []
    # Errors in the one shape: each declared 4xx with a JSON body is the Error component.
    other_shapes = {
        status: response["content"]["application/json"]["schema"]
        for status, response in operation["responses"].items()
        if status.startswith("4") and "application/json" in response.get("content", {})
        if response["content"]["application/json"]["schema"] != {"$ref": ERROR_REF}
    }
    assert other_shapes == {}
