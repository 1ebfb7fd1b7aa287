"""The whole trade in a real browser, on a laptop and on a phone.

A merchant signs up, onboards, creates a product, uploads a CSV (watching the progress bar) and submits
it; a reviewer approves it in the admin; a buyer signs up, finds it by searching the catalog, pays in the
sandbox gateway, downloads the file and opens the receipt; the merchant sees the sale on the sales chart;
after settlement the payout shows on the statement. Real Celery workers do the background work.
"""

import hashlib
import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from common.money import format_minor
from exchange.choices import OrderStatus, PayoutStatus, SettlementRunStatus
from exchange.models import Order, Payout, SettlementRun
from exchange.services.settlement import settlement_run_start
from listings.choices import ListingStatus, ProfileStatus
from listings.models import DataFile, Listing, ListingVersion
from tests.e2e.conftest import ACTION_TIMEOUT_MS, activate, email_link, wait_for
from tests.factories import PASSWORD, UserFactory, make_listing, make_merchant

pytestmark = [pytest.mark.system, pytest.mark.e2e, pytest.mark.timeout(150)]

TITLE = "Guiyang rail passengers"
CONTENT = (
    "station,date,passengers\n贵阳北站,2025-01-01,51234\n贵阳东站,2025-01-01,20417\n上海虹桥,2025-01-01,301234\n"
).encode()
SIGNUP_PASSWORD = "a-long-unusual-pass-42"
# How long the background work (profiling, payment event, delivery, settlement) may take, in seconds.
WORK_TIMEOUT = 45

expect.set_options(timeout=ACTION_TIMEOUT_MS)


def follow_menu(page, name: str) -> None:
    """Follow a main-menu link; on a phone the links sit behind the Menu button."""
    link = page.get_by_role("link", name=name, exact=True).filter(visible=True)
    if link.count() == 0:
        page.locator("summary").filter(has_text="Menu").click()
        expect(link.first).to_be_visible()
    link.first.click()


def signed_in(page):
    """The Sign out button (in the menu, which may be folded away on a phone)."""
    return page.get_by_role("button", name="Sign out", include_hidden=True)


def sign_up(page, email: str) -> None:
    """Sign up through allauth, confirm the email from the message sent, and end up signed in."""
    page.goto("/")
    follow_menu(page, "Sign up")
    page.get_by_label(re.compile(r"^Email:?$")).fill(email)
    page.get_by_label(re.compile(r"^Password:?$")).fill(SIGNUP_PASSWORD)
    page.get_by_label(re.compile(r"^Password \(again\):?$")).fill(SIGNUP_PASSWORD)
    page.get_by_role("button", name="Sign Up").click()
    expect(page.get_by_role("heading", name="Verify Your Email Address")).to_be_visible()

    link = email_link(to=email, pattern=r"https?://\S+/accounts/confirm-email/\S+/")
    page.goto(link)
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(lambda url: "/confirm-email/" not in url)
    if signed_in(page).count() == 0:
        # Confirming does not sign in everywhere: sign in with the new password.
        page.goto("/accounts/login/")
        page.get_by_label(re.compile(r"^Email:?$")).fill(email)
        page.get_by_label(re.compile(r"^Password:?$")).fill(SIGNUP_PASSWORD)
        page.get_by_role("button", name="Sign In").click()
    expect(page.get_by_text(f"Successfully signed in as {email}.")).to_be_visible()
    expect(signed_in(page).first).to_be_attached()


def record_upload_progress(page) -> list[dict]:
    """Record every change of the upload form's <progress> and status line, as the page makes them."""
    samples: list[dict] = []
    page.expose_function(
        "e2eUploadProgress",
        lambda value, maximum, hidden, status: samples.append(
            {"value": value, "max": maximum, "hidden": hidden, "status": status}
        ),
    )
    page.evaluate(
        """() => {
          const form = document.querySelector("form[data-upload]");
          const progress = form.querySelector("progress");
          const status = form.querySelector("[data-upload-status]");
          const report = () => window.e2eUploadProgress(
            progress.value, progress.max, progress.hidden, status ? status.textContent : "");
          new MutationObserver(report).observe(form, {subtree: true, attributes: true, childList: true,
                                                       characterData: true});
        }"""
    )
    return samples


def reload_until(page, locator, *, timeout: float = WORK_TIMEOUT, message: str) -> None:
    """Reload ``page`` until ``locator`` is visible (the background work shows up on the next load)."""

    def visible():
        if locator.count() and locator.first.is_visible():
            return True
        page.wait_for_timeout(500)
        page.reload()
        return False

    wait_for(visible, timeout=timeout, interval=0, message=message)


