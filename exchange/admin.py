import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from common.money import MoneyError, format_minor, to_minor
from exchange.choices import OrderStatus, PayoutStatus, RefundStatus, SettlementBatchStatus, SettlementRunStatus
from exchange.gateways import GatewayError, gateway_class, gateway_names
from exchange.gateways.sandbox import SandboxGateway
from exchange.models import (
    AccessRequest,
    AccessRequestStatusHistory,
    Delivery,
    DeliveryStatusHistory,
    Dispute,
    DisputeStatusHistory,
    DownloadLog,
    Entitlement,
    EntitlementStatusHistory,
    JournalEntry,
    LedgerAccount,
    LedgerBlock,
    LedgerVerification,
    Notification,
    Order,
    OutboundAttempt,
    OutboundEvent,
    PaymentEvent,
    Payout,
    PayoutStatusHistory,
    Posting,
    Refund,
    RefundStatusHistory,
    SettlementBatch,
    SettlementRun,
    SettlementRunStatusHistory,
    Subscription,
    SubscriptionStatusHistory,
    UsageMonthly,
    UsageRecord,
    WebhookEndpoint,
)
from exchange.services.ledger import ledger_verify_record
from exchange.services.orders import order_cancel
from exchange.services.outbound import outbound_event_retry, webhook_endpoint_set_active
from exchange.services.reconciliation import reconciliation_report, reconciliation_since
from exchange.services.refunds import order_refund, refund_lookup_now, refund_resolve, refundable_amount
from exchange.services.settlement import (
    payout_lookup_now,
    payout_resolve,
    settlement_run_progress,
    settlement_run_start,
    settlement_runs_resume,
)

# The admin's own stylesheet (CSP-friendly: no inline styles in the admin templates).
ADMIN_CSS = {"all": ("admin_ext/admin.css",)}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Trade records change only through services; the admin shows them."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RefundForm(forms.Form):
    amount = forms.CharField(
        label=_("Amount"),
        required=False,
        help_text=_("In major units (e.g. 12.50). Empty: refund everything not yet refunded."),
    )
    reason = forms.CharField(label=_("Reason"), widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))
    # One per form shown: with the order, each refund's idempotency key, so submitting the same form again (after
    # a gateway timeout) retries those refunds instead of making new ones.
    token = forms.UUIDField(widget=forms.HiddenInput)


def _refund_amount(raw: str, order: Order) -> int:
    """The refund form's amount in minor units: the major units typed, or (empty) all that is not yet refunded.

    Not ``refundable_amount``: for an order whose status allows no refund that is 0, and the service should
    say why it refuses ("… is Pending payment; it cannot be refunded"), not that the amount is not positive.
    """
    raw = raw.strip()
    return to_minor(raw, order.currency) if raw else order.amount - order.refunded_amount


def _error_text(exc: Exception) -> str:
    """One line for a staff message from a service's ValidationError, a MoneyError or a GatewayError."""
    return "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)


@admin.action(description=_("Refund selected orders…"), permissions=["refund"])
def refund_orders(modeladmin, request, queryset):
    form = RefundForm(request.POST) if "apply" in request.POST else RefundForm(initial={"token": uuid.uuid4()})
    if "apply" in request.POST and form.is_valid():
        for order in queryset:
            try:
                amount = _refund_amount(form.cleaned_data["amount"], order)
                refund = order_refund(
                    order=order,
                    amount=amount,
                    reason=form.cleaned_data["reason"],
                    actor=request.user,
                    idempotency_key=f"admin-bulk-{form.cleaned_data['token']}-{order.pk}",
                )
            except (ValidationError, MoneyError, GatewayError) as exc:
                messages.error(
                    request, _("Order %(ref)s: %(error)s") % {"ref": order.reference, "error": _error_text(exc)}
                )
            else:
                messages.success(
                    request,
                    _("Order %(ref)s: refund %(pk)s %(status)s.")
                    % {"ref": order.reference, "pk": refund.pk, "status": refund.get_status_display()},
                )
        return None
    return TemplateResponse(
        request,
        "admin/exchange/refund.html",
        {**modeladmin.admin_site.each_context(request), "form": form, "orders": queryset, "opts": Order._meta},
    )


@admin.action(description=_("Cancel selected orders (only unpaid ones)"), permissions=["cancel"])
def cancel_orders(modeladmin, request, queryset):
    for order in queryset:
        try:
            order_cancel(order=order, actor=request.user, reason="cancelled by staff")
        except ValidationError as exc:
            messages.error(request, _("Order %(ref)s: %(error)s") % {"ref": order.reference, "error": _error_text(exc)})
        else:
            messages.success(request, _("Order %(ref)s cancelled.") % {"ref": order.reference})


def _sandbox_only(request, order) -> bool:
    if order.gateway != "sandbox":
        messages.error(
            request,
            _("Order %(ref)s is not a sandbox order; use the real gateway's dashboard.") % {"ref": order.reference},
        )
        return False
    return True


@admin.action(description=_("Sandbox: the buyer's bank opens a dispute"))
def sandbox_dispute(modeladmin, request, queryset):
    for order in queryset:
        if not _sandbox_only(request, order):
            continue
        try:
            SandboxGateway().emit_dispute(order=order)
        except GatewayError as exc:
            messages.error(request, _("Order %(ref)s: %(error)s") % {"ref": order.reference, "error": exc})
            continue
        messages.success(
            request,
            _("Order %(ref)s: dispute event sent through the webhook pipeline.") % {"ref": order.reference},
        )


