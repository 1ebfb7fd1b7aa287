"""The IDOR matrix: every object route of /api/v1/, every caller, every method it answers.

Generated from the URL configuration (tests/api/conftest.py walks it), so a new route is covered as soon as it
exists — or this file fails, naming it, until it is registered in ``OBJECT_ROUTES`` (or ``PUBLIC_ROUTES``, with a
reason). For each route the owner's object is made for real; then the callers who may not see it (anonymous,
a buyer without the purchase, another buyer, another merchant, the other side of the trade unless allowed,
staff unless allowed) each get 404 — anonymous 401 where the route needs authentication — and the object's
row is the same afterwards; the owner (and whoever else the product allows) succeeds.
"""

import pytest

from tests.api.conftest import (
    OBJECT_ROUTES,
    PERSONAS,
    PUBLIC_ROUTES,
    api_client,
    api_routes,
    route_methods,
)

pytestmark = pytest.mark.django_db

REFUSALS = {401: "not_authenticated", 404: "not_found"}


def _refusal(entry, persona: str) -> tuple[int, str, bool]:
    status = entry.anonymous if persona == "anonymous" else 404
    return (status, REFUSALS[status], True)


def _error_code(response) -> str | None:
    """The error's code in the API's one shape; None for an answer not in that shape."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _object_routes():
    return [route for route in api_routes() if route.is_object_route]


def _cases():
    cases = []
    for route in _object_routes():
        if route.name in OBJECT_ROUTES:
            for method in route_methods(route):
                cases.append(pytest.param(route, method, id=f"{method} {route.path}"))
    return cases


def _call(client, method: str, url: str, body):
    """``body``: the registry's ``(format, make_data)`` for this method, or None for a request without a body."""
    if body is None:
        return client.generic(method, url)
    fmt, data = body
    return getattr(client, method.lower())(url, data(), format=fmt)


def test_every_object_route_is_in_the_matrix_or_listed_public():
    """A new object route fails here, by name, until the registry says whose objects it serves."""
    missing = [
        f"{route.name or '(unnamed)'} {route.path}"
        for route in _object_routes()
        if route.name not in OBJECT_ROUTES and route.name not in PUBLIC_ROUTES
    ]
    assert missing == [], "Object routes missing from tests/api/conftest.py OBJECT_ROUTES: " + ", ".join(missing)


def test_the_registry_names_only_routes_that_exist():
    names = {route.name for route in _object_routes()}
    assert sorted(set(OBJECT_ROUTES) - names) == []
    assert sorted(set(PUBLIC_ROUTES) - names) == []


def test_the_matrix_is_not_empty():
    # Routes of the data API and certificates exist from the start: a walker that finds nothing is broken.
    assert {"data_api:file_rows", "data_api:key_revoke", "certificates:api_detail"} <= {
        route.name for route in _object_routes()
    }
    assert len(_cases()) >= 3


def _url(route, kwargs) -> str:
    url = route.path
    for name, value in kwargs.items():
        url = url.replace("{" + name + "}", str(value))
    assert "{" not in url, f"{route.name}: the registry gave no value for a parameter of {route.path}"
    return url


@pytest.mark.parametrize(("route", "method"), _cases())
def test_only_the_allowed_callers_reach_the_object(api_world, route, method):
    entry = OBJECT_ROUTES[route.name]
    assert method in entry.success, f"{route.name}: the registry has no expected status for {method}"
    body = entry.bodies.get(method)
    target = entry.make(api_world)
    url = _url(route, target.kwargs)
    refused = [p for p in PERSONAS if p not in entry.allowed]
    outcomes = {}
    for persona in refused:
        before = target.snapshot()
        assert before is not None, f"{route.name}: the registry's object does not exist"
        response = _call(api_client(entry.user(api_world, persona)), method, url, body)
        outcomes[persona] = (response.status_code, _error_code(response), target.snapshot() == before)
    assert outcomes == {p: _refusal(entry, p) for p in refused}, (
        f"{method} {url}: (status, error code, object unchanged) per refused caller"
    )
    allowed = {}
    for persona in [p for p in PERSONAS if p in entry.allowed]:
        # Each allowed caller acts on an object of its own making: a write by one must not decide the next's answer.
        own = target if method == "GET" else entry.make(api_world)
        response = _call(api_client(entry.user(api_world, persona)), method, _url(route, own.kwargs), body)
        allowed[persona] = response.status_code
    assert allowed == dict.fromkeys([p for p in PERSONAS if p in entry.allowed], entry.success[method]), (
        f"{method} {url}: status per allowed caller"
    )


def test_public_routes_answer_anyone(api_world):
    """The public object routes answer anonymous callers: the catalog's detail of a published product."""
    routes = {route.name: route for route in _object_routes()}
    detail = routes["catalog_api:listing-detail"]
    response = api_client(None).get(_url(detail, {"slug": api_world.listing.slug}))
    assert (response.status_code, response.json()["slug"]) == (200, api_world.listing.slug)
