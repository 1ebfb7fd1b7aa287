"""The platform fee schedule: precedence of rules, validity over time, the fallback setting, half-up rounding with
fee + proceeds == gross, refusals that create nothing, settlement booking the scheduled fee, and the admin."""

import json
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from exchange.choices import AccountKind, JournalKind, OrderStatus
from exchange.models import FeeRule, Order, Posting, TransactionCertificate
from exchange.services.fees import (
    FeeSchedule,
    commission_bps_for,
    fee_rule_create,
    fee_rule_delete,
    fee_rule_for,
    order_fee,
)
from exchange.services.settlement import settlement_run_start
from merchants.models import Merchant
from tests.exchange.helpers import approve_in_sandbox, library_links, read_stream
from tests.factories import UserFactory, make_listing

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_signing_key(settings, tmp_path):
    """Settlement issues certificates: sign them with a key of this test's own."""
    from exchange.signing_key import _loaded

    settings.EXCHANGE_SIGNING_KEY_FILE = tmp_path / "keys" / "signing_key.pem"
    yield
    _loaded.pop(settings.EXCHANGE_SIGNING_KEY_FILE.resolve(), None)


@pytest.fixture(autouse=True)
def _default_fee(settings):
    settings.PLATFORM_FEE_BPS = 1000


@pytest.fixture
def other_merchant(other_merchant_user):
    return Merchant.objects.get(name="Shanghai Data")


def _delivered_order(client, buyer, listing, capture) -> Order:
    """Buy through the sandbox and download (which delivers the order): the real pipeline up to settlement."""
    client.force_login(buyer)
    plan = listing.plans.get(kind="one_time", is_active=True)
    with capture(execute=True):
        client.post(
            reverse("exchange:order_buy", args=[listing.slug]),
            {"accept_licence": "1", "token": "5c1d5d9e-7b86-4a57-8f4d-5b0f6a2a4c11", "plan": plan.pk},
        )
        order = Order.objects.get(plan=plan, buyer=buyer)
        approve_in_sandbox(client, order.checkout_url)
    link = library_links(client.get(reverse("exchange:library")).content.decode())[0]
    read_stream(client.get(link))
    client.logout()
    order.refresh_from_db()
    assert order.status == OrderStatus.DELIVERED
    return order


def _settle(capture) -> None:
    with capture(execute=True):
        settlement_run_start(trigger="test")


def _sale_legs(order) -> dict:
    return {
        kind: amount
        for kind, amount in Posting.objects.filter(entry__kind=JournalKind.SALE, entry__order=order).values_list(
            "account__kind", "amount"
        )
    }


# --- query cost of settlement ----------------------------------------------------------------------------------------


def test_settling_an_order_costs_no_query_for_its_fee(
    client, merchant, merchant_user, staff, categories, django_capture_on_commit_callbacks
):
    """Pins the queries per settled order: none (the schedule is loaded once per batch, the rest is batched)."""
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff)
    fee_rule_create(actor=staff, commission_bps=2500, merchant=merchant)
    buyers = iter(UserFactory(email=f"buyer{i}@example.com") for i in range(5))
    counts = []
    for batch, minutes in ((1, 5), (1, 10), (3, 15)):  # the first run also creates the ledger accounts: warm-up
        for _ in range(batch):
            _delivered_order(client, next(buyers), listing, django_capture_on_commit_callbacks)
        # Past the schedule's look-back window, so orders are priced from the schedule loaded by the run.
        later = time_machine.travel(timezone.now() + timedelta(minutes=minutes), tick=True)
        with later, CaptureQueriesContext(connection) as queries:
            _settle(django_capture_on_commit_callbacks)
        counts.append(len(queries))
    assert Order.objects.filter(status=OrderStatus.SETTLED).count() == 5
    one, three = counts[1:]
    # A batch settles its orders in a fixed number of statements: a third order costs no query at all
    # (30 per order before batches; none for the fee since the schedule is loaded once).
    assert three == one
    fees = Posting.objects.filter(entry__kind=JournalKind.SALE, account__kind=AccountKind.PLATFORM_REVENUE)
    assert sorted(fees.values_list("amount", flat=True)) == [-309] * 5  # 25 % of 1234 = 308.5, half up