def _close_disputes(request, queryset, *, won: bool):
    for order in queryset:
        if not _sandbox_only(request, order):
            continue
        dispute = order.disputes.filter(status="open").first()
        if dispute is None:
            messages.error(request, _("Order %(ref)s has no open dispute.") % {"ref": order.reference})
            continue
        try:
            SandboxGateway().emit_dispute(
                order=order, status="won" if won else "lost", closed=True, dispute_id=dispute.gateway_dispute_id
            )
        except GatewayError as exc:
            messages.error(request, _("Order %(ref)s: %(error)s") % {"ref": order.reference, "error": exc})
            continue
        text = _("Order %(ref)s: dispute won event sent.") if won else _("Order %(ref)s: dispute lost event sent.")
        messages.success(request, text % {"ref": order.reference})


@admin.action(description=_("Sandbox: the exchange wins the open dispute"))
def sandbox_dispute_won(modeladmin, request, queryset):
    _close_disputes(request, queryset, won=True)


@admin.action(description=_("Sandbox: the exchange loses the open dispute"))
def sandbox_dispute_lost(modeladmin, request, queryset):
    _close_disputes(request, queryset, won=False)


class OrderRefundForm(RefundForm):
    """The refund of one order, confirmed on its own page. The token makes a resubmitted form the same refund."""

    token = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, *args, order: Order, **kwargs):
        super().__init__(*args, **kwargs)
        self.order = order

    def clean_amount(self) -> int:
        try:
            return _refund_amount(self.cleaned_data["amount"], self.order)
        except MoneyError as exc:
            raise ValidationError(str(exc)) from None


class OrderCancelForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=300, initial="cancelled by staff")


@dataclass(frozen=True)
class TimelineEvent:
    """One line of an order's timeline on its admin page."""

    at: datetime
    kind: str
    text: str
    actor: object = None


