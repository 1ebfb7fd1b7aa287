"""Pages for a user's notifications and outbound webhook endpoints (any signed-in user, their own only)."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from exchange.choices import NotificationKind
from exchange.models import Notification, WebhookEndpoint
from exchange.services.notifications import (
    notification_mark_read,
    notifications_for_user,
    notifications_mark_all_read,
)
from exchange.services.outbound import (
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_rotate_secret,
    webhook_endpoint_send_test,
    webhook_endpoint_set_active,
    webhook_endpoints_for_user,
)

PER_PAGE = 20
# The secret of a just-created (or rotated) endpoint, kept in the session until its page shows it once.
_SECRET_SESSION_KEY = "webhook_secret_reveal"


class WebhookEndpointForm(forms.Form):
    # Scheme, address and limit rules live in the service (webhook_endpoint_create), which says what is wrong.
    url = forms.CharField(label=_("URL"), max_length=500, widget=forms.URLInput(attrs={"placeholder": "https://"}))
    description = forms.CharField(label=_("Description"), max_length=200, required=False)
    event_types = forms.MultipleChoiceField(
        choices=NotificationKind.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label=_("Event types"),
        help_text=_("None ticked: every event type."),
    )


@login_required
def notifications(request):
    page = Paginator(notifications_for_user(user=request.user), PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "exchange/notifications.html", {"page": page})


@login_required
@require_POST
def notification_read(request, pk):
    try:
        notification_mark_read(user=request.user, notification_pk=pk)
    except Notification.DoesNotExist:
        raise Http404("No such notification.") from None
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("notify:notifications")


@login_required
@require_POST
def notifications_read_all(request):
    count = notifications_mark_all_read(user=request.user)
    messages.success(request, gettext("Marked %(count)s notification(s) read.") % {"count": count})
    return redirect("notify:notifications")


def _webhooks_page(request, form, *, status=200):
    endpoints = webhook_endpoints_for_user(user=request.user)
    return render(request, "exchange/webhooks.html", {"endpoints": endpoints, "form": form}, status=status)


@login_required
def webhooks(request):
    return _webhooks_page(request, WebhookEndpointForm())


@login_required
@require_POST
def webhook_create(request):
    form = WebhookEndpointForm(request.POST)
    if form.is_valid():
        try:
            endpoint = webhook_endpoint_create(user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            request.session[_SECRET_SESSION_KEY] = {"pk": endpoint.pk, "secret": endpoint.secret}
            messages.success(
                request, gettext("Webhook endpoint added. Copy its signing secret now: it is shown only once.")
            )
            return redirect("notify:webhook_detail", pk=endpoint.pk)
    return _webhooks_page(request, form, status=400)


def _own_endpoint(request, pk) -> WebhookEndpoint:
    # Another user's endpoint is simply not found: its existence is not disclosed.
    return get_object_or_404(WebhookEndpoint, pk=pk, user=request.user)


@login_required
def webhook_detail(request, pk):
    endpoint = _own_endpoint(request, pk)
    events = endpoint.events.prefetch_related("attempt_log")
    page = Paginator(events, PER_PAGE).get_page(request.GET.get("page"))
    secret = None
    reveal = request.session.get(_SECRET_SESSION_KEY)
    if reveal and reveal.get("pk") == endpoint.pk:
        secret = request.session.pop(_SECRET_SESSION_KEY)["secret"]
    return render(request, "exchange/webhooks_detail.html", {"endpoint": endpoint, "page": page, "secret": secret})


def _disable(request, endpoint):
    webhook_endpoint_set_active(endpoint=endpoint, active=False)
    messages.success(request, gettext("Endpoint disabled: events wait until you enable it again."))


def _enable(request, endpoint):
    webhook_endpoint_set_active(endpoint=endpoint, active=True)
    messages.success(request, gettext("Endpoint enabled: waiting events are being sent."))


def _rotate(request, endpoint):
    endpoint = webhook_endpoint_rotate_secret(endpoint=endpoint)
    request.session[_SECRET_SESSION_KEY] = {"pk": endpoint.pk, "secret": endpoint.secret}
    messages.success(request, gettext("New signing secret made; the old one no longer signs events. Copy it now."))


def _send_test(request, endpoint):
    webhook_endpoint_send_test(endpoint=endpoint)
    messages.success(request, gettext("Test event queued; its attempt appears below."))


_ACTIONS = {"disable": _disable, "enable": _enable, "rotate-secret": _rotate, "send-test": _send_test}


@login_required
@require_POST
def webhook_action(request, pk, action):
    endpoint = _own_endpoint(request, pk)
    if action == "delete":
        webhook_endpoint_delete(endpoint=endpoint)
        messages.success(request, gettext("Endpoint %(url)s deleted.") % {"url": endpoint.url})
        return redirect("notify:webhooks")
    handler = _ACTIONS.get(action)
    if handler is None:
        raise Http404("No such action.")
    try:
        handler(request, endpoint)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    return redirect("notify:webhook_detail", pk=endpoint.pk)
