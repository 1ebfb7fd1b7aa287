import uuid
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST
from django_htmx.http import push_url

from listings.catalog_cache import cached_results
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
from listings.upload_handlers import install_upload_limits, upload_limits
from listings.uploads import SIZE_REFUSAL_CODES, merchant_storage_used
from merchants.models import Merchant
from merchants.selectors import merchant_for_user, merchant_is_member


def catalog(request):
    """The public catalog: search, facets with counts, sorting and cursor pages (one FilterSet with the API).

    A normal GET gets the whole page. An htmx request (the search box, a facet, the sort menu, a page link) gets
    only the page's ``results`` partial, with ``HX-Push-Url`` set to the catalog URL of the filters in use, so
    the address bar shows a link that reloads (or shares) the same results; htmx's history restore asks for the
    whole page again. Bad parameters answer 400 with what was wrong, in either form, and change nothing.
    """
    htmx = getattr(request, "htmx", None)
    fragment = bool(htmx) and not htmx.history_restore_request
    template = "listings/catalog.html#results" if fragment else "listings/catalog.html"
    filterset = ListingFilter(request.GET, queryset=listings_published(), request=request)
    if not filterset.is_valid():
        context = {"filterset": filterset, "errors": filterset.error_list(), "params": {}, "results": None}
        response = render(request, template, context, status=400)
    else:
        params = filterset.active_filters()
        cursor = request.GET.get("cursor") or ""

        def render_results() -> dict:
            page = filterset.page()
            facets = filterset.facet_groups(page)
            context = {"filterset": filterset, "page": page, "params": params, "facet_groups": facets}
            return {
                "body": render_to_string("listings/catalog.html#results_body", context),
                "status": render_to_string("listings/catalog.html#results_status", context),
                "q": page.q,
            }

        results = cached_results(params=params, cursor=cursor, render=render_results)
        # HTML our own templates rendered (escaped there), kept as text in the cache.
        results = {**results, "body": mark_safe(results["body"]), "status": mark_safe(results["status"])}
        response = render(request, template, {"params": params, "results": results, "errors": None})
        if fragment:
            query = {**params, "cursor": cursor} if cursor else params
            push_url(response, reverse("listings:catalog") + (f"?{urlencode(query)}" if query else ""))
    # The same URL answers with a page or a fragment: caches must keep them apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


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
                    request, gettext("Draft created. Upload a CSV file and set a price, then submit it for review.")
                )
                return redirect("listings:manage", pk=listing.pk)
        return render(request, "listings/new.html", {"form": form}, status=400)
    return render(request, "listings/new.html", {"form": form})


@login_required
def listing_edit(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    if listing.status not in EDITABLE_STATUSES:
        messages.error(request, gettext("Only a draft or a rejected product can be edited."))
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
            messages.success(request, gettext("Product details saved."))
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
            "storage_used": merchant_storage_used(merchant_pk=listing.merchant_id),
            "storage_quota": settings.MERCHANT_STORAGE_QUOTA_BYTES,
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


def _upload_failed(request, listing, form, *, status):
    if _wants_json(request):
        errors = [message for messages_ in form.errors.values() for message in messages_]
        return JsonResponse({"ok": False, "errors": errors}, status=status)
    return _render_manage(request, listing, upload_form=form, status=status)


def _upload_refused(request, listing, refusal):
    """413 with the refusal as the file field's only error (the page, or JSON for the progress script)."""
    form = VersionUploadForm(data={}, files={})
    form.is_valid()
    form.errors["file"] = form.error_class([refusal.message])
    return _upload_failed(request, listing, form, status=413)


# CSRF is checked in _listing_upload, once the upload limits are installed: CsrfViewMiddleware would read
# request.POST, and so the whole body, with Django's unlimited upload handlers (Django's documented pattern).
@csrf_exempt
@login_required
@require_POST
def listing_upload(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    limiter = install_upload_limits(request, limits=upload_limits(merchant_pk=listing.merchant_id))
    # A body declared too large is refused unread. Before the CSRF check, which would read it; the refusal
    # changes nothing, so answering it to a forged request is harmless.
    refusal = limiter.check_declared_length(request.META)
    if refusal is not None:
        return _upload_refused(request, listing, refusal)
    return _listing_upload(request, listing, limiter)


@csrf_protect
def _listing_upload(request, listing, limiter):
    form = VersionUploadForm(request.POST, request.FILES)
    if limiter.refusal is not None:  # the file passed a limit while it streamed in
        return _upload_refused(request, listing, limiter.refusal)
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
            messages.success(request, gettext("Uploaded %(label)s.") % {"label": version.label})
            if _wants_json(request):
                return JsonResponse({"ok": True, "redirect": reverse("listings:manage", args=[listing.pk])})
            return redirect("listings:manage", pk=listing.pk)
    # The service's own size and quota refusals (a file that slipped past the handler's count) are 413 too.
    codes = {error.code for error in form.errors.as_data().get("file", [])}
    status = 413 if codes & SIZE_REFUSAL_CODES else 400
    return _upload_failed(request, listing, form, status=status)


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
            messages.success(request, gettext("Price saved."))
            return redirect("listings:manage", pk=listing.pk)
    return _render_manage(request, listing, price_form=form, status=400)


@login_required
@require_POST
def listing_plan_add(request, pk):
    listing = listing_for_member(pk=pk, user=request.user)
    kind = request.POST.get("kind", "")
    if kind not in PlanKind.values:
        messages.error(request, gettext("Choose a kind of plan."))
        return redirect("listings:manage", pk=listing.pk)
    form = PlanForm(request.POST, kind=kind)
    if form.is_valid():
        try:
            plan = pricing_plan_create(listing=listing, actor=request.user, **form.service_kwargs())
        except ValidationError as exc:
            _add_service_error(form, exc)
        else:
            messages.success(
                request,
                gettext("Plan added: %(name)s %(price)s.") % {"name": plan.display_name, "price": plan.price_display},
            )
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
        messages.success(
            request,
            gettext("Plan withdrawn: %(name)s %(price)s.") % {"name": plan.display_name, "price": plan.price_display},
        )
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
            messages.success(request, gettext("Data dictionary saved."))
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
        messages.success(request, gettext("Submitted for compliance review. You will see the outcome here."))
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
        messages.success(
            request,
            gettext("%(label)s is published; entitled buyers get it under their plan's rules.")
            % {"label": version.label},
        )
    return redirect("listings:manage", pk=listing.pk)