def _order_timeline(order: Order) -> list[TimelineEvent]:
    """What happened to ``order``, oldest first: status moves, refunds, disputes and deliveries (reads only)."""
    events = [
        TimelineEvent(
            h.created_at,
            "status",
            f"{h.get_from_status_display() or '—'} → {h.get_to_status_display()}"
            + (f": {h.reason}" if h.reason else ""),
            h.actor,
        )
        for h in order.history.select_related("actor")
    ]
    for refund in order.refunds.select_related("requested_by"):
        text = _("Refund %(amount)s (%(status)s, %(source)s): %(reason)s") % {
            "amount": format_minor(refund.amount, refund.currency),
            "status": refund.get_status_display(),
            "source": refund.source,
            "reason": refund.reason,
        }
        events.append(TimelineEvent(refund.created_at, "refund", text, refund.requested_by))
    for dispute in order.disputes.all():
        opened = _("Dispute opened for %(amount)s: %(reason)s") % {
            "amount": format_minor(dispute.amount, dispute.currency),
            "reason": dispute.reason or "—",
        }
        events.append(TimelineEvent(dispute.created_at, "dispute", opened))
        if dispute.closed_at:
            closed = _("Dispute closed: %(status)s") % {"status": dispute.get_status_display()}
            events.append(TimelineEvent(dispute.closed_at, "dispute", closed))
    deliveries = Delivery.objects.filter(entitlement__order=order).select_related("version")
    for delivery in deliveries:
        for at, text in (
            (delivery.ready_at, _("Delivery of version %(label)s ready")),
            (delivery.confirmed_at, _("Delivery of version %(label)s confirmed")),
            (delivery.failed_at, _("Delivery of version %(label)s failed")),
        ):
            if at:
                events.append(TimelineEvent(at, "delivery", text % {"label": delivery.version.label}))
    return sorted(events, key=lambda e: e.at)


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    """Orders are read-only; the change page shows the order's timeline and offers refund and cancel, each
    confirmed on its own page and carried out by the refund and order services."""

    change_form_template = "admin/exchange/order/change_form.html"
    list_display = (
        "reference",
        "listing",
        "buyer",
        "merchant",
        "plan_kind",
        "amount_display",
        "refunded_amount",
        "status",
        "created_at",
    )
    list_filter = ("status", "plan_kind", "gateway", "currency")
    search_fields = ("public_id", "buyer__email", "listing__title", "merchant__name", "gateway_session_id")
    list_select_related = ("listing", "buyer", "merchant")
    actions = [refund_orders, cancel_orders, sandbox_dispute, sandbox_dispute_won, sandbox_dispute_lost]

    class Media:
        css = ADMIN_CSS

    @admin.display(description=_("reference"))
    def reference(self, order):
        return order.reference

    @admin.display(description=_("amount"), ordering="amount")
    def amount_display(self, order):
        return order.amount_display

    def has_refund_permission(self, request) -> bool:
        return request.user.has_perm("exchange.add_refund")

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("exchange.change_order")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/refund/", wrap(self.refund_view), name="exchange_order_refund"),
            path("<path:object_id>/cancel/", wrap(self.cancel_view), name="exchange_order_cancel"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        order = self.get_object(request, object_id)
        if order is not None:
            extra_context = {
                **(extra_context or {}),
                "timeline": _order_timeline(order),
                "can_refund": refundable_amount(order) > 0 and self.has_refund_permission(request),
                "can_cancel": order.status == OrderStatus.PENDING_PAYMENT and self.has_cancel_permission(request),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _order_or_404(self, request, object_id, allowed) -> Order:
        order = self.get_object(request, object_id)
        if order is None:
            raise Http404(_("No such order."))
        if not (self.has_view_permission(request, order) and allowed(request)):
            raise PermissionDenied
        return order

    def _confirm_page(self, request, order, template, form, status=200):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "order": order,
            "form": form,
            "remaining": format_minor(refundable_amount(order), order.currency),
            "refunded": format_minor(order.refunded_amount, order.currency),
        }
        return TemplateResponse(request, template, context, status=status)

    def refund_view(self, request, object_id):
        """GET: the refund form for one order; POST: refund through ``order_refund`` (errors change nothing)."""
        order = self._order_or_404(request, object_id, self.has_refund_permission)
        if request.method != "POST":
            form = OrderRefundForm(order=order, initial={"token": uuid.uuid4()})
            return self._confirm_page(request, order, "admin/exchange/order/refund.html", form)
        form = OrderRefundForm(request.POST, order=order)
        if form.is_valid():
            data = form.cleaned_data
            try:
                refund = order_refund(
                    order=order,
                    amount=data["amount"],
                    reason=data["reason"],
                    actor=request.user,
                    idempotency_key=f"admin-refund-{order.pk}-{data['token']}",
                )
            except (ValidationError, GatewayError) as exc:
                form.add_error(None, _error_text(exc))
            else:
                messages.success(
                    request,
                    _("Refund of %(amount)s for order %(ref)s: %(status)s.")
                    % {
                        "amount": format_minor(refund.amount, refund.currency),
                        "ref": order.reference,
                        "status": refund.get_status_display(),
                    },
                )
                return redirect("admin:exchange_order_change", order.pk)
        return self._confirm_page(request, order, "admin/exchange/order/refund.html", form, status=400)

    def cancel_view(self, request, object_id):
        """GET: confirm cancelling one unpaid order; POST: cancel through ``order_cancel`` (errors change nothing)."""
        order = self._order_or_404(request, object_id, self.has_cancel_permission)
        if request.method != "POST":
            return self._confirm_page(request, order, "admin/exchange/order/cancel.html", OrderCancelForm())
        form = OrderCancelForm(request.POST)
        if form.is_valid():
            try:
                order_cancel(order=order, actor=request.user, reason=form.cleaned_data["reason"])
            except ValidationError as exc:
                form.add_error(None, _error_text(exc))
            else:
                messages.success(request, _("Order %(ref)s cancelled.") % {"ref": order.reference})
                return redirect("admin:exchange_order_change", order.pk)
        return self._confirm_page(request, order, "admin/exchange/order/cancel.html", form, status=400)


class StatusHistoryInline(admin.TabularInline):
    """A state machine's history rows under the object they belong to, oldest first; read-only."""

    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "from_status", "to_status", "reason")
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


class ActorStatusHistoryInline(StatusHistoryInline):
    """History whose moves a person can make (staff, a merchant, a buyer): who made each one."""

    readonly_fields = fields = (*StatusHistoryInline.readonly_fields, "actor")


class RefundStatusHistoryInline(ActorStatusHistoryInline):
    model = RefundStatusHistory


class DisputeStatusHistoryInline(StatusHistoryInline):
    model = DisputeStatusHistory


class SubscriptionStatusHistoryInline(StatusHistoryInline):
    model = SubscriptionStatusHistory


class AccessRequestStatusHistoryInline(ActorStatusHistoryInline):
    model = AccessRequestStatusHistory


class RefundResolveForm(forms.Form):
    gateway_refund_id = forms.CharField(
        label=_("Refund found at the gateway"),
        required=False,
        max_length=120,
        help_text=_(
            "The gateway's id of the refund made for this payment and amount. Leave it empty if the gateway shows "
            "none: the refund is then recorded as failed and its amount is no longer reserved on the order."
        ),
    )


