import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from listings.choices import EDITABLE_STATUSES, ListingStatus, PlanKind
from listings.filters import ListingFilter
from listings.forms import DataDictionaryForm, ListingForm, PlanForm, PriceForm, VersionUploadForm
from listings.models import PricingPlan
from listings.selectors import (
    listing_active_plan,
    listing_for_member,
    listing_manage_versions,
    listing_page,
    listing_visible,
    listings_published,
    version_columns,
)
from listings.services import (
    data_dictionary_update,
    listing_create,
    listing_submit,
    listing_update,
    pricing_plan_create,
    pricing_plan_deactivate,
    pricing_plan_set,
    version_publish,
    version_upload,
)
from listings.services.products import DICTIONARY_EDITABLE_STATUSES, listing_submission_problems
from merchants.models import Merchant
from merchants.selectors import merchant_for_user, merchant_is_member


def catalog(request):
    """The public catalog: search, facets with counts, sorting and cursor pages (one FilterSet with the API)."""
    filterset = ListingFilter(request.GET, queryset=listings_published(), request=request)
    if not filterset.is_valid():
        # Bad parameters change nothing: show what was wrong and a way back, with a 400.
        context = {"filterset": filterset, "errors": filterset.error_list(), "params": {}, "page": None}
        return render(request, "listings/catalog.html", context, status=400)
    page = filterset.page()
    context = {
        "filterset": filterset,
        "page": page,
        "params": filterset.active_filters(),
        "facet_groups": filterset.facet_groups(page),
        "errors": None,
    }
    return render(request, "listings/catalog.html", context)


def listing_detail(request, slug):
    listing = listing_visible(slug=slug, user=request.user)
    is_member = merchant_is_member(merchant=listing.merchant, user=request.user)
    # Members preview what is not published yet; everyone else sees the published versions only.
    page = listing_page(listing=listing, published_only=not is_member)
    return render(
        request,
        "listings/detail.html",
        {
            "listing": listing,
            **page,
            "is_member": is_member,
            # One-time token: becomes the order's idempotency key (double submits buy once).
            "buy_token": uuid.uuid4(),
        },
    )


def merchant_profile(request, slug):
    merchant = get_object_or_404(Merchant, slug=slug)
    listings = listings_published().filter(merchant=merchant).select_related("category").prefetch_related("plans")
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
    form = ListingForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                listing = listing_create(merchant=merchant, actor=request.user, **form.cleaned_data)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(
                    request, "Draft created. Upload a CSV file and set a price, then submit it for review."
                )
                return redirect("listings:manage", pk=listing.pk)
        return render(request, "listings/new.html", {"form": form}, status=400)
    return render(request, "listings/new.html", {"form": form})


