"""Payouts left PENDING are sent again by the sweep, once; ``manage.py settle --now`` needs no broker.

A payout stays PENDING when its task gave up (transient gateway errors outlasting its retries) or its message was
lost (the broker was down when the run finished). The sweep (beat, ``payout_sweep``) queues its send again; the
send locks the payout and reuses its idempotency key, so sweeping twice, or alongside the original task, makes
one transfer. A Stripe payout older than Stripe's idempotency window is never sent again: the gateway is asked
whether it made the transfer and the payout is booked accordingly; when it cannot tell, the payout is held for
review and staff record what the gateway shows. The sandbox gateway keeps its transfers (``SandboxTransfer``) as
a provider would.
"""

import re
import threading
import time
import uuid
from contextlib import nullcontext
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connections
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from exchange import tasks
from exchange.celery import app as celery_app
from exchange.choices import AccountKind, JournalKind, OrderStatus, PayoutStatus, SettlementRunStatus
from exchange.gateways import GatewayError
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import JournalEntry, Order, Payout, Posting, SandboxTransfer, SettlementRun
from exchange.services import settlement as settlement_module
from exchange.services.ledger import ledger_verify
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.settlement import (
    HELD_FOR_REVIEW,
    PayoutNotHeld,
    PayoutSweep,
    payout_resolve,
    payout_send,
    payouts_sweep,
    settlement_run_execute,
    settlement_run_start,
)
from tests.factories import UserFactory, make_listing, make_merchant
from tests.fakes.stripe_server import FakeStripe, settings_use_fake_stripe

pytestmark = pytest.mark.django_db

PRICE = 1234  # 10 % fee, half up: 123; the merchant is owed 1111 per order
NET = 1111


@pytest.fixture
def listing(settings, staff):
    settings.PLATFORM_FEE_BPS = 1000
    settings.DISPUTE_HOLD_DAYS = 0
    settings.BUYER_SERVICE_FEE = {}
    owner = UserFactory(email="sweep-merchant@example.com")
    merchant = make_merchant(owner, name="Sweep Data")
    return make_listing(merchant=merchant, owner=owner, reviewer=staff, price=PRICE)


def _delivered(listing, capture=None) -> Order:
    """A buyer pays through the sandbox and confirms receipt; ``capture`` runs the on-commit tasks (eager)."""
    buyer = UserFactory()
    with capture(execute=True) if capture else nullcontext():
        order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
        order_checkout_start(order=order)
        order.refresh_from_db()
        SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    with capture(execute=True) if capture else nullcontext():
        order = order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer)
    assert order.status == OrderStatus.DELIVERED
    return Order.objects.get(pk=order.pk)


def _delivered_inline(listing, capture) -> Order:
    return _delivered(listing, capture)


def _balance(kind) -> int:
    return Posting.objects.filter(account__kind=kind).aggregate(total=Sum("amount"))["total"] or 0


def _gateway_down(message: str):
    def payout_create(self, *, payout):
        raise GatewayError(message, transient=True)

    return payout_create


def _pending_payout(listing, capture, monkeypatch) -> Payout:
    """A run whose payout send failed transiently: the payout is PENDING, its money in payouts in transit."""

    def gateway_down(self, *, payout):
        raise GatewayError("gateway timed out", transient=True)

    _delivered_inline(listing, capture)
    with monkeypatch.context() as patch:
        patch.setattr(SandboxGateway, "payout_create", gateway_down)
        run = settlement_run_execute(run_pk=settlement_run_start(trigger="test", queue=False).pk, queue=False)
    (payout,) = Payout.objects.filter(run=run)
    assert (payout.status, payout.amount, payout.attempts) == (PayoutStatus.PENDING, NET, 1)
    assert payout.error == "gateway timed out"
    return payout


def _counting_sends(monkeypatch, delay: float = 0.0) -> list[int]:
    """Count the sandbox's transfer calls (and optionally slow each one down)."""
    calls: list[int] = []
    payout_create = SandboxGateway.payout_create

    def counted(self, *, payout):
        calls.append(payout.pk)
        time.sleep(delay)
        return payout_create(self, payout=payout)

    monkeypatch.setattr(SandboxGateway, "payout_create", counted)
    return calls