@admin.action(description=_("Record what the gateway shows for a held refund…"), permissions=["resolve"])
def resolve_held_refunds(modeladmin, request, queryset):
    """Refunds pending past the gateway's memory of their key are settled by a person who looked."""
    form = RefundResolveForm(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        reference = form.cleaned_data["gateway_refund_id"].strip()
        if reference and queryset.count() != 1:
            messages.error(request, _("A gateway refund belongs to one refund: select only that refund to record it."))
            return None
        for refund in queryset:
            try:
                resolved = refund_resolve(refund_pk=refund.pk, gateway_refund_id=reference, actor=request.user)
            except ValidationError as exc:
                messages.error(request, _("Refund %(pk)s: %(error)s") % {"pk": refund.pk, "error": _error_text(exc)})
            else:
                messages.success(
                    request,
                    _("Refund %(pk)s recorded as %(status)s.")
                    % {"pk": resolved.pk, "status": resolved.get_status_display()},
                )
        return None
    lines = [
        _("Refund %(pk)s of order %(order)s: %(amount)s (%(status)s)")
        % {
            "pk": refund.pk,
            "order": refund.order.reference,
            "amount": format_minor(refund.amount, refund.currency),
            "status": refund.get_status_display(),
        }
        + (f" — {refund.error}" if refund.error else "")
        for refund in queryset.select_related("order")
    ]
    explanation = _(
        "A refund is held for review when it stayed pending longer than the gateway remembers idempotency keys "
        "(an earlier attempt may have made it, so sending it again could refund the buyer twice) and the gateway "
        "could not say whether it made it: its error says why. Look the refund up at the gateway (the order's "
        "payment) and record what you found."
    )
    return _gateway_resolve_page(request, modeladmin, form, queryset, "resolve_held_refunds", explanation, lines)


@admin.action(description=_("Ask the gateway now about held refunds"), permissions=["resolve"])
def look_up_held_refunds(modeladmin, request, queryset):
    """What the pending-refund sweep does every few minutes, for the selected refunds and at once."""
    for refund in queryset.order_by("pk"):
        try:
            looked_up = refund_lookup_now(refund_pk=refund.pk, actor=request.user)
        except ValidationError as exc:
            messages.error(request, _("Refund %(pk)s: %(error)s") % {"pk": refund.pk, "error": _error_text(exc)})
        else:
            _lookup_message(request, _("Refund"), looked_up, looked_up.status == RefundStatus.PENDING, looked_up.error)


class HeldForReviewFilter(admin.SimpleListFilter):
    """Pending past the gateway's memory of idempotency keys: never sent again, settled by a gateway lookup or,
    when the gateway cannot tell, by a person."""

    title = _("held for review")
    parameter_name = "held"

    def lookups(self, request, model_admin):
        return [("yes", _("Held for review"))]

    def queryset(self, request, queryset):
        if self.value() != "yes":
            return queryset
        return queryset.filter(self.held_condition(timezone.now()))


class RefundHeldFilter(HeldForReviewFilter):
    @staticmethod
    def held_condition(now):
        cutoff = now - timedelta(seconds=settings.REFUND_RETRY_MAX_AGE_SECONDS)
        return Q(status=RefundStatus.PENDING, created_at__lte=cutoff)


class PayoutHeldFilter(HeldForReviewFilter):
    @staticmethod
    def held_condition(now):
        held = Q(pk__in=[])
        for gateway in gateway_names():
            window = gateway_class(gateway).key_window
            if window is not None:
                held |= Q(gateway=gateway, created_at__lte=now - window)
        return Q(status=PayoutStatus.PENDING) & held


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "order",
        "amount",
        "currency",
        "status",
        "source",
        "gateway_refund_id",
        "created_at",
        "error",
    )
    list_filter = ("status", RefundHeldFilter, "source")
    search_fields = ("order__public_id", "gateway_refund_id", "idempotency_key")
    inlines = [RefundStatusHistoryInline]
    actions = [look_up_held_refunds, resolve_held_refunds]

    def has_resolve_permission(self, request) -> bool:
        return request.user.has_perm("exchange.change_refund")


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdmin):
    list_display = ("gateway_dispute_id", "order", "amount", "currency", "status", "reason", "created_at", "closed_at")
    list_filter = ("status",)
    inlines = [DisputeStatusHistoryInline]


def _subscription_event(request, queryset, emit, label):
    for subscription in queryset:
        if subscription.gateway != "sandbox":
            messages.error(request, _("Subscription %(pk)s is not a sandbox subscription.") % {"pk": subscription.pk})
            continue
        emit(subscription=subscription)
        messages.success(
            request, _("Subscription %(pk)s: %(label)s event sent.") % {"pk": subscription.pk, "label": label}
        )


@admin.action(description=_("Sandbox: renew now (invoice paid)"))
def sandbox_renew(modeladmin, request, queryset):
    _subscription_event(request, queryset, SandboxGateway().emit_renewal, _("renewal"))


@admin.action(description=_("Sandbox: renewal payment fails"))
def sandbox_renewal_failed(modeladmin, request, queryset):
    _subscription_event(request, queryset, SandboxGateway().emit_renewal_failed, _("failed renewal"))


@admin.action(description=_("Sandbox: the buyer cancels"))
def sandbox_cancel_subscription(modeladmin, request, queryset):
    _subscription_event(request, queryset, SandboxGateway().emit_subscription_cancelled, _("cancellation"))


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ("pk", "buyer", "listing", "plan", "status", "current_period_end", "gateway_subscription_id")
    list_filter = ("status", "gateway")
    list_select_related = ("buyer", "listing", "plan")
    actions = [sandbox_renew, sandbox_renewal_failed, sandbox_cancel_subscription]
    inlines = [SubscriptionStatusHistoryInline]


@admin.register(AccessRequest)
class AccessRequestAdmin(ReadOnlyAdmin):
    list_display = ("pk", "listing", "buyer", "organisation", "status", "created_at", "expires_at", "decided_at")
    list_filter = ("status",)
    search_fields = ("buyer__email", "listing__title", "organisation")
    inlines = [AccessRequestStatusHistoryInline]


