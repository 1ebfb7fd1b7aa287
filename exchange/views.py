from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header
from django.utils.translation import gettext
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from exchange.choices import SandboxSessionStatus
from exchange.forms import AccessRequestForm, BuyForm
from exchange.gateways import GatewayError, get_gateway
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import AccessRequest, SandboxCheckoutSession
from exchange.selectors import buyer_orders, merchant_payouts, merchant_sales, order_visible
from exchange.services.access import access_request_create, access_request_decide
from exchange.services.connect import merchant_connect_start
from exchange.services.delivery import (
    delivery_receipt_for,
    library_entries,
    receipt_canonical_bytes,
)
from exchange.services.downloads import DownloadDenied, download_resolve
from exchange.services.orders import order_cancel, order_checkout_start, order_confirm_receipt, order_create
from exchange.services.payments import WebhookRejected, webhook_ingest
from exchange.serving import download_response
from exchange.tasks import sandbox_checkout_resolve
from listings.selectors import listing_visible
from merchants.selectors import merchant_for_user

# Read size when a server iterates the download (gunicorn sends local files with sendfile instead).
DOWNLOAD_CHUNK = 1024 * 1024


@login_required
@require_POST
def order_buy(request, slug):
    listing = listing_visible(slug=slug, user=request.user)
    form = BuyForm(request.POST)
    if not form.is_valid():
        if "accept_licence" in form.errors:
            messages.error(
                request, gettext("Accept the data product's licence to buy it: tick “I accept the licence”.")
            )
        if set(form.errors) - {"accept_licence"}:
            messages.error(request, gettext("The purchase form was incomplete; please try again."))
        return redirect("listings:detail", slug=slug)
    plan = None
    if form.cleaned_data.get("plan"):
        plan = listing.plans.filter(pk=form.cleaned_data["plan"]).first()
        if plan is None:
            messages.error(request, gettext("That pricing plan is not available for this data product."))
            return redirect("listings:detail", slug=slug)
    try:
        # One form token per page; each plan's button makes its own purchase, a double click the same one.
        key = f"{form.cleaned_data['token']}:{plan.pk}" if plan else str(form.cleaned_data["token"])
        order, _ = order_create(buyer=request.user, listing=listing, idempotency_key=key, plan=plan)
        url = order_checkout_start(order=order)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("listings:detail", slug=slug)
    except GatewayError as exc:
        messages.error(
            request,
            gettext("The payment provider could not start the checkout: %(error)s. Please try again.") % {"error": exc},
        )
        return redirect("listings:detail", slug=slug)
    return redirect(url)


@login_required
def order_detail(request, public_id):
    order = order_visible(public_id=public_id, user=request.user)
    return render(
        request,
        "exchange/order_detail.html",
        {"order": order, "history": order.history.all(), "is_buyer": order.buyer_id == request.user.pk},
    )


@login_required
def library(request):
    """The buyer's purchases: each entitlement, its deliveries, files with fresh signed links, receipts."""
    return render(
        request,
        "exchange/library.html",
        {"entries": library_entries(user=request.user), "orders": buyer_orders(user=request.user)[:50]},
    )


def _receipt_or_404(request, pk: int):
    # Anonymous visitors, other buyers and merchants get the same 404 as a missing receipt: nothing leaks.
    delivery = delivery_receipt_for(pk=pk, user=request.user)
    if delivery is None:
        raise Http404("No such receipt.")
    return delivery


