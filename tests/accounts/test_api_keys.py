"""API keys: shown once, stored as a hash, scoped, limited, revocable and expiring — in the web UI and the API."""

import datetime
import hashlib
import logging
import re

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_authenticate, api_key_create
from tests.exchange.test_data_api import call, data_file_of, key_for, make_data_listing, purchase, rows_url

pytestmark = pytest.mark.django_db


@pytest.fixture
def bought(client, buyer, merchant, merchant_user, staff, django_capture_on_commit_callbacks):
    """The buyer's purchase of a published CSV product, and a key with the data scope."""
    listing = make_data_listing(merchant=merchant, owner=merchant_user, reviewer=staff)
    purchase(client, buyer, listing, django_capture_on_commit_callbacks)
    return {"file": data_file_of(listing), "key": key_for(buyer)}


KEY_RE = re.compile(r"dx_[a-z2-7]{8}\.[A-Za-z0-9_-]{43}")


def _post_key(client, **data):
    return client.post(reverse("accounts:api_keys"), {"name": "import", "scopes": ["data"], **data})


def test_the_web_page_shows_a_new_key_once_and_stores_only_its_hash(client, buyer):
    client.force_login(buyer)
    response = _post_key(client, scopes=["data", "read"], expires_in_days="30")
    assert response.status_code == 200
    raw = KEY_RE.search(response.content.decode()).group(0)
    key = ApiKey.objects.get()
    assert (key.user, key.name, key.scopes, key.prefix) == (buyer, "import", ["read", "data"], raw[3:11])
    assert key.hashed_key == hashlib.sha256(raw.encode()).hexdigest()
    assert abs((key.expires_at - timezone.now()) - datetime.timedelta(days=30)) < datetime.timedelta(minutes=1)
    # Never again: the list shows the prefix only.
    page = client.get(reverse("accounts:api_keys")).content.decode()
    assert raw not in page and raw.split(".")[1] not in page
    assert f"dx_{key.prefix}…" in page
    assert api_key_authenticate(raw_key=raw) == key


def test_the_web_form_needs_a_signed_in_user_and_a_csrf_token(buyer):
    assert Client().get(reverse("accounts:api_keys")).status_code == 302
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(buyer)
    assert _post_key(strict).status_code == 403
    assert ApiKey.objects.count() == 0


def test_an_unknown_scope_is_refused_and_nothing_is_created(client, buyer):
    client.force_login(buyer)
    assert _post_key(client, scopes=["data", "admin"]).status_code == 400
    response = client.post(reverse("data_api:keys"), {"name": "x", "scopes": ["data", "admin"]}, "application/json")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "unknown_scope",
            "message": "Unknown scope(s): admin. Scopes are: read, trade, data, merchant.",
        }
    }
    response = client.post(reverse("data_api:keys"), {"name": "x", "scopes": []}, "application/json")
    assert response.json()["error"]["code"] == "no_scope"
    assert ApiKey.objects.count() == 0


def test_active_keys_are_limited_per_user(client, buyer, settings):
    settings.API_KEYS_MAX_ACTIVE = 2
    client.force_login(buyer)
    for name in ("one", "two"):
        assert (
            client.post(reverse("data_api:keys"), {"name": name, "scopes": ["read"]}, "application/json").status_code
            == 201
        )
    refused = client.post(reverse("data_api:keys"), {"name": "three", "scopes": ["read"]}, "application/json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "too_many_keys"
    assert sorted(ApiKey.objects.values_list("name", flat=True)) == ["one", "two"]
    # A revoked key frees its place.
    prefix = ApiKey.objects.get(name="one").prefix
    assert client.post(reverse("data_api:key_revoke", args=[prefix])).status_code == 200
    assert (
        client.post(reverse("data_api:keys"), {"name": "three", "scopes": ["read"]}, "application/json").status_code
        == 201
    )


def test_api_create_list_and_revoke_with_a_key(buyer, other_buyer):
    _, raw = api_key_create(user=buyer, name="admin key", scopes=["read", "data"])
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}  # Bearer works like Api-Key
    api = Client()
    created = api.post(reverse("data_api:keys"), {"name": "child", "scopes": ["data"]}, "application/json", **headers)
    assert created.status_code == 201
    body = created.json()
    assert KEY_RE.fullmatch(body["key"])
    assert (body["name"], body["scopes"], body["active"], body["revoked_at"]) == ("child", ["data"], True, None)
    # A key cannot create a key with a scope it does not hold.
    refused = api.post(reverse("data_api:keys"), {"name": "x", "scopes": ["trade"]}, "application/json", **headers)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "scope_not_held"
    listed = api.get(reverse("data_api:keys"), **headers).json()["results"]
    assert [(k["name"], k["prefix"]) for k in listed] == [("child", body["prefix"]), ("admin key", raw[3:11])]
    assert all("key" not in k and "hashed_key" not in k for k in listed)
    # Someone else's key is not found, and stays active.
    other, _ = api_key_create(user=other_buyer, name="theirs", scopes=["read"])
    assert api.post(reverse("data_api:key_revoke", args=[other.prefix]), **headers).status_code == 404
    assert ApiKey.objects.get(pk=other.pk).revoked_at is None
    assert ApiKey.objects.count() == 3