# --- choosing the rule -----------------------------------------------------------------------------------------------

LEVELS = ("merchant+category", "merchant", "category", "default")


def _schedule(staff, merchant, other_merchant, categories, levels):
    """Rules at the given levels for (merchant, government), plus rules for other scopes that must never apply."""
    government, finance = categories["government"], categories["finance"]
    scopes = {
        "merchant+category": dict(merchant=merchant, category=government, commission_bps=400),
        "merchant": dict(merchant=merchant, commission_bps=600),
        "category": dict(category=government, commission_bps=800),
        "default": dict(commission_bps=1200),
    }
    for level in levels:
        fee_rule_create(actor=staff, **scopes[level])
    fee_rule_create(actor=staff, merchant=other_merchant, category=government, commission_bps=111)
    fee_rule_create(actor=staff, merchant=other_merchant, commission_bps=222)
    fee_rule_create(actor=staff, merchant=merchant, category=finance, commission_bps=333)
    fee_rule_create(actor=staff, category=finance, commission_bps=444)


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        (LEVELS, 400),
        (LEVELS[1:], 600),
        (LEVELS[2:], 800),
        (LEVELS[3:], 1200),
        ((), None),
        (("merchant", "default"), 600),
        (("category", "default"), 800),
        (("merchant+category", "default"), 400),
    ],
)
def test_most_specific_rule_in_force_applies(staff, merchant, other_merchant, categories, levels, expected):
    _schedule(staff, merchant, other_merchant, categories, levels)
    later = timezone.now() + timedelta(seconds=1)
    rule = fee_rule_for(merchant_id=merchant.pk, category_id=categories["government"].pk, at=later)
    assert (rule.commission_bps if rule else None) == expected
    # The in-memory schedule that settlement uses answers the same (loaded "later", past its look-back window).
    schedule = FeeSchedule(list(FeeRule.objects.all()), loaded_at=later + timedelta(minutes=2))
    same = schedule.rule_for(merchant_id=merchant.pk, category_id=categories["government"].pk, at=later)
    assert same == rule


def test_a_listing_without_category_takes_the_merchant_or_default_rule(staff, merchant, other_merchant, categories):
    _schedule(staff, merchant, other_merchant, categories, ("category", "default"))
    later = timezone.now() + timedelta(seconds=1)
    assert fee_rule_for(merchant_id=merchant.pk, category_id=None, at=later).commission_bps == 1200
    fee_rule_create(actor=staff, merchant=merchant, commission_bps=650)
    later = timezone.now() + timedelta(seconds=1)
    assert fee_rule_for(merchant_id=merchant.pk, category_id=None, at=later).commission_bps == 650
    schedule = FeeSchedule(list(FeeRule.objects.all()), loaded_at=later + timedelta(minutes=2))
    assert schedule.rule_for(merchant_id=merchant.pk, category_id=None, at=later).commission_bps == 650


def test_rules_take_effect_at_valid_from_and_ties_go_to_the_latest_start_then_pk(staff, merchant):
    now = timezone.now()
    future = fee_rule_create(actor=staff, commission_bps=1500, valid_from=now + timedelta(days=30))
    current = fee_rule_create(actor=staff, commission_bps=1000, valid_from=now)
    same_start = fee_rule_create(actor=staff, commission_bps=900, valid_from=now)
    schedule = FeeSchedule(list(FeeRule.objects.all()), loaded_at=now + timedelta(days=60))
    for at, expected in (
        (now - timedelta(seconds=1), None),  # before any rule
        (now, same_start),  # same valid_from: the later rule (higher pk) wins
        (now + timedelta(days=30) - timedelta(microseconds=1), same_start),
        (now + timedelta(days=30), future),  # a later start wins over a higher pk
    ):
        assert fee_rule_for(merchant_id=merchant.pk, category_id=None, at=at) == expected
        assert schedule.rule_for(merchant_id=merchant.pk, category_id=None, at=at) == expected
    assert current.pk < same_start.pk


