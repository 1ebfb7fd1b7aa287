from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext

from merchants.forms import MerchantCreateForm
from merchants.selectors import merchant_for_user
from merchants.services import merchant_create


def _next_url(request) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or "/"
    if url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return "/"


@login_required
def merchant_onboard(request):
    """Create the signed-in user's merchant organisation."""
    if merchant_for_user(user=request.user):
        return redirect(_next_url(request))
    form = MerchantCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            merchant_create(user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, gettext("Your merchant organisation is ready."))
            return redirect(_next_url(request))
    return render(request, "merchants/onboard.html", {"form": form, "next": _next_url(request)})