@admin.register(PaymentEvent)
class PaymentEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "gateway", "type", "status", "outcome", "attempts", "received_at", "processed_at")
    list_filter = ("status", "gateway", "type")
    search_fields = ("event_id", "outcome")


class EntitlementStatusHistoryInline(StatusHistoryInline):
    model = EntitlementStatusHistory


@admin.register(Entitlement)
class EntitlementAdmin(ReadOnlyAdmin):
    list_display = ("pk", "buyer", "listing", "status", "granted_at")
    list_filter = ("status",)
    search_fields = ("buyer__email", "listing__title")
    list_select_related = ("buyer", "listing")
    inlines = [EntitlementStatusHistoryInline]


class DeliveryStatusHistoryInline(StatusHistoryInline):
    model = DeliveryStatusHistory


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "entitlement",
        "version",
        "status",
        "attempts",
        "download_count",
        "prepared_at",
        "ready_at",
        "confirmed_at",
        "confirmed_by",
        "failed_at",
    )
    list_filter = ("status", "confirmed_by")
    search_fields = ("entitlement__buyer__email", "entitlement__listing__title", "receipt_sha256")
    list_select_related = ("entitlement__buyer", "entitlement__listing", "version__listing")
    inlines = [DeliveryStatusHistoryInline]


@admin.register(DownloadLog)
class DownloadLogAdmin(ReadOnlyAdmin):
    """The full access log of downloads (merchants see aggregates only, under their usage page)."""

    list_display = (
        "pk",
        "delivery",
        "file",
        "user",
        "bytes_sent",
        "range_start",
        "range_end",
        "mode",
        "completed",
        "ip_address",
        "user_agent",
        "started_at",
        "finished_at",
    )
    list_filter = ("completed", "mode")
    search_fields = ("user__email", "ip_address", "file__original_name")
    list_select_related = ("delivery", "file", "user")


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("code", "name", "kind", "merchant")
    list_filter = ("kind",)


class PostingInline(admin.TabularInline):
    model = Posting
    extra = 0
    can_delete = False
    readonly_fields = ("account", "amount", "currency")

    def has_add_permission(self, request, obj=None):
        return False


@admin.action(description=_("Verify the whole ledger (hash chain and balances)"))
def verify_ledger(modeladmin, request, queryset):
    _verify_ledger_now(request)


@admin.register(LedgerBlock)
class LedgerBlockAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "entry_count", "created_at", "root_hash", "block_hash")
    search_fields = ("block_hash", "root_hash")


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "kind", "order", "payout", "memo", "created_at", "entry_hash")
    list_filter = ("kind",)
    search_fields = ("idempotency_key", "entry_hash", "memo")
    inlines = [PostingInline]
    actions = [verify_ledger]


class PayoutInline(admin.TabularInline):
    model = Payout
    extra = 0
    can_delete = False
    readonly_fields = ("merchant", "amount", "currency", "status", "gateway_reference", "sent_at")
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.action(description=_("Start a new settlement run now"))
def start_settlement_run(modeladmin, request, queryset):
    try:
        run = settlement_run_start(actor=request.user, trigger="admin")
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    else:
        messages.success(
            request, _("Settlement run %(pk)s started; a settlement worker is executing it.") % {"pk": run.pk}
        )


@admin.action(description=_("Resume the selected running runs (queue their unfinished batches again)"))
def resume_settlement_runs(modeladmin, request, queryset):
    running = [run.pk for run in queryset if run.status == SettlementRunStatus.RUNNING]
    if not running:
        messages.error(request, _("None of the selected runs is running: nothing to resume."))
        return
    resumed = settlement_runs_resume(stalled_after_seconds=0)
    messages.success(
        request, _("Queued the unfinished work of run(s) %(runs)s again.") % {"runs": ", ".join(map(str, resumed))}
    )


class SettlementRunStatusHistoryInline(ActorStatusHistoryInline):
    model = SettlementRunStatusHistory


class PayoutStatusHistoryInline(StatusHistoryInline):
    model = PayoutStatusHistory