def test_schedule_asks_the_database_for_moments_it_may_not_have_seen(staff, merchant):
    """A rule created after the schedule was loaded may start up to a minute before: the schedule must not miss it."""
    schedule = FeeSchedule.load()
    rule = fee_rule_create(actor=staff, commission_bps=700, valid_from=timezone.now() - timedelta(seconds=30))
    assert schedule.rule_for(merchant_id=merchant.pk, category_id=None, at=timezone.now()) == rule


# --- orders: fallback, history, rounding -----------------------------------------------------------------------------


def _unsaved_order(listing, *, paid_at) -> Order:
    """An order as settlement sees it (merchant, listing, payment time); pricing reads nothing else."""
    return Order(merchant=listing.merchant, listing=listing, paid_at=paid_at, amount=1234, currency="CNY")


def test_without_rules_the_setting_applies(published_listing, settings):
    settings.PLATFORM_FEE_BPS = 750
    order = _unsaved_order(published_listing, paid_at=timezone.now())
    assert (commission_bps_for(order), order_fee(order, gross=1234)) == (750, 93)  # 92.55 -> 93


def test_an_order_paid_before_a_new_rule_keeps_the_old_rate(staff, published_listing, merchant):
    fee_rule_create(actor=staff, commission_bps=1000)
    paid_before = _unsaved_order(published_listing, paid_at=timezone.now())
    with time_machine.travel(timezone.now() + timedelta(days=1), tick=True):
        fee_rule_create(actor=staff, commission_bps=2500, merchant=merchant)
        paid_after = _unsaved_order(published_listing, paid_at=timezone.now() + timedelta(seconds=1))
        assert (commission_bps_for(paid_before), commission_bps_for(paid_after)) == (1000, 2500)
        schedule = FeeSchedule.load()
        assert commission_bps_for(paid_before, schedule=schedule) == 1000


BPS_TABLE = {
    # gross: (fee at 10 %, fee at 25 %, fee at 0.01 %)
    0: (0, 0, 0),
    1: (0, 0, 0),
    5: (1, 1, 0),  # 0.5 -> 1 (half up to the platform); 1.25 -> 1
    9: (1, 2, 0),
    10: (1, 3, 0),  # 2.5 -> 3
    15: (2, 4, 0),  # 1.5 -> 2
    99: (10, 25, 0),  # 9.9 -> 10; 24.75 -> 25
    5000: (500, 1250, 1),  # 0.5 -> 1
    4999: (500, 1250, 0),  # 499.9 -> 500; 1249.75 -> 1250; 0.4999 -> 0
    12345: (1235, 3086, 1),  # 1234.5 -> 1235; 3086.25 -> 3086; 1.2345 -> 1
    2**53 + 1: (900719925474099, 2251799813685248, 900719925474),  # beyond float precision
    10**15 + 5: (100000000000001, 250000000000001, 100000000000),  # .5 -> 1; .25 -> 0; .0005 -> 0
}


@pytest.mark.parametrize("gross", list(BPS_TABLE))
@pytest.mark.parametrize(("column", "bps"), [(0, 1000), (1, 2500), (2, 1)])
def test_fee_rounds_half_up_and_the_merchant_gets_the_rest(staff, published_listing, gross, column, bps):
    fee_rule_create(actor=staff, commission_bps=bps)
    order = _unsaved_order(published_listing, paid_at=timezone.now() + timedelta(seconds=1))
    fee = order_fee(order, gross=gross)
    proceeds = gross - fee
    assert fee == BPS_TABLE[gross][column]
    assert (fee + proceeds, 0 <= fee <= gross) == (gross, True)


