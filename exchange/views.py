from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from exchange.choices import SandboxSessionStatus
from exchange.forms import BuyForm
from exchange.gateways import GatewayError, get_gateway
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import SandboxCheckoutSession
from exchange.selectors import buyer_library, buyer_orders, merchant_payouts, merchant_sales, order_visible
from exchange.services.delivery import (
    DownloadDenied,
    delivery_confirm,
    download_link_make,
    download_log_finish,
    download_log_start,
    download_resolve,
)
from exchange.services.orders import order_checkout_start, order_create
from exchange.services.payments import WebhookRejected, webhook_ingest
from listings.selectors import listing_visible
from merchants.selectors import merchant_for_user

DOWNLOAD_CHUNK = 256 * 1024


@login_required
@require_POST
def order_buy(request, slug):
    listing = listing_visible(slug=slug, user=request.user)
    form = BuyForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The purchase form was incomplete; please try again.")
        return redirect("listings:detail", slug=slug)
    try:
        order, _ = order_create(buyer=request.user, listing=listing, idempotency_key=str(form.cleaned_data["token"]))
        url = order_checkout_start(order=order)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
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
    entitlements = list(buyer_library(user=request.user))
    rows = []
    for entitlement in entitlements:
        for delivery in entitlement.deliveries.all():
            files = [
                (f, download_link_make(delivery=delivery, file=f, user=request.user))
                for f in delivery.version.files.all()
            ]
            rows.append((entitlement, delivery, files))
    return render(
        request,
        "exchange/library.html",
        {"entitlements": entitlements, "rows": rows, "orders": buyer_orders(user=request.user)[:50]},
    )


def _client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR")


@login_required
def download(request, token):
    """Stream a purchased file; the first complete download confirms delivery."""
    try:
        delivery, data_file = download_resolve(token=token, user=request.user)
    except DownloadDenied as exc:
        return render(request, "exchange/download_denied.html", {"reason": str(exc)}, status=403)
    headers = {
        "Content-Disposition": content_disposition_header(True, data_file.original_name),
        "Content-Length": str(data_file.size),
        "X-Content-SHA256": data_file.sha256,
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if request.method == "HEAD":
        return HttpResponse(content_type=data_file.content_type, headers=headers)
    log = download_log_start(delivery=delivery, file=data_file, user=request.user, ip_address=_client_ip(request))

    def stream():
        sent = 0
        completed = False
        try:
            with default_storage.open(data_file.file.name, "rb") as handle:
                while chunk := handle.read(DOWNLOAD_CHUNK):
                    sent += len(chunk)
                    yield chunk
            completed = sent == data_file.size
            if completed:
                delivery_confirm(delivery_pk=delivery.pk, reason="first complete download")
        finally:
            download_log_finish(log_pk=log.pk, bytes_sent=sent, completed=completed)

    return StreamingHttpResponse(stream(), content_type=data_file.content_type, headers=headers)


@csrf_exempt
@require_POST
def webhook(request, gateway):
    """Gateway notifications: verified on the raw body, stored once, processed by a worker."""
    try:
        event, created = webhook_ingest(
            gateway_name=gateway, body=request.body, signature_header=request.headers.get("Stripe-Signature")
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
        approve = request.POST.get("decision") == "approve"
        gateway = SandboxGateway()
        try:
            body, signature = gateway.session_resolve(session_id=session.pk, approve=approve)
        except GatewayError as exc:
            messages.error(request, str(exc))
            return redirect(request.path)
        # Hand the signed event to the same ingestion the webhook endpoint uses.
        with transaction.atomic():
            webhook_ingest(gateway_name=gateway.name, body=body, signature_header=signature)
        return redirect(session.success_url if approve else session.cancel_url)
    return render(request, "exchange/sandbox_checkout.html", {"session": session})


@login_required
def sales(request):
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        raise Http404("You are not a merchant.")
    return render(
        request,
        "exchange/sales.html",
        {
            "merchant": merchant,
            "orders": merchant_sales(merchant=merchant)[:100],
            "payouts": merchant_payouts(merchant=merchant)[:100],
        },
    )
