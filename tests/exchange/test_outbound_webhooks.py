"""Outbound webhooks against a real HTTP(S) server on loopback: signing, retries, refusals, the pages."""

import hmac
import json
import ssl
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
import trustme
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from exchange.choices import NotificationKind, OutboundEventStatus
from exchange.models import Notification, Order, OutboundAttempt, OutboundEvent, WebhookEndpoint
from exchange.services.notifications import notification_send
from exchange.services.outbound import (
    address_is_internal,
    backoff_seconds,
    outbound_event_retry,
    outbound_events_sweep,
    signature_header,
    signature_verify,
    webhook_endpoint_create,
    webhook_endpoint_set_active,
)
from exchange.tasks import outbound_event_send
from tests.exchange.helpers import approve_in_sandbox, buy
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


class Receiver:
    """A real HTTP server on 127.0.0.1 that records each request and answers from a script.

    ``answers`` is a list of (status, body, delay_seconds) used in order; the
    last one repeats. ``tls`` wraps the socket with the given server context.
    """

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.requests: list[dict] = []
        self.answers: list[tuple[int, bytes, float]] = [(200, b"ok", 0)]
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                index = min(len(receiver.requests), len(receiver.answers)) - 1
                status, answer, delay = receiver.answers[index]
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host="127.0.0.1", scheme="http", path="/hooks/exchange"):
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def loopback(settings):
    """Tests talk to a plain-http server on loopback, which the defaults rightly refuse."""
    settings.OUTBOUND_WEBHOOK_ALLOW_HTTP = True
    settings.OUTBOUND_WEBHOOK_ALLOW_PRIVATE = True
    settings.OUTBOUND_WEBHOOK_BACKOFF_SECONDS = 30
    settings.OUTBOUND_WEBHOOK_MAX_ATTEMPTS = 8
    settings.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS = 5


def _notify(user, capture, key="k1", kind=NotificationKind.PURCHASE_CONFIRMED, data=None):
    with capture(execute=True):
        return notification_send(
            user=user,
            kind=kind,
            title="Purchase confirmed: City populations",
            url="/orders/x/",
            data=data if data is not None else {"order_id": "abc", "amount": 1234, "currency": "CNY"},
            dedupe_key=key,
        )


def test_event_is_posted_once_signed_and_verifiable(buyer, receiver, loopback, django_capture_on_commit_callbacks):
    endpoint = webhook_endpoint_create(user=buyer, url=receiver.url(), description="my hook")
    assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) == len("whsec_") + 43
    notification = _notify(buyer, django_capture_on_commit_callbacks)

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    event = OutboundEvent.objects.get()
    assert (event.status, event.attempts, event.type) == (OutboundEventStatus.DELIVERED, 1, "purchase_confirmed")
    assert event.delivered_at is not None and event.next_attempt_at is None
    assert request["path"] == "/hooks/exchange"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Exchange-Event"] == "purchase_confirmed"
    assert request["headers"]["X-Exchange-Delivery"] == str(event.public_id)
    assert json.loads(request["body"]) == {
        "id": str(event.public_id),
        "type": "purchase_confirmed",
        "created_at": notification.created_at.isoformat(),
        "data": {
            "order_id": "abc",
            "amount": 1234,
            "currency": "CNY",
            "title": "Purchase confirmed: City populations",
            "url": "http://127.0.0.1:8000/orders/x/",
        },
    }
    header = request["headers"]["X-Exchange-Signature"]
    assert signature_verify(secret=endpoint.secret, body=request["body"], header=header)
    assert not signature_verify(secret="whsec_another", body=request["body"], header=header)
    assert not signature_verify(secret=endpoint.secret, body=request["body"] + b" ", header=header)
    attempt = OutboundAttempt.objects.get()
    assert (attempt.event, attempt.status_code, attempt.error, attempt.response_excerpt) == (event, 200, "", "ok")