class SettlementBatchInline(admin.TabularInline):
    model = SettlementBatch
    extra = 0
    can_delete = False
    readonly_fields = (
        "number",
        "first_order_pk",
        "last_order_pk",
        "status",
        "orders_settled",
        "ledger_rows",
        "totals",
        "attempts",
        "error",
        "finished_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(SettlementRun)
class SettlementRunAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "status",
        "trigger",
        "requested_by",
        "progress",
        "orders_settled",
        "payouts_created",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "trigger")
    readonly_fields = ("progress", "totals")
    inlines = [SettlementRunStatusHistoryInline, SettlementBatchInline, PayoutInline]
    actions = [start_settlement_run, resume_settlement_runs]

    class Media:
        css = ADMIN_CSS

    @admin.display(description=_("progress"))
    def progress(self, run):
        if run.cutoff is None:
            return _("planning") if run.status == SettlementRunStatus.RUNNING else "-"
        batches_done, orders_settled = settlement_run_progress(run)
        percent = 100 * batches_done // run.batches_total if run.batches_total else 100
        text = _("%(done)s/%(total)s batches (%(percent)s %%), %(settled)s/%(orders)s orders") % {
            "done": batches_done,
            "total": run.batches_total,
            "percent": percent,
            "settled": orders_settled,
            "orders": run.orders_total,
        }
        # A native <progress> bar: styled by admin_ext/admin.css, no inline style (strict CSP).
        return format_html(
            '<progress class="run-progress" max="100" value="{}">{} %</progress> {}', percent, percent, text
        )

    @admin.display(description=_("totals settled"))
    def totals(self, run):
        sums: dict[str, dict[str, int]] = {}
        for totals in run.batches.filter(status=SettlementBatchStatus.COMPLETED).values_list("totals", flat=True):
            for currency, figures in totals.items():
                line = sums.setdefault(currency, {"gross": 0, "fee": 0})
                line["gross"] += figures["gross"]
                line["fee"] += figures["fee"]
        if not sums:
            return "-"
        return "; ".join(
            _("gross %(gross)s, fees %(fees)s, merchants %(merchants)s")
            % {
                "gross": format_minor(f["gross"], c),
                "fees": format_minor(f["fee"], c),
                "merchants": format_minor(f["gross"] - f["fee"], c),
            }
            for c, f in sorted(sums.items())
        )

    def changelist_view(self, request, extra_context=None):
        # The "start a run" action needs no selection: allow it on an empty changelist.
        if request.method == "POST" and request.POST.get("action") == "start_settlement_run":
            post = request.POST.copy()
            if not post.getlist(admin.helpers.ACTION_CHECKBOX_NAME):
                post.setlist(admin.helpers.ACTION_CHECKBOX_NAME, ["0"])
                post["select_across"] = "1"
                request.POST = post
        return super().changelist_view(request, extra_context)


class PayoutResolveForm(forms.Form):
    transfer_reference = forms.CharField(
        label=_("Transfer found at the gateway"),
        required=False,
        max_length=120,
        help_text=_(
            "The gateway's id of the transfer made for this payout. Leave it empty if the gateway shows none: "
            "the payout is then recorded as not sent, its money is owed to the merchant again and the next "
            "settlement run pays it."
        ),
    )


