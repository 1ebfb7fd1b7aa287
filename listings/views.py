import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from listings.forms import ListingCreateForm, PriceForm, VersionUploadForm
from listings.selectors import (
    catalog_search,
    listing_active_plan,
    listing_for_member,
    listing_latest_files,
    listing_visible,
    listings_published,
)
from listings.services import listing_create, listing_submit, pricing_plan_set, version_upload
from merchants.models import Merchant
from merchants.selectors import merchant_for_user, merchant_is_member


def catalog(request):
    query = request.GET.get("q", "")
    listings = catalog_search(query=query).prefetch_related("plans")[:50]
    return render(request, "listings/catalog.html", {"listings": listings, "query": query})


def listing_detail(request, slug):
    listing = listing_visible(slug=slug, user=request.user)
    is_member = merchant_is_member(merchant=listing.merchant, user=request.user)
    return render(
        request,
        "listings/detail.html",
        {
            "listing": listing,
            "plan": listing_active_plan(listing=listing),
            "files": listing_latest_files(listing=listing, published_only=not is_member),
            "is_member": is_member,
            # One-time token: becomes the order's idempotency key (double submits buy once).
            "buy_token": uuid.uuid4(),
        },
    )


def merchant_profile(request, slug):
    merchant = get_object_or_404(Merchant, slug=slug)
    listings = listings_published().filter(merchant=merchant).prefetch_related("plans")
    return render(request, "listings/merchant_profile.html", {"merchant": merchant, "listings": listings})


def _merchant_or_onboard(request):
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        return None, redirect(f"{reverse('merchants:onboard')}?next={reverse('listings:console')}")
    return merchant, None


@login_required
def console(request):
    merchant, response = _merchant_or_onboard(request)
    if response:
        return response
    listings = merchant.listings.order_by("-created_at").prefetch_related("plans")
    return render(request, "listings/console.html", {"merchant": merchant, "listings": listings})


@login_required
def listing_new(request):
    merchant, response = _merchant_or_onboard(request)
    if response:
        return response
    form = ListingCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            listing = listing_create(merchant=merchant, actor=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Draft created. Upload a CSV file and set a price, then submit it for review.")
            return redirect("listings:manage", pk=listing.pk)
    return render(request, "listings/new.html", {"form": form})


def _render_manage(request, listing, *, upload_form=None, price_form=None, status=200):
    plan = listing_active_plan(listing=listing)
    return render(
        request,
        "listings/manage.html",
        {
            "listing": listing,
            "versions": listing.versions.prefetch_related("files"),
            "plan": plan,
            "history": listing.history.select_related("actor"),
            "upload_form": upload_form or VersionUploadForm(),
            "price_form": price_form
            or PriceForm(initial={"price": plan and plan.amount / 100, "currency": plan and plan.currency}),
        },
        status=status,
    )


@login_required
def listing_manage(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    return _render_manage(request, listing)


@login_required
@require_POST
def listing_upload(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    form = VersionUploadForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            version = version_upload(
                listing=listing,
                actor=request.user,
                uploaded_file=form.cleaned_data["file"],
                changelog=form.cleaned_data["changelog"],
            )
        except ValidationError as exc:
            form.add_error("file", exc)
        else:
            messages.success(request, f"Uploaded {version.label}.")
            return redirect("listings:manage", pk=listing.pk)
    return _render_manage(request, listing, upload_form=form, status=400)


@login_required
@require_POST
def listing_price(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    form = PriceForm(request.POST)
    if form.is_valid():
        try:
            pricing_plan_set(
                listing=listing,
                actor=request.user,
                amount=form.cleaned_data["amount"],
                currency=form.cleaned_data["currency"],
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Price saved.")
            return redirect("listings:manage", pk=listing.pk)
    return _render_manage(request, listing, price_form=form, status=400)


@login_required
@require_POST
def listing_submit_view(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    try:
        listing_submit(listing=listing, actor=request.user)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, "Submitted for compliance review. You will see the outcome here.")
    return redirect("listings:manage", pk=listing.pk)