@pytest.mark.parametrize(("bps", "gross", "fee"), [(0, 12345, 0), (10000, 12345, 12345), (10000, 0, 0)])
def test_fee_at_the_ends_of_the_range(staff, published_listing, bps, gross, fee):
    fee_rule_create(actor=staff, commission_bps=bps)
    order = _unsaved_order(published_listing, paid_at=timezone.now() + timedelta(seconds=1))
    assert order_fee(order, gross=gross) == fee


# --- refusals --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "code"),
    [
        ({"commission_bps": 10001}, "commission_bps", "out_of_range"),
        ({"commission_bps": -1}, "commission_bps", "out_of_range"),
        ({"commission_bps": "1000"}, "commission_bps", "invalid"),
        ({"commission_bps": True}, "commission_bps", "invalid"),
        ({"commission_bps": 1000, "valid_from": "past"}, "valid_from", "in_past"),
        ({"commission_bps": 1000, "valid_from": "naive"}, "valid_from", "naive"),
        ({"commission_bps": 1000, "note": "x" * 201}, "note", "too_long"),
    ],
)
def test_bad_rules_are_refused_and_nothing_is_created(staff, kwargs, field, code):
    now = timezone.now()
    values = {"past": now - timedelta(minutes=2), "naive": now.replace(tzinfo=None)}
    if "valid_from" in kwargs:
        kwargs = {**kwargs, "valid_from": values[kwargs["valid_from"]]}
    with pytest.raises(ValidationError) as refused:
        fee_rule_create(actor=staff, **kwargs)
    assert {name: [e.code for e in errors] for name, errors in refused.value.error_dict.items()} == {field: [code]}
    assert FeeRule.objects.count() == 0


def test_a_start_within_the_minute_of_grace_is_accepted(staff):
    start = timezone.now() - timedelta(seconds=50)
    rule = fee_rule_create(actor=staff, commission_bps=1000, valid_from=start, note="from the form")
    assert (rule.valid_from, rule.created_by, rule.merchant, rule.category) == (start, staff, None, None)


@pytest.mark.parametrize("who", ["anonymous", "buyer", "merchant_user"])
def test_only_staff_may_change_the_schedule(request, staff, who):
    actor = None if who == "anonymous" else request.getfixturevalue(who)
    future = fee_rule_create(actor=staff, commission_bps=900, valid_from=timezone.now() + timedelta(days=1))
    with pytest.raises(PermissionDenied):
        fee_rule_create(actor=actor, commission_bps=1000)
    with pytest.raises(PermissionDenied):
        fee_rule_delete(actor=actor, rule_pk=future.pk)
    assert list(FeeRule.objects.values_list("pk", flat=True)) == [future.pk]


def test_a_rule_in_force_cannot_be_deleted_a_future_one_can(staff):
    in_force = fee_rule_create(actor=staff, commission_bps=1000)
    future = fee_rule_create(actor=staff, commission_bps=900, valid_from=timezone.now() + timedelta(days=1))
    with pytest.raises(ValidationError) as refused:
        fee_rule_delete(actor=staff, rule_pk=in_force.pk)
    assert refused.value.code == "in_force"
    fee_rule_delete(actor=staff, rule_pk=future.pk)
    assert list(FeeRule.objects.values_list("pk", flat=True)) == [in_force.pk]


# --- settlement ------------------------------------------------------------------------------------------------------


