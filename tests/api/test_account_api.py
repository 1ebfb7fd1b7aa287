"""The account API: API keys (shown once, stored as a hash, revoked at once), outbound webhook endpoints and
notifications — the caller's own only, bad input refused with a code and nothing changed."""

import hashlib
import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework import serializers
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create
from exchange.choices import NotificationKind
from exchange.models import Notification, OutboundAttempt, WebhookEndpoint
from exchange.services.notifications import notification_mark_read, notification_send
from exchange.services.outbound import webhook_endpoint_create
from tests.exchange.test_outbound_webhooks import Receiver

pytestmark = pytest.mark.django_db

KEYS = "/api/v1/account/keys/"
WEBHOOKS = "/api/v1/account/webhooks/"
NOTIFICATIONS = "/api/v1/account/notifications/"
REVOKED = {"error": {"code": "authentication_failed", "message": "Invalid, revoked or expired API key."}}
NO_READ_SCOPE = {"error": {"code": "permission_denied", "message": "This API key lacks the scope this needs: read."}}


def iso(value) -> str | None:
    return serializers.DateTimeField().to_representation(value) if value else None


def with_key(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client


def key_client(user, scopes=("read",)) -> APIClient:
    return with_key(api_key_create(user=user, name="tests", scopes=list(scopes))[1])


def invalid(field: str, code: str, message: str, *, first_code: str | None = None) -> dict:
    return {"error": {"code": first_code or code, "message": "The request is not valid.", "fields": {field: [message]}}}


def tables_containing(text: str) -> list[str]:
    """Every table of the database with a row whose text form contains ``text``."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT 1 FROM {quoted} AS t WHERE t::text LIKE %s LIMIT 1", [f"%{text}%"])
            if cursor.fetchone():
                found.append(table)
    return found


# --- keys -------------------------------------------------------------------------------------------------------------


def test_a_new_key_is_answered_once_and_only_its_hash_is_stored(buyer):
    api = APIClient()
    api.force_login(buyer)
    response = api.post(
        KEYS, {"name": " ci ", "scopes": ["data", "read"], "expires_at": "2031-01-01T08:00:00+08:00"}, format="json"
    )
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    key = ApiKey.objects.get()
    raw = response.json()["key"]
    assert response.json() == {
        "prefix": key.prefix,
        "name": "ci",
        "scopes": ["read", "data"],
        "created_at": iso(key.created_at),
        "last_used_at": None,
        "expires_at": "2031-01-01T00:00:00Z",
        "revoked_at": None,
        "active": True,
        "key": raw,
    }
    assert raw.startswith(f"dx_{key.prefix}.") and len(raw) == len("dx_") + 8 + 1 + 43
    assert (key.user, key.hashed_key) == (buyer, hashlib.sha256(raw.encode()).hexdigest())
    secret = raw.split(".", 1)[1]
    assert tables_containing(secret) == []
    assert tables_containing(key.hashed_key) == ["accounts_apikey"]  # the search does find what is stored
    # The list shows it by prefix, never the key nor its hash.
    listed = api.get(KEYS).json()
    assert listed == {
        "next": None,
        "previous": None,
        "results": [{k: v for k, v in response.json().items() if k != "key"}],
    }
    assert secret not in str(listed) and key.hashed_key not in str(listed)


def test_keys_are_listed_newest_first_and_only_the_callers(buyer, other_buyer):
    first, raw = api_key_create(user=buyer, name="first", scopes=["read"])
    second, _ = api_key_create(user=buyer, name="second", scopes=["trade"])
    api_key_create(user=other_buyer, name="theirs", scopes=["read"])
    body = with_key(raw).get(KEYS).json()
    assert [(k["name"], k["prefix"], k["scopes"]) for k in body["results"]] == [
        ("second", second.prefix, ["trade"]),
        ("first", first.prefix, ["read"]),
    ]
    first.refresh_from_db()
    assert body["results"][1]["last_used_at"] == iso(first.last_used_at) is not None  # this very request used it


def test_a_key_creates_keys_within_its_own_scopes_only(buyer):
    api = key_client(buyer, scopes=("read", "data"))
    created = api.post(KEYS, {"name": "child", "scopes": ["data"]}, format="json")
    assert created.status_code == 201 and created.json()["scopes"] == ["data"]
    refused = api.post(KEYS, {"name": "wider", "scopes": ["data", "trade"]}, format="json")
    assert refused.status_code == 400
    assert refused.json() == invalid(
        "scopes", "scope_not_held", "A key can only create keys within its own scopes; this key lacks: trade."
    )
    assert sorted(ApiKey.objects.values_list("name", flat=True)) == ["child", "tests"]


@pytest.mark.parametrize(
    ("data", "field", "code", "message"),
    [
        ({"scopes": ["read"]}, "name", "required", "This field is required."),
        ({"name": "  ", "scopes": ["read"]}, "name", "blank", "This field may not be blank."),
        (
            {"name": "x" * 81, "scopes": ["read"]},
            "name",
            "max_length",
            "Ensure this field has no more than 80 characters.",
        ),
        ({"name": "k"}, "scopes", "required", "This field is required."),
        ({"name": "k", "scopes": "read"}, "scopes", "not_a_list", 'Expected a list of items but got type "str".'),
        ({"name": "k", "scopes": []}, "scopes", "no_scope", "Choose at least one scope."),
        (
            {"name": "k", "scopes": ["read", "admin", "root"]},
            "scopes",
            "unknown_scope",
            "Unknown scope(s): admin, root. Scopes are: read, trade, data, merchant.",
        ),
        ({"name": "k", "scopes": ["read"], "expires_at": "soon"}, "expires_at", "invalid", None),
        (
            {"name": "k", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"},
            "expires_at",
            "expiry_in_past",
            "The expiry must be in the future.",
        ),
    ],
)
def test_bad_key_input_is_refused_with_its_code_and_creates_nothing(buyer, data, field, code, message):
    api = APIClient()
    api.force_login(buyer)
    response = api.post(KEYS, data, format="json")
    assert response.status_code == 400
    body = response.json()
    if message is None:  # DRF's own wording of the accepted formats
        message = body["error"]["fields"][field][0]
        assert message.startswith("Datetime has wrong format.")
    assert body == invalid(field, code, message)
    assert ApiKey.objects.count() == 0


def test_active_keys_are_limited(buyer, settings):
    settings.API_KEYS_MAX_ACTIVE = 1
    api = key_client(buyer)
    response = api.post(KEYS, {"name": "second", "scopes": ["read"]}, format="json")
    assert response.status_code == 400
    assert response.json() == invalid(
        "non_field_errors", "too_many_keys", "You already have 1 active API keys, the most allowed; revoke one first."
    )
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["tests"]


def test_anonymous_callers_are_asked_to_authenticate(db):
    for response in (APIClient().get(KEYS), APIClient().post(KEYS, {"name": "k", "scopes": ["read"]}, format="json")):
        assert response.status_code == 401
        assert response.json() == {
            "error": {"code": "not_authenticated", "message": "Authentication credentials were not provided."}
        }
    assert ApiKey.objects.count() == 0


def test_a_revoked_key_fails_on_the_very_next_request(buyer):
    key, raw = api_key_create(user=buyer, name="doomed", scopes=["read"])
    api = with_key(raw)
    assert api.get(KEYS).status_code == 200
    response = api.post(f"{KEYS}{key.prefix}/revoke/")  # a key may revoke itself
    assert response.status_code == 200
    key.refresh_from_db()
    assert response.json() == {
        "prefix": key.prefix,
        "name": "doomed",
        "scopes": ["read"],
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "expires_at": None,
        "revoked_at": iso(key.revoked_at),
        "active": False,
    }
    response = api.get(KEYS)
    assert (response.status_code, response.json()) == (401, REVOKED)
    # Revoking again (from the session) keeps the first revocation time.
    session = APIClient()
    session.force_login(buyer)
    assert session.post(f"{KEYS}{key.prefix}/revoke/").json()["revoked_at"] == iso(key.revoked_at)


def test_someone_elses_key_is_not_found_and_stays_active(buyer, other_buyer):
    theirs, their_raw = api_key_create(user=other_buyer, name="theirs", scopes=["read"])
    api = key_client(buyer)
    for prefix in (theirs.prefix, "nosuchky"):
        response = api.post(f"{KEYS}{prefix}/revoke/")
        assert (response.status_code, response.json()) == (
            404,
            {"error": {"code": "not_found", "message": "No such API key."}},
        )
    assert ApiKey.objects.get(pk=theirs.pk).revoked_at is None
    assert with_key(their_raw).get(KEYS).status_code == 200


def test_keys_never_appear_in_logs_nor_in_the_database(buyer, caplog):
    caplog.set_level(logging.DEBUG)
    _, parent = api_key_create(user=buyer, name="parent", scopes=["read"])
    created = with_key(parent).post(KEYS, {"name": "logged", "scopes": ["read"]}, format="json").json()["key"]
    child = with_key(created)
    assert child.get(KEYS).status_code == 200
    assert child.post(KEYS, {"name": "bad", "scopes": ["admin"]}, format="json").status_code == 400  # logged: a 4xx
    assert with_key(created + "x").get(KEYS).status_code == 401
    assert child.post(f"{KEYS}{created[3:11]}/revoke/").status_code == 200
    assert child.get(KEYS).status_code == 401
    assert caplog.records  # the refused requests were logged at all
    secrets_ = [raw.split(".", 1)[1] for raw in (parent, created)]
    for record in caplog.records:
        text = f"{record.getMessage()} {record.__dict__}"
        assert not any(secret in text for secret in secrets_), record
    for secret in secrets_:
        assert tables_containing(secret) == []


# --- webhook endpoints ------------------------------------------------------------------------------------------------


def _endpoint_json(endpoint: WebhookEndpoint, **extra) -> dict:
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": endpoint.event_types,
        "is_active": endpoint.is_active,
        "created_at": iso(endpoint.created_at),
        "disabled_at": iso(endpoint.disabled_at),
        **extra,
    }


def _rows(model) -> list[tuple]:
    return list(model.objects.order_by("pk").values_list())


def test_an_endpoint_is_registered_with_its_secret_shown_once(buyer):
    api = key_client(buyer)
    response = api.post(
        WEBHOOKS,
        {"url": "https://hooks.example.com/exchange", "events": ["sale", "refund"], "description": "Orders"},
        format="json",
    )
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret.startswith("whsec_")
    assert response.json() == _endpoint_json(endpoint, secret=endpoint.secret)
    assert (endpoint.user, endpoint.event_types, endpoint.is_active) == (buyer, ["refund", "sale"], True)
    # Never again.
    assert api.get(f"{WEBHOOKS}{endpoint.pk}/").json() == _endpoint_json(endpoint)
    assert api.get(WEBHOOKS).json() == {"next": None, "previous": None, "results": [_endpoint_json(endpoint)]}
    # No events chosen: every type.
    every = api.post(WEBHOOKS, {"url": "https://hooks.example.com/all"}, format="json").json()
    assert (every["events"], every["description"]) == ([], "")


HTTPS_ONLY = "The URL must start with https:// — events are only sent over an encrypted connection."
PRIVATE = "The URL points to a private or local network address; use a public address."


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"url": "http://hooks.example.com/x"}, invalid("url", "invalid", HTTPS_ONLY)),
        ({"url": "https://10.0.0.5/hook"}, invalid("url", "invalid", PRIVATE)),
        ({"url": "https://127.0.0.1:8443/hook"}, invalid("url", "invalid", PRIVATE)),
        ({"url": "https://[::1]/hook"}, invalid("url", "invalid", PRIVATE)),
        ({"url": "https://169.254.169.254/latest"}, invalid("url", "invalid", PRIVATE)),
        (
            {"url": "https://user:pw@example.com/hook"},
            invalid("url", "invalid", "The URL must not contain a user name or password."),
        ),
        (
            {"url": "not a url"},
            invalid("url", "invalid", "Enter a valid http(s) URL, such as https://example.com/hooks/exchange."),
        ),
        ({}, invalid("url", "required", "This field is required.")),
        (
            {"url": "https://hooks.example.com/x", "events": ["refund", "payout_sent"]},
            {
                "error": {
                    "code": "invalid_choice",
                    "message": "The request is not valid.",
                    "fields": {"events": {"1": ['"payout_sent" is not a valid choice.']}},
                }
            },
        ),
        (
            {"url": "https://hooks.example.com/x", "events": "refund"},
            invalid("events", "not_a_list", 'Expected a list of items but got type "str".'),
        ),
    ],
)
def test_bad_endpoints_are_refused_and_nothing_is_created(buyer, data, expected):
    response = key_client(buyer).post(WEBHOOKS, data, format="json")
    assert (response.status_code, response.json()) == (400, expected)
    assert WebhookEndpoint.objects.count() == 0


def test_endpoints_per_user_are_limited(buyer, settings):
    settings.OUTBOUND_WEBHOOKS_PER_USER = 1
    api = key_client(buyer)
    assert api.post(WEBHOOKS, {"url": "https://hooks.example.com/1"}, format="json").status_code == 201
    response = api.post(WEBHOOKS, {"url": "https://hooks.example.com/2"}, format="json")
    assert response.status_code == 400
    assert response.json() == invalid(
        "non_field_errors",
        "too_many",
        "You already have 1 webhook endpoint(s), the most allowed (1); delete one first.",
    )
    assert list(WebhookEndpoint.objects.values_list("url", flat=True)) == ["https://hooks.example.com/1"]


def test_a_key_without_the_read_scope_is_refused(buyer):
    endpoint = webhook_endpoint_create(user=buyer, url="https://hooks.example.com/x")
    api = key_client(buyer, scopes=("data", "trade"))
    for method, url in [
        ("get", WEBHOOKS),
        ("post", WEBHOOKS),
        ("patch", f"{WEBHOOKS}{endpoint.pk}/"),
        ("delete", f"{WEBHOOKS}{endpoint.pk}/"),
        ("get", NOTIFICATIONS),
        ("post", f"{NOTIFICATIONS}read-all/"),
    ]:
        response = getattr(api, method)(url, {"url": "https://hooks.example.com/y", "is_active": False}, format="json")
        assert (response.status_code, response.json()) == (403, NO_READ_SCOPE), (method, url)
    assert list(WebhookEndpoint.objects.values_list("url", "is_active")) == [("https://hooks.example.com/x", True)]


def test_an_endpoint_is_paused_and_resumed(buyer):
    endpoint = webhook_endpoint_create(user=buyer, url="https://hooks.example.com/x", event_types=["sale"])
    api = key_client(buyer)
    paused = api.patch(f"{WEBHOOKS}{endpoint.pk}/", {"is_active": False}, format="json")
    endpoint.refresh_from_db()
    assert paused.status_code == 200
    assert paused.json() == _endpoint_json(endpoint)
    assert endpoint.is_active is False and endpoint.disabled_at is not None
    # Nothing asked: nothing changes.
    assert api.patch(f"{WEBHOOKS}{endpoint.pk}/", {}, format="json").json() == _endpoint_json(endpoint)
    resumed = api.patch(f"{WEBHOOKS}{endpoint.pk}/", {"is_active": True}, format="json")
    endpoint.refresh_from_db()
    assert resumed.json() == _endpoint_json(endpoint)
    assert (endpoint.is_active, endpoint.disabled_at) == (True, None)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"url": "https://elsewhere.example.com/", "is_active": False},
            invalid(
                "url",
                "read_only",
                "Only is_active can be changed; register a new endpoint for another URL or other events.",
            ),
        ),
        ({"is_active": "sometimes"}, invalid("is_active", "invalid", "Must be a valid boolean.")),
    ],
)
def test_bad_changes_are_refused_and_change_nothing(buyer, data, expected):
    endpoint = webhook_endpoint_create(user=buyer, url="https://hooks.example.com/x")
    before = _rows(WebhookEndpoint)
    response = key_client(buyer).patch(f"{WEBHOOKS}{endpoint.pk}/", data, format="json")
    assert (response.status_code, response.json()) == (400, expected)
    assert _rows(WebhookEndpoint) == before


def test_a_new_secret_is_shown_once_and_replaces_the_old_one(buyer):
    endpoint = webhook_endpoint_create(user=buyer, url="https://hooks.example.com/x")
    old = endpoint.secret
    response = key_client(buyer).post(f"{WEBHOOKS}{endpoint.pk}/rotate-secret/")
    endpoint.refresh_from_db()
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert response.json() == _endpoint_json(endpoint, secret=endpoint.secret)
    assert endpoint.secret != old


def test_an_endpoint_is_deleted(buyer):
    endpoint = webhook_endpoint_create(user=buyer, url="https://hooks.example.com/x")
    api = key_client(buyer)
    response = api.delete(f"{WEBHOOKS}{endpoint.pk}/")
    assert (response.status_code, response.content) == (204, b"")
    assert WebhookEndpoint.objects.count() == 0
    assert api.get(f"{WEBHOOKS}{endpoint.pk}/").status_code == 404


def test_someone_elses_endpoint_is_not_found_and_unchanged(buyer, other_buyer):
    theirs = webhook_endpoint_create(user=other_buyer, url="https://hooks.example.com/theirs")
    before = _rows(WebhookEndpoint)
    api = key_client(buyer)
    for method, url in [
        ("get", f"{WEBHOOKS}{theirs.pk}/"),
        ("patch", f"{WEBHOOKS}{theirs.pk}/"),
        ("delete", f"{WEBHOOKS}{theirs.pk}/"),
        ("post", f"{WEBHOOKS}{theirs.pk}/rotate-secret/"),
        ("get", f"{WEBHOOKS}{theirs.pk}/attempts/"),
        ("get", f"{WEBHOOKS}{theirs.pk + 1000}/"),
    ]:
        response = getattr(api, method)(url, {"is_active": False}, format="json")
        assert (response.status_code, response.json()) == (
            404,
            {"error": {"code": "not_found", "message": "No such webhook endpoint."}},
        ), (method, url)
    assert _rows(WebhookEndpoint) == before
    assert api.get(WEBHOOKS).json()["results"] == []


@pytest.fixture
def receiver(settings):
    """A real HTTP server on loopback (which only tests may reach: the defaults rightly refuse it)."""
    settings.OUTBOUND_WEBHOOK_ALLOW_HTTP = True
    settings.OUTBOUND_WEBHOOK_ALLOW_PRIVATE = True
    settings.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS = 5
    server = Receiver()
    yield server
    server.close()


def test_delivery_attempts_newest_first_with_their_event(buyer, receiver, django_capture_on_commit_callbacks):
    receiver.answers = [(500, b"boom", 0), (200, b"thanks", 0)]
    endpoint = webhook_endpoint_create(user=buyer, url=receiver.url())
    with django_capture_on_commit_callbacks(execute=True):
        notification_send(user=buyer, kind=NotificationKind.REFUND, title="Refunded", dedupe_key="r1", email=False)
    with django_capture_on_commit_callbacks(execute=True):
        notification_send(user=buyer, kind=NotificationKind.SALE, title="Sold", dedupe_key="s1", email=False)
    assert len(receiver.requests) == 2
    failed, delivered = OutboundAttempt.objects.select_related("event").order_by("pk")

    def attempt_json(attempt) -> dict:
        event = attempt.event
        return {
            "id": attempt.pk,
            "event": {
                "id": str(event.public_id),
                "type": event.type,
                "status": event.status,
                "attempts": 1,
                "created_at": iso(event.created_at),
                "delivered_at": iso(event.delivered_at),
            },
            "attempted_at": iso(attempt.attempted_at),
            "status_code": attempt.status_code,
            "error": attempt.error,
            "response_excerpt": attempt.response_excerpt,
            "duration_ms": attempt.duration_ms,
        }

    body = key_client(buyer).get(f"{WEBHOOKS}{endpoint.pk}/attempts/").json()
    assert body == {"next": None, "previous": None, "results": [attempt_json(delivered), attempt_json(failed)]}
    assert [(r["event"]["type"], r["event"]["status"], r["status_code"]) for r in body["results"]] == [
        ("sale", "delivered", 200),
        ("refund", "pending", 500),
    ]
    assert (failed.error, failed.response_excerpt) == ("HTTP 500 Internal Server Error", "boom")


# --- notifications ----------------------------------------------------------------------------------------------------


@pytest.fixture
def inbox(buyer, other_buyer):
    def send(user, n):
        return notification_send(
            user=user,
            kind=NotificationKind.PURCHASE_CONFIRMED,
            title=f"Purchase {n} confirmed",
            body="Your data is on its way.",
            url=f"/orders/{n}/",
            data={"order_reference": f"DX-{n}"},
            dedupe_key=f"{user.pk}:{n}",
            email=False,
        )

    mine = [send(buyer, n) for n in (1, 2, 3)]
    notification_mark_read(user=buyer, notification_pk=mine[0].pk)
    return {"mine": [Notification.objects.get(pk=n.pk) for n in mine], "theirs": send(other_buyer, 9)}


def _notification_json(notification: Notification) -> dict:
    return {
        "id": notification.pk,
        "kind": "purchase_confirmed",
        "kind_label": "Purchase confirmed",
        "title": notification.title,
        "body": "Your data is on its way.",
        "url": f"http://127.0.0.1:8000{notification.url}",
        "data": notification.data,
        "created_at": iso(notification.created_at),
        "read_at": iso(notification.read_at),
    }


def test_notifications_are_the_callers_newest_first(buyer, inbox):
    first, second, third = inbox["mine"]
    api = key_client(buyer)
    assert api.get(NOTIFICATIONS).json() == {
        "next": None,
        "previous": None,
        "results": [_notification_json(n) for n in (third, second, first)],
    }
    assert [n["id"] for n in api.get(NOTIFICATIONS, {"unread": "1"}).json()["results"]] == [third.pk, second.pk]
    assert [n["id"] for n in api.get(NOTIFICATIONS, {"unread": "0"}).json()["results"]] == [first.pk]
    page = api.get(NOTIFICATIONS, {"page_size": 2}).json()
    assert [n["id"] for n in page["results"]] == [third.pk, second.pk]
    assert [n["id"] for n in api.get(page["next"]).json()["results"]] == [first.pk]


def test_a_bad_unread_filter_is_refused(buyer, inbox):
    response = key_client(buyer).get(NOTIFICATIONS, {"unread": "maybe"})
    assert (response.status_code, response.json()) == (
        400,
        invalid("unread", "invalid", "Must be a valid boolean."),
    )


def test_a_notification_is_marked_read_once(buyer, inbox):
    _, second, _ = inbox["mine"]
    api = key_client(buyer)
    response = api.post(f"{NOTIFICATIONS}{second.pk}/read/")
    second.refresh_from_db()
    assert response.status_code == 200
    assert response.json() == _notification_json(second)
    assert second.read_at is not None
    assert api.post(f"{NOTIFICATIONS}{second.pk}/read/").json()["read_at"] == iso(second.read_at)


def test_all_unread_are_marked_read_and_no_one_elses(buyer, inbox):
    api = key_client(buyer)
    already = inbox["mine"][0].read_at
    response = api.post(f"{NOTIFICATIONS}read-all/")
    assert (response.status_code, response.json()) == (200, {"marked": 2})
    assert Notification.objects.filter(user=buyer, read_at__isnull=True).count() == 0
    assert Notification.objects.get(pk=inbox["mine"][0].pk).read_at == already
    assert Notification.objects.get(pk=inbox["theirs"].pk).read_at is None
    assert api.post(f"{NOTIFICATIONS}read-all/").json() == {"marked": 0}


def test_someone_elses_notification_is_not_found_and_unchanged(buyer, inbox):
    theirs = inbox["theirs"]
    before = _rows(Notification)
    api = key_client(buyer)
    for pk in (theirs.pk, theirs.pk + 1000):
        response = api.post(f"{NOTIFICATIONS}{pk}/read/")
        assert (response.status_code, response.json()) == (
            404,
            {"error": {"code": "not_found", "message": "No such notification."}},
        )
    assert _rows(Notification) == before
    assert theirs.pk not in [n["id"] for n in api.get(NOTIFICATIONS).json()["results"]]


def test_the_session_works_like_a_key_with_every_scope(buyer, inbox):
    api = APIClient()
    api.force_login(buyer)
    assert [n["id"] for n in api.get(NOTIFICATIONS, {"unread": "true"}).json()["results"]] == [
        inbox["mine"][2].pk,
        inbox["mine"][1].pk,
    ]
    created = api.post(WEBHOOKS, {"url": "https://hooks.example.com/s", "events": ["refund"]}, format="json")
    assert created.status_code == 201
    assert WebhookEndpoint.objects.get().user == buyer
    assert timezone.now() - WebhookEndpoint.objects.get().created_at < timedelta(minutes=1)
