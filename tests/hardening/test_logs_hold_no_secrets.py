"""Nothing secret reaches the logs (issue 9): every logger at DEBUG, SQL included, through the flows that
handle secrets (API keys, passwords, signed webhooks in and out, payouts through Stripe)."""

import contextlib
import logging
import re
import secrets

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import ApiKey
from exchange.choices import NotificationKind, OrderStatus, PayoutStatus
from exchange.models import Order, OutboundEvent, Payout, SettlementRun
from exchange.services.notifications import notification_send
from exchange.services.orders import order_checkout_start, order_create
from exchange.services.outbound import webhook_endpoint_create
from exchange.services.settlement import payout_send
from tests.exchange.test_outbound_webhooks import Receiver
from tests.exchange.test_stripe_gateway import _event, _post
from tests.factories import PASSWORD, UserFactory
from tests.fakes.stripe_server import FakeStripe, settings_use_fake_stripe

pytestmark = pytest.mark.django_db
WEBHOOK_SECRET = "whsec_test_stripe_fake"  # what tests.exchange.test_stripe_gateway._post signs with


class _Everything(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def all_logs():
    """Every logger at DEBUG into one handler (also those that do not propagate), and every SQL statement."""
    handler = _Everything()
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level, logger.propagate, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    logging.getLogger().addHandler(handler)
    for logger in loggers[1:]:
        if not logger.propagate:
            logger.addHandler(handler)
    connection.force_debug_cursor = True  # django.db.backends logs each query with its parameters
    yield handler
    connection.force_debug_cursor = False
    for logger, level, propagate, disabled in saved:
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled
        if handler in logger.handlers:
            logger.removeHandler(handler)


def _texts(record: logging.LogRecord) -> list[str]:
    texts = [str(record.msg)]
    args = record.args if isinstance(record.args, tuple) else (record.args,) if record.args else ()
    texts += [repr(arg) for arg in args]
    with contextlib.suppress(Exception):  # a malformed record still has its msg and args checked above
        texts.append(record.getMessage())
    if record.exc_info and record.exc_info[1] is not None:
        texts.append(repr(record.exc_info[1]))
    return texts


def _leaks(handler: _Everything, secrets_by_name: dict[str, str]) -> list[tuple[str, str, str]]:
    found = []
    for record in handler.records:
        if record.name.startswith("factory"):
            continue  # factory_boy (test tooling, not installed in production) logs the fixtures' passwords
        for text in _texts(record):
            for name, value in secrets_by_name.items():
                if value in text:
                    found.append((name, record.name, text[:200]))
    return found


@pytest.fixture
def fake_stripe(settings):
    server = FakeStripe().start()
    settings_use_fake_stripe(settings, server, webhook_secret=WEBHOOK_SECRET)
    settings.STRIPE_SECRET_KEY = "sk_test_" + secrets.token_urlsafe(24)  # unique, so a leak cannot hide
    yield server
    server.stop()


@pytest.fixture
def receiver(settings):
    settings.OUTBOUND_WEBHOOK_ALLOW_HTTP = True
    settings.OUTBOUND_WEBHOOK_ALLOW_PRIVATE = True
    server = Receiver()
    yield server
    server.close()


def test_keys_passwords_and_webhook_secrets_never_reach_a_log_record(
    all_logs, fake_stripe, receiver, buyer, merchant, published_listing, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # Signing in with a password: a wrong one, then the right one.
    user = UserFactory(email="keeper@example.com")
    web = Client()
    assert web.post(reverse("account_login"), {"login": user.email, "password": "wrong-" + PASSWORD}).status_code == 200
    assert web.post(reverse("account_login"), {"login": user.email, "password": PASSWORD}).status_code == 302
    # Creating an API key on the web page, using it, and a wrong key.
    page = web.post(reverse("accounts:api_keys"), {"name": "import", "scopes": ["read"]})
    key = ApiKey.objects.get(user=user)
    raw_key = re.search(rf"dx_{key.prefix}\.[A-Za-z0-9_-]{{43}}", page.content.decode()).group(0)
    assert Client().get("/api/v1/account/keys/", HTTP_AUTHORIZATION=f"Api-Key {raw_key}").status_code == 200
    forged = raw_key[:-4] + "AAAA"
    assert Client().get("/api/v1/account/keys/", HTTP_AUTHORIZATION=f"Api-Key {forged}").status_code == 401
    # A signed Stripe webhook (and one with a wrong signature).
    order, _ = order_create(buyer=buyer, listing=published_listing, idempotency_key="no-secrets-1")
    order_checkout_start(order=order)
    order.refresh_from_db()
    assert _post(Client(), _event(order), secret="whsec_wrong").status_code == 400
    with capture(execute=True):
        assert _post(Client(), _event(order)).status_code == 200
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PAID
    # An outbound webhook, signed with the endpoint's secret, refused once then delivered.
    receiver.answers = [(500, b"boom", 0), (200, b"ok", 0)]
    endpoint = webhook_endpoint_create(user=buyer, url=receiver.url())
    with capture(execute=True):
        notification_send(
            user=buyer, kind=NotificationKind.PURCHASE_CONFIRMED, title="t", url="/x/", data={}, dedupe_key="ns"
        )
    assert OutboundEvent.objects.filter(endpoint=endpoint).count() == 1
    assert len(receiver.requests) == 1
    # A payout through the fake Stripe.
    merchant.stripe_account_id = "acct_test_merchant"
    merchant.save()
    run = SettlementRun.objects.create(status="completed")
    payout = Payout.objects.create(
        run=run, merchant=merchant, amount=4500, currency="CNY", idempotency_key="payout-ns-1", gateway="stripe"
    )
    assert payout_send(payout_pk=payout.pk).status == PayoutStatus.SENT

    # The flows did log (SQL among them), so the check below looked at something.
    names = {record.name for record in all_logs.records}
    assert "django.db.backends" in names and "axes.handlers.database" in names
    assert len(all_logs.records) > 100
    watched = {
        "password": PASSWORD,
        "raw API key": raw_key,
        "API key secret part": raw_key.split(".", 1)[1],
        "forged API key secret part": forged.split(".", 1)[1],
        "Stripe webhook secret": WEBHOOK_SECRET,
        "sandbox webhook secret": django_settings.SANDBOX_WEBHOOK_SECRET,
        "outbound webhook secret": endpoint.secret,
        "STRIPE_SECRET_KEY": django_settings.STRIPE_SECRET_KEY,
        "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
    }
    leaks = [(name, logger) for name, logger, _ in _leaks(all_logs, watched)]
    # The one exception: an outbound endpoint's secret is stored as it is (it signs every event), so the SQL
    # that writes and reads it carries it. Django logs SQL only with DEBUG on, and the LOGGING setting keeps
    # django.db.backends at WARNING even then; this test forced it on to check everything else.
    assert set(leaks) == {("outbound webhook secret", "django.db.backends")}
    assert django_settings.LOGGING["loggers"]["django.db.backends"] == {"level": "WARNING"}


def test_the_axes_records_hold_no_password(client):
    UserFactory(email="guarded@example.com")
    for attempt in ("guess-one", "guess-two"):
        client.post(reverse("account_login"), {"login": "guarded@example.com", "password": attempt})
    attempt = AccessAttempt.objects.get()
    assert attempt.failures_since_start == 2
    assert "guess-one" not in attempt.post_data and "guess-two" not in attempt.post_data
    assert "password=********************" in attempt.post_data
    assert AccessFailureLog.objects.count() == 2