@admin.action(description=_("Record what the gateway shows for a held payout…"), permissions=["resolve"])
def resolve_held_payouts(modeladmin, request, queryset):
    """Payouts held for review (past their gateway's idempotency window) are settled by a person who looked."""
    form = PayoutResolveForm(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        reference = form.cleaned_data["transfer_reference"].strip()
        if reference and queryset.count() != 1:
            messages.error(request, _("A transfer belongs to one payout: select only that payout to record it."))
            return None
        for payout in queryset:
            try:
                resolved = payout_resolve(payout_pk=payout.pk, transfer_reference=reference, actor=request.user)
            except ValidationError as exc:
                messages.error(request, _("Payout %(pk)s: %(error)s") % {"pk": payout.pk, "error": _error_text(exc)})
            else:
                messages.success(
                    request,
                    _("Payout %(pk)s recorded as %(status)s.")
                    % {"pk": resolved.pk, "status": resolved.get_status_display()},
                )
        return None
    lines = [
        _("Payout %(pk)s to %(merchant)s: %(amount)s (%(status)s)")
        % {
            "pk": payout.pk,
            "merchant": payout.merchant,
            "amount": payout.amount_display,
            "status": payout.get_status_display(),
        }
        + (f" — {payout.error}" if payout.error else "")
        for payout in queryset
    ]
    explanation = _(
        "A payout is held for review when it stayed unsent longer than its gateway remembers idempotency keys "
        "(an earlier attempt may have made the transfer, so sending it again could pay the merchant twice) and "
        "the gateway could not say whether it made it: its error says why. Look the transfer up at the gateway "
        "(its metadata names the payout) and record what you found."
    )
    return _gateway_resolve_page(request, modeladmin, form, queryset, "resolve_held_payouts", explanation, lines)


@admin.action(description=_("Ask the gateway now about held payouts"), permissions=["resolve"])
def look_up_held_payouts(modeladmin, request, queryset):
    """What the payout sweep does every few minutes, for the selected payouts and at once."""
    for payout in queryset.order_by("pk"):
        try:
            looked_up, why = payout_lookup_now(payout_pk=payout.pk, actor=request.user)
        except ValidationError as exc:
            messages.error(request, _("Payout %(pk)s: %(error)s") % {"pk": payout.pk, "error": _error_text(exc)})
        else:
            _lookup_message(request, _("Payout"), looked_up, bool(why), why)


def _lookup_message(request, noun, obj, held: bool, why: str) -> None:
    """What asking the gateway did to one held payout or refund."""
    if held:
        messages.warning(
            request,
            _("%(noun)s %(pk)s is still held for review: the gateway could not tell (%(why)s).")
            % {"noun": noun, "pk": obj.pk, "why": why},
        )
    else:
        messages.success(
            request,
            _("%(noun)s %(pk)s: the gateway was asked and it is recorded as %(status)s.")
            % {"noun": noun, "pk": obj.pk, "status": obj.get_status_display()},
        )


def _gateway_resolve_page(request, modeladmin, form, queryset, action, explanation, lines):
    """The form that asks staff what the gateway shows for the selected held payouts or refunds."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "form": form,
        "pks": [obj.pk for obj in queryset],
        "action": action,
        "explanation": explanation,
        "lines": lines,
        "opts": queryset.model._meta,
    }
    return TemplateResponse(request, "admin/exchange/gateway_resolve.html", context)


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "merchant",
        "amount_display",
        "status",
        "run",
        "gateway_reference",
        "attempts",
        "sent_at",
        "error",
    )
    list_filter = ("status", PayoutHeldFilter, "currency")
    list_select_related = ("merchant", "run")
    inlines = [PayoutStatusHistoryInline]
    actions = [look_up_held_payouts, resolve_held_payouts]

    def has_resolve_permission(self, request) -> bool:
        return request.user.has_perm("exchange.change_payout")


# --- data API usage (issue 5): the full access log, for admins only -----------------------------


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "channel",
        "buyer",
        "listing",
        "file",
        "api_key",
        "status_code",
        "rows",
        "bytes",
        "units",
        "duration_ms",
        "ip_address",
    )
    list_filter = ("channel", "status_code")
    list_select_related = ("buyer", "listing", "file", "api_key")
    search_fields = ("buyer__email", "listing__title", "api_key__prefix", "ip_address")
    date_hierarchy = "created_at"
    show_full_result_count = False  # the access log grows large; counting it all costs a scan


@admin.register(UsageMonthly)
class UsageMonthlyAdmin(ReadOnlyAdmin):
    list_display = ("month", "entitlement", "listing", "merchant", "calls", "rows", "units", "billable_units", "amount")
    list_filter = ("month", "currency")
    list_select_related = ("entitlement__buyer", "entitlement__listing", "listing", "merchant")
    search_fields = ("listing__title", "merchant__name", "entitlement__buyer__email")


# --- notifications and outbound webhooks (issue 5) ---------------------------------------------


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "kind", "title", "read_at", "emailed_at")
    list_filter = ("kind",)
    search_fields = ("user__email", "title", "dedupe_key")
    list_select_related = ("user",)


@admin.action(description=_("Disable the selected endpoints (their events wait)"))
def disable_endpoints(modeladmin, request, queryset):
    for endpoint in queryset:
        webhook_endpoint_set_active(endpoint=endpoint, active=False)
    messages.success(request, _("%(count)s endpoint(s) disabled.") % {"count": queryset.count()})


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnlyAdmin):
    list_display = ("url", "user", "is_active", "event_types", "created_at", "disabled_at")
    list_filter = ("is_active",)
    search_fields = ("url", "user__email")
    list_select_related = ("user",)
    # The signing secret belongs to the endpoint's owner: never shown here.
    exclude = ("secret",)
    actions = [disable_endpoints]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "url":
            kwargs["assume_scheme"] = "https"  # endpoints are https; also Django 6's default
        return super().formfield_for_dbfield(db_field, request, **kwargs)


class OutboundAttemptInline(admin.TabularInline):
    model = OutboundAttempt
    extra = 0
    can_delete = False
    readonly_fields = ("attempted_at", "status_code", "error", "response_excerpt", "duration_ms")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.action(description=_("Send the selected failed events again"))
def retry_failed_events(modeladmin, request, queryset):
    failed = list(queryset.filter(status="failed").values_list("pk", flat=True))
    for pk in failed:
        outbound_event_retry(event_pk=pk)
    messages.success(
        request,
        _("%(count)s failed event(s) queued again; other statuses were left alone.") % {"count": len(failed)},
    )


@admin.register(OutboundEvent)
class OutboundEventAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "type", "endpoint", "status", "attempts", "next_attempt_at", "created_at")
    list_filter = ("status", "type")
    search_fields = ("public_id", "endpoint__url", "endpoint__user__email", "dedupe_key")
    list_select_related = ("endpoint",)
    inlines = [OutboundAttemptInline]
    actions = [retry_failed_events]


def _verify_ledger_now(request) -> LedgerVerification:
    """Run and store a verification for a staff request; tell them the outcome as a message."""
    record = ledger_verify_record(trigger="admin")
    if record.ok:
        messages.success(request, _("Ledger OK: %(message)s.") % {"message": record.message})
    else:
        where = record.break_location
        messages.error(
            request, _("Ledger BROKEN at %(where)s: %(message)s") % {"where": where, "message": record.message}
        )
    return record


@admin.register(LedgerVerification)
class LedgerVerificationAdmin(ReadOnlyAdmin):
    """Past verifications, the latest first and summarised above the list, and a button to run one now."""

    change_list_template = "admin/exchange/ledgerverification/change_list.html"

    class Media:
        css = ADMIN_CSS

    list_display = (
        "pk",
        "result",
        "entries_checked",
        "first_break_sequence",
        "first_break_block",
        "trigger",
        "started_at",
        "finished_at",
    )
    list_filter = ("ok", "trigger")
    readonly_fields = (
        "ok",
        "entries_checked",
        "first_break_sequence",
        "first_break_block",
        "message",
        "trigger",
        "started_at",
        "finished_at",
    )

    @admin.display(description=_("result"))
    def result(self, obj):
        if obj.finished_at is None:
            return _("unfinished")
        return _("ok") if obj.ok else _("BROKEN")

    def get_urls(self):
        verify = self.admin_site.admin_view(self.verify_view)
        reconcile = self.admin_site.admin_view(self.reconciliation_view)
        return [
            path("verify/", verify, name="exchange_ledgerverification_verify"),
            path("reconciliation/", reconcile, name="exchange_reconciliation"),
            *super().get_urls(),
        ]

    def reconciliation_view(self, request):
        """GET: the reconciliation report (exchange.services.reconciliation) for ``?gateway=`` from ``?since=``,
        inside the admin; a bad date is answered 400 with the service's message."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        since_raw, gateway = request.GET.get("since", "").strip(), request.GET.get("gateway", "").strip()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Reconciliation with the payment gateway"),
            "since": since_raw,
            "gateway": gateway,
            "in_admin": True,
        }
        try:
            context["report"] = reconciliation_report(gateway=gateway or None, since=reconciliation_since(since_raw))
        except ValueError as exc:
            context["error"] = str(exc)
            return TemplateResponse(request, "admin/exchange/reconciliation.html", context, status=400)
        return TemplateResponse(request, "admin/exchange/reconciliation.html", context)

    def verify_view(self, request):
        """POST: run a verification now (staff who may view verifications); GET is refused."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_view_permission(request):
            raise PermissionDenied
        _verify_ledger_now(request)
        return redirect("admin:exchange_ledgerverification_changelist")

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "latest_verification": LedgerVerification.objects.first()}
        return super().changelist_view(request, extra_context)


# --- transaction certificates (exchange/services/certificates.py) ------------
# Imported here rather than in the block above so this section stays self-contained.
from exchange.models import TransactionCertificate  # noqa: E402
from exchange.services.certificates import certificate_verify  # noqa: E402


@admin.register(TransactionCertificate)
class TransactionCertificateAdmin(admin.ModelAdmin):
    """Certificates are issued by settlement and never edited: read-only, with their verification shown live."""

    list_display = ("number", "order", "key_id", "issued_at")
    search_fields = ("number", "order__public_id")
    list_select_related = ("order",)
    readonly_fields = ("number", "order", "journal_entry", "key_id", "issued_at", "signature", "document")
    readonly_fields += ("verification",)
    fields = readonly_fields

    @admin.display(description=_("Verification (now)"))
    def verification(self, obj):
        result = certificate_verify(document=obj.document, signature=obj.signature)
        return _("valid") if result.valid else _("NOT VALID: %(reasons)s") % {"reasons": "; ".join(result.reasons)}

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- fee schedule (exchange/services/fees.py) ---------------------------------

from exchange.models import FeeRule  # noqa: E402
from exchange.services.fees import fee_rule_create, fee_rule_delete, fee_rule_validate  # noqa: E402


class FeeRuleForm(forms.ModelForm):
    """Checks a new rule with the service's own validation, so the form shows exactly the errors it would raise."""

    class Meta:
        model = FeeRule
        fields = ("merchant", "category", "commission_bps", "valid_from", "note")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "valid_from" in self.fields:
            self.fields["valid_from"].initial = timezone.now
            self.fields["valid_from"].help_text = _("When the rule comes into force: now or later, never in the past.")

    def clean(self):
        data = super().clean()
        if self.instance.pk is None and not self.errors:
            try:
                fee_rule_validate(
                    commission_bps=data.get("commission_bps"),
                    valid_from=data.get("valid_from"),
                    merchant=data.get("merchant"),
                    category=data.get("category"),
                    note=data.get("note", ""),
                )
            except ValidationError as exc:
                self.add_error(None, exc)
        return data