def test_a_revoked_key_fails_on_the_very_next_request(bought, client, buyer):
    url = rows_url(bought["file"], limit=1)
    assert call(url, bought["key"]).status_code == 200
    client.force_login(buyer)
    prefix = bought["key"][3:11]
    assert client.post(reverse("accounts:api_key_revoke", args=[prefix])).status_code == 302
    response = call(url, bought["key"])
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "authentication_failed", "message": "Invalid, revoked or expired API key."}
    }
    first = ApiKey.objects.get(prefix=prefix).revoked_at
    client.post(reverse("accounts:api_key_revoke", args=[prefix]))  # idempotent
    assert ApiKey.objects.get(prefix=prefix).revoked_at == first


def test_someone_elses_key_cannot_be_revoked_in_the_web_ui(client, buyer, other_buyer):
    key, _ = api_key_create(user=other_buyer, name="theirs", scopes=["read"])
    client.force_login(buyer)
    assert client.post(reverse("accounts:api_key_revoke", args=[key.prefix])).status_code == 404
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_an_expired_key_fails_and_an_expiry_in_the_past_is_refused(buyer):
    start = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=datetime.UTC)
    with time_machine.travel(start, tick=False):
        key, raw = api_key_create(
            user=buyer, name="short", scopes=["read"], expires_at=start + datetime.timedelta(hours=1)
        )
        assert api_key_authenticate(raw_key=raw) == key
    with time_machine.travel(start + datetime.timedelta(hours=1), tick=False):
        assert api_key_authenticate(raw_key=raw) is None
        response = Client().get(reverse("data_api:keys"), HTTP_AUTHORIZATION=f"Api-Key {raw}")
        assert response.status_code == 401
        with pytest.raises(ValidationError, match=r"The expiry must be in the future\."):
            api_key_create(user=buyer, name="past", scopes=["read"], expires_at=start)
    assert ApiKey.objects.count() == 1


@pytest.mark.parametrize(
    "header",
    ["Api-Key", "Api-Key dx_nope", "Api-Key dx_abcdefgh.wrong", "Bearer a b", "Api-Key " + "dx_" + "a" * 300],
)
def test_malformed_or_unknown_keys_are_refused_with_401(buyer, header):
    response = Client().get(reverse("data_api:keys"), HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert "dx_" not in response.content.decode()


def test_a_right_prefix_with_a_wrong_secret_is_refused(buyer):
    _, raw = api_key_create(user=buyer, name="k", scopes=["read"])
    forged = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    assert api_key_authenticate(raw_key=forged) is None
    assert Client().get(reverse("data_api:keys"), HTTP_AUTHORIZATION=f"Api-Key {forged}").status_code == 401


def test_last_used_is_written_at_most_once_a_minute(buyer, django_assert_num_queries):
    key, raw = api_key_create(user=buyer, name="k", scopes=["read"])
    start = datetime.datetime(2030, 3, 1, 9, 0, 0, tzinfo=datetime.UTC)
    with time_machine.travel(start, tick=False), django_assert_num_queries(2):  # the lookup, the update
        api_key_authenticate(raw_key=raw)
    later = start + datetime.timedelta(seconds=59)
    with time_machine.travel(later, tick=False), django_assert_num_queries(1):  # the lookup only
        api_key_authenticate(raw_key=raw)
    assert ApiKey.objects.get(pk=key.pk).last_used_at == start
    with time_machine.travel(start + datetime.timedelta(seconds=61), tick=False):
        api_key_authenticate(raw_key=raw)
    assert ApiKey.objects.get(pk=key.pk).last_used_at == start + datetime.timedelta(seconds=61)


def test_a_key_never_appears_in_logs_or_in_the_database(bought, buyer, caplog):
    caplog.set_level(logging.DEBUG)
    client = Client()
    created = client.post(
        reverse("data_api:keys"),
        {"name": "logged", "scopes": ["data"]},
        "application/json",
        HTTP_AUTHORIZATION=f"Api-Key {bought['key']}",
    ).json()["key"]
    for raw in (bought["key"], created):
        call(rows_url(bought["file"], limit=1), raw)
        call(rows_url(bought["file"], nope=1), raw)  # a 400, logged as a warning
        client.get(reverse("data_api:keys"), HTTP_AUTHORIZATION=f"Api-Key {raw}x")  # a 401
    assert caplog.records  # the requests were logged at all
    secrets_ = [raw.split(".", 1)[1] for raw in (bought["key"], created)]
    for record in caplog.records:
        text = f"{record.getMessage()} {record.__dict__}"
        assert not any(secret in text for secret in secrets_)
    for row in ApiKey.objects.values():
        assert not any(secret in str(value) for value in row.values() for secret in secrets_)


def test_admins_see_keys_without_their_hash_and_can_revoke_them(client, staff, buyer):
    key, _ = api_key_create(user=buyer, name="admin view", scopes=["data"])
    client.force_login(staff)
    listing = client.get(reverse("admin:accounts_apikey_changelist"))
    assert listing.status_code == 200
    assert key.prefix in listing.content.decode()
    detail = client.get(reverse("admin:accounts_apikey_change", args=[key.pk])).content.decode()
    assert key.hashed_key not in detail and key.hashed_key not in listing.content.decode()
    assert client.get(reverse("admin:accounts_apikey_add")).status_code == 403
    response = client.post(
        reverse("admin:accounts_apikey_changelist"), {"action": "revoke_keys", "_selected_action": [key.pk]}
    )
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    for name in ("admin:exchange_usagerecord_changelist", "admin:exchange_usagemonthly_changelist"):
        assert client.get(reverse(name)).status_code == 200
