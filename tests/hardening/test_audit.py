"""The audit log of sensitive actions (issue 9): each action through its real path records one event."""

from datetime import timedelta

import pytest
from django.db import DatabaseError, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey
from audit.models import AuditEvent
from audit.services import audit_record
from exchange.models import FeeRule, Order, Payout, Refund, SettlementRun
from exchange.services.fees import fee_rule_create
from exchange.services.orders import order_checkout_start, order_create
from exchange.services.settlement import payout_send
from tests.exchange.helpers import approve_in_sandbox
from tests.fakes.stripe_server import FakeStripe, settings_use_fake_stripe

pytestmark = pytest.mark.django_db
IP = "203.0.113.7"


def _only_event():
    events = list(AuditEvent.objects.all())
    assert len(events) == 1, [str(e) for e in events]
    return events[0]


def _paid_order(client, buyer, listing, capture) -> Order:
    client.force_login(buyer)
    with capture(execute=True):
        order, _ = order_create(buyer=buyer, listing=listing, idempotency_key="audit-1")
        url = order_checkout_start(order=order)
        approve_in_sandbox(client, url)
    order.refresh_from_db()
    assert order.status == "paid"
    return order


@pytest.fixture
def fake_stripe(settings):
    server = FakeStripe().start()
    settings_use_fake_stripe(settings, server, webhook_secret="whsec_audit_test")
    yield server
    server.stop()


def test_an_admin_refund_records_who_from_where_what_and_how_much(
    client, staff, buyer, published_listing, django_capture_on_commit_callbacks
):
    order = _paid_order(client, buyer, published_listing, django_capture_on_commit_callbacks)
    assert AuditEvent.objects.count() == 0
    client.force_login(staff)
    data = {
        "action": "refund_orders",
        "_selected_action": [order.pk],
        "apply": "1",
        "reason": "late delivery",
        "token": "5f0e7f53-8a53-4d4c-b1b4-2a3f3b0f9e11",
    }
    # Refused (more than was paid): nothing is refunded and nothing is logged.
    client.post(reverse("admin:exchange_order_changelist"), {**data, "amount": "99.99"}, REMOTE_ADDR=IP)
    assert (Refund.objects.count(), AuditEvent.objects.count()) == (0, 0)
    client.post(reverse("admin:exchange_order_changelist"), {**data, "amount": "2.34"}, REMOTE_ADDR=IP)
    refund = Refund.objects.get()
    event = _only_event()
    assert (event.action, event.actor, event.ip) == ("refund_requested", staff, IP)
    assert (event.object_type, event.object_id) == ("exchange.refund", str(refund.pk))
    assert event.details == {"order": order.reference, "amount": 234, "currency": "CNY", "source": "admin"}


def test_api_keys_made_and_revoked_on_the_web_page_and_by_the_api_are_logged_without_the_key(client, buyer):
    client.force_login(buyer)
    page = client.post(reverse("accounts:api_keys"), {"name": "import", "scopes": ["data"]}, REMOTE_ADDR=IP)
    assert page.status_code == 200
    key = ApiKey.objects.get()
    event = _only_event()
    assert (event.action, event.actor, event.ip, event.object_id) == ("api_key_created", buyer, IP, str(key.pk))
    assert event.details == {"target_user": buyer.pk, "prefix": key.prefix, "scopes": ["data"], "expires_at": None}
    # Refused (unknown scope): nothing created, nothing logged.
    assert client.post(reverse("accounts:api_keys"), {"name": "x", "scopes": ["admin"]}).status_code == 400
    assert AuditEvent.objects.count() == 1
    # Revoked from the web page.
    client.post(reverse("accounts:api_key_revoke", args=[key.prefix]), REMOTE_ADDR="2001:db8::5")
    revoked = AuditEvent.objects.get(action="api_key_revoked")
    assert (revoked.actor, revoked.ip, revoked.object_id) == (buyer, "2001:db8::5", str(key.pk))
    assert revoked.details == {"target_user": buyer.pk, "prefix": key.prefix}
    # Made through the API: the actor is the signed-in user, the address the request's.
    response = client.post(
        reverse("data_api:keys"), {"name": "api", "scopes": ["read"]}, "application/json", REMOTE_ADDR="198.51.100.2"
    )
    assert response.status_code == 201
    made = AuditEvent.objects.filter(action="api_key_created").latest("pk")
    assert (made.actor, made.ip, made.details["scopes"]) == (buyer, "198.51.100.2", ["read"])
    assert AuditEvent.objects.count() == 3