def receipt_json(request, pk):
    """The delivery receipt exactly as issued (canonical JSON); its SHA-256 is in ``X-Receipt-SHA256``."""
    delivery = _receipt_or_404(request, pk)
    return HttpResponse(
        receipt_canonical_bytes(delivery.receipt),
        content_type="application/json",
        headers={
            "Content-Disposition": content_disposition_header(True, f"receipt-{delivery.pk}.json"),
            "X-Receipt-SHA256": delivery.receipt_sha256,
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def receipt_page(request, pk):
    """The receipt's facts for people, with how to check them with sha256sum."""
    delivery = _receipt_or_404(request, pk)
    return render(
        request,
        "exchange/receipt.html",
        {"delivery": delivery, "receipt": delivery.receipt, "filename": f"receipt-{delivery.pk}.json"},
    )


@login_required
@require_http_methods(["GET", "HEAD"])
def download(request, token):
    """Serve a purchased file through its signed link (exchange.serving); the first complete download confirms it.

    Every refusal (tampered, expired, another buyer's, access ended, unsafe path...) is a 403 with a
    page saying why and a way back to the library; nothing is logged or confirmed then.
    """
    try:
        delivery, data_file = download_resolve(token=token, user=request.user)
    except DownloadDenied as exc:
        return render(request, "exchange/download_denied.html", {"reason": str(exc)}, status=403)
    return download_response(request, delivery=delivery, data_file=data_file, chunk=DOWNLOAD_CHUNK)


@csrf_exempt
@require_POST
def webhook(request, gateway):
    """Gateway notifications: verified on the raw body, stored once, processed by a worker."""
    try:
        event, created = webhook_ingest(
            gateway_name=gateway,
            body=request.body,
            signature_header=request.headers.get("Stripe-Signature"),
            schedule_in_background=True,
        )
    except WebhookRejected as exc:
        return JsonResponse({"error": {"code": "webhook_rejected", "message": str(exc)}}, status=400)
    return JsonResponse({"received": True, "id": event.event_id, "duplicate": not created})


def sandbox_checkout(request, session_id):
    """The sandbox gateway's hosted checkout page (what Stripe Checkout would be)."""
    if get_gateway().name != "sandbox":
        raise Http404("The sandbox gateway is not enabled.")
    session = get_object_or_404(SandboxCheckoutSession, pk=session_id)
    if request.method == "POST" and session.status == SandboxSessionStatus.OPEN:
        decision = request.POST.get("decision")
        if decision not in ("approve", "decline", "approve_later"):
            messages.error(request, gettext("Choose approve or decline."))
            return redirect(request.path)
        if decision == "approve_later":
            # The provider answers later, like a bank transfer clearing: a task notifies the app.
            sandbox_checkout_resolve.apply_async((session.pk, True), countdown=settings.SANDBOX_DELAY_SECONDS)
            messages.info(
                request,
                gettext("The sandbox will confirm this payment in %(seconds)s seconds.")
                % {"seconds": settings.SANDBOX_DELAY_SECONDS},
            )
            return redirect(session.success_url)
        approve = decision == "approve"
        try:
            SandboxGateway().session_resolve_and_notify(session_id=session.pk, approve=approve)
        except GatewayError as exc:
            messages.error(request, str(exc))
            return redirect(request.path)
        return redirect(session.success_url if approve else session.cancel_url)
    return render(request, "exchange/sandbox_checkout.html", {"session": session})


@login_required
@require_POST
def order_action(request, public_id, action):
    """Buyer actions on an order: confirm receipt (releases escrow) or cancel while unpaid."""
    order = order_visible(public_id=public_id, user=request.user)
    if order.buyer_id != request.user.pk:
        raise Http404("No such order.")
    try:
        if action == "confirm":
            order_confirm_receipt(order=order, actor=request.user)
            messages.success(request, gettext("Thank you: receipt confirmed, the payment is released to the merchant."))
        elif action == "cancel":
            order_cancel(order=order, actor=request.user)
            messages.success(request, gettext("Order cancelled; nothing was charged."))
        else:
            raise Http404("No such action.")
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    return redirect("exchange:order_detail", public_id=order.public_id)


@login_required
@require_POST
def access_request_new(request, slug):
    listing = listing_visible(slug=slug, user=request.user)
    form = AccessRequestForm(request.POST)
    if form.is_valid():
        try:
            access_request_create(listing=listing, buyer=request.user, **form.cleaned_data)
        except ValidationError as exc:
            for message in exc.messages:
                messages.error(request, message)
        else:
            messages.success(
                request, gettext("Request sent. The merchant will answer within a few days; you will see it here.")
            )
    else:
        for errors in form.errors.values():
            for message in errors:
                messages.error(request, message)
    return redirect("listings:detail", slug=slug)


@login_required
def access_requests(request):
    """The merchant's queue of access requests to approve or reject."""
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        raise Http404("You are not a merchant.")
    if request.method == "POST":
        item = get_object_or_404(AccessRequest, pk=request.POST.get("request"), listing__merchant=merchant)
        try:
            access_request_decide(
                request=item,
                actor=request.user,
                approve=request.POST.get("decision") == "approve",
                note=request.POST.get("note", ""),
            )
        except ValidationError as exc:
            for message in exc.messages:
                messages.error(request, message)
        else:
            messages.success(request, gettext("Decision saved; the buyer can see it."))
        return redirect("exchange:access_requests")
    items = AccessRequest.objects.filter(listing__merchant=merchant).select_related("listing", "buyer")[:200]
    return render(request, "exchange/access_requests.html", {"merchant": merchant, "items": items})


@login_required
def connect_onboarding(request):
    """Stripe Connect (Express) onboarding for the merchant's payouts."""
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        raise Http404("You are not a merchant.")
    gateway = get_gateway()
    if request.method == "POST":
        if gateway.name != "stripe":
            messages.info(request, gettext("The sandbox pays merchants without an account; nothing to connect."))
            return redirect("exchange:connect")
        try:
            url = merchant_connect_start(merchant=merchant, actor=request.user)
        except (ValidationError, GatewayError) as exc:
            messages.error(request, str(exc))
            return redirect("exchange:connect")
        return redirect(url)
    return render(request, "exchange/connect.html", {"merchant": merchant, "gateway": gateway.name})


@login_required
def sales(request):
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        raise Http404("You are not a merchant.")
    from exchange.sales_charts import sales_charts_for_request  # local: keeps this change out of the shared imports

    charts = sales_charts_for_request(merchant=merchant, params=request.GET)  # a bad ?days= is a 400 with its message
    return render(
        request,
        "exchange/sales.html",
        {
            "merchant": merchant,
            "orders": merchant_sales(merchant=merchant)[:100],
            "payouts": merchant_payouts(merchant=merchant)[:100],
            "charts": charts,
        },
        status=charts.status_code,
    )