def test_signature_format_and_refusals():
    header = signature_header(secret="whsec_x", body=b'{"a":1}', timestamp=1_700_000_000)
    assert header == "t=1700000000,v1=" + hmac.new(b"whsec_x", b'1700000000.{"a":1}', "sha256").hexdigest()
    assert signature_verify(secret="whsec_x", body=b'{"a":1}', header=header, now=1_700_000_100)
    assert not signature_verify(secret="whsec_x", body=b'{"a":1}', header=header, now=1_700_000_301)  # a replay
    for malformed in ("", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000"):
        assert not signature_verify(secret="whsec_x", body=b'{"a":1}', header=malformed, now=1_700_000_000)


def test_a_500_then_a_200_is_two_attempts_and_one_delivery(
    buyer, receiver, loopback, django_capture_on_commit_callbacks
):
    receiver.answers = [(500, b"boom", 0), (200, b"thanks", 0)]
    webhook_endpoint_create(user=buyer, url=receiver.url())
    before = timezone.now()
    _notify(buyer, django_capture_on_commit_callbacks)

    event = OutboundEvent.objects.get()
    assert (event.status, event.attempts) == (OutboundEventStatus.PENDING, 1)
    # Backoff after the first failure: 30 s less up to 10 % jitter.
    assert before + timedelta(seconds=26) < event.next_attempt_at < timezone.now() + timedelta(seconds=31)
    failed = OutboundAttempt.objects.get()
    assert (failed.status_code, failed.error, failed.response_excerpt) == (
        500,
        "HTTP 500 Internal Server Error",
        "boom",
    )

    assert outbound_event_send(event.pk).endswith("not due until " + event.next_attempt_at.isoformat())
    assert len(receiver.requests) == 1  # an early duplicate task sends nothing

    with time_machine.travel(event.next_attempt_at + timedelta(seconds=1), tick=False):
        assert outbound_event_send(event.pk) == f"event {event.pk}: delivered (200)"
        assert outbound_event_send(event.pk) == f"event {event.pk}: already delivered"
    event.refresh_from_db()
    assert (event.status, event.attempts) == (OutboundEventStatus.DELIVERED, 2)
    assert sorted(event.attempt_log.values_list("status_code", flat=True)) == [200, 500]
    assert len(receiver.requests) == 2
    assert (
        receiver.requests[0]["headers"]["X-Exchange-Delivery"] == receiver.requests[1]["headers"]["X-Exchange-Delivery"]
    )


def test_a_timeout_is_recorded(buyer, receiver, loopback, settings, django_capture_on_commit_callbacks):
    settings.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS = 1
    receiver.answers = [(200, b"late", 2.0)]
    webhook_endpoint_create(user=buyer, url=receiver.url())
    _notify(buyer, django_capture_on_commit_callbacks)

    attempt = OutboundAttempt.objects.get()
    assert (attempt.status_code, attempt.error) == (None, "timed out after 1 s")
    assert 900 <= attempt.duration_ms < 1900
    event = OutboundEvent.objects.get()
    assert (event.status, event.attempts) == (OutboundEventStatus.PENDING, 1)


def test_max_attempts_then_failed_and_nothing_more_is_sent(
    buyer, receiver, loopback, settings, django_capture_on_commit_callbacks
):
    settings.OUTBOUND_WEBHOOK_MAX_ATTEMPTS = 3
    receiver.answers = [(503, b"down", 0)]
    webhook_endpoint_create(user=buyer, url=receiver.url())
    _notify(buyer, django_capture_on_commit_callbacks)
    event = OutboundEvent.objects.get()
    for expected_attempts in (2, 3):
        event.refresh_from_db()
        with time_machine.travel(event.next_attempt_at + timedelta(seconds=1), tick=False):
            outbound_event_send(event.pk)
        event.refresh_from_db()
        assert event.attempts == expected_attempts
    assert (event.status, event.next_attempt_at) == (OutboundEventStatus.FAILED, None)
    assert OutboundAttempt.objects.filter(event=event, status_code=503).count() == 3
    assert outbound_event_send(event.pk) == f"event {event.pk}: already failed"
    assert len(receiver.requests) == 3

    # An admin sends it again: a fresh count, sent at once.
    receiver.answers = [(200, b"ok", 0)]
    with django_capture_on_commit_callbacks(execute=True):
        outbound_event_retry(event_pk=event.pk)
    event.refresh_from_db()
    assert (event.status, event.attempts, len(receiver.requests)) == (OutboundEventStatus.DELIVERED, 1, 4)


def test_backoff_doubles_up_to_the_cap_with_jitter(settings):
    settings.OUTBOUND_WEBHOOK_BACKOFF_SECONDS = 30
    settings.OUTBOUND_WEBHOOK_BACKOFF_MAX_SECONDS = 3600
    for attempts, full in ((1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (20, 3600)):
        delays = [backoff_seconds(attempts) for _ in range(50)]
        assert all(full * 0.9 <= delay <= full for delay in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered


def test_private_address_is_refused_at_send_time_and_nothing_reaches_the_server(
    buyer, receiver, loopback, settings, django_capture_on_commit_callbacks
):
    # A host name that resolves to loopback passes registration; the send-time check refuses it.
    endpoint = webhook_endpoint_create(user=buyer, url=receiver.url(host="localhost"))
    settings.OUTBOUND_WEBHOOK_ALLOW_PRIVATE = False
    _notify(buyer, django_capture_on_commit_callbacks)

    assert receiver.requests == []
    attempt = OutboundAttempt.objects.get()
    assert attempt.status_code is None
    assert attempt.error.startswith("refused: localhost resolves to ")
    assert attempt.error.endswith(", a private or local address; nothing was sent")
    assert OutboundEvent.objects.get(endpoint=endpoint).status == OutboundEventStatus.PENDING


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("240.0.0.1", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("93.184.216.34", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_internal_addresses(address, internal):
    assert address_is_internal(address) is internal


@pytest.mark.parametrize(
    ("url", "field", "message"),
    [
        ("", "url", "Enter the URL events should be sent to."),
        ("not a url", "url", "Enter a valid http(s) URL, such as https://example.com/hooks/exchange."),
        ("ftp://example.com/x", "url", "Enter a valid http(s) URL, such as https://example.com/hooks/exchange."),
        (
            "http://example.com/hook",
            "url",
            "The URL must start with https:// — events are only sent over an encrypted connection.",
        ),
        ("https://user:pw@example.com/hook", "url", "The URL must not contain a user name or password."),
        ("https://example.com/hook#x", "url", "The URL must not contain a #fragment."),
        ("https://10.0.0.5/hook", "url", "The URL points to a private or local network address; use a public address."),
        ("https://[::1]/hook", "url", "The URL points to a private or local network address; use a public address."),
    ],
)
def test_bad_urls_are_refused_at_registration_and_nothing_is_created(buyer, url, field, message):
    with pytest.raises(ValidationError) as caught:
        webhook_endpoint_create(user=buyer, url=url)
    assert caught.value.message_dict == {field: [message]}
    assert WebhookEndpoint.objects.count() == 0


def test_unknown_event_types_and_the_per_user_limit_are_refused(buyer, settings):
    with pytest.raises(ValidationError) as caught:
        webhook_endpoint_create(user=buyer, url="https://example.com/h", event_types=["refund", "payout_sent"])
    assert caught.value.message_dict["event_types"][0].startswith("Unknown event type(s): payout_sent. Choose from:")
    assert WebhookEndpoint.objects.count() == 0

    settings.OUTBOUND_WEBHOOKS_PER_USER = 2
    for n in range(2):
        webhook_endpoint_create(user=buyer, url=f"https://example.com/h{n}", event_types=("refund", "refund"))
    assert list(WebhookEndpoint.objects.values_list("event_types", flat=True)) == [["refund"], ["refund"]]
    with pytest.raises(ValidationError) as caught:
        webhook_endpoint_create(user=buyer, url="https://example.com/h3")
    assert caught.value.messages == ["You already have 2 webhook endpoint(s), the most allowed (2); delete one first."]
    assert WebhookEndpoint.objects.count() == 2


def test_same_dedupe_key_twice_is_one_event_and_one_post(buyer, receiver, loopback, django_capture_on_commit_callbacks):
    webhook_endpoint_create(user=buyer, url=receiver.url())
    first = _notify(buyer, django_capture_on_commit_callbacks, key="order:7:paid")
    second = _notify(buyer, django_capture_on_commit_callbacks, key="order:7:paid")
    assert first.pk == second.pk
    assert (Notification.objects.count(), OutboundEvent.objects.count(), len(receiver.requests)) == (1, 1, 1)


def test_event_type_filter_and_other_users_endpoints(
    buyer, other_buyer, receiver, loopback, django_capture_on_commit_callbacks
):
    webhook_endpoint_create(user=buyer, url=receiver.url(path="/refunds-only"), event_types=["refund"])
    webhook_endpoint_create(user=other_buyer, url=receiver.url(path="/other"))
    _notify(buyer, django_capture_on_commit_callbacks, key="a", kind=NotificationKind.PURCHASE_CONFIRMED)
    assert receiver.requests == [] and OutboundEvent.objects.count() == 0
    _notify(buyer, django_capture_on_commit_callbacks, key="b", kind=NotificationKind.REFUND)
    assert [r["path"] for r in receiver.requests] == ["/refunds-only"]


def test_a_disabled_endpoint_keeps_events_waiting_until_enabled(
    buyer, receiver, loopback, django_capture_on_commit_callbacks
):
    endpoint = webhook_endpoint_create(user=buyer, url=receiver.url())
    webhook_endpoint_set_active(endpoint=endpoint, active=False)
    _notify(buyer, django_capture_on_commit_callbacks)
    # A disabled endpoint receives nothing and queues nothing new.
    assert receiver.requests == [] and OutboundEvent.objects.count() == 0

    webhook_endpoint_set_active(endpoint=endpoint, active=True)
    with django_capture_on_commit_callbacks(execute=False):  # queued, not sent yet
        notification_send(user=buyer, kind=NotificationKind.REFUND, title="Refund", dedupe_key="k2")
    event = OutboundEvent.objects.get()
    webhook_endpoint_set_active(endpoint=endpoint, active=False)
    assert outbound_event_send(event.pk) == f"event {event.pk}: endpoint disabled, kept pending"
    with django_capture_on_commit_callbacks(execute=True):
        webhook_endpoint_set_active(endpoint=endpoint, active=True)
    event.refresh_from_db()
    assert event.status == OutboundEventStatus.DELIVERED and len(receiver.requests) == 1


def test_sweeper_sends_events_whose_message_was_lost(buyer, receiver, loopback, django_capture_on_commit_callbacks):
    webhook_endpoint_create(user=buyer, url=receiver.url())
    with django_capture_on_commit_callbacks(execute=False):  # the broker message is lost
        notification_send(user=buyer, kind=NotificationKind.REFUND, title="Refund", dedupe_key="lost")
    event = OutboundEvent.objects.get()
    assert outbound_events_sweep(older_than_seconds=300) == 0  # too recent: its own message may still come
    with time_machine.travel(timezone.now() + timedelta(minutes=6), tick=False):
        assert outbound_events_sweep(older_than_seconds=300) == 1
    event.refresh_from_db()
    assert event.status == OutboundEventStatus.DELIVERED and len(receiver.requests) == 1

    # A retry whose message was lost is found once its time is long past.
    receiver.answers = [(500, b"no", 0)]
    with django_capture_on_commit_callbacks(execute=False):
        notification_send(user=buyer, kind=NotificationKind.REFUND, title="Refund 2", dedupe_key="lost-2")
    second = OutboundEvent.objects.exclude(pk=event.pk).get()
    outbound_event_send(second.pk)
    second.refresh_from_db()
    with time_machine.travel(second.next_attempt_at + timedelta(seconds=301), tick=False):
        assert outbound_events_sweep(older_than_seconds=300) == 1
    second.refresh_from_db()
    assert second.attempts == 2 and len(receiver.requests) == 3


def test_https_endpoint_with_a_private_ca(buyer, settings, tmp_path, loopback, django_capture_on_commit_callbacks):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    receiver = Receiver(tls=server_context)
    try:
        settings.OUTBOUND_WEBHOOK_ALLOW_HTTP = False
        endpoint = webhook_endpoint_create(user=buyer, url=receiver.url(host="localhost", scheme="https"))

        # Without the CA, the certificate is not trusted: nothing is delivered, the TLS error is recorded.
        settings.OUTBOUND_WEBHOOK_CA_BUNDLE = None
        _notify(buyer, django_capture_on_commit_callbacks, key="untrusted")
        attempt = OutboundAttempt.objects.get()
        assert attempt.status_code is None and attempt.error.startswith("TLS error: ")
        assert receiver.requests == []

        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        settings.OUTBOUND_WEBHOOK_CA_BUNDLE = str(bundle)
        notification = _notify(buyer, django_capture_on_commit_callbacks, key="trusted")
        event = OutboundEvent.objects.get(dedupe_key=f"notification:{notification.pk}")
        assert event.status == OutboundEventStatus.DELIVERED
        assert len(receiver.requests) == 1
        request = receiver.requests[0]
        assert request["headers"]["Host"] == f"localhost:{receiver.port}"
        assert signature_verify(
            secret=endpoint.secret, body=request["body"], header=request["headers"]["X-Exchange-Signature"]
        )
    finally:
        receiver.close()


def test_redirects_are_not_followed(buyer, receiver, loopback, django_capture_on_commit_callbacks):
    receiver.answers = [(302, b"", 0)]
    webhook_endpoint_create(user=buyer, url=receiver.url())
    _notify(buyer, django_capture_on_commit_callbacks)
    assert OutboundAttempt.objects.get().error == "HTTP 302 Found"
    assert OutboundEvent.objects.get().status == OutboundEventStatus.PENDING
    assert len(receiver.requests) == 1


# --- the pages --------------------------------------------------------------------------------------


def test_create_shows_the_secret_once_then_never(client, buyer, settings):
    client.force_login(buyer)
    response = client.post(
        reverse("notify:webhook_create"),
        {"url": "https://hooks.example.com/exchange", "description": "ERP", "event_types": ["refund", "sale"]},
    )
    endpoint = WebhookEndpoint.objects.get()
    assert response.status_code == 302 and response.url == reverse("notify:webhook_detail", args=[endpoint.pk])
    assert (endpoint.user, endpoint.url, endpoint.event_types) == (
        buyer,
        "https://hooks.example.com/exchange",
        [
            "refund",
            "sale",
        ],
    )
    first = client.get(response.url).content.decode()
    assert endpoint.secret in first
    again = client.get(response.url).content.decode()
    assert endpoint.secret not in again and "https://hooks.example.com/exchange" in again

    old = endpoint.secret
    rotated = client.post(reverse("notify:webhook_action", args=[endpoint.pk, "rotate-secret"]))
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.secret.startswith("whsec_")
    assert endpoint.secret in client.get(rotated.url).content.decode()
    assert endpoint.secret not in client.get(rotated.url).content.decode()


def test_create_form_refuses_http_with_a_clear_error_and_creates_nothing(client, buyer):
    client.force_login(buyer)
    response = client.post(reverse("notify:webhook_create"), {"url": "http://hooks.example.com/exchange"})
    assert response.status_code == 400
    assert "The URL must start with https://" in response.content.decode()
    assert WebhookEndpoint.objects.count() == 0
    response = client.post(
        reverse("notify:webhook_create"), {"url": "https://hooks.example.com/x", "event_types": ["bogus"]}
    )
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    assert WebhookEndpoint.objects.count() == 0


def test_detail_lists_events_and_attempts_and_test_event(
    client, buyer, receiver, loopback, django_capture_on_commit_callbacks
):
    receiver.answers = [(500, b"server exploded", 0)]
    endpoint = webhook_endpoint_create(user=buyer, url=receiver.url())
    client.force_login(buyer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("notify:webhook_action", args=[endpoint.pk, "send-test"]))
    assert response.status_code == 302
    event = OutboundEvent.objects.get()
    # A test event is tried once, never retried.
    assert (event.type, event.status, event.attempts) == ("ping", OutboundEventStatus.FAILED, 1)
    assert json.loads(receiver.requests[0]["body"])["data"] == {
        "message": "A test event from the Data Exchange.",
        "endpoint_id": endpoint.pk,
    }
    page = client.get(reverse("notify:webhook_detail", args=[endpoint.pk])).content.decode()
    assert str(event.public_id) in page and "HTTP 500" in page and "server exploded" in page

    client.post(reverse("notify:webhook_action", args=[endpoint.pk, "disable"]))
    endpoint.refresh_from_db()
    assert endpoint.is_active is False and endpoint.disabled_at is not None
    response = client.post(reverse("notify:webhook_action", args=[endpoint.pk, "send-test"]), follow=True)
    assert "This endpoint is disabled; enable it before sending a test event." in response.content.decode()
    assert OutboundEvent.objects.count() == 1

    client.post(reverse("notify:webhook_action", args=[endpoint.pk, "delete"]))
    assert (WebhookEndpoint.objects.count(), OutboundEvent.objects.count(), OutboundAttempt.objects.count()) == (
        0,
        0,
        0,
    )


def test_other_users_endpoints_are_404_and_unchanged(client, buyer, other_buyer):
    endpoint = webhook_endpoint_create(user=buyer, url="https://hooks.example.com/x")
    secret = endpoint.secret
    client.force_login(other_buyer)
    assert client.get(reverse("notify:webhook_detail", args=[endpoint.pk])).status_code == 404
    for action in ("disable", "rotate-secret", "send-test", "delete", "enable"):
        assert client.post(reverse("notify:webhook_action", args=[endpoint.pk, action])).status_code == 404
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.secret) == (True, secret)
    assert OutboundEvent.objects.count() == 0
    assert "hooks.example.com" not in client.get(reverse("notify:webhooks")).content.decode()

    client.force_login(buyer)
    assert client.post(reverse("notify:webhook_action", args=[endpoint.pk, "explode"])).status_code == 404
    assert client.get(reverse("notify:webhook_action", args=[endpoint.pk, "delete"])).status_code == 405
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_pages_need_sign_in(client, db):
    for name in ("notify:webhooks", "notify:notifications"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response.url.startswith("/accounts/login/")
    other = UserFactory()
    endpoint = webhook_endpoint_create(user=other, url="https://hooks.example.com/x")
    response = client.post(reverse("notify:webhook_action", args=[endpoint.pk, "delete"]))
    assert response.status_code == 302 and WebhookEndpoint.objects.count() == 1


def test_a_real_purchase_reaches_the_buyers_endpoint(
    client, buyer, published_listing, receiver, loopback, django_capture_on_commit_callbacks
):
    endpoint = webhook_endpoint_create(
        user=buyer, url=receiver.url(), event_types=["purchase_confirmed", "delivery_ready"]
    )
    client.force_login(buyer)
    buy(client, published_listing)
    order = Order.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        approve_in_sandbox(client, order.checkout_url)

    assert sorted(r["headers"]["X-Exchange-Event"] for r in receiver.requests) == [
        "delivery_ready",
        "purchase_confirmed",
    ]
    for request in receiver.requests:
        assert signature_verify(
            secret=endpoint.secret, body=request["body"], header=request["headers"]["X-Exchange-Signature"]
        )
    (confirmed,) = [json.loads(r["body"]) for r in receiver.requests if b"purchase_confirmed" in r["body"]]
    assert confirmed["data"] == {
        "order_id": str(order.public_id),
        "order_reference": order.reference,
        "listing_slug": published_listing.slug,
        "listing_title": "City populations",
        "plan_kind": "one_time",
        "amount": 1234,
        "currency": "CNY",
        "title": "Purchase confirmed: City populations",
        "url": f"http://127.0.0.1:8000/orders/{order.public_id}/",
    }
    assert set(OutboundEvent.objects.values_list("status", flat=True)) == {OutboundEventStatus.DELIVERED}


@pytest.mark.django_db(transaction=True)
def test_two_workers_sending_the_same_event_send_it_once(buyer, receiver, loopback):
    # The first send (right after commit) fails; the race is on the retry, made due at once.
    receiver.answers = [(500, b"", 0), (200, b"slow ok", 0.5)]
    webhook_endpoint_create(user=buyer, url=receiver.url())
    notification_send(user=buyer, kind=NotificationKind.REFUND, title="Refund", dedupe_key="race", email=False)
    event = OutboundEvent.objects.get()
    assert (event.status, event.attempts) == (OutboundEventStatus.PENDING, 1)
    OutboundEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
    results, barrier = [], threading.Barrier(2)

    def worker():
        try:
            barrier.wait()
            results.append(outbound_event_send(event.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2 and f"event {event.pk}: delivered (200)" in results
    # The other one found the event claimed (leased) or locked, and sent nothing.
    (other,) = [r for r in results if r != f"event {event.pk}: delivered (200)"]
    assert "not due until" in other or "another worker holds it" in other or "already delivered" in other
    assert len(receiver.requests) == 2
    event.refresh_from_db()
    assert (event.status, event.attempts, event.attempt_log.count()) == (OutboundEventStatus.DELIVERED, 2, 2)


def test_admin_shows_events_with_attempts_hides_secrets_and_retries_failed(
    client, staff, buyer, receiver, loopback, settings, django_capture_on_commit_callbacks
):
    settings.OUTBOUND_WEBHOOK_MAX_ATTEMPTS = 1
    receiver.answers = [(500, b"nope", 0), (200, b"ok", 0)]
    endpoint = webhook_endpoint_create(user=buyer, url=receiver.url())
    _notify(buyer, django_capture_on_commit_callbacks)
    event = OutboundEvent.objects.get()
    assert event.status == OutboundEventStatus.FAILED
    client.force_login(staff)
    for name in ("notification", "webhookendpoint", "outboundevent"):
        assert client.get(reverse(f"admin:exchange_{name}_changelist")).status_code == 200
    page = client.get(reverse("admin:exchange_outboundevent_change", args=[event.pk])).content.decode()
    assert "HTTP 500 Internal Server Error" in page and "nope" in page
    endpoint_page = client.get(reverse("admin:exchange_webhookendpoint_change", args=[endpoint.pk])).content.decode()
    assert endpoint.url in endpoint_page and endpoint.secret not in endpoint_page

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:exchange_outboundevent_changelist"),
            {"action": "retry_failed_events", "_selected_action": [event.pk]},
        )
    assert response.status_code == 302
    event.refresh_from_db()
    assert (event.status, event.attempts, len(receiver.requests)) == (OutboundEventStatus.DELIVERED, 1, 2)