def test_settlement_books_the_scheduled_fee_and_the_merchant_the_rest(
    client, buyer, other_buyer, staff, merchant, merchant_user, categories, django_capture_on_commit_callbacks
):
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff)  # category: government, 1234
    fee_rule_create(actor=staff, commission_bps=1000)
    fee_rule_create(actor=staff, category=categories["government"], commission_bps=1500)
    early = _delivered_order(client, buyer, listing, django_capture_on_commit_callbacks)
    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=True):
        fee_rule_create(actor=staff, merchant=merchant, commission_bps=2500, note="launch partner")
        fee_rule_create(actor=staff, merchant=merchant, category=categories["finance"], commission_bps=100)
        late = _delivered_order(client, other_buyer, listing, django_capture_on_commit_callbacks)
        _settle(django_capture_on_commit_callbacks)
    payable = f"merchant_payable:{merchant.pk}"
    # Paid under the category rule (15 %: 185.1 -> 185); paid after the merchant override (25 %: 308.5 -> 309).
    for order, fee in ((early, 185), (late, 309)):
        order.refresh_from_db()
        assert order.status == OrderStatus.SETTLED
        assert _sale_legs(order) == {
            AccountKind.ESCROW_HELD: 1234,
            AccountKind.PLATFORM_REVENUE: -fee,
            AccountKind.MERCHANT_PAYABLE: -(1234 - fee),
        }
        document = json.loads(TransactionCertificate.objects.get(order=order).document)
        assert (document["platform_fee"]["amount"], document["merchant_proceeds"]["amount"]) == (fee, 1234 - fee)
    revenue = Posting.objects.filter(account__kind=AccountKind.PLATFORM_REVENUE).values_list("amount", flat=True)
    assert sum(revenue) == -(185 + 309)
    assert Posting.objects.filter(account__code=payable, entry__kind=JournalKind.SALE).count() == 2


def test_settlement_without_rules_uses_the_setting(
    client, buyer, published_listing, settings, django_capture_on_commit_callbacks
):
    settings.PLATFORM_FEE_BPS = 333
    order = _delivered_order(client, buyer, published_listing, django_capture_on_commit_callbacks)
    _settle(django_capture_on_commit_callbacks)
    assert _sale_legs(order) == {
        AccountKind.ESCROW_HELD: 1234,
        AccountKind.PLATFORM_REVENUE: -41,  # 41.0922 -> 41
        AccountKind.MERCHANT_PAYABLE: -1193,
    }


# --- the commission is fixed when the trade is paid ------------------------------------------------------------------


def test_the_commission_is_fixed_at_payment_so_a_later_category_move_or_setting_change_does_not_reprice(
    client, buyer, staff, published_listing, categories, settings, django_capture_on_commit_callbacks
):
    finance = categories["finance"]
    fee_rule_create(actor=staff, commission_bps=0, category=finance)  # a category the listing is not in (yet)
    order = _delivered_order(client, buyer, published_listing, django_capture_on_commit_callbacks)
    assert order.commission_bps == 1000  # the setting, as nothing more specific applied when it was paid
    # Afterwards: the listing moves into the 0 % category, and the default commission changes.
    published_listing.category = finance
    published_listing.save(update_fields=["category"])
    settings.PLATFORM_FEE_BPS = 4000
    assert commission_bps_for(Order.objects.get(pk=order.pk)) == 1000
    _settle(django_capture_on_commit_callbacks)
    assert _sale_legs(order) == {
        AccountKind.ESCROW_HELD: 1234,
        AccountKind.PLATFORM_REVENUE: -123,  # 10 % of 1234 = 123.4 -> 123
        AccountKind.MERCHANT_PAYABLE: -1111,
    }


def test_a_trade_paid_in_a_category_with_its_own_rule_keeps_that_rule(
    client, buyer, staff, published_listing, categories, django_capture_on_commit_callbacks
):
    finance = categories["finance"]
    published_listing.category = finance
    published_listing.save(update_fields=["category"])
    fee_rule_create(actor=staff, commission_bps=500, category=finance)
    order = _delivered_order(client, buyer, published_listing, django_capture_on_commit_callbacks)
    assert order.commission_bps == 500
    published_listing.category = None
    published_listing.save(update_fields=["category"])
    _settle(django_capture_on_commit_callbacks)
    assert _sale_legs(order)[AccountKind.PLATFORM_REVENUE] == -62  # 5 % of 1234 = 61.7 -> 62


def test_an_order_without_a_fixed_commission_is_priced_by_the_rule_in_force_when_it_was_paid(
    staff, published_listing, settings
):
    """Orders paid before the commission was kept on them (migration 0022) are priced as they always were."""
    settings.PLATFORM_FEE_BPS = 750
    order = _unsaved_order(published_listing, paid_at=timezone.now())
    assert order.commission_bps is None
    assert commission_bps_for(order) == 750
    order.commission_bps = 1200
    assert commission_bps_for(order) == 1200