def merchant_creates_and_submits(web, page, email: str) -> Listing:
    sign_up(page, email)
    follow_menu(page, "Merchant console")
    # A new user is sent to create a merchant organisation first.
    expect(page.get_by_role("heading", name="Create your merchant organisation")).to_be_visible()
    page.get_by_label("Name").fill("Qianlong Rail Data")
    page.get_by_role("button", name="Create organisation").click()
    expect(page.get_by_role("heading", name=re.compile("Qianlong Rail Data — merchant console"))).to_be_visible()

    page.get_by_role("link", name="New data product").click()
    page.get_by_label("Title").fill(TITLE)
    page.get_by_label("Summary").fill("Daily passengers at Guizhou and Shanghai stations")
    page.get_by_label("Category").select_option(label="Transport")
    page.get_by_role("button", name="Create draft").click()
    expect(page.get_by_role("heading", name=TITLE)).to_be_visible()
    listing = Listing.objects.get(title=TITLE)

    price_form = page.locator("form").filter(has=page.get_by_role("button", name="Save price"))
    price_form.get_by_label("Price").fill("25.00")
    price_form.get_by_label("Currency").select_option("CNY")
    price_form.get_by_role("button", name="Save price").click()
    expect(page.get_by_text("Price saved.")).to_be_visible()

    # An empty file is refused in the form (the server answers 400, which the console reports) and adds nothing.
    file_input = page.get_by_label(re.compile(r"^File:?$"))
    with web.problems.expecting(r"status of 400"):
        file_input.set_input_files({"name": "empty.csv", "mimeType": "text/csv", "buffer": b""})
        page.get_by_role("button", name="Upload").click()
        expect(page.get_by_role("alert")).to_have_text("The submitted file is empty.")
    assert not ListingVersion.objects.filter(listing=listing).exists()

    # The upload goes through static/js/upload.js, which drives the <progress> bar.
    samples = record_upload_progress(page)
    file_input.set_input_files({"name": "passengers.csv", "mimeType": "text/csv", "buffer": CONTENT})
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_text("Uploaded v1.")).to_be_visible()
    assert any(not s["hidden"] for s in samples), samples
    assert any(s["max"] and s["value"] == s["max"] and s["status"] == "100% uploaded" for s in samples), samples

    # A worker profiles the file; the manage page shows the result on a later load.
    reload_until(page, page.get_by_text("Profiled", exact=True), message="the worker to profile the upload")
    assert DataFile.objects.get(version__listing=listing).profile_status == ProfileStatus.DONE
    expect(page.locator(".file-facts")).to_contain_text(hashlib.sha256(CONTENT).hexdigest())
    web.screenshot(page, "manage-upload")

    page.get_by_role("button", name="Submit for review").click()
    expect(page.get_by_text("Submitted for compliance review.")).to_be_visible()
    listing.refresh_from_db()
    assert listing.status == ListingStatus.SUBMITTED
    return listing