def test_a_payout_whose_task_gave_up_is_sent_by_the_sweep_once(
    listing, django_capture_on_commit_callbacks, monkeypatch, settings
):
    payout = _pending_payout(listing, django_capture_on_commit_callbacks, monkeypatch)
    # The task retried (each retry one send, failing transiently) until its retries ran out.
    with monkeypatch.context() as patch:
        patch.setattr(SandboxGateway, "payout_create", _gateway_down("503 service unavailable"))
        for _ in range(3):
            with pytest.raises(GatewayError):
                payout_send(payout_pk=payout.pk)
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PENDING and payout.attempts > 1
    assert _balance(AccountKind.PAYOUTS_PENDING) == -NET  # the money sits in transit

    settings.PAYOUT_SWEEP_AGE_SECONDS = 600
    assert payouts_sweep(older_than_seconds=600).queued == []  # too young: its task may still be retrying
    Payout.objects.filter(pk=payout.pk).update(created_at=timezone.now() - timedelta(minutes=20))
    calls = _counting_sends(monkeypatch)
    swept = payouts_sweep(older_than_seconds=600)
    assert (swept.queued, swept.held) == ([payout.pk], [])
    assert calls == [payout.pk]
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.SENT and payout.error == ""
    (transfer,) = SandboxTransfer.objects.all()
    assert (payout.gateway_reference, transfer.amount, transfer.idempotency_key) == (
        transfer.id,
        NET,
        payout.idempotency_key,
    )
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1
    assert _balance(AccountKind.PAYOUTS_PENDING) == 0

    # Swept again: nothing is pending, nothing is sent.
    assert payouts_sweep(older_than_seconds=600).queued == []
    assert calls == [payout.pk] and SandboxTransfer.objects.count() == 1
    assert ledger_verify().ok


def test_a_payout_whose_message_was_lost_is_sent_by_the_sweep(listing, django_capture_on_commit_callbacks, monkeypatch):
    _delivered_inline(listing, django_capture_on_commit_callbacks)
    # The run finishes and commits, but the broker is down: the send is never queued.
    run = settlement_run_start(trigger="test", queue=False)
    settlement_module.settlement_run_plan(run_pk=run.pk, queue=False)
    for batch in run.batches.all():
        settlement_module.settlement_batch_execute(batch_pk=batch.pk, queue_finish=False)
    settlement_module.settlement_run_finish(run_pk=run.pk, queue=False)
    (payout,) = Payout.objects.filter(run=run)
    assert (payout.status, payout.attempts) == (PayoutStatus.PENDING, 0)

    calls = _counting_sends(monkeypatch)
    assert payouts_sweep(older_than_seconds=0).queued == [payout.pk]
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.SENT and calls == [payout.pk]
    # The beat task does the same and finds nothing left.
    assert tasks.payout_sweep.delay().get() == "queued payouts [], booked as the gateway shows [], held for review []"
    assert calls == [payout.pk]


def test_a_sent_or_refused_payout_is_left_alone(listing, django_capture_on_commit_callbacks, monkeypatch):
    _delivered_inline(listing, django_capture_on_commit_callbacks)
    run = settlement_run_execute(run_pk=settlement_run_start(trigger="test", queue=False).pk, queue=False)
    (sent,) = Payout.objects.filter(run=run)
    assert sent.status == PayoutStatus.SENT
    Payout.objects.update(created_at=timezone.now() - timedelta(hours=2))
    calls = _counting_sends(monkeypatch)
    assert payouts_sweep(older_than_seconds=0).queued == []
    assert calls == [] and SandboxTransfer.objects.count() == 1
    sent.refresh_from_db()
    assert sent.status == PayoutStatus.SENT and sent.history.count() == 2  # created, sent


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_two_sweeps_at_once_make_one_transfer(listing, monkeypatch, categories):
    celery_app.conf.task_always_eager = True
    _delivered(listing)  # transactional: the on-commit tasks run inline as they would in the workers
    with monkeypatch.context() as patch:
        patch.setattr(
            SandboxGateway,
            "payout_create",
            lambda self, *, payout: (_ for _ in ()).throw(GatewayError("502", transient=True)),
        )
        run = settlement_run_execute(run_pk=settlement_run_start(trigger="test", queue=False).pk, queue=False)
    (payout,) = Payout.objects.filter(run=run)
    assert payout.status == PayoutStatus.PENDING
    calls = _counting_sends(monkeypatch, delay=0.5)  # the first send holds the payout's lock while it "calls"
    results, errors = [], []

    def sweep():
        try:
            results.append(payouts_sweep(older_than_seconds=0))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 2
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.SENT
    assert len(calls) == 1 and SandboxTransfer.objects.count() == 1
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1
    assert payout.history.count() == 2


