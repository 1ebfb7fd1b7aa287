"""Outbound webhooks: signed events POSTed to URLs that users register.

Every notification (``exchange.services.notifications``) fans out to its
user's active endpoints that subscribe to its type (an empty filter means
every type): one OutboundEvent per endpoint, unique per endpoint and dedupe
key, so a task that runs twice never queues an event twice. A Celery task
(``exchange.tasks.outbound_event_send``) sends each event after commit.

The request
    ``POST <endpoint url>`` with ``Content-Type: application/json`` and the body
    ``{"id": <event id>, "type": <event type>, "created_at": <ISO 8601>, "data": {...}}``
    (types are NotificationKind values, plus ``ping`` for test events), and the headers
    ``X-Exchange-Event`` (the type), ``X-Exchange-Delivery`` (the event id, the same
    for every retry of the event) and ``X-Exchange-Signature: t=<unix seconds>,v1=<hex>``.

Verifying a request (what receivers do; :func:`signature_verify` is the reference)
    ``v1`` is the hex HMAC-SHA256, keyed with the endpoint's secret (the whole
    ``whsec_...`` string as UTF-8), of ``f"{t}."`` followed by the raw request body,
    byte for byte as received. Recompute it, compare in constant time, and refuse a
    ``t`` far from your clock (a replay). After a secret rotation, retries of older
    events are signed with the new secret.

Delivery semantics: at least once
    An answer in the 2xx range marks the event delivered. Anything else (another
    status, including redirects, which are never followed; a timeout; a connection
    or TLS error; a refused address) is recorded as an OutboundAttempt and retried
    with exponential backoff (OUTBOUND_WEBHOOK_BACKOFF_SECONDS doubling, capped at
    OUTBOUND_WEBHOOK_BACKOFF_MAX_SECONDS, less up to 10 % jitter) until
    OUTBOUND_WEBHOOK_MAX_ATTEMPTS, then the event is failed. Each send first claims
    the event under its row lock (counting the attempt and leasing it), so two
    workers never send it at the same time. A worker that dies mid-request leaves
    no attempt row; the beat sweeper re-sends the event once its lease is long
    past. Receivers must therefore dedupe by ``X-Exchange-Delivery``.

SSRF protection
    Endpoints must use https unless OUTBOUND_WEBHOOK_ALLOW_HTTP. The host is
    resolved when each event is sent; if any of its addresses is loopback, private,
    link-local, multicast, reserved or otherwise not global, nothing is sent (unless
    OUTBOUND_WEBHOOK_ALLOW_PRIVATE). The connection then goes to the address that was
    checked, never to a second lookup, so a DNS answer that changes in between cannot
    redirect it inside the network. Proxy environment variables are not used.
"""

import contextlib
import functools
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from exchange.choices import NotificationKind, OutboundEventStatus
from exchange.models import OutboundAttempt, OutboundEvent, WebhookEndpoint

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
TEST_EVENT_TYPE = "ping"
SIGNATURE_TOLERANCE_SECONDS = 300
EXCERPT_CHARS = 500
USER_AGENT = "DataExchange-Webhooks/1"
# Enough of an answer to show the user what their endpoint said; the rest is never read.
_READ_LIMIT = 4096

_S = OutboundEventStatus
# The one table of allowed event moves: a failed event can be queued again from the admin.
OUTBOUND_EVENT_TRANSITIONS: dict[str, set[str]] = {
    _S.PENDING: {_S.DELIVERED, _S.FAILED},
    _S.FAILED: {_S.PENDING},
    _S.DELIVERED: set(),
}


# --- signatures -----------------------------------------------------------------------------------


