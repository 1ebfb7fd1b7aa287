"""The signed-in user's API keys: list, create (the key is shown once, in the answer to the POST), revoke."""

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts.forms import ApiKeyForm
from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_is_active, api_key_revoke


@never_cache
@login_required
def api_keys(request):
    created = None
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data.get("expires_in_days")
        try:
            key, raw_key = api_key_create(
                user=request.user,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                expires_at=timezone.now() + timedelta(days=days) if days else None,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            # Rendered, not redirected: the key exists in this response only and is never shown again.
            created = {"key": key, "raw": raw_key}
            form = ApiKeyForm()
    keys = list(ApiKey.objects.filter(user=request.user).order_by("-created_at", "-pk"))
    now = timezone.now()
    rows = [(key, api_key_is_active(key, now=now)) for key in keys]
    status = 400 if request.method == "POST" and created is None else 200
    return render(request, "accounts/api_keys.html", {"form": form, "rows": rows, "created": created}, status=status)


@login_required
@require_POST
def api_key_revoke_view(request, prefix):
    try:
        key = api_key_revoke(user=request.user, prefix=prefix)
    except ApiKey.DoesNotExist:
        raise Http404("No such API key.") from None
    messages.success(
        request,
        gettext("The key %(name)s (%(prefix)s…) is revoked; it no longer works.")
        % {"name": key.name, "prefix": key.prefix},
    )
    return redirect("accounts:api_keys")