def test_the_sweep_is_on_the_beat_schedule_and_the_settlement_queue():
    entry = django_settings.CELERY_BEAT_SCHEDULE["payout-sweep"]
    assert entry == {"task": "exchange.tasks.payout_sweep", "schedule": float(django_settings.PAYOUT_SWEEP_SECONDS)}
    assert django_settings.PAYOUT_SWEEP_SECONDS == 900 and django_settings.PAYOUT_SWEEP_AGE_SECONDS == 900
    assert celery_app.amqp.router.route({}, "exchange.tasks.payout_sweep")["queue"].name == "settlement"


# --- Stripe's idempotency window ------------------------------------------------------------------------------------


@pytest.fixture
def fake_stripe(settings):
    server = FakeStripe().start()
    settings_use_fake_stripe(settings, server, webhook_secret="whsec_test_sweep")
    yield server
    server.stop()


@pytest.fixture
def stale_stripe_payout(fake_stripe, merchant):
    """A Stripe payout pending for a day: its idempotency key may have expired at Stripe."""
    merchant.stripe_account_id = "acct_test_sweep"
    merchant.save(update_fields=["stripe_account_id"])
    run = SettlementRun.objects.create(status=SettlementRunStatus.COMPLETED)
    payout = Payout.objects.create(
        run=run,
        merchant=merchant,
        amount=4500,
        currency="CNY",
        idempotency_key=f"payout-{run.pk}-{merchant.pk}-CNY",
        gateway="stripe",
        attempts=3,
        error="Stripe: timed out",
    )
    Payout.objects.filter(pk=payout.pk).update(created_at=timezone.now() - timedelta(hours=24))
    payout.refresh_from_db()
    return payout


def _stripe_transfer(fake_stripe, payout, *, amount=None, currency="cny", payout_id=None, created=None):
    """A transfer at (fake) Stripe as an earlier, timed-out send of ``payout`` would have left it."""
    transfer_id = f"tr_test_{uuid.uuid4().hex[:12]}"
    fake_stripe.objects["/v1/transfers"][transfer_id] = {
        "id": transfer_id,
        "object": "transfer",
        "amount": payout.amount if amount is None else amount,
        "currency": currency,
        "destination": "acct_test_sweep",
        "created": created or int(payout.created_at.timestamp()) + 5,
        "metadata": {"payout_id": str(payout_id or payout.pk), "run_id": str(payout.run_id)},
    }
    return transfer_id


def test_a_stripe_payout_past_the_window_that_stripe_did_make_is_booked_sent_not_sent_again(
    fake_stripe, stale_stripe_payout
):
    payout = stale_stripe_payout
    for other in range(150):  # other payouts' transfers of the same day: the lookup reads every page
        _stripe_transfer(fake_stripe, payout, payout_id=10_000 + other)
    made = _stripe_transfer(fake_stripe, payout)
    swept = payouts_sweep(older_than_seconds=900)
    assert (swept.queued, swept.looked_up, swept.held) == ([], [payout.pk], [])
    payout.refresh_from_db()
    assert (payout.status, payout.gateway_reference, payout.error) == (PayoutStatus.SENT, made, "")
    assert fake_stripe.count("/v1/transfers") == 0  # asked, never sent again
    lists = [query for method, path, query, _ in fake_stripe.requests if (method, path) == ("GET", "/v1/transfers")]
    assert len(lists) == 2 and lists[1]["starting_after"]  # two pages of 100
    assert int(lists[0]["created"]["gte"]) < payout.created_at.timestamp() < int(lists[0]["created"]["lte"])
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1
    assert payout.history.get().reason == f"transfer {made} found at the gateway after its idempotency window"
    assert payout_send(payout_pk=payout.pk).status == PayoutStatus.SENT  # a late task message changes nothing
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1