def test_a_staff_settlement_run_is_logged_and_a_refused_second_one_is_not(client, staff):
    client.force_login(staff)
    url = reverse("admin:exchange_settlementrun_changelist")
    client.post(url, {"action": "start_settlement_run"}, REMOTE_ADDR=IP)
    run = SettlementRun.objects.get()
    event = _only_event()
    assert (event.action, event.actor, event.ip, event.object_id) == ("settlement_run_started", staff, IP, str(run.pk))
    assert event.details == {"trigger": "admin"}
    client.post(url, {"action": "start_settlement_run"}, REMOTE_ADDR=IP)  # refused: the first is still running
    assert (SettlementRun.objects.count(), AuditEvent.objects.count()) == (1, 1)


def test_payouts_sent_and_refused_by_the_gateway_are_logged_as_the_system(fake_stripe, merchant):
    run = SettlementRun.objects.create(status="completed")
    merchant.stripe_account_id = "acct_test_merchant"
    merchant.save()
    payout = Payout.objects.create(
        run=run, merchant=merchant, amount=4500, currency="CNY", idempotency_key="payout-a-1", gateway="stripe"
    )
    payout_send(payout_pk=payout.pk)
    payout.refresh_from_db()
    event = _only_event()
    assert (event.action, event.actor, event.ip, event.object_id) == ("payout_sent", None, None, str(payout.pk))
    assert event.details == {"amount": 4500, "currency": "CNY", "reference": payout.gateway_reference}
    payout_send(payout_pk=payout.pk)  # sent already: nothing new
    assert AuditEvent.objects.count() == 1
    merchant.stripe_account_id = ""
    merchant.save()
    second_run = SettlementRun.objects.create(status="completed")
    refused = Payout.objects.create(
        run=second_run, merchant=merchant, amount=700, currency="CNY", idempotency_key="payout-a-2", gateway="stripe"
    )
    payout_send(payout_pk=refused.pk)
    failed = AuditEvent.objects.get(action="payout_failed")
    assert (failed.object_id, failed.details["amount"]) == (str(refused.pk), 700)
    assert "has not connected a Stripe account" in failed.details["error"]


def test_connecting_a_payout_account_is_logged_once(fake_stripe, client, merchant_user, merchant):
    client.force_login(merchant_user)
    client.post(reverse("exchange:connect"), REMOTE_ADDR=IP)
    merchant.refresh_from_db()
    event = AuditEvent.objects.get(object_type="merchants.merchant", object_id=str(merchant.pk))
    assert (event.action, event.actor, event.ip) == ("connect_account_changed", merchant_user, IP)
    assert event.details == {"account_id": merchant.stripe_account_id}
    client.post(reverse("exchange:connect"), REMOTE_ADDR=IP)  # already connected: only a new link
    assert AuditEvent.objects.filter(action="connect_account_changed").count() == 1


