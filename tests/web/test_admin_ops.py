"""The admin as reviewers and operators use it (issue 8): the review page, merchant verification, an order's
timeline with refund and cancel, settlement runs, ledger verification, reconciliation — and the admin in Chinese."""

import re
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import translation
from django.utils.html import escape
from django.utils.translation import gettext_lazy as _

from exchange.choices import OrderStatus, RefundStatus
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import JournalEntry, Order, OrderStatusHistory, Posting, Refund, SettlementRun
from exchange.services.ledger import ledger_verify, ledger_verify_record
from exchange.services.orders import order_checkout_start, order_confirm_receipt, order_create
from exchange.services.settlement import settlement_run_start
from listings.choices import REVIEW_CHECKLIST, ListingStatus, ReviewDecision
from listings.models import DataFile, Listing, ListingReview
from merchants.models import Merchant
from tests.factories import UserFactory, make_listing, make_merchant

pytestmark = pytest.mark.django_db


def _pending_order(listing, buyer=None) -> Order:
    """An order whose checkout has started and is waiting for payment."""
    buyer = buyer or UserFactory()
    order, _ = order_create(buyer=buyer, listing=listing, idempotency_key=str(uuid.uuid4()))
    order_checkout_start(order=order)
    return Order.objects.get(pk=order.pk)


def _paid_order(listing, capture, *, confirm=False) -> Order:
    """An order paid through the sandbox's signed events (tasks run eagerly on commit)."""
    buyer = UserFactory()
    with capture(execute=True):
        order = _pending_order(listing, buyer)
        SandboxGateway().session_resolve_and_notify(session_id=order.gateway_session_id, approve=True)
    if confirm:
        with capture(execute=True):
            order_confirm_receipt(order=Order.objects.get(pk=order.pk), actor=buyer)
    order = Order.objects.get(pk=order.pk)
    assert order.status == (OrderStatus.DELIVERED if confirm else OrderStatus.PAID)
    return order


def _money_snapshot(order):
    order.refresh_from_db()
    return (
        order.status,
        order.refunded_amount,
        Refund.objects.count(),
        JournalEntry.objects.count(),
        Posting.objects.count(),
        OrderStatusHistory.objects.filter(order=order).count(),
    )


@pytest.fixture
def submitted(merchant, merchant_user, categories):
    return make_listing(merchant=merchant, owner=merchant_user, title="Bus ridership", status=ListingStatus.SUBMITTED)