def test_a_stripe_payout_past_the_window_that_stripe_never_made_is_owed_again(fake_stripe, stale_stripe_payout):
    payout = stale_stripe_payout
    _stripe_transfer(fake_stripe, payout, payout_id=payout.pk + 1)  # another payout's
    assert payout_send(payout_pk=payout.pk).status == PayoutStatus.FAILED  # a late task message asks too
    assert fake_stripe.count("/v1/transfers") == 0
    payout.refresh_from_db()
    assert "the gateway shows no transfer for it" in payout.error
    returned = JournalEntry.objects.get(kind=JournalKind.PAYOUT_RETURNED, payout=payout)
    legs = {p.account.kind: p.amount for p in returned.postings.select_related("account")}
    assert legs == {AccountKind.PAYOUTS_PENDING: 4500, AccountKind.MERCHANT_PAYABLE: -4500}
    assert payouts_sweep(older_than_seconds=900) == PayoutSweep(queued=[], held=[], looked_up=[])


@pytest.mark.parametrize(
    ("stripe_shows", "why"),
    [
        ("down", "Stripe: "),
        ("two", "Stripe shows 2 transfers for payout"),
        ("other_amount", "is of 4400 CNY, not 4500 CNY"),
        ("other_currency", "is of 4500 USD, not 4500 CNY"),
    ],
)
def test_a_stripe_payout_past_the_window_is_held_when_stripe_cannot_tell(
    fake_stripe, stale_stripe_payout, stripe_shows, why
):
    payout = stale_stripe_payout
    if stripe_shows == "down":
        fake_stripe.fail_next_get["/v1/transfers"] = (500, {"error": {"message": "unavailable"}})
    elif stripe_shows == "two":
        _stripe_transfer(fake_stripe, payout)
        _stripe_transfer(fake_stripe, payout)
    else:
        _stripe_transfer(
            fake_stripe,
            payout,
            amount=4400 if stripe_shows == "other_amount" else 4500,
            currency="usd" if stripe_shows == "other_currency" else "cny",
        )
    swept = payouts_sweep(older_than_seconds=900)
    assert (swept.queued, swept.looked_up, swept.held) == ([], [], [payout.pk])
    assert fake_stripe.count("/v1/transfers") == 0
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PENDING and payout.attempts == 3 and not payout.history.exists()
    assert payout.error.startswith(HELD_FOR_REVIEW) and why in payout.error
    assert f"payout_id={payout.pk}" in payout.error
    assert payout.error.endswith("Last error before it was held: Stripe: timed out")
    assert not JournalEntry.objects.exists()
    # A late task message holds it too; the reason is brought up to date, the error before the hold is kept.
    fake_stripe.fail_next_get["/v1/transfers"] = (503, {"error": {"message": "down for maintenance"}})
    assert payout_send(payout_pk=payout.pk).status == PayoutStatus.PENDING
    payout.refresh_from_db()
    assert "stripe could not say whether it made the transfer (Stripe: down for maintenance)" in payout.error
    assert payout.error.endswith("Last error before it was held: Stripe: timed out")
    assert payout.error.count(HELD_FOR_REVIEW) == 1 and not payout.history.exists()
    held_error = payout.error
    fake_stripe.fail_next_get["/v1/transfers"] = (503, {"error": {"message": "down for maintenance"}})
    payout_send(payout_pk=payout.pk)
    payout.refresh_from_db()
    assert payout.error == held_error  # the same reason: recorded once


def test_a_payout_held_by_the_release_before_is_asked_about_again_keeping_its_first_error(
    fake_stripe, stale_stripe_payout
):
    payout = stale_stripe_payout
    Payout.objects.filter(pk=payout.pk).update(
        error="Held for review: pending since then, so its idempotency key may have expired. "
        "Last error: Stripe: timed out"
    )
    fake_stripe.fail_next_get["/v1/transfers"] = (500, {"error": {"message": "unavailable"}})
    assert payouts_sweep(older_than_seconds=900).held == [payout.pk]
    payout.refresh_from_db()
    assert "stripe could not say whether it made the transfer (Stripe: " in payout.error
    assert payout.error.endswith("Last error before it was held: Stripe: timed out")


