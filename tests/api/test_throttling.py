"""The API's general throttle: requests per API key (else per user, else per address) on the shared cache."""

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.services import api_key_create

pytestmark = pytest.mark.django_db

ORDERS = "/api/v1/orders/"


@pytest.fixture(autouse=True)
def _three_a_minute(settings):
    settings.API_RATE = "3/min"
    cache.clear()
    yield
    cache.clear()


def _client(raw_key: str | None = None) -> APIClient:
    client = APIClient()
    if raw_key:
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
    return client


def test_each_key_has_its_own_budget_and_the_fourth_request_waits(buyer):
    _, first_key = api_key_create(user=buyer, name="first", scopes=["read"])
    _, second_key = api_key_create(user=buyer, name="second", scopes=["read"])
    first = _client(first_key)
    assert [first.get(ORDERS).status_code for _ in range(3)] == [200, 200, 200]
    refused = first.get(ORDERS)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "throttled"
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Another key of the same user is counted on its own.
    assert _client(second_key).get(ORDERS).status_code == 200


def test_a_session_is_throttled_per_user_and_anonymous_callers_per_address(buyer, other_buyer):
    session = APIClient()
    session.force_login(buyer)
    assert [session.get(ORDERS).status_code for _ in range(3)] == [200, 200, 200]
    assert session.get(ORDERS).status_code == 429
    other = APIClient()
    other.force_login(other_buyer)
    assert other.get(ORDERS).status_code == 200
    anonymous = APIClient()
    assert [anonymous.get("/api/v1/catalog/listings/").status_code for _ in range(3)] == [200, 200, 200]
    assert anonymous.get("/api/v1/catalog/listings/").status_code == 429