def test_fee_rules_added_and_withdrawn_in_the_admin_are_logged(client, staff, merchant):
    client.force_login(staff)
    start = timezone.localtime() + timedelta(days=2)
    form = {"merchant": merchant.pk, "commission_bps": 1750, "note": "negotiated"}
    form |= {"valid_from_0": start.strftime("%Y-%m-%d"), "valid_from_1": start.strftime("%H:%M:%S")}
    bad = client.post(reverse("admin:exchange_feerule_add"), {**form, "commission_bps": 10001}, REMOTE_ADDR=IP)
    assert bad.status_code == 200
    assert (FeeRule.objects.count(), AuditEvent.objects.count()) == (0, 0)
    assert client.post(reverse("admin:exchange_feerule_add"), form, REMOTE_ADDR=IP).status_code == 302
    rule = FeeRule.objects.get()
    event = _only_event()
    assert (event.action, event.actor, event.ip, event.object_id) == ("fee_rule_created", staff, IP, str(rule.pk))
    assert event.details == {
        "commission_bps": 1750,
        "valid_from": rule.valid_from.isoformat(),
        "merchant": merchant.pk,
        "category": None,
    }
    delete = client.post(reverse("admin:exchange_feerule_delete", args=[rule.pk]), {"post": "yes"}, REMOTE_ADDR=IP)
    assert delete.status_code == 302
    deleted = AuditEvent.objects.get(action="fee_rule_deleted")
    assert (deleted.actor, deleted.ip, deleted.object_id) == (staff, IP, str(rule.pk))
    assert deleted.details == {"commission_bps": 1750, "valid_from": rule.valid_from.isoformat()}


def test_the_admin_lists_filters_and_searches_events_and_refuses_changes(client, staff, buyer):
    fee_rule_create(actor=staff, commission_bps=900)
    audit_record(action="api_key_revoked", actor=buyer, ip="192.0.2.1", prefix="abcdefgh")
    client.force_login(staff)
    url = reverse("admin:audit_auditevent_changelist")
    page = client.get(url).content.decode()
    assert "Fee rule created" in page and "API key revoked" in page and "192.0.2.1" in page

    def listed(**query):
        return [e.action for e in client.get(url, query).context["cl"].result_list]

    assert listed() == ["api_key_revoked", "fee_rule_created"]
    assert listed(action__exact="api_key_revoked") == ["api_key_revoked"]
    assert listed(actor__id__exact=staff.pk) == ["fee_rule_created"]
    assert listed(q="192.0.2.1") == ["api_key_revoked"]
    assert listed(q=buyer.email) == ["api_key_revoked"]
    event = AuditEvent.objects.get(action="api_key_revoked")
    change = reverse("admin:audit_auditevent_change", args=[event.pk])
    assert client.get(change).status_code == 200  # viewable
    assert client.post(change, {"action": "payout_sent", "ip": "10.0.0.1"}).status_code == 403
    assert client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    event.refresh_from_db()
    assert (event.action, str(event.ip), AuditEvent.objects.count()) == ("api_key_revoked", "192.0.2.1", 2)


def test_the_database_refuses_to_change_or_delete_an_event(staff):
    event = audit_record(action="fee_rule_deleted", actor=staff, note_ref="x")
    for change in (lambda: AuditEvent.objects.filter(pk=event.pk).update(ip="10.0.0.1"), event.delete):
        with pytest.raises(DatabaseError) as exc, transaction.atomic():
            change()
        assert "audit log is append-only" in str(exc.value)
    event.refresh_from_db()
    assert (event.action, event.ip, AuditEvent.objects.count()) == ("fee_rule_deleted", None, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"action": "nonsense"}, "Unknown audit action 'nonsense'"),
        ({"action": "api_key_created", "raw_key": "dx_x.y"}, "Audit details must not hold secrets: raw_key"),
        (
            {"action": "payout_sent", "bank_IBAN": "DE00", "card_number": "4242"},
            "must not hold secrets: bank_IBAN, card",
        ),
    ],
)
def test_bad_records_are_refused_and_nothing_is_written(kwargs, message):
    with pytest.raises(ValueError) as exc:
        audit_record(**kwargs)
    assert message in str(exc.value)
    assert AuditEvent.objects.count() == 0