@pytest.fixture
def world(published_listing, submitted, django_capture_on_commit_callbacks):
    """One of everything the operations pages show: a review waiting, a paid order, a settlement run and a
    ledger verification."""
    order = _paid_order(published_listing, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        run = settlement_run_start(trigger="test")
    ledger_verify_record(trigger="admin")
    return {
        "review": ListingReview.objects.get(listing=submitted, decision=ReviewDecision.PENDING),
        "order": order,
        "run": run,
        "merchant": published_listing.merchant,
    }


def _pages(world):
    return {
        "index": reverse("admin:index"),
        "review queue": reverse("admin:listings_listingreview_changelist") + "?decision__exact=pending",
        "review page": reverse("admin:listings_listingreview_change", args=[world["review"].pk]),
        "merchant verification": reverse("admin:merchants_merchant_changelist"),
        "merchant page": reverse("admin:merchants_merchant_change", args=[world["merchant"].pk]),
        "orders": reverse("admin:exchange_order_changelist"),
        "order page": reverse("admin:exchange_order_change", args=[world["order"].pk]),
        "order refund": reverse("admin:exchange_order_refund", args=[world["order"].pk]),
        "order cancel": reverse("admin:exchange_order_cancel", args=[world["order"].pk]),
        "settlement runs": reverse("admin:exchange_settlementrun_changelist"),
        "settlement run page": reverse("admin:exchange_settlementrun_change", args=[world["run"].pk]),
        "ledger verification": reverse("admin:exchange_ledgerverification_changelist"),
        "reconciliation": reverse("admin:exchange_reconciliation"),
    }


def test_every_operations_page_renders_for_staff(client, staff, world):
    client.force_login(staff)
    for name, url in _pages(world).items():
        response = client.get(url)
        assert response.status_code == 200, name


@pytest.mark.parametrize("who", ["anonymous", "buyer", "merchant"])
def test_every_operations_page_refuses_non_staff(client, world, who, buyer, merchant_user):
    if who != "anonymous":
        client.force_login({"buyer": buyer, "merchant": merchant_user}[who])
    for name, url in _pages(world).items():
        response = client.get(url)
        assert response.status_code == 302, name
        assert response["Location"].startswith(reverse("admin:login")), name


def test_staff_without_the_refund_permission_cannot_refund(client, world):
    clerk = UserFactory(is_staff=True, email="clerk@example.com")
    clerk.user_permissions.add(Permission.objects.get(codename="view_order"))
    client.force_login(clerk)
    order = world["order"]
    before = _money_snapshot(order)
    page = client.get(reverse("admin:exchange_order_change", args=[order.pk])).content.decode()
    assert reverse("admin:exchange_order_refund", args=[order.pk]) not in page
    assert client.get(reverse("admin:exchange_order_refund", args=[order.pk])).status_code == 403
    response = client.post(
        reverse("admin:exchange_order_refund", args=[order.pk]),
        {"amount": "1.00", "reason": "not mine to give", "token": str(uuid.uuid4())},
    )
    assert response.status_code == 403
    assert _money_snapshot(order) == before


# --- the review page ---------------------------------------------------------------------------


def test_review_page_shows_the_checklist_beside_the_profiling_and_samples(client, staff, submitted):
    client.force_login(staff)
    review = ListingReview.objects.get(listing=submitted)
    html = client.get(reverse("admin:listings_listingreview_change", args=[review.pk])).content.decode()
    grid = html[html.index('class="review-grid"') :]
    product, decision = grid.index("Profiling results"), grid.index("Compliance checklist")
    assert product < decision  # profiling on the left, the checklist on the right
    data_file = DataFile.objects.get(version__listing=submitted)
    for column in data_file.columns:
        assert f"<td>{column['name']}</td><td><code>{column['type']}</code></td>" in grid
        assert f"{round(column['null_ratio'] * 100)} %</td>" in grid
    assert "Sample rows" in grid
    first_row = data_file.sample_rows[0]
    assert all(f"<td>{value}</td>" in grid for value in first_row if value is not None)
    for question in REVIEW_CHECKLIST.values():
        assert question in grid
    assert "admin_ext/admin.css" in html


def test_reject_from_the_review_page_needs_a_reason_then_rejects(client, staff, submitted):
    client.force_login(staff)
    review = ListingReview.objects.get(listing=submitted)
    url = reverse("admin:listings_listingreview_change", args=[review.pk])
    status_before = submitted.status
    bare = client.post(url, {"_reject": "1", "notes": ""})
    assert bare.status_code == 200
    assert '<ul class="errorlist">' in bare.content.decode()
    review.refresh_from_db()
    submitted.refresh_from_db()
    assert (review.decision, submitted.status) == (ReviewDecision.PENDING, status_before)
    done = client.post(url, {"_reject": "1", "notes": "The licence terms are missing."}, follow=True)
    assert "Rejected “Bus ridership”; the merchant has been told why." in done.content.decode()
    review.refresh_from_db()
    submitted.refresh_from_db()
    assert (review.decision, review.reviewer, review.notes) == (
        ReviewDecision.REJECTED,
        staff,
        "The licence terms are missing.",
    )
    assert submitted.status == ListingStatus.REJECTED


def test_approve_from_the_review_page_publishes(client, staff, submitted, django_capture_on_commit_callbacks):
    client.force_login(staff)
    review = ListingReview.objects.get(listing=submitted)
    data = {field: "on" for field in REVIEW_CHECKLIST} | {"_approve": "1", "notes": "Fine."}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:listings_listingreview_change", args=[review.pk]), data)
    assert response.status_code == 302
    review.refresh_from_db()
    submitted.refresh_from_db()
    assert (review.decision, submitted.status) == (ReviewDecision.APPROVED, ListingStatus.PUBLISHED)


# --- merchant verification ---------------------------------------------------------------------


def test_merchant_verification_list_shows_the_evidence_in_a_fixed_number_of_queries(client, staff, merchant):
    from allauth.account.models import EmailAddress

    owner = merchant.members.get().user
    EmailAddress.objects.update_or_create(user=owner, email=owner.email, defaults={"verified": True, "primary": True})
    client.force_login(staff)
    url = reverse("admin:merchants_merchant_changelist")
    with CaptureQueriesContext(connection) as one:
        html = client.get(url).content.decode()
    row = html[html.index("Guiyang Data") :]
    row = row[: row.index("</tr>")]
    assert owner.email in row
    assert row.count('alt="True"') == 1 and row.count('alt="False"') == 1  # email verified; no payout account
    for n in range(3):
        make_merchant(UserFactory(email=f"m{n}@example.com"), name=f"Merchant {n}")
    with CaptureQueriesContext(connection) as four:
        assert client.get(url).status_code == 200
    assert len(four) == len(one)
    unconnected = client.get(url, {"payout_account": "no"}).content.decode()
    assert "Merchant 2" in unconnected and "Guiyang Data" in unconnected
    assert "Guiyang Data" not in client.get(url, {"payout_account": "yes"}).content.decode()


# --- an order: timeline, refund, cancel --------------------------------------------------------


def test_order_page_shows_the_timeline_and_only_the_actions_its_state_allows(
    client, staff, published_listing, django_capture_on_commit_callbacks
):
    paid = _paid_order(published_listing, django_capture_on_commit_callbacks, confirm=True)
    pending = _pending_order(published_listing)
    client.force_login(staff)
    html = client.get(reverse("admin:exchange_order_change", args=[paid.pk])).content.decode()
    timeline = html[html.index('id="order-timeline"') :]
    moves = re.findall(r"</time>([^<]*)", timeline)
    assert moves[0].startswith("— → Pending payment")
    assert any(m.startswith("Pending payment → Paid (held in escrow)") for m in moves)
    assert any(m.startswith("Delivery of version") and m.endswith("ready") for m in moves)
    assert any(m.startswith("Paid (held in escrow) → Delivered") for m in moves)
    assert reverse("admin:exchange_order_refund", args=[paid.pk]) in html
    assert reverse("admin:exchange_order_cancel", args=[paid.pk]) not in html
    html = client.get(reverse("admin:exchange_order_change", args=[pending.pk])).content.decode()
    assert reverse("admin:exchange_order_cancel", args=[pending.pk]) in html
    assert reverse("admin:exchange_order_refund", args=[pending.pk]) not in html


def test_refund_from_the_order_page_goes_through_the_service_once(
    client, staff, published_listing, django_capture_on_commit_callbacks
):
    order = _paid_order(published_listing, django_capture_on_commit_callbacks)
    client.force_login(staff)
    url = reverse("admin:exchange_order_refund", args=[order.pk])
    form = client.get(url)
    assert form.status_code == 200
    token = form.context["form"].initial["token"]
    assert "¥12.34 CNY" in form.content.decode()  # still refundable
    entries = JournalEntry.objects.count()
    data = {"amount": "2.34", "reason": "one file was late", "token": str(token)}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, data, follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:exchange_order_change", args=[order.pk])
    assert "Refund of ¥2.34 CNY for order" in response.content.decode()
    refund = Refund.objects.get()
    assert (refund.amount, refund.status, refund.requested_by, refund.reason) == (
        234,
        RefundStatus.SUCCEEDED,
        staff,
        "one file was late",
    )
    order.refresh_from_db()
    assert (order.status, order.refunded_amount) == (OrderStatus.PARTIALLY_REFUNDED, 234)
    assert JournalEntry.objects.count() == entries + 1
    assert ledger_verify().ok and sum(Posting.objects.values_list("amount", flat=True)) == 0
    # The same form sent again (a double click, a reload) is the same refund: no second one, no new entry.
    before = _money_snapshot(order)
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(url, data)
    assert again.status_code == 302
    assert _money_snapshot(order) == before
    # The timeline now tells the story.
    html = client.get(reverse("admin:exchange_order_change", args=[order.pk])).content.decode()
    assert "Refund ¥2.34 CNY (Succeeded, admin): one file was late" in html


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"amount": "99.99", "reason": "too much"}, "would exceed what was paid"),
        ({"amount": "12,5", "reason": "typo"}, "&#x27;12,5&#x27; is not an amount."),
        ({"amount": "0.001", "reason": "fractions"}, "CNY has at most 2 decimals."),
        ({"amount": "1.00", "reason": "  "}, "This field is required."),
    ],
)
def test_a_bad_refund_shows_the_error_and_changes_nothing(
    client, staff, published_listing, django_capture_on_commit_callbacks, data, message
):
    order = _paid_order(published_listing, django_capture_on_commit_callbacks)
    client.force_login(staff)
    before = _money_snapshot(order)
    response = client.post(
        reverse("admin:exchange_order_refund", args=[order.pk]), {**data, "token": str(uuid.uuid4())}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert _money_snapshot(order) == before


def test_an_unpaid_order_cannot_be_refunded_nor_a_paid_one_cancelled(
    client, staff, published_listing, django_capture_on_commit_callbacks
):
    pending = _pending_order(published_listing)
    paid = _paid_order(published_listing, django_capture_on_commit_callbacks)
    client.force_login(staff)
    before = _money_snapshot(pending)
    refund = client.post(
        reverse("admin:exchange_order_refund", args=[pending.pk]),
        {"amount": "", "reason": "never paid", "token": str(uuid.uuid4())},
    )
    assert refund.status_code == 400
    assert "Pending payment; it cannot be refunded." in refund.content.decode()
    assert _money_snapshot(pending) == before
    before = _money_snapshot(paid)
    cancel = client.post(reverse("admin:exchange_order_cancel", args=[paid.pk]), {"reason": "changed mind"})
    assert cancel.status_code == 400
    assert "Only orders waiting for payment can be cancelled; this one is Paid (held in escrow)." in (
        cancel.content.decode()
    )
    assert _money_snapshot(paid) == before


def test_cancel_from_the_order_page_cancels_an_unpaid_order(client, staff, published_listing):
    order = _pending_order(published_listing)
    client.force_login(staff)
    url = reverse("admin:exchange_order_cancel", args=[order.pk])
    assert "Cancel order" in client.get(url).content.decode()
    response = client.post(url, {"reason": "duplicate checkout"}, follow=True)
    assert f"Order {order.reference} cancelled." in response.content.decode()
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    move = OrderStatusHistory.objects.filter(order=order).last()
    assert (move.to_status, move.actor, move.reason) == (OrderStatus.CANCELLED, staff, "duplicate checkout")
    # A second cancel is refused with the service's message; nothing changes.
    before = _money_snapshot(order)
    again = client.post(url, {"reason": "again"})
    assert again.status_code == 400
    assert "this one is Cancelled" in again.content.decode()
    assert _money_snapshot(order) == before


# --- settlement, ledger, reconciliation --------------------------------------------------------


def test_settlement_run_shows_a_progress_bar_and_totals(
    client, staff, published_listing, django_capture_on_commit_callbacks
):
    _paid_order(published_listing, django_capture_on_commit_callbacks, confirm=True)
    with django_capture_on_commit_callbacks(execute=True):
        run = settlement_run_start(trigger="test")
    client.force_login(staff)
    html = client.get(reverse("admin:exchange_settlementrun_change", args=[run.pk])).content.decode()
    assert '<progress class="run-progress" max="100" value="100">' in html
    assert "1/1 batches (100 %), 1/1 orders" in html
    listing = client.get(reverse("admin:exchange_settlementrun_changelist")).content.decode()
    assert '<progress class="run-progress"' in listing


def test_ledger_verification_and_reconciliation_are_reachable_from_the_admin(
    client, staff, published_listing, django_capture_on_commit_callbacks
):
    _paid_order(published_listing, django_capture_on_commit_callbacks)
    client.force_login(staff)
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:exchange_reconciliation") in index
    assert reverse("admin:exchange_ledgerverification_changelist") in index
    verified = client.post(reverse("admin:exchange_ledgerverification_verify"), follow=True).content.decode()
    assert "Ledger OK" in verified and '<strong class="result-ok">OK</strong>' in verified
    assert reverse("admin:exchange_reconciliation") in verified
    report = client.get(reverse("admin:exchange_reconciliation"), {"gateway": "sandbox"})
    assert report.status_code == 200
    assert "sandbox: 1 matched, 0 differences" in report.content.decode()
    assert "The ledger and the gateway agree." in report.content.decode()
    bad = client.get(reverse("admin:exchange_reconciliation"), {"since": "soon"})
    assert bad.status_code == 400
    assert "&#x27;since&#x27; must be a date written YYYY-MM-DD, not &#x27;soon&#x27;." in bad.content.decode()
    unknown = client.get(reverse("admin:exchange_reconciliation"), {"gateway": "paypal"})
    assert unknown.status_code == 400


def test_admin_templates_keep_to_the_strict_csp():
    """No inline styles or scripts in the admin templates: the stylesheet carries every rule."""
    root = Path(settings.BASE_DIR) / "templates" / "admin"
    for template in root.rglob("*.html"):
        text = template.read_text()
        assert "style=" not in text and "<style" not in text, template
        assert "<script" not in text and "onclick" not in text.lower(), template
    assert (Path(settings.BASE_DIR) / "static" / "admin_ext" / "admin.css").is_file()


# --- the admin in Chinese ----------------------------------------------------------------------


def _zh_ready():
    if "django.middleware.locale.LocaleMiddleware" not in settings.MIDDLEWARE:
        pytest.skip("LocaleMiddleware is not installed yet")


def _chinese(text) -> str:
    """``text`` (a lazy label) in Simplified Chinese; it must really be Chinese, not the English fallback."""
    with translation.override("zh-hans"):
        value = str(text)
    assert re.search(r"[\u4e00-\u9fff]", value), f"{text!s} is not translated"
    return value


@pytest.mark.parametrize("how", ["header", "cookie"])
def test_the_admin_speaks_chinese(client, staff, world, how):
    _zh_ready()
    client.force_login(staff)
    if how == "cookie":
        client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
        headers = {}
    else:
        headers = {"HTTP_ACCEPT_LANGUAGE": "zh-Hans"}
    index = client.get(reverse("admin:index"), **headers).content.decode()
    for model in (Order, Listing, Merchant, Refund, SettlementRun, ListingReview):
        assert escape(_chinese(model._meta.verbose_name_plural).capitalize()) in index, model
    assert _chinese(Merchant._meta.verbose_name_plural) == "数商"  # the exchanges' own word for a data merchant
    assert _chinese(Listing._meta.verbose_name_plural) == "数据产品"
    orders = client.get(reverse("admin:exchange_order_changelist"), **headers).content.decode()
    assert escape(_chinese(OrderStatus.PAID.label)) in orders  # the order's status, a translated choice
    page = client.get(
        reverse("admin:listings_listingreview_change", args=[world["review"].pk]), **headers
    ).content.decode()
    for question in REVIEW_CHECKLIST.values():
        assert escape(_chinese(_(question))) in page
    english = client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    if how == "header":
        assert "Orders" in english and _chinese(Order._meta.verbose_name_plural) not in english