# --- admin -----------------------------------------------------------------------------------------------------------


def test_admin_adds_a_rule_through_the_service(client, staff, merchant, categories):
    client.force_login(staff)
    start = timezone.localtime() + timedelta(days=2)
    response = client.post(
        reverse("admin:exchange_feerule_add"),
        {
            "merchant": merchant.pk,
            "category": categories["finance"].pk,
            "commission_bps": 1750,
            "valid_from_0": start.strftime("%Y-%m-%d"),
            "valid_from_1": start.strftime("%H:%M:%S"),
            "note": "negotiated",
        },
    )
    assert response.status_code == 302
    rule = FeeRule.objects.get()
    assert (rule.merchant, rule.category, rule.commission_bps, rule.note, rule.created_by) == (
        merchant,
        categories["finance"],
        1750,
        "negotiated",
        staff,
    )
    page = client.get(reverse("admin:exchange_feerule_changelist")).content.decode()
    assert "merchant Guiyang Data + category Finance" in page and "17.5 %" in page


@pytest.mark.parametrize(
    ("bps", "start", "message"),
    [
        (10001, timedelta(days=1), "between 0 and 10000 basis points"),
        (500, -timedelta(days=1), "cannot start in the past"),
    ],
)
def test_admin_refuses_bad_rules_with_the_services_message(client, staff, bps, start, message):
    client.force_login(staff)
    when = timezone.localtime() + start
    response = client.post(
        reverse("admin:exchange_feerule_add"),
        {
            "commission_bps": bps,
            "valid_from_0": when.strftime("%Y-%m-%d"),
            "valid_from_1": when.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 200 and message in response.content.decode()
    assert FeeRule.objects.count() == 0


def test_admin_never_edits_rules_and_deletes_only_future_ones(client, staff):
    in_force = fee_rule_create(actor=staff, commission_bps=1000)
    future = fee_rule_create(actor=staff, commission_bps=900, valid_from=timezone.now() + timedelta(days=1))
    client.force_login(staff)
    change = reverse("admin:exchange_feerule_change", args=[in_force.pk])
    response = client.post(change, {"commission_bps": 5000, "valid_from_0": "2020-01-01", "valid_from_1": "00:00:00"})
    assert response.status_code == 403
    assert client.post(reverse("admin:exchange_feerule_delete", args=[in_force.pk]), {"post": "yes"}).status_code == 403
    response = client.post(reverse("admin:exchange_feerule_delete", args=[future.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert list(FeeRule.objects.values_list("pk", "commission_bps")) == [(in_force.pk, 1000)]
    assert client.get(change).status_code == 200  # still viewable, read-only


# --- the buyer service fee --------------------------------------------------------------------------------------------


def test_service_fee_setting_is_parsed_in_major_units_and_refuses_bad_values(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from exchange.env import env_money_map

    monkeypatch.setenv("BUYER_SERVICE_FEE", " CNY:2.00, usd:0.3 ")
    assert env_money_map("BUYER_SERVICE_FEE") == {"CNY": 200, "USD": 30}
    monkeypatch.setenv("BUYER_SERVICE_FEE", "")
    assert env_money_map("BUYER_SERVICE_FEE") == {}
    for raw, message in (
        ("CNY2", "BUYER_SERVICE_FEE must look like CNY:2.00,USD:0.30 (each currency once), got 'CNY2'"),
        ("CNY:1,CNY:2", "BUYER_SERVICE_FEE must look like CNY:2.00,USD:0.30 (each currency once), got 'CNY:1,CNY:2'"),
        ("GBP:1", "BUYER_SERVICE_FEE: GBP: Unsupported currency 'GBP'."),
        ("CNY:-1", "BUYER_SERVICE_FEE: CNY: An amount must be a positive number."),
        ("CNY:0.001", "BUYER_SERVICE_FEE: CNY: CNY has at most 2 decimals."),
    ):
        monkeypatch.setenv("BUYER_SERVICE_FEE", raw)
        with pytest.raises(ImproperlyConfigured) as exc:
            env_money_map("BUYER_SERVICE_FEE")
        assert str(exc.value) == message


def test_share_of_rounds_half_up_and_refuses_bad_input():
    from common.money import MoneyError, share_of

    assert [share_of(200, part, 1434) for part in (0, 717, 1434, 1)] == [0, 100, 200, 0]
    assert share_of(3, 1, 2) == 2  # 1.5 -> 2: half a unit goes to the platform
    for args in ((-1, 1, 2), (1, 3, 2), (1, -1, 2), (1, 0, 0)):
        with pytest.raises(MoneyError):
            share_of(*args)


def test_buyer_service_fee_is_charged_on_one_time_purchases_and_kept_by_the_platform(
    client, buyer, published_listing, settings, django_capture_on_commit_callbacks
):
    settings.BUYER_SERVICE_FEE = {"CNY": 200}
    page = client.get(reverse("listings:detail", args=[published_listing.slug])).content.decode()
    assert "+ ¥2.00 CNY buyer service fee" in page
    order = _delivered_order(client, buyer, published_listing, django_capture_on_commit_callbacks)
    assert (order.amount, order.service_fee) == (1434, 200)  # the plan's 1234 plus the fee
    client.force_login(buyer)
    detail = client.get(reverse("exchange:order_detail", args=[order.public_id])).content.decode()
    assert "including a buyer service fee of ¥2.00 CNY" in detail
    _settle(django_capture_on_commit_callbacks)
    # The platform keeps the fee and the 10 % commission on the price; the merchant gets the rest of the price.
    assert _sale_legs(order) == {
        AccountKind.ESCROW_HELD: 1434,
        AccountKind.PLATFORM_REVENUE: -(200 + 123),
        AccountKind.MERCHANT_PAYABLE: -1111,
    }
    document = json.loads(TransactionCertificate.objects.get(order=order).document)
    assert document["buyer_service_fee"] == {"amount": 200, "currency": "CNY"}
    assert (document["platform_fee"]["amount"], document["merchant_proceeds"]["amount"]) == (323, 1111)


def test_a_partly_refunded_order_keeps_the_same_share_of_the_service_fee(
    client, buyer, staff, published_listing, settings, django_capture_on_commit_callbacks
):
    from exchange.services.refunds import order_refund

    settings.BUYER_SERVICE_FEE = {"CNY": 200}
    order = _delivered_order(client, buyer, published_listing, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        order_refund(order=order, amount=717, reason="half the rows were missing", actor=staff)
    _settle(django_capture_on_commit_callbacks)
    # 717 of 1434 still held: half the fee (100) stays with the platform, 10 % of the other 617 (61.7 -> 62) too.
    assert _sale_legs(order) == {
        AccountKind.ESCROW_HELD: 717,
        AccountKind.PLATFORM_REVENUE: -(100 + 62),
        AccountKind.MERCHANT_PAYABLE: -555,
    }


def test_no_service_fee_on_free_subscription_or_metered_plans(published_listing, settings):
    from listings.choices import PlanKind
    from listings.models import PricingPlan

    settings.BUYER_SERVICE_FEE = {"CNY": 200, "USD": 30}
    plan = published_listing.plans.get(kind=PlanKind.ONE_TIME)
    assert (plan.buyer_service_fee, plan.buyer_service_fee_display) == (200, "¥2.00 CNY")
    for kind, amount in ((PlanKind.FREE, 0), (PlanKind.SUBSCRIPTION, 900), (PlanKind.METERED, 5)):
        assert PricingPlan(listing=published_listing, kind=kind, amount=amount, currency="CNY").buyer_service_fee == 0
    assert (
        PricingPlan(listing=published_listing, kind=PlanKind.ONE_TIME, amount=100, currency="EUR").buyer_service_fee
        == 0
    )