def reviewer_approves(web, page, reviewer_email: str) -> None:
    page.goto("/admin/")
    page.get_by_label("Email").fill(reviewer_email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Listing reviews").first.click()
    page.get_by_role("link", name=TITLE).click()
    expect(page.get_by_role("heading", name=f"Review: {TITLE}").first).to_be_visible()
    checklist = page.get_by_role("group", name="Compliance checklist")
    for box in checklist.get_by_role("checkbox").all():
        box.check()
    web.screenshot(page, "admin-review")
    activate(page, page.get_by_role("button", name="Approve and publish"))
    expect(page.get_by_text(f"Approved and published “{TITLE}”.")).to_be_visible()


def buyer_searches(web, page) -> None:
    """Type in the catalog's search box; works with htmx instant results and with the plain form."""
    follow_menu(page, "Catalog")
    decoy = page.get_by_role("link", name="City populations")
    expect(decoy).to_be_visible()
    box = page.get_by_role("searchbox", name="Search data products")
    box.press_sequentially("rail passengers", delay=30)
    try:
        # Instant results (htmx) replace the cards while typing.
        expect(decoy).to_be_hidden(timeout=3000)
    except AssertionError:
        box.press("Enter")
    expect(decoy).to_be_hidden()
    expect(page.get_by_role("link", name=TITLE)).to_be_visible()
    # Either way the address holds the search, so it can be shared and reloaded.
    expect(page).to_have_url(re.compile(r"[?&]q=rail(\+|%20)passengers"))
    web.screenshot(page, "catalog")
    page.get_by_role("link", name=TITLE).click()


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_trade_in_the_browser(web, viewport, celery_worker_process, categories):
    reviewer = UserFactory(email="reviewer@example.com", is_staff=True, is_superuser=True)
    # Another published product, so the search has something to leave out.
    other_seller = UserFactory(email="other-seller@example.com")
    make_listing(merchant=make_merchant(other_seller, name="Census Data"), owner=other_seller, reviewer=reviewer)

    merchant_page = web.page("merchant")
    listing = merchant_creates_and_submits(web, merchant_page, "seller@example.com")

    reviewer_approves(web, web.page("reviewer"), reviewer.email)
    listing.refresh_from_db()
    assert listing.status == ListingStatus.PUBLISHED

    buyer = web.page("buyer")
    sign_up(buyer, "buyer@example.com")
    buyer_searches(web, buyer)
    expect(buyer.get_by_role("heading", name=TITLE, level=1)).to_be_visible()
    web.screenshot(buyer, "listing")

    # The licence is accepted explicitly: without the tick the browser keeps the form (the box is required).
    licence = buyer.get_by_label("I accept the licence: CC BY 4.0")
    expect(licence).not_to_be_checked()
    licence.check()
    buyer.get_by_role("button", name="Buy now").click()
    expect(buyer.get_by_role("heading", name="Sandbox payment gateway")).to_be_visible()
    order = Order.objects.get(listing=listing)
    expect(buyer.locator(".price")).to_have_text(format_minor(order.amount, order.currency))
    web.screenshot(buyer, "checkout")
    buyer.get_by_role("button", name="Approve payment").click()
    expect(buyer.get_by_role("heading", name=re.compile(f"Order {order.reference}"))).to_be_visible()
    # The worker applies the payment event; the order page refreshes itself while the payment is pending.
    expect(buyer.get_by_role("heading", name=re.compile("Paid"))).to_be_visible(timeout=WORK_TIMEOUT * 1000)
    web.screenshot(buyer, "order")

    follow_menu(buyer, "My library")
    download_link = buyer.get_by_role("link", name="passengers.csv")
    reload_until(buyer, download_link, message="the worker to prepare the delivery")
    web.screenshot(buyer, "library")
    with buyer.expect_download() as download_info:
        activate(buyer, download_link)
    download = download_info.value
    assert download.suggested_filename == "passengers.csv"
    with open(download.path(), "rb") as downloaded:
        assert hashlib.sha256(downloaded.read()).hexdigest() == hashlib.sha256(CONTENT).hexdigest()
    wait_for(
        lambda: Order.objects.get(pk=order.pk).status == OrderStatus.DELIVERED,
        timeout=WORK_TIMEOUT,
        message="the complete download to confirm the delivery",
    )

    activate(buyer, buyer.get_by_role("link", name="View").first)
    expect(buyer.get_by_role("heading", name="Delivery receipt")).to_be_visible()
    expect(buyer.get_by_role("cell", name=hashlib.sha256(CONTENT).hexdigest())).to_be_visible()
    web.screenshot(buyer, "receipt")

    # The merchant sees the sale, and today's bar of the sales chart carries its amount.
    follow_menu(merchant_page, "Merchant console")
    merchant_page.get_by_role("link", name="Sales and payouts").click()
    expect(merchant_page.get_by_role("link", name=order.reference)).to_be_visible()
    web.screenshot(merchant_page, "sales")
    chart = merchant_page.locator('figure.chart[data-chart="sales-per-day"]')
    today = timezone.localdate(order.created_at).isoformat()
    expect(chart.locator(f'rect[data-date="{today}"][data-amount-minor="{order.amount}"]')).to_have_count(1)

    # Settlement (the settlement workers execute the run), then the payout on the statement.
    run = settlement_run_start(trigger="e2e")
    wait_for(
        lambda: SettlementRun.objects.get(pk=run.pk).status == SettlementRunStatus.COMPLETED,
        timeout=WORK_TIMEOUT,
        message="the settlement run",
    )
    payout = wait_for(
        lambda: Payout.objects.filter(status=PayoutStatus.SENT).first(), timeout=WORK_TIMEOUT, message="the payout"
    )
    merchant_page.reload()
    merchant_page.get_by_role("link", name="Statements").click()
    expect(merchant_page.get_by_role("heading", name=re.compile("statement"))).to_be_visible()
    rows = merchant_page.get_by_role("row")
    expect(rows.filter(has_text=f"payout {payout.pk}")).to_contain_text(format_minor(-payout.amount, payout.currency))
    expect(rows.filter(has_text="Payouts sent in the period")).to_contain_text(
        format_minor(payout.amount, payout.currency)
    )
    web.screenshot(merchant_page, "statement")

    web.problems.assert_none()