def test_a_transfer_recorded_for_one_payout_is_refused_for_another_and_changes_nothing(
    fake_stripe, stale_stripe_payout
):
    paid = Payout.objects.create(
        run=stale_stripe_payout.run,
        merchant=stale_stripe_payout.merchant,
        amount=300,
        currency="USD",
        idempotency_key="p-paid-USD",
        gateway="stripe",
        status=PayoutStatus.SENT,
        gateway_reference="tr_already_used",
    )
    with pytest.raises(CommandError, match=f"Transfer tr_already_used is already recorded for payout {paid.pk}."):
        call_command("settle", "--payout-sent", str(stale_stripe_payout.pk), "tr_already_used")
    stale_stripe_payout.refresh_from_db()
    assert stale_stripe_payout.status == PayoutStatus.PENDING and not stale_stripe_payout.history.exists()
    assert not JournalEntry.objects.exists()


def test_staff_record_a_held_payout_as_not_sent_and_its_money_is_owed_again(fake_stripe, stale_stripe_payout, capsys):
    payout = stale_stripe_payout
    fake_stripe.fail_next_get["/v1/transfers"] = (500, {"error": {"message": "unavailable"}})  # Stripe can't tell
    call_command("settle", "--payouts")
    listed = capsys.readouterr().out
    assert f"payout {payout.pk}: Guiyang Data" in listed and "held for review" in listed
    call_command("settle", "--payout-not-sent", str(payout.pk))
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.FAILED
    returned = JournalEntry.objects.get(kind=JournalKind.PAYOUT_RETURNED, payout=payout)
    legs = {p.account.kind: p.amount for p in returned.postings.select_related("account")}
    assert legs == {AccountKind.PAYOUTS_PENDING: 4500, AccountKind.MERCHANT_PAYABLE: -4500}
    assert list(payout.history.values_list("to_status", flat=True)) == [PayoutStatus.FAILED]  # made without its start
    with pytest.raises(CommandError, match="not held for review"):
        call_command("settle", "--payout-sent", str(payout.pk), "tr_whatever")
    assert fake_stripe.objects.get("/v1/transfers", {}) == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--payout-sent", "{pk}", "  "], "--payout-sent needs the transfer's id at the gateway"),
        (["--payout-sent", "{pk}", ""], "--payout-sent needs the transfer's id at the gateway"),
        (["--payout-not-sent", "999999"], "There is no payout 999999."),
        (["--payout-sent", "twelve", "tr_1"], "'twelve' is not a payout number."),
    ],
)
def test_the_resolve_command_refuses_bad_input_and_changes_nothing(fake_stripe, stale_stripe_payout, args, message):
    payout = stale_stripe_payout
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("settle", *[arg.format(pk=payout.pk) for arg in args])
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PENDING and not payout.history.exists()
    assert not JournalEntry.objects.exists()


def test_staff_record_a_held_payout_as_sent_with_the_transfer_found(stale_stripe_payout):
    payout = payout_resolve(payout_pk=stale_stripe_payout.pk, transfer_reference=" tr_found_1 ")
    assert (payout.status, payout.gateway_reference, payout.error) == (PayoutStatus.SENT, "tr_found_1", "")
    assert JournalEntry.objects.filter(kind=JournalKind.PAYOUT_SENT, payout=payout).count() == 1


def test_a_payout_not_held_cannot_be_resolved_by_hand(listing, django_capture_on_commit_callbacks, monkeypatch):
    payout = _pending_payout(listing, django_capture_on_commit_callbacks, monkeypatch)  # sandbox: never held
    with pytest.raises(PayoutNotHeld):
        payout_resolve(payout_pk=payout.pk)
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PENDING and payout.history.count() == 1


def _admin_resolve(client, staff, payouts, **data):
    client.force_login(staff)
    return client.post(
        reverse("admin:exchange_payout_changelist"),
        {"action": "resolve_held_payouts", "_selected_action": [p.pk for p in payouts], **data},
        follow=True,
    )


def test_staff_record_a_held_payout_in_the_admin(client, staff, fake_stripe, stale_stripe_payout):
    payout = stale_stripe_payout
    fake_stripe.fail_next_get["/v1/transfers"] = (500, {"error": {"message": "unavailable"}})
    assert payouts_sweep(older_than_seconds=900).held == [payout.pk]
    form = _admin_resolve(client, staff, [payout])  # the action first asks what the gateway shows
    text = form.content.decode()
    assert "Transfer found at the gateway" in text and f"Payout {payout.pk} to" in text
    page = _admin_resolve(client, staff, [payout], apply="1", transfer_reference="tr_found_2")
    assert f"Payout {payout.pk} recorded as Sent." in page.content.decode()
    payout.refresh_from_db()
    assert (payout.status, payout.gateway_reference) == (PayoutStatus.SENT, "tr_found_2")
    moved = payout.history.get()
    assert (moved.to_status, moved.actor, moved.reason) == (
        PayoutStatus.SENT,
        staff,
        "transfer tr_found_2 found at the gateway",
    )