@admin.register(FeeRule)
class FeeRuleAdmin(admin.ModelAdmin):
    """The fee schedule: rules are added through fee_rule_create and never edited; only a rule not yet in force
    may be deleted (fee_rule_delete), since trades may have been priced by any other."""

    form = FeeRuleForm
    list_display = ("scope", "percentage", "commission_bps", "valid_from", "in_force", "note", "created_by")
    list_filter = ("category",)
    list_select_related = ("merchant", "category", "created_by")
    search_fields = ("merchant__name", "category__name", "note")
    actions = None  # the bulk delete would bypass fee_rule_delete's check

    @admin.display(description=_("scope"))
    def scope(self, obj):
        parts = [_("merchant %(name)s") % {"name": obj.merchant}] if obj.merchant_id else []
        parts += [_("category %(name)s") % {"name": obj.category}] if obj.category_id else []
        return " + ".join(parts) or _("default (all trades)")

    @admin.display(description=_("commission"))
    def percentage(self, obj):
        return f"{obj.commission_bps / 100:g} %"

    @admin.display(description=_("in force"), boolean=True)
    def in_force(self, obj):
        return obj.valid_from <= timezone.now()

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("merchant", "category", "commission_bps", "valid_from", "note", "created_by", "created_at")

    def has_change_permission(self, request, obj=None):
        return False  # history: a new rate is a new rule

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.valid_from <= timezone.now():
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        rule = fee_rule_create(
            actor=request.user,
            commission_bps=data["commission_bps"],
            valid_from=data["valid_from"],
            merchant=data.get("merchant"),
            category=data.get("category"),
            note=data.get("note", ""),
        )
        # The admin goes on with form.instance (log entry, redirect): make it the row the service created.
        obj.pk, obj.created_by, obj.created_at = rule.pk, rule.created_by, rule.created_at

    def delete_model(self, request, obj):
        fee_rule_delete(actor=request.user, rule_pk=obj.pk)
