from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from exchange.models import (
    Delivery,
    DownloadLog,
    Entitlement,
    JournalEntry,
    LedgerAccount,
    Order,
    OrderStatusHistory,
    PaymentEvent,
    Payout,
    Posting,
    SettlementRun,
)
from exchange.services.ledger import ledger_verify
from exchange.services.settlement import settlement_run_start


class ReadOnlyAdmin(admin.ModelAdmin):
    """Trade records change only through services; the admin shows them."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class OrderStatusHistoryInline(admin.TabularInline):
    model = OrderStatusHistory
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "from_status", "to_status", "reason", "actor")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("reference", "listing", "buyer", "merchant", "amount_display", "status", "created_at")
    list_filter = ("status", "gateway", "currency")
    search_fields = ("public_id", "buyer__email", "listing__title", "merchant__name", "gateway_session_id")
    list_select_related = ("listing", "buyer", "merchant")
    inlines = [OrderStatusHistoryInline]


@admin.register(PaymentEvent)
class PaymentEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "gateway", "type", "status", "attempts", "received_at", "processed_at")
    list_filter = ("status", "gateway", "type")
    search_fields = ("event_id",)


@admin.register(Entitlement)
class EntitlementAdmin(ReadOnlyAdmin):
    list_display = ("pk", "buyer", "listing", "status", "granted_at")
    list_filter = ("status",)
    search_fields = ("buyer__email", "listing__title")
    list_select_related = ("buyer", "listing")


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("pk", "entitlement", "version", "status", "download_count", "prepared_at", "confirmed_at")
    list_filter = ("status",)
    list_select_related = ("entitlement__buyer", "entitlement__listing", "version__listing")


@admin.register(DownloadLog)
class DownloadLogAdmin(ReadOnlyAdmin):
    list_display = ("pk", "delivery", "file", "user", "bytes_sent", "completed", "ip_address", "started_at")
    list_filter = ("completed",)


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


@admin.action(description="Verify the whole ledger (hash chain and balances)")
def verify_ledger(modeladmin, request, queryset):
    result = ledger_verify()
    level = messages.SUCCESS if result.ok else messages.ERROR
    text = result.message if result.ok else f"Ledger broken at entry #{result.first_break}: {result.message}"
    messages.add_message(request, level, text)


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


@admin.action(description="Start a new settlement run now")
def start_settlement_run(modeladmin, request, queryset):
    try:
        run = settlement_run_start(actor=request.user, trigger="admin")
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    else:
        messages.success(request, f"Settlement run {run.pk} started; a settlement worker is executing it.")


@admin.register(SettlementRun)
class SettlementRunAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "status",
        "trigger",
        "requested_by",
        "orders_settled",
        "payouts_created",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "trigger")
    inlines = [PayoutInline]
    actions = [start_settlement_run]

    def changelist_view(self, request, extra_context=None):
        # The "start a run" action needs no selection: allow it on an empty changelist.
        if request.method == "POST" and request.POST.get("action") == "start_settlement_run":
            post = request.POST.copy()
            if not post.getlist(admin.helpers.ACTION_CHECKBOX_NAME):
                post.setlist(admin.helpers.ACTION_CHECKBOX_NAME, ["0"])
                post["select_across"] = "1"
                request.POST = post
        return super().changelist_view(request, extra_context)


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = ("pk", "merchant", "amount_display", "status", "run", "gateway_reference", "attempts", "sent_at")
    list_filter = ("status", "currency")
    list_select_related = ("merchant", "run")