def test_staff_ask_stripe_now_about_a_held_payout_from_the_admin(
    client, staff, merchant, fake_stripe, stale_stripe_payout
):
    payout = stale_stripe_payout
    client.force_login(staff)
    url = reverse("admin:exchange_payout_changelist")
    fake_stripe.fail_next_get["/v1/transfers"] = (500, {"error": {"message": "unavailable"}})
    page = client.post(url, {"action": "look_up_held_payouts", "_selected_action": [payout.pk]}, follow=True)
    assert f"Payout {payout.pk} is still held for review: the gateway could not tell (Stripe: " in page.content.decode()
    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PENDING and payout.error.startswith(HELD_FOR_REVIEW)
    made = _stripe_transfer(fake_stripe, payout)
    fresh = Payout.objects.create(  # not held: the workers send it
        run=payout.run,
        merchant=merchant,
        amount=300,
        currency="USD",
        idempotency_key="payout-fresh-USD",
        gateway="stripe",
    )
    page = client.post(url, {"action": "look_up_held_payouts", "_selected_action": [payout.pk, fresh.pk]}, follow=True)
    text = page.content.decode()
    assert f"Payout {payout.pk}: the gateway was asked and it is recorded as Sent." in text
    assert f"Payout {fresh.pk}: Payout {fresh.pk} is Pending and not held for review" in text
    payout.refresh_from_db()
    fresh.refresh_from_db()
    assert (payout.status, payout.gateway_reference, fresh.status) == (PayoutStatus.SENT, made, PayoutStatus.PENDING)
    moved = payout.history.get()
    assert (moved.actor, moved.reason) == (staff, f"transfer {made} found at the gateway after its idempotency window")
    assert fake_stripe.count("/v1/transfers") == 0 and not fresh.history.exists()


def test_the_payouts_admin_lists_the_held_ones(client, staff, merchant, fake_stripe, stale_stripe_payout):
    fresh = Payout.objects.create(
        run=stale_stripe_payout.run,
        merchant=merchant,
        amount=300,
        currency="USD",
        idempotency_key="p-USD",
        gateway="stripe",
    )
    old_sandbox = Payout.objects.create(  # the sandbox keeps its keys for good: never held
        run=stale_stripe_payout.run, merchant=merchant, amount=400, currency="EUR", idempotency_key="p-EUR"
    )
    Payout.objects.filter(pk=old_sandbox.pk).update(created_at=timezone.now() - timedelta(days=3))
    client.force_login(staff)
    page = client.get(reverse("admin:exchange_payout_changelist"), {"held": "yes"})
    assert page.status_code == 200
    assert [row.pk for row in page.context["cl"].result_list] == [stale_stripe_payout.pk]
    everything = client.get(reverse("admin:exchange_payout_changelist"))
    assert {row.pk for row in everything.context["cl"].result_list} == {
        stale_stripe_payout.pk,
        fresh.pk,
        old_sandbox.pk,
    }


def test_the_admin_refuses_a_payout_not_held_and_one_reference_for_two_payouts_changing_nothing(
    client, staff, merchant, fake_stripe, stale_stripe_payout
):
    fresh = Payout.objects.create(  # made a moment ago: the workers send it, not a person
        run=stale_stripe_payout.run,
        merchant=merchant,
        amount=300,
        currency="USD",
        idempotency_key="payout-fresh-USD",
        gateway="stripe",
    )
    page = _admin_resolve(client, staff, [fresh], apply="1", transfer_reference="")
    assert f"Payout {fresh.pk}: Payout {fresh.pk} is Pending and not held for review" in page.content.decode()
    page = _admin_resolve(client, staff, [fresh, stale_stripe_payout], apply="1", transfer_reference="tr_one")
    assert "A transfer belongs to one payout: select only that payout to record it." in page.content.decode()
    for payout in (fresh, stale_stripe_payout):
        payout.refresh_from_db()
        assert payout.status == PayoutStatus.PENDING
    assert not JournalEntry.objects.filter(kind__in=[JournalKind.PAYOUT_SENT, JournalKind.PAYOUT_RETURNED]).exists()