@login_required
def listing_edit(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    if listing.status not in EDITABLE_STATUSES:
        messages.error(request, "Only a draft or a rejected product can be edited.")
        return redirect("listings:manage", pk=listing.pk)
    if request.method != "POST":
        form = ListingForm(initial=ListingForm.initial_for(listing))
        return render(request, "listings/edit.html", {"form": form, "listing": listing})
    form = ListingForm(request.POST)
    if form.is_valid():
        try:
            listing_update(listing=listing, actor=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Product details saved.")
            return redirect("listings:manage", pk=listing.pk)
    return render(request, "listings/edit.html", {"form": form, "listing": listing}, status=400)


def _render_manage(
    request, listing, *, upload_form=None, price_form=None, plan_form=None, dictionary_form=None, status=200
):
    plan = listing_active_plan(listing=listing)
    versions = listing_manage_versions(listing=listing)
    latest = versions[0]["version"] if versions else None
    plan_forms = [PlanForm(kind=kind) for kind in PlanKind.values]
    if plan_form is not None:
        plan_forms = [plan_form if form.kind == plan_form.kind else form for form in plan_forms]
    if dictionary_form is None:
        dictionary_form = DataDictionaryForm(
            columns=version_columns(version=latest) if latest else [], dictionary=listing.data_dictionary
        )
    return render(
        request,
        "listings/manage.html",
        {
            "listing": listing,
            "versions": versions,
            "plan": plan,
            "plans": listing.plans.order_by("-is_active", "kind", "amount", "pk"),
            "history": listing.history.select_related("actor"),
            "reviews": listing.reviews.select_related("reviewer", "version"),
            "can_edit": listing.status in EDITABLE_STATUSES,
            # Published products take new versions, which the merchant publishes once profiled.
            "can_upload": listing.status in EDITABLE_STATUSES or listing.status == ListingStatus.PUBLISHED,
            "submission_problems": listing_submission_problems(listing=listing),
            "can_edit_dictionary": listing.status in DICTIONARY_EDITABLE_STATUSES,
            "upload_form": upload_form or VersionUploadForm(),
            "price_form": price_form
            or PriceForm(initial={"price": plan and plan.amount / 100, "currency": plan and plan.currency}),
            "plan_forms": plan_forms,
            "dictionary_form": dictionary_form,
        },
        status=status,
    )


@login_required
def listing_manage(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    return _render_manage(request, listing)


def _wants_json(request) -> bool:
    # Set by static/js/upload.js; a plain form post (no JavaScript) gets the HTML flow.
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"


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
            if _wants_json(request):
                return JsonResponse({"ok": True, "redirect": reverse("listings:manage", args=[listing.pk])})
            return redirect("listings:manage", pk=listing.pk)
    if _wants_json(request):
        errors = [message for messages_ in form.errors.values() for message in messages_]
        return JsonResponse({"ok": False, "errors": errors}, status=400)
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
def listing_plan_add(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    kind = request.POST.get("kind", "")
    if kind not in PlanKind.values:
        messages.error(request, "Choose a kind of plan.")
        return redirect("listings:manage", pk=listing.pk)
    form = PlanForm(request.POST, kind=kind)
    if form.is_valid():
        try:
            plan = pricing_plan_create(listing=listing, actor=request.user, **form.service_kwargs())
        except ValidationError as exc:
            _add_service_error(form, exc)
        else:
            messages.success(request, f"Plan added: {plan.display_name} {plan.price_display}.")
            return redirect("listings:manage", pk=listing.pk)
    return _render_manage(request, listing, plan_form=form, status=400)


def _add_service_error(form, exc: ValidationError) -> None:
    """Put a service's errors on the form: on their field when the form has it, else on the form."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.error_dict.items():
        form.add_error(field if field in form.fields else None, errors)


@login_required
@require_POST
def listing_plan_deactivate(request, pk, plan_pk):
    listing = listing_for_member(pk=pk, user=request.user)
    plan = get_object_or_404(PricingPlan, pk=plan_pk, listing=listing)
    try:
        pricing_plan_deactivate(plan=plan, actor=request.user)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"Plan withdrawn: {plan.display_name} {plan.price_display}.")
    return redirect("listings:manage", pk=listing.pk)


@login_required
@require_POST
def listing_dictionary(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    versions = listing_manage_versions(listing=listing)
    columns = version_columns(version=versions[0]["version"]) if versions else []
    form = DataDictionaryForm(request.POST, columns=columns, dictionary=listing.data_dictionary)
    if form.is_valid():
        try:
            data_dictionary_update(listing=listing, actor=request.user, descriptions=form.descriptions())
        except ValidationError as exc:
            form.add_error(None, exc.messages)
        else:
            messages.success(request, "Data dictionary saved.")
            return redirect("listings:manage", pk=listing.pk)
    return _render_manage(request, listing, dictionary_form=form, status=400)


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


@login_required
@require_POST
def listing_version_publish(request, pk, version_pk):
    listing = listing_for_member(pk=pk, user=request.user)
    version = get_object_or_404(listing.versions, pk=version_pk)
    try:
        version_publish(version=version, actor=request.user)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"{version.label} is published; entitled buyers get it under their plan's rules.")
    return redirect("listings:manage", pk=listing.pk)