def signature_header(*, secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Exchange-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signature_verify(
    *, secret: str, body: bytes, header: str, tolerance: int = SIGNATURE_TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is within ``tolerance`` seconds of now.

    This is what a receiver does with each request (see the module docstring).
    A malformed header is simply not valid.
    """
    try:
        fields = dict(item.strip().split("=", 1) for item in header.split(","))
        timestamp, received = int(fields["t"]), fields["v1"]
    except (AttributeError, KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature_header(secret=secret, body=body, timestamp=timestamp).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, received)


# --- endpoints ------------------------------------------------------------------------------------


def _secret_new() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def address_is_internal(address: str) -> bool:
    """True for any address an outbound webhook must not reach: loopback, private, link-local, multicast, reserved."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global alone lets multicast through; the explicit checks keep the rule readable.
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _url_clean(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise ValidationError({"url": "Enter the URL events should be sent to."}, code="required")
    if len(url) > 500:
        raise ValidationError({"url": "The URL is too long (500 characters at most)."}, code="too_long")
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ValidationError(
            {"url": "Enter a valid http(s) URL, such as https://example.com/hooks/exchange."}, code="invalid"
        ) from None
    parts = urlsplit(url)
    if parts.scheme == "http" and not settings.OUTBOUND_WEBHOOK_ALLOW_HTTP:
        raise ValidationError(
            {"url": "The URL must start with https:// — events are only sent over an encrypted connection."},
            code="https_required",
        )
    if parts.username or parts.password:
        raise ValidationError({"url": "The URL must not contain a user name or password."}, code="credentials")
    if parts.fragment:
        raise ValidationError({"url": "The URL must not contain a #fragment."}, code="fragment")
    try:
        literal = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        literal = None  # a host name: its addresses are checked when each event is sent
    if literal is not None and address_is_internal(str(literal)) and not settings.OUTBOUND_WEBHOOK_ALLOW_PRIVATE:
        raise ValidationError(
            {"url": "The URL points to a private or local network address; use a public address."}, code="internal"
        )
    return url


def _event_types_clean(event_types) -> list[str]:
    if event_types is None:
        return []
    if isinstance(event_types, str) or not hasattr(event_types, "__iter__"):
        raise ValidationError({"event_types": "Event types must be a list."}, code="invalid")
    values = [str(value) for value in event_types]
    unknown = sorted(set(values) - set(NotificationKind.values))
    if unknown:
        raise ValidationError(
            {
                "event_types": f"Unknown event type(s): {', '.join(unknown)}. "
                f"Choose from: {', '.join(NotificationKind.values)}."
            },
            code="unknown_type",
        )
    return sorted(set(values))


def webhook_endpoint_create(*, user, url: str, description: str = "", event_types=()) -> WebhookEndpoint:
    """Register an endpoint for ``user`` with a new secret (``whsec_`` + 32 random bytes, URL-safe base64).

    ``event_types`` is a subset of NotificationKind values; empty means every
    type. The secret is on the returned endpoint: show it to the user now (the
    pages never show it again). Raises ValidationError, creating nothing, for
    a bad URL (see the module's SSRF rules), unknown event types, or when the
    user already has OUTBOUND_WEBHOOKS_PER_USER endpoints.
    """
    url = _url_clean(url)
    types = _event_types_clean(event_types)
    description = (description or "").strip()
    if len(description) > 200:
        raise ValidationError({"description": "The description is too long (200 characters at most)."})
    limit = settings.OUTBOUND_WEBHOOKS_PER_USER
    with transaction.atomic():
        # The owner's row is the lock that keeps two concurrent registrations from both passing the limit.
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
        count = WebhookEndpoint.objects.filter(user=user).count()
        if count >= limit:
            raise ValidationError(
                f"You already have {count} webhook endpoint(s), the most allowed ({limit}); delete one first.",
                code="too_many",
            )
        return WebhookEndpoint.objects.create(
            user=user, url=url, description=description, event_types=types, secret=_secret_new()
        )


def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Give the endpoint a new secret (returned on the endpoint, to show once); the old one stops signing at once."""
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        locked.secret = _secret_new()
        locked.save(update_fields=["secret"])
    return locked


def webhook_endpoint_set_active(*, endpoint: WebhookEndpoint, active: bool) -> WebhookEndpoint:
    """Disable or enable an endpoint. Events for a disabled endpoint wait (pending); enabling sends them."""
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if locked.is_active == active:
            return locked
        locked.is_active = active
        locked.disabled_at = None if active else timezone.now()
        locked.save(update_fields=["is_active", "disabled_at"])
        if active:
            waiting = list(locked.events.filter(status=_S.PENDING).values_list("pk", flat=True)[:1000])
            transaction.on_commit(lambda: [_schedule(pk) for pk in waiting])
    return locked


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint with its events and attempts; events being sent right now may still arrive."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()


def webhook_endpoint_send_test(*, endpoint: WebhookEndpoint) -> OutboundEvent:
    """Queue a ``ping`` event to the endpoint: sent once, never retried, its attempt shown like any other.

    Raises ValidationError when the endpoint is disabled or a test event is still being sent.
    """
    if not endpoint.is_active:
        raise ValidationError("This endpoint is disabled; enable it before sending a test event.", code="disabled")
    if endpoint.events.filter(type=TEST_EVENT_TYPE, status=_S.PENDING).exists():
        raise ValidationError("A test event is still being sent; wait for its result.", code="test_pending")
    event, _ = _event_create(
        endpoint=endpoint,
        type=TEST_EVENT_TYPE,
        data={"message": "A test event from the Data Exchange.", "endpoint_id": endpoint.pk},
        dedupe_key=f"test:{uuid.uuid4().hex}",
        created_at=timezone.now(),
    )
    return event


def webhook_endpoints_for_user(*, user):
    """The user's endpoints, newest first."""
    return WebhookEndpoint.objects.filter(user=user)


# --- events ---------------------------------------------------------------------------------------


def outbound_events_fan_out(*, user_id: int, type: str, data: dict, dedupe_key: str, created_at: datetime) -> int:
    """Queue one event per active endpoint of the user subscribed to ``type``; return how many were new.

    ``data`` must already be plain JSON. Once per endpoint and ``dedupe_key``:
    calling again queues nothing. Events are sent after the caller's commit.
    """
    item = FanOut(user_id=user_id, type=type, data=data, dedupe_key=dedupe_key, created_at=created_at)
    return len(outbound_events_fan_out_many([item]))


@dataclass(frozen=True)
class FanOut:
    """One event to fan out to a user's endpoints (the arguments of ``outbound_events_fan_out``)."""

    user_id: int
    type: str
    data: dict
    dedupe_key: str
    created_at: datetime


def outbound_events_fan_out_many(items: list[FanOut], *, schedule: bool = True) -> list[int]:
    """``outbound_events_fan_out`` for several events at once; return the pks of the events this call created.

    Two queries whatever the number of items (up to ``INSERT_CHUNK`` events):
    the active endpoints of every user involved, then one INSERT that skips the
    (endpoint, dedupe key) pairs already queued. With ``schedule`` the new
    events are sent after the caller's commit; without it the caller passes the
    returned pks to :func:`outbound_events_schedule` once it has committed.
    """
    if not items:
        return []
    endpoints: dict[int, list[WebhookEndpoint]] = {}
    for endpoint in WebhookEndpoint.objects.filter(user_id__in={i.user_id for i in items}, is_active=True).order_by(
        "pk"
    ):
        endpoints.setdefault(endpoint.user_id, []).append(endpoint)
    events = []
    for item in items:
        for endpoint in endpoints.get(item.user_id, ()):
            # Filtered here rather than in SQL: JSON containment is not portable to SQLite (the embedded default).
            if endpoint.event_types and item.type not in endpoint.event_types:
                continue
            event = OutboundEvent(endpoint=endpoint, type=item.type, dedupe_key=item.dedupe_key[:150])
            event.payload = {
                "id": str(event.public_id),
                "type": item.type,
                "created_at": item.created_at.isoformat(),
                "data": item.data,
            }
            events.append(event)
    # One order for every writer, so two batches sharing keys never wait on each other in a cycle.
    events.sort(key=lambda e: (e.endpoint_id, e.dedupe_key))
    pks = [event.pk for event in insert_skipping_conflicts(events, unique_fields=("endpoint", "dedupe_key"))]
    if schedule and pks:
        transaction.on_commit(lambda: outbound_events_schedule(pks))
    return pks


def outbound_events_schedule(event_pks: list[int]) -> None:
    """Hand new events to workers (after the commit that created them); a broker outage is left to the sweeper."""
    for pk in event_pks:
        _schedule(pk)


# Rows per INSERT statement: far below the parameter limits (PostgreSQL 65,535; SQLite 32,766) for these tables.
INSERT_CHUNK = 1000


def insert_skipping_conflicts(objs: list, *, unique_fields: tuple[str, ...]) -> list:
    """INSERT unsaved instances of one model, skipping those that collide on ``unique_fields``; return the inserted.

    The returned instances (in the order given) have their pk set; the others
    are left unsaved: an existing row, or a row that a concurrent transaction
    inserted first (the statement waits for that one to commit or roll back).
    Unlike ``bulk_create(ignore_conflicts=True)``, the caller learns which rows
    are its own. ``unique_fields`` must be exactly a unique constraint's fields,
    integers or strings (rows are matched to instances by them); NULL never
    collides, and an instance with a NULL key is an error here (use
    ``bulk_create``). One statement per ``INSERT_CHUNK`` instances, written in
    the order given: sort them by key so concurrent writers lock keys in one
    order. Field defaults and ``auto_now_add`` are applied as ``save()`` does.
    PostgreSQL, and SQLite 3.35 or later.
    """
    if not objs:
        return []
    model = type(objs[0])
    meta = model._meta
    connection = connections[router.db_for_write(model)]
    quote = connection.ops.quote_name
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    key_fields = [meta.get_field(name) for name in unique_fields]
    by_key = {}
    for obj in objs:
        key = tuple(getattr(obj, f.attname) for f in key_fields)
        if None in key:
            raise ValueError(f"insert_skipping_conflicts needs a value for each of {unique_fields}; got {key}.")
        by_key.setdefault(key, obj)  # a repeated key in the batch is skipped like any other collision
    head = f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) VALUES "
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    tail = (
        f" ON CONFLICT ({', '.join(quote(f.column) for f in key_fields)}) DO NOTHING"
        f" RETURNING {', '.join(quote(f.column) for f in [meta.pk, *key_fields])}"
    )
    inserted = set()
    for start in range(0, len(objs), INSERT_CHUNK):
        chunk = objs[start : start + INSERT_CHUNK]
        params = [f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for obj in chunk for f in fields]
        with connection.cursor() as cursor:
            cursor.execute(head + ", ".join([row] * len(chunk)) + tail, params)
            for pk, *key in cursor.fetchall():
                obj = by_key[tuple(key)]
                obj.pk = pk
                obj._state.adding = False
                obj._state.db = connection.alias
                inserted.add(id(obj))
    return [obj for obj in objs if id(obj) in inserted]


def _event_create(
    *, endpoint: WebhookEndpoint, type: str, data: dict, dedupe_key: str, created_at: datetime
) -> tuple[OutboundEvent, bool]:
    event = OutboundEvent(endpoint=endpoint, type=type, dedupe_key=dedupe_key[:150])
    event.payload = {"id": str(event.public_id), "type": type, "created_at": created_at.isoformat(), "data": data}
    try:
        with transaction.atomic():
            event.save()
    except IntegrityError:  # queued before (a re-run task, or a concurrent one)
        return OutboundEvent.objects.get(endpoint=endpoint, dedupe_key=event.dedupe_key), False
    transaction.on_commit(lambda: _schedule(event.pk))
    return event, True


def _schedule(event_pk: int, countdown: float | None = None) -> None:
    """Hand the event to a worker. A broker that is down loses nothing: the sweeper finds the event later."""
    from exchange.tasks import outbound_event_send

    try:
        if countdown:
            outbound_event_send.apply_async((event_pk,), countdown=countdown)
        else:
            outbound_event_send.delay(event_pk)
    except BrokerError:
        log.warning("outbound event %s not queued (broker unavailable); the sweeper will send it", event_pk)


def backoff_seconds(attempts: int) -> float:
    """How long to wait after ``attempts`` failed tries: BACKOFF * 2**(attempts-1), capped, less up to 10 % jitter.

    The jitter spreads the retries of events that failed together (an endpoint
    that was down) instead of sending them back in one burst.
    """
    delay = min(
        settings.OUTBOUND_WEBHOOK_BACKOFF_MAX_SECONDS,
        settings.OUTBOUND_WEBHOOK_BACKOFF_SECONDS * 2 ** min(max(attempts, 1) - 1, 30),
    )
    return delay - random.uniform(0, delay / 10)


def _lease_seconds() -> int:
    # Longer than any send can take (the lookup, then connect and read, each bounded by the timeout).
    return 4 * settings.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS + 60


def _event_transition(event: OutboundEvent, to_status: str, **fields) -> None:
    """The one place an event's status changes: call with the row locked. Attempts are its history."""
    if to_status not in OUTBOUND_EVENT_TRANSITIONS[event.status]:
        raise ValueError(f"An outbound event cannot go from {event.status} to {to_status}.")
    event.status = to_status
    for name, value in fields.items():
        setattr(event, name, value)
    event.save(update_fields=["status", *fields])


def outbound_event_send(*, event_pk: int) -> str:
    """Send one event if it is pending and due; record the attempt; schedule the retry. Safe to run twice.

    Returns what happened, for the task's result and logs. Never raises for
    what the endpoint does (that is an attempt); see the module docstring.
    """
    now = timezone.now()
    with transaction.atomic():
        event = (
            OutboundEvent.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("endpoint")
            .filter(pk=event_pk)
            .first()
        )
        if event is None:
            return f"event {event_pk}: deleted, or another worker holds it"
        if event.status != _S.PENDING:
            return f"event {event_pk}: already {event.status}"
        endpoint = event.endpoint
        if not endpoint.is_active:
            return f"event {event_pk}: endpoint disabled, kept pending"
        if event.next_attempt_at is not None and event.next_attempt_at > now:
            return f"event {event_pk}: not due until {event.next_attempt_at.isoformat()}"
        # The claim: counted and leased before the request, so a duplicate task sees it is not due.
        event.attempts += 1
        event.next_attempt_at = now + timedelta(seconds=_lease_seconds())
        event.save(update_fields=["attempts", "next_attempt_at"])
        url, secret = endpoint.url, endpoint.secret
    body = json.dumps(event.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Exchange-Event": event.type,
        "X-Exchange-Delivery": str(event.public_id),
        "X-Exchange-Signature": signature_header(secret=secret, body=body, timestamp=int(time.time())),
    }
    outcome = _post(url=url, body=body, headers=headers)
    return _outcome_record(event_pk=event_pk, outcome=outcome)


def _outcome_record(*, event_pk: int, outcome: "_Outcome") -> str:
    now = timezone.now()
    with transaction.atomic():
        event = OutboundEvent.objects.select_for_update().filter(pk=event_pk).first()
        if event is None:
            return f"event {event_pk}: endpoint deleted while sending"
        OutboundAttempt.objects.create(
            event=event,
            status_code=outcome.status_code,
            error=outcome.error[:500],
            response_excerpt=outcome.excerpt[:EXCERPT_CHARS],
            duration_ms=outcome.duration_ms,
        )
        if event.status != _S.PENDING:
            return f"event {event_pk}: already {event.status}"
        if outcome.ok:
            _event_transition(event, _S.DELIVERED, delivered_at=now, next_attempt_at=None)
            return f"event {event_pk}: delivered ({outcome.status_code})"
        limit = 1 if event.type == TEST_EVENT_TYPE else settings.OUTBOUND_WEBHOOK_MAX_ATTEMPTS
        if event.attempts >= limit:
            _event_transition(event, _S.FAILED, next_attempt_at=None)
            return f"event {event_pk}: failed after {event.attempts} attempt(s): {outcome.error}"
        delay = backoff_seconds(event.attempts)
        event.next_attempt_at = now + timedelta(seconds=delay)
        event.save(update_fields=["next_attempt_at"])
        transaction.on_commit(lambda: _schedule(event_pk, countdown=delay))
    return f"event {event_pk}: attempt {event.attempts} failed ({outcome.error}); retry in {delay:.0f} s"


def outbound_event_retry(*, event_pk: int) -> OutboundEvent:
    """Queue a failed event again with a fresh count of attempts (an admin's action); other statuses are left alone."""
    with transaction.atomic():
        event = OutboundEvent.objects.select_for_update().get(pk=event_pk)
        if event.status != _S.FAILED:
            return event
        _event_transition(event, _S.PENDING, attempts=0, next_attempt_at=None)
        transaction.on_commit(lambda: _schedule(event_pk))
    return event


def outbound_events_sweep(*, older_than_seconds: int = 300, batch: int = 1000, now=None) -> int:
    """Queue again pending events of active endpoints whose send is long overdue (a lost broker message, a dead worker).

    "Overdue" is a retry time (or, for a first send, a creation time) more
    than ``older_than_seconds`` ago, well past when its own message would have
    run. Returns how many were queued; sending them twice is harmless (the claim).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=older_than_seconds)
    overdue = OutboundEvent.objects.filter(status=_S.PENDING, endpoint__is_active=True).filter(
        Q(next_attempt_at__lt=cutoff) | Q(next_attempt_at__isnull=True, created_at__lt=cutoff)
    )
    pks = list(overdue.order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:batch])
    for pk in pks:
        _schedule(pk)
    return len(pks)


# --- the HTTP request -----------------------------------------------------------------------------


class _Refused(Exception):
    """The send is not allowed (an internal address, plain http); nothing was sent."""


@dataclass
class _Outcome:
    status_code: int | None = None
    error: str = ""
    excerpt: str = ""
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to addresses resolved and checked beforehand, never to a second lookup of the host name."""

    def __init__(self, host, port, *, addresses, timeout):
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def _connect_pinned(self) -> socket.socket:
        error = None
        for address in self._addresses:
            try:
                return socket.create_connection((address, self.port), self.timeout)
            except OSError as exc:  # try the next address, as create_connection does for a name
                error = exc
        raise error or OSError("no address to connect to")

    def connect(self):
        self.sock = self._connect_pinned()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def __init__(self, host, port, *, addresses, timeout, context):
        super().__init__(host, port, addresses=addresses, timeout=timeout)
        self._context = context

    def connect(self):
        # The certificate is checked against the host name from the URL (SNI too), not the address.
        self.sock = self._context.wrap_socket(self._connect_pinned(), server_hostname=self.host)


@functools.lru_cache(maxsize=4)
def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle)


def _addresses_for(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"could not resolve {host}: {exc.strerror or exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not settings.OUTBOUND_WEBHOOK_ALLOW_PRIVATE:
        internal = [address for address in addresses if address_is_internal(address)]
        if internal:
            raise _Refused(f"{host} resolves to {internal[0]}, a private or local address; nothing was sent")
    return addresses


def _post(*, url: str, body: bytes, headers: dict) -> _Outcome:
    timeout = settings.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS
    started = time.monotonic()
    outcome = _Outcome()
    try:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        if not https and not settings.OUTBOUND_WEBHOOK_ALLOW_HTTP:
            raise _Refused("plain http is switched off (OUTBOUND_WEBHOOK_ALLOW_HTTP); nothing was sent")
        port = parts.port or (443 if https else 80)
        addresses = _addresses_for(parts.hostname or "", port)
        if https:
            context = _tls_context(settings.OUTBOUND_WEBHOOK_CA_BUNDLE)
            conn = _PinnedHTTPSConnection(parts.hostname, port, addresses=addresses, timeout=timeout, context=context)
        else:
            conn = _PinnedHTTPConnection(parts.hostname, port, addresses=addresses, timeout=timeout)
        try:
            conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
            response = conn.getresponse()
            outcome.status_code = response.status
            if not outcome.ok:
                outcome.error = f"HTTP {response.status} {response.reason}".strip()
            # The status decides; a body cut short only leaves the excerpt empty.
            with contextlib.suppress(OSError, http.client.HTTPException):
                outcome.excerpt = response.read(_READ_LIMIT).decode("utf-8", "replace")[:EXCERPT_CHARS]
        finally:
            conn.close()
    except _Refused as exc:
        outcome.error = f"refused: {exc}"
    except TimeoutError:
        outcome.error = f"timed out after {timeout} s"
    except ssl.SSLError as exc:
        outcome.error = f"TLS error: {exc.reason or exc}"
    except (OSError, http.client.HTTPException) as exc:
        outcome.error = f"connection error: {exc}" if str(exc) else f"connection error: {type(exc).__name__}"
    outcome.duration_ms = int((time.monotonic() - started) * 1000)
    return outcome