def test_only_staff_who_may_change_payouts_see_the_action(client, fake_stripe, stale_stripe_payout):
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_payout"))
    client.force_login(viewer)
    page = client.get(reverse("admin:exchange_payout_changelist"))
    assert page.status_code == 200 and "resolve_held_payouts" not in page.content.decode()
    assert "look_up_held_payouts" not in page.content.decode()
    _admin_resolve(client, viewer, [stale_stripe_payout], apply="1", transfer_reference="tr_x")
    stale_stripe_payout.refresh_from_db()
    assert stale_stripe_payout.status == PayoutStatus.PENDING


# --- manage.py settle --now, broker or not --------------------------------------------------------------------------


@pytest.fixture
def broker_down():
    """The broker is unreachable (a closed port) and tasks are really published: anything queued fails."""
    eager, url = celery_app.conf.task_always_eager, celery_app.conf.broker_url
    celery_app.conf.task_always_eager, celery_app.conf.broker_url = False, "redis://127.0.0.1:1/0"
    _forget_connections()
    yield
    celery_app.conf.task_always_eager, celery_app.conf.broker_url = eager, url
    _forget_connections()


def _forget_connections():
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_settle_now_with_the_broker_down_settles_and_pays_without_it(listing, categories, capsys, request):
    celery_app.conf.task_always_eager = True
    orders = [_delivered(listing) for _ in range(2)]
    request.getfixturevalue("broker_down")
    with pytest.raises(Exception, match="Connection refused"):
        tasks.payout_sweep.delay()  # the broker really is unreachable
    call_command("settle", "--now")
    out = capsys.readouterr().out
    run = SettlementRun.objects.get()
    assert f"Settlement run {run.pk}: completed, 2 orders settled, 1 payouts created." in out
    assert "Payouts: 1 sent, 0 refused" in out
    assert [Order.objects.get(pk=order.pk).status for order in orders] == [OrderStatus.SETTLED] * 2
    (payout,) = Payout.objects.all()
    assert (payout.status, payout.amount) == (PayoutStatus.SENT, 2 * NET)
    assert not SettlementRun.objects.filter(status=SettlementRunStatus.RUNNING).exists()
    # Nothing blocks the next run.
    call_command("settle", "--now")
    assert "0 orders settled, 0 payouts created" in capsys.readouterr().out
    assert _balance(AccountKind.ESCROW_HELD) == 0 and _balance(AccountKind.PAYOUTS_PENDING) == 0


def test_settle_now_failing_midway_fails_the_run_clearly_and_the_next_run_completes(
    listing, django_capture_on_commit_callbacks, monkeypatch, capsys
):
    orders = [_delivered_inline(listing, django_capture_on_commit_callbacks) for _ in range(2)]
    with monkeypatch.context() as patch:
        patch.setattr(
            settlement_module,
            "_payout_specs",
            lambda **kw: (_ for _ in ()).throw(OperationalError("server closed the connection unexpectedly")),
        )
        with pytest.raises(CommandError, match=r"failed: OperationalError: server closed the connection") as refused:
            call_command("settle", "--now")
    assert "the next run settles the rest" in str(refused.value)
    failed = SettlementRun.objects.get()
    assert failed.status == SettlementRunStatus.FAILED and "server closed" in failed.error
    assert list(failed.history.values_list("to_status", flat=True)) == [
        SettlementRunStatus.RUNNING,
        SettlementRunStatus.FAILED,
    ]
    # Its batch committed before the finish failed: the orders stay settled, their money in the payable.
    assert [Order.objects.get(pk=order.pk).status for order in orders] == [OrderStatus.SETTLED] * 2
    assert not Payout.objects.exists()

    call_command("settle", "--now")
    assert "0 orders settled, 1 payouts created" in capsys.readouterr().out
    (payout,) = Payout.objects.all()
    assert (payout.status, payout.amount) == (PayoutStatus.SENT, 2 * NET)
    assert _balance(AccountKind.MERCHANT_PAYABLE) == 0 and _balance(AccountKind.PAYOUTS_PENDING) == 0
    assert ledger_verify().ok
