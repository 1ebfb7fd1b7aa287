"""The trade: orders, payment events, entitlements, deliveries, the ledger and settlement."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from common.money import CURRENCY_CHOICES, format_minor
from exchange.choices import (
    AccessRequestStatus,
    AccountKind,
    DeliveryStatus,
    DisputeStatus,
    EntitlementStatus,
    JournalKind,
    NotificationKind,
    OrderStatus,
    OutboundEventStatus,
    PaymentEventStatus,
    PayoutStatus,
    RefundStatus,
    SandboxSessionStatus,
    SettlementBatchStatus,
    SettlementRunStatus,
    SubscriptionStatus,
    UsageChannel,
)
from listings.choices import Licence, PlanKind, VersionAccess
from listings.models import DataFile, Listing, ListingVersion, PricingPlan
from merchants.models import Merchant


class Order(models.Model):
    public_id = models.UUIDField(verbose_name=_("public id"), default=uuid.uuid4, unique=True, editable=False)
    # Indexed by order_buyer_idempotency_key_unique, whose first column it is: a second index would only cost writes.
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("buyer"),
        on_delete=models.PROTECT,
        related_name="orders",
        db_index=False,
    )
    listing = models.ForeignKey(Listing, verbose_name=_("listing"), on_delete=models.PROTECT, related_name="orders")
    plan = models.ForeignKey(PricingPlan, verbose_name=_("plan"), on_delete=models.PROTECT, related_name="orders")
    merchant = models.ForeignKey(Merchant, verbose_name=_("merchant"), on_delete=models.PROTECT, related_name="orders")
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3, choices=CURRENCY_CHOICES)
    service_fee = models.PositiveBigIntegerField(
        verbose_name=_("service fee"),
        default=0,
        help_text=_("The buyer service fee (minor units) included in amount; the platform keeps it."),
    )
    # Assigned only by exchange.services.orders.order_transition.
    status = models.CharField(
        verbose_name=_("status"),
        max_length=30,
        choices=OrderStatus.choices,
        default=OrderStatus.PENDING_PAYMENT,
        editable=False,
    )
    idempotency_key = models.CharField(verbose_name=_("idempotency key"), max_length=100)
    gateway = models.CharField(verbose_name=_("gateway"), max_length=20)
    # Unique by order_gateway_session_unique (a constraint, not unique=True, so no pattern-ops twin index).
    gateway_session_id = models.CharField(verbose_name=_("gateway session id"), max_length=120, null=True, blank=True)
    checkout_url = models.URLField(verbose_name=_("checkout url"), max_length=500, blank=True)
    # The gateway's payment (Stripe PaymentIntent) id, learnt from the paid event; refunds need it.
    gateway_payment_id = models.CharField(verbose_name=_("gateway payment id"), max_length=120, blank=True)
    plan_kind = models.CharField(
        verbose_name=_("plan kind"), max_length=20, choices=PlanKind.choices, default=PlanKind.ONE_TIME
    )
    refunded_amount = models.PositiveBigIntegerField(verbose_name=_("refunded amount"), default=0)
    # The platform's commission on this trade (basis points), fixed when it was paid (fees.commission_bps_for): a later
    # change of the listing's category or of PLATFORM_FEE_BPS does not re-price it. Empty on orders paid before it
    # was kept (migration 0022), which are priced as they always were.
    commission_bps = models.PositiveIntegerField(verbose_name=_("commission (bps)"), null=True, blank=True)
    # The licence the buyer accepted by placing the order, as it stood then (order_create): its code, and for a
    # custom licence the sha256 of its text, so the terms agreed can be proven even after the merchant edits them.
    licence = models.CharField(verbose_name=_("licence"), max_length=20, choices=Licence.choices, blank=True)
    licence_terms_sha256 = models.CharField(verbose_name=_("licence terms sha256"), max_length=64, blank=True)
    licence_accepted_at = models.DateTimeField(verbose_name=_("licence accepted at"), null=True, blank=True)
    access_request = models.ForeignKey(
        "AccessRequest",
        verbose_name=_("access request"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="orders",
        db_index=False,  # order_access_request_idx: only the orders that have one
    )
    # Set on the renewal orders a subscription creates each paid period.
    subscription = models.ForeignKey(
        "Subscription",
        verbose_name=_("subscription"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="renewal_orders",
        db_index=False,  # order_subscription_idx: only the orders that have one
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    paid_at = models.DateTimeField(verbose_name=_("paid at"), null=True, blank=True)
    delivered_at = models.DateTimeField(verbose_name=_("delivered at"), null=True, blank=True)
    settled_at = models.DateTimeField(verbose_name=_("settled at"), null=True, blank=True)
    settlement_run = models.ForeignKey(
        "SettlementRun",
        verbose_name=_("settlement run"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="orders",
    )

    class Meta:
        verbose_name = _("order")
        verbose_name_plural = _("orders")
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["buyer", "idempotency_key"], name="order_buyer_idempotency_key_unique"),
            models.UniqueConstraint(fields=["gateway_session_id"], name="order_gateway_session_unique"),
            models.CheckConstraint(
                condition=models.Q(refunded_amount__lte=models.F("amount")), name="order_refund_within_amount"
            ),
            models.CheckConstraint(
                condition=models.Q(service_fee__lte=models.F("amount")), name="order_service_fee_within_amount"
            ),
            # One open checkout per buyer, product and plan: a second tab resumes it instead of paying twice.
            models.UniqueConstraint(
                fields=["buyer", "listing", "plan"],
                condition=models.Q(status="pending_payment", subscription__isnull=True),
                name="order_one_open_checkout",
            ),
        ]
        # Every index is written by every status change (settling 500 orders updates 500 rows): the foreign keys that
        # are mostly empty are indexed only where they are set, which is also where they are looked up.
        indexes = [
            models.Index(fields=["status", "delivered_at"], name="order_status_delivered_idx"),
            models.Index(
                fields=["access_request"],
                condition=models.Q(access_request__isnull=False),
                name="order_access_request_idx",
            ),
            models.Index(
                fields=["subscription"], condition=models.Q(subscription__isnull=False), name="order_subscription_idx"
            ),
        ]

    def __str__(self):
        return f"Order {self.reference}"

    @property
    def reference(self) -> str:
        return str(self.public_id).split("-")[0].upper()

    @property
    def amount_display(self) -> str:
        return format_minor(self.amount, self.currency)

    @property
    def service_fee_display(self) -> str:
        return format_minor(self.service_fee, self.currency)


class OrderStatusHistory(models.Model):
    order = models.ForeignKey(Order, verbose_name=_("order"), on_delete=models.CASCADE, related_name="history")
    from_status = models.CharField(verbose_name=_("from status"), max_length=30, choices=OrderStatus.choices)
    to_status = models.CharField(verbose_name=_("to status"), max_length=30, choices=OrderStatus.choices)
    reason = models.CharField(verbose_name=_("reason"), max_length=300, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("actor"), on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("order status history")
        ordering = ["created_at", "pk"]
        verbose_name_plural = _("order status history")

    def __str__(self):
        return f"{self.order_id}: {self.from_status or '∅'} → {self.to_status}"


class PaymentEvent(models.Model):
    """A gateway notification, inserted under its unique id before any processing."""

    gateway = models.CharField(verbose_name=_("gateway"), max_length=20)
    event_id = models.CharField(verbose_name=_("event id"), max_length=120)
    type = models.CharField(verbose_name=_("type"), max_length=80)
    payload = models.JSONField(verbose_name=_("payload"))
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=PaymentEventStatus.choices, default=PaymentEventStatus.RECEIVED
    )
    error = models.TextField(verbose_name=_("error"), blank=True)
    # What applying it did ("order paid, entitlement granted", "refund 12 booked", "type … not handled").
    # db_default: the release before this column inserts events without it while the migration is applied.
    outcome = models.CharField(verbose_name=_("outcome"), max_length=500, blank=True, default="", db_default="")
    attempts = models.PositiveIntegerField(verbose_name=_("attempts"), default=0)
    received_at = models.DateTimeField(verbose_name=_("received at"), auto_now_add=True)
    processed_at = models.DateTimeField(verbose_name=_("processed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("payment event")
        verbose_name_plural = _("payment events")
        ordering = ["-received_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["gateway", "event_id"], name="payment_event_unique")]
        indexes = [models.Index(fields=["status", "received_at"], name="payment_event_status_idx")]

    def __str__(self):
        return f"{self.gateway}:{self.event_id} ({self.type})"


class Entitlement(models.Model):
    order = models.OneToOneField(Order, verbose_name=_("order"), on_delete=models.PROTECT, related_name="entitlement")
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("buyer"), on_delete=models.PROTECT, related_name="entitlements"
    )
    listing = models.ForeignKey(
        Listing, verbose_name=_("listing"), on_delete=models.PROTECT, related_name="entitlements"
    )
    plan = models.ForeignKey(
        PricingPlan, verbose_name=_("plan"), on_delete=models.PROTECT, null=True, related_name="entitlements"
    )
    # Assigned only by exchange.services.entitlements (its one transition function).
    status = models.CharField(
        verbose_name=_("status"),
        max_length=20,
        choices=EntitlementStatus.choices,
        default=EntitlementStatus.ACTIVE,
        editable=False,
    )
    # None: perpetual (one-time purchases). Subscriptions: the end of the paid period (+ grace).
    valid_until = models.DateTimeField(verbose_name=_("valid until"), null=True, blank=True)
    version_access = models.CharField(
        verbose_name=_("version access"), max_length=20, choices=VersionAccess.choices, default=VersionAccess.ALL
    )
    # The use scenario the merchant approved (access requests), recorded with the right to use the data.
    scenario = models.TextField(verbose_name=_("scenario"), blank=True)
    granted_at = models.DateTimeField(verbose_name=_("granted at"), auto_now_add=True)
    revoked_at = models.DateTimeField(verbose_name=_("revoked at"), null=True, blank=True)
    revoked_reason = models.CharField(verbose_name=_("revoked reason"), max_length=300, blank=True)

    class Meta:
        verbose_name = _("entitlement")
        verbose_name_plural = _("entitlements")
        ordering = ["-granted_at", "-pk"]
        indexes = [models.Index(fields=["status", "valid_until"], name="entitlement_status_valid_idx")]

    def __str__(self):
        return f"{self.buyer} → {self.listing}"


class EntitlementStatusHistory(models.Model):
    entitlement = models.ForeignKey(
        Entitlement, verbose_name=_("entitlement"), on_delete=models.CASCADE, related_name="history"
    )
    from_status = models.CharField(
        verbose_name=_("from status"), max_length=20, choices=EntitlementStatus.choices, blank=True
    )
    to_status = models.CharField(verbose_name=_("to status"), max_length=20, choices=EntitlementStatus.choices)
    reason = models.CharField(verbose_name=_("reason"), max_length=300, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("entitlement status history")
        ordering = ["created_at", "pk"]
        verbose_name_plural = _("entitlement status history")

    def __str__(self):
        return f"{self.entitlement_id}: {self.from_status or '∅'} → {self.to_status}"


class AccessRequest(models.Model):
    """A buyer's request to buy a listing that requires the merchant's approval."""

    listing = models.ForeignKey(
        Listing, verbose_name=_("listing"), on_delete=models.PROTECT, related_name="access_requests"
    )
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("buyer"), on_delete=models.PROTECT, related_name="access_requests"
    )
    organisation = models.CharField(verbose_name=_("organisation"), max_length=200)
    use_scenario = models.TextField(verbose_name=_("use scenario"))
    status = models.CharField(
        verbose_name=_("status"),
        max_length=20,
        choices=AccessRequestStatus.choices,
        default=AccessRequestStatus.PENDING,
        editable=False,
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    expires_at = models.DateTimeField(verbose_name=_("expires at"))
    decided_at = models.DateTimeField(verbose_name=_("decided at"), null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("decided by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    decision_note = models.TextField(verbose_name=_("decision note"), blank=True)

    class Meta:
        verbose_name = _("access request")
        verbose_name_plural = _("access requests")
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["listing", "buyer"], condition=models.Q(status="pending"), name="access_request_one_pending"
            )
        ]

    def __str__(self):
        return f"{self.buyer} → {self.listing} ({self.status})"


class Refund(models.Model):
    """Money returned to a buyer, partially or fully; unique by idempotency key."""

    order = models.ForeignKey(Order, verbose_name=_("order"), on_delete=models.PROTECT, related_name="refunds")
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3, choices=CURRENCY_CHOICES)
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=RefundStatus.choices, default=RefundStatus.PENDING
    )
    reason = models.CharField(verbose_name=_("reason"), max_length=300)
    source = models.CharField(
        verbose_name=_("source"), max_length=20, default="admin"
    )  # admin, gateway, delivery_failure
    idempotency_key = models.CharField(verbose_name=_("idempotency key"), max_length=150, unique=True)
    gateway_refund_id = models.CharField(verbose_name=_("gateway refund id"), max_length=120, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("requested by"), on_delete=models.SET_NULL, null=True, blank=True
    )
    error = models.TextField(verbose_name=_("error"), blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    completed_at = models.DateTimeField(verbose_name=_("completed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("refund")
        verbose_name_plural = _("refunds")
        ordering = ["-created_at", "-pk"]
        constraints = [models.CheckConstraint(condition=models.Q(amount__gt=0), name="refund_amount_positive")]

    def __str__(self):
        return f"Refund {self.pk} of {self.order} {format_minor(self.amount, self.currency)}"


class Dispute(models.Model):
    order = models.ForeignKey(Order, verbose_name=_("order"), on_delete=models.PROTECT, related_name="disputes")
    gateway_dispute_id = models.CharField(verbose_name=_("gateway dispute id"), max_length=120, unique=True)
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3, choices=CURRENCY_CHOICES)
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=DisputeStatus.choices, default=DisputeStatus.OPEN
    )
    reason = models.CharField(verbose_name=_("reason"), max_length=120, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    closed_at = models.DateTimeField(verbose_name=_("closed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("dispute")
        verbose_name_plural = _("disputes")
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"Dispute {self.gateway_dispute_id} ({self.status})"


class Subscription(models.Model):
    """A recurring purchase; each paid period extends the entitlement."""

    order = models.OneToOneField(
        Order, verbose_name=_("order"), on_delete=models.PROTECT, related_name="subscription_started"
    )
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("buyer"), on_delete=models.PROTECT, related_name="subscriptions"
    )
    listing = models.ForeignKey(
        Listing, verbose_name=_("listing"), on_delete=models.PROTECT, related_name="subscriptions"
    )
    plan = models.ForeignKey(
        PricingPlan, verbose_name=_("plan"), on_delete=models.PROTECT, related_name="subscriptions"
    )
    gateway = models.CharField(verbose_name=_("gateway"), max_length=20)
    gateway_subscription_id = models.CharField(
        verbose_name=_("gateway subscription id"), max_length=120, unique=True, null=True, blank=True
    )
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    current_period_end = models.DateTimeField(verbose_name=_("current period end"))
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    cancelled_at = models.DateTimeField(verbose_name=_("cancelled at"), null=True, blank=True)

    class Meta:
        verbose_name = _("subscription")
        verbose_name_plural = _("subscriptions")
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"Subscription {self.pk} to {self.listing} ({self.status})"


class Delivery(models.Model):
    entitlement = models.ForeignKey(
        Entitlement, verbose_name=_("entitlement"), on_delete=models.PROTECT, related_name="deliveries"
    )
    version = models.ForeignKey(
        ListingVersion, verbose_name=_("version"), on_delete=models.PROTECT, related_name="deliveries"
    )
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.READY
    )
    prepared_at = models.DateTimeField(verbose_name=_("prepared at"), auto_now_add=True)
    ready_at = models.DateTimeField(verbose_name=_("ready at"), null=True, blank=True)
    confirmed_at = models.DateTimeField(verbose_name=_("confirmed at"), null=True, blank=True)
    confirmed_by = models.CharField(
        verbose_name=_("confirmed by"), max_length=40, blank=True
    )  # download, api_call, buyer, auto
    download_count = models.PositiveIntegerField(verbose_name=_("download count"), default=0)
    # Preparation attempts (file checks); after DELIVERY_MAX_ATTEMPTS failures the order is refunded.
    attempts = models.PositiveIntegerField(verbose_name=_("attempts"), default=0)
    last_error = models.TextField(verbose_name=_("last error"), blank=True)
    failed_at = models.DateTimeField(verbose_name=_("failed at"), null=True, blank=True)
    # The receipt as issued when the delivery became ready: files (name, size, sha256), licence,
    # scenario, order reference, times. Frozen so the buyer can prove what was handed over.
    receipt = models.JSONField(verbose_name=_("receipt"), default=dict, blank=True)
    receipt_sha256 = models.CharField(verbose_name=_("receipt sha256"), max_length=64, blank=True)

    class Meta:
        verbose_name = _("delivery")
        ordering = ["-prepared_at", "-pk"]
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(fields=["entitlement", "version"], name="delivery_entitlement_version_unique")
        ]

    def __str__(self):
        return f"Delivery {self.pk} of {self.version}"


class DeliveryStatusHistory(models.Model):
    """Each move of a delivery's status, written by ``delivery_transition``."""

    delivery = models.ForeignKey(Delivery, verbose_name=_("delivery"), on_delete=models.CASCADE, related_name="history")
    from_status = models.CharField(
        verbose_name=_("from status"), max_length=20, choices=DeliveryStatus.choices, blank=True
    )
    to_status = models.CharField(verbose_name=_("to status"), max_length=20, choices=DeliveryStatus.choices)
    reason = models.CharField(verbose_name=_("reason"), max_length=300, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("delivery status history")
        ordering = ["created_at", "pk"]
        verbose_name_plural = _("delivery status history")

    def __str__(self):
        return f"{self.delivery_id}: {self.from_status} → {self.to_status}"


class DownloadLog(models.Model):
    delivery = models.ForeignKey(
        Delivery, verbose_name=_("delivery"), on_delete=models.PROTECT, related_name="downloads"
    )
    file = models.ForeignKey(DataFile, verbose_name=_("file"), on_delete=models.PROTECT, related_name="downloads")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.SET_NULL, null=True)
    bytes_sent = models.BigIntegerField(verbose_name=_("bytes sent"), default=0)
    completed = models.BooleanField(verbose_name=_("completed"), default=False)
    ip_address = models.GenericIPAddressField(verbose_name=_("ip address"), null=True, blank=True)
    user_agent = models.CharField(verbose_name=_("user agent"), max_length=300, blank=True)
    # The byte range asked for (None: the whole file) and how it was served (django, xaccel, s3).
    range_start = models.BigIntegerField(verbose_name=_("range start"), null=True, blank=True)
    range_end = models.BigIntegerField(verbose_name=_("range end"), null=True, blank=True)
    mode = models.CharField(verbose_name=_("mode"), max_length=10, default="django")
    started_at = models.DateTimeField(verbose_name=_("started at"), auto_now_add=True)
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("download log")
        verbose_name_plural = _("download logs")
        ordering = ["-started_at", "-pk"]
        indexes = [models.Index(fields=["file", "-started_at"], name="downloadlog_file_started_idx")]

    def __str__(self):
        return f"Download {self.pk} of {self.file_id} ({self.bytes_sent} bytes)"


class LedgerAccount(models.Model):
    code = models.CharField(verbose_name=_("code"), max_length=80, unique=True)
    kind = models.CharField(verbose_name=_("kind"), max_length=30, choices=AccountKind.choices)
    merchant = models.ForeignKey(
        Merchant, verbose_name=_("merchant"), on_delete=models.PROTECT, null=True, blank=True, related_name="accounts"
    )
    name = models.CharField(verbose_name=_("name"), max_length=200)

    class Meta:
        verbose_name = _("ledger account")
        verbose_name_plural = _("ledger accounts")
        ordering = ["code"]

    def __str__(self):
        return self.name


class LedgerChainHead(models.Model):
    """The tip of the ledger's chain of blocks; its row lock orders the (short) appends of blocks."""

    sequence = models.BigIntegerField(verbose_name=_("sequence"), default=0)  # the last block's sequence
    block_hash = models.CharField(verbose_name=_("block hash"), max_length=64, default="0" * 64)

    class Meta:
        verbose_name = _("ledger chain head")
        verbose_name_plural = _("ledger chain heads")

    def __str__(self):
        return f"Ledger head: block #{self.sequence}"


class LedgerBlock(models.Model):
    """Journal entries written together, hashed into one root; the blocks are chained one after another.

    Inside a block, entry 1 chains from the genesis hash and entry n from
    entry n-1; ``root_hash`` is the last entry's hash, so it commits to every
    entry of the block in order. ``block_hash`` = sha256(prev_hash || canonical
    header), the header naming sequence, root, entry count and time. Writers
    build and insert their entries in parallel and take the chain head's lock
    only to append the block (DESIGN.md §5.5).
    """

    sequence = models.BigIntegerField(verbose_name=_("sequence"), unique=True)
    entry_count = models.PositiveIntegerField(verbose_name=_("entry count"))
    root_hash = models.CharField(verbose_name=_("root hash"), max_length=64)
    created_at = models.DateTimeField(verbose_name=_("created at"))
    prev_hash = models.CharField(verbose_name=_("prev hash"), max_length=64)
    block_hash = models.CharField(verbose_name=_("block hash"), max_length=64, unique=True)

    class Meta:
        verbose_name = _("ledger block")
        verbose_name_plural = _("ledger blocks")
        ordering = ["sequence"]

    def __str__(self):
        return f"Block #{self.sequence} ({self.entry_count} entries)"


class JournalEntry(models.Model):
    """A balanced, append-only, hash-chained journal entry.

    ``sequence`` is unique and increasing (PostgreSQL sequence), not gap-free:
    completeness is proven by the blocks (each entry's ``position`` in its
    block runs 1..entry_count).
    """

    sequence = models.BigIntegerField(verbose_name=_("sequence"), unique=True)
    # No database foreign key: the block row is inserted last, after the checks deferred to the commit have run
    # (ledger.block_append); ledger_verify reports an entry whose block does not exist.
    block = models.ForeignKey(
        LedgerBlock, verbose_name=_("block"), on_delete=models.PROTECT, related_name="entries", db_constraint=False
    )
    position = models.PositiveIntegerField(verbose_name=_("position"))
    idempotency_key = models.CharField(verbose_name=_("idempotency key"), max_length=150, unique=True)
    kind = models.CharField(verbose_name=_("kind"), max_length=30, choices=JournalKind.choices)
    order = models.ForeignKey(
        Order, verbose_name=_("order"), on_delete=models.PROTECT, null=True, blank=True, related_name="journal_entries"
    )
    payout = models.ForeignKey(
        "Payout",
        verbose_name=_("payout"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="journal_entries",
    )
    # A correction names what it corrects: the entry whose every leg it negates (ledger.journal_reverse), at most
    # once. Covered by the entry's hash.
    reverses = models.OneToOneField(
        "self",
        verbose_name=_("reverses"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="reversed_by",
    )
    memo = models.CharField(verbose_name=_("memo"), max_length=300, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"))
    prev_hash = models.CharField(verbose_name=_("prev hash"), max_length=64)
    entry_hash = models.CharField(verbose_name=_("entry hash"), max_length=64, unique=True)

    class Meta:
        verbose_name = _("journal entry")
        ordering = ["sequence"]
        verbose_name_plural = _("journal entries")
        constraints = [models.UniqueConstraint(fields=["block", "position"], name="journal_entry_block_position")]

    def __str__(self):
        return f"#{self.sequence} {self.kind}"


class Posting(models.Model):
    """One leg of a journal entry: positive is a debit, negative a credit.

    Its entry and account are checked once per INSERT statement by the
    ledger's own trigger (migration 0018), not by a foreign key per row: it
    refuses a posting whose entry or account does not exist, or whose entry
    is sealed in an appended block. Entries cannot be deleted (append-only)
    and an account with postings cannot be either (a trigger).
    """

    entry = models.ForeignKey(
        JournalEntry, verbose_name=_("entry"), on_delete=models.PROTECT, related_name="postings", db_constraint=False
    )
    account = models.ForeignKey(
        LedgerAccount,
        verbose_name=_("account"),
        on_delete=models.PROTECT,
        related_name="postings",
        db_constraint=False,
    )
    amount = models.BigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3, choices=CURRENCY_CHOICES)

    class Meta:
        verbose_name = _("posting")
        verbose_name_plural = _("postings")
        ordering = ["pk"]
        constraints = [models.CheckConstraint(condition=~models.Q(amount=0), name="posting_amount_nonzero")]

    def __str__(self):
        return f"{self.account_id} {self.amount:+d} {self.currency}"


class SettlementRun(models.Model):
    status = models.CharField(
        verbose_name=_("status"),
        max_length=20,
        choices=SettlementRunStatus.choices,
        default=SettlementRunStatus.RUNNING,
        editable=False,
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("requested by"), on_delete=models.SET_NULL, null=True, blank=True
    )
    trigger = models.CharField(verbose_name=_("trigger"), max_length=20, default="manual")
    started_at = models.DateTimeField(verbose_name=_("started at"), auto_now_add=True)
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)
    cutoff = models.DateTimeField(
        verbose_name=_("cutoff"), null=True, blank=True, help_text=_("Orders delivered up to this time are settled.")
    )
    orders_total = models.PositiveIntegerField(verbose_name=_("orders total"), default=0)
    batches_total = models.PositiveIntegerField(verbose_name=_("batches total"), default=0)
    batches_done = models.PositiveIntegerField(verbose_name=_("batches done"), default=0)
    orders_settled = models.PositiveIntegerField(verbose_name=_("orders settled"), default=0)
    payouts_created = models.PositiveIntegerField(verbose_name=_("payouts created"), default=0)
    error = models.TextField(verbose_name=_("error"), blank=True)

    class Meta:
        verbose_name = _("settlement run")
        verbose_name_plural = _("settlement runs")
        ordering = ["-started_at", "-pk"]
        constraints = [
            # Only one run at a time, enforced by the database.
            models.UniqueConstraint(
                fields=["status"], condition=models.Q(status="running"), name="settlement_one_running"
            )
        ]

    def __str__(self):
        return f"Settlement run {self.pk} ({self.status})"


class SettlementBatch(models.Model):
    """A slice of a run's orders (a primary-key range), settled in one transaction as one ledger block."""

    run = models.ForeignKey(SettlementRun, verbose_name=_("run"), on_delete=models.PROTECT, related_name="batches")
    number = models.PositiveIntegerField(verbose_name=_("number"))
    first_order_pk = models.BigIntegerField(verbose_name=_("first order pk"))
    last_order_pk = models.BigIntegerField(verbose_name=_("last order pk"))
    status = models.CharField(
        verbose_name=_("status"),
        max_length=20,
        choices=SettlementBatchStatus.choices,
        default=SettlementBatchStatus.PENDING,
    )
    orders_settled = models.PositiveIntegerField(verbose_name=_("orders settled"), default=0)
    ledger_rows = models.PositiveIntegerField(verbose_name=_("ledger rows"), default=0)
    totals = models.JSONField(
        verbose_name=_("totals"), default=dict, blank=True
    )  # {currency: {"gross": int, "fee": int}}
    attempts = models.PositiveIntegerField(verbose_name=_("attempts"), default=0)
    error = models.TextField(verbose_name=_("error"), blank=True)
    block = models.ForeignKey(  # written before its block exists (see JournalEntry.block)
        LedgerBlock,
        verbose_name=_("block"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("settlement batch")
        ordering = ["run", "number"]
        verbose_name_plural = _("settlement batches")
        constraints = [models.UniqueConstraint(fields=["run", "number"], name="settlement_batch_number")]

    def __str__(self):
        return f"Run {self.run_id} batch {self.number} ({self.status})"


class Payout(models.Model):
    run = models.ForeignKey(SettlementRun, verbose_name=_("run"), on_delete=models.PROTECT, related_name="payouts")
    merchant = models.ForeignKey(Merchant, verbose_name=_("merchant"), on_delete=models.PROTECT, related_name="payouts")
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3, choices=CURRENCY_CHOICES)
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=PayoutStatus.choices, default=PayoutStatus.PENDING
    )
    idempotency_key = models.CharField(verbose_name=_("idempotency key"), max_length=100, unique=True)
    gateway = models.CharField(verbose_name=_("gateway"), max_length=20)
    gateway_reference = models.CharField(verbose_name=_("gateway reference"), max_length=120, blank=True)
    attempts = models.PositiveIntegerField(verbose_name=_("attempts"), default=0)
    error = models.TextField(verbose_name=_("error"), blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    sent_at = models.DateTimeField(verbose_name=_("sent at"), null=True, blank=True)

    class Meta:
        verbose_name = _("payout")
        verbose_name_plural = _("payouts")
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["run", "merchant", "currency"], name="payout_one_per_merchant_per_run")
        ]

    def __str__(self):
        return f"Payout {self.pk} to {self.merchant} {format_minor(self.amount, self.currency)}"

    @property
    def amount_display(self) -> str:
        return format_minor(self.amount, self.currency)


class StatusHistory(models.Model):
    """One status move of a machine kept by ``exchange.services.transitions`` (run, batch, payout, refund, ...)."""

    from_status = models.CharField(verbose_name=_("from status"), max_length=20, blank=True)
    to_status = models.CharField(verbose_name=_("to status"), max_length=20)
    reason = models.CharField(verbose_name=_("reason"), max_length=300, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("actor"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), default=timezone.now)

    class Meta:
        abstract = True
        ordering = ["created_at", "pk"]

    def __str__(self):
        return f"{self.from_status or '∅'} → {self.to_status}"


class SettlementRunStatusHistory(StatusHistory):
    run = models.ForeignKey(SettlementRun, verbose_name=_("run"), on_delete=models.PROTECT, related_name="history")

    class Meta(StatusHistory.Meta):
        verbose_name = _("settlement run status history")
        verbose_name_plural = _("settlement run status history")


class SettlementBatchStatusHistory(StatusHistory):
    batch = models.ForeignKey(
        SettlementBatch, verbose_name=_("batch"), on_delete=models.PROTECT, related_name="history"
    )

    class Meta(StatusHistory.Meta):
        verbose_name = _("settlement batch status history")
        verbose_name_plural = _("settlement batch status history")


class PayoutStatusHistory(StatusHistory):
    payout = models.ForeignKey(Payout, verbose_name=_("payout"), on_delete=models.PROTECT, related_name="history")

    class Meta(StatusHistory.Meta):
        verbose_name = _("payout status history")
        verbose_name_plural = _("payout status history")


class RefundStatusHistory(StatusHistory):
    refund = models.ForeignKey(Refund, verbose_name=_("refund"), on_delete=models.PROTECT, related_name="history")

    class Meta(StatusHistory.Meta):
        verbose_name = _("refund status history")
        verbose_name_plural = _("refund status history")


class DisputeStatusHistory(StatusHistory):
    dispute = models.ForeignKey(Dispute, verbose_name=_("dispute"), on_delete=models.PROTECT, related_name="history")

    class Meta(StatusHistory.Meta):
        verbose_name = _("dispute status history")
        verbose_name_plural = _("dispute status history")


class SubscriptionStatusHistory(StatusHistory):
    subscription = models.ForeignKey(
        Subscription, verbose_name=_("subscription"), on_delete=models.PROTECT, related_name="history"
    )

    class Meta(StatusHistory.Meta):
        verbose_name = _("subscription status history")
        verbose_name_plural = _("subscription status history")


class AccessRequestStatusHistory(StatusHistory):
    request = models.ForeignKey(
        AccessRequest, verbose_name=_("access request"), on_delete=models.PROTECT, related_name="history"
    )

    class Meta(StatusHistory.Meta):
        verbose_name = _("access request status history")
        verbose_name_plural = _("access request status history")


class SandboxCheckoutSession(models.Model):
    """The sandbox gateway's own record of a checkout (what Stripe would hold)."""

    id = models.CharField(verbose_name=_("id"), primary_key=True, max_length=60)
    order_public_id = models.UUIDField(verbose_name=_("order public id"))
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3)
    description = models.CharField(verbose_name=_("description"), max_length=300)
    success_url = models.CharField(verbose_name=_("success url"), max_length=500)
    cancel_url = models.CharField(verbose_name=_("cancel url"), max_length=500)
    status = models.CharField(
        verbose_name=_("status"), max_length=20, choices=SandboxSessionStatus.choices, default=SandboxSessionStatus.OPEN
    )
    mode = models.CharField(verbose_name=_("mode"), max_length=20, default="payment")  # payment, subscription, setup
    interval = models.CharField(verbose_name=_("interval"), max_length=10, blank=True)
    payment_intent = models.CharField(verbose_name=_("payment intent"), max_length=60, blank=True)
    subscription_id = models.CharField(verbose_name=_("subscription id"), max_length=60, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("sandbox checkout session")
        verbose_name_plural = _("sandbox checkout sessions")

    def __str__(self):
        return self.id

    @property
    def amount_display(self) -> str:
        return format_minor(self.amount, self.currency)


class SandboxTransfer(models.Model):
    """The sandbox gateway's record of a payout transfer, unique by idempotency key."""

    id = models.CharField(verbose_name=_("id"), primary_key=True, max_length=60)
    idempotency_key = models.CharField(verbose_name=_("idempotency key"), max_length=100, unique=True)
    merchant = models.ForeignKey(Merchant, verbose_name=_("merchant"), on_delete=models.PROTECT)
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("sandbox transfer")
        verbose_name_plural = _("sandbox transfers")

    def __str__(self):
        return self.id


class SandboxRefund(models.Model):
    """The sandbox gateway's record of a refund it made, unique by idempotency key.

    Refunds the exchange asks for carry the exchange's key (the id is derived
    from it, "re_sbx_" + sha256(key)[:24], as before records were kept); refunds
    the sandbox makes on its own (``emit_refund``, as from a provider's
    dashboard) have no key of ours and leave it empty (NULL: any number of them,
    never colliding with a key of ours). ``payment_intent`` is the payment as the
    caller named it (a payment intent, or the checkout session of a payment
    without one; empty when it named none).
    """

    id = models.CharField(verbose_name=_("id"), primary_key=True, max_length=60)
    idempotency_key = models.CharField(
        verbose_name=_("idempotency key"), max_length=150, unique=True, null=True, blank=True
    )
    payment_intent = models.CharField(verbose_name=_("payment intent"), max_length=120, blank=True)
    order_public_id = models.UUIDField(verbose_name=_("order public id"), null=True, blank=True)
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("sandbox refund")
        verbose_name_plural = _("sandbox refunds")

    def __str__(self):
        return self.id

    @staticmethod
    def records_since():
        """When the sandbox began keeping refund records (its migration was applied; see ``_sandbox_records_since``).

        A refund the exchange created before then that has no record may or may
        not have been made: the sandbox cannot tell.
        """
        return _sandbox_records_since("0023_sandbox_refunds")


def _sandbox_records_since(migration: str):
    """When the exchange migration ``migration`` (the one creating a kind of sandbox record) was applied.

    Unknown (no such row: migrations recorded elsewhere), it is taken as now, so nothing before is taken to be on
    the sandbox's books: its lookups then say they cannot tell, rather than "not made". A release before the
    records that still serves in the moments between the migration and its reload (deploy/README.md) can make a
    refund without a record; the sandbox is the embedded demo gateway, and that window is accepted.
    """
    from django.db import connection
    from django.db.migrations.recorder import MigrationRecorder
    from django.utils import timezone

    applied = (
        MigrationRecorder(connection)
        .migration_qs.filter(app="exchange", name=migration)
        .values_list("applied", flat=True)
        .first()
    )
    return applied or timezone.now()


class SandboxDispute(models.Model):
    """The sandbox gateway's record of a dispute it opened (``emit_dispute``), by the "dp_sbx_..." id it emitted.

    ``status`` is the dispute's status as last emitted: an open one
    (``needs_response``, ``under_review``, ``warning_needs_response``,
    ``warning_under_review``) until it is closed ``won`` or ``lost`` (with
    ``closed_at``); a closed dispute stays as it was closed. ``amount`` is what
    the sandbox withdrew for it: the disputed amount its event names (the
    charge's) less what the sandbox had refunded of that charge by then, as a
    provider cannot take back what it already returned; a won dispute gives
    that amount back. ``payment_intent`` is the order's payment (empty when it
    had none yet).
    """

    OPEN_STATUSES = ("needs_response", "under_review", "warning_needs_response", "warning_under_review")
    CLOSED_STATUSES = ("won", "lost")

    id = models.CharField(verbose_name=_("id"), primary_key=True, max_length=120)
    payment_intent = models.CharField(verbose_name=_("payment intent"), max_length=120, blank=True)
    order_public_id = models.UUIDField(verbose_name=_("order public id"), null=True, blank=True)
    amount = models.PositiveBigIntegerField(verbose_name=_("amount"))
    currency = models.CharField(verbose_name=_("currency"), max_length=3)
    status = models.CharField(verbose_name=_("status"), max_length=30)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    closed_at = models.DateTimeField(verbose_name=_("closed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("sandbox dispute")
        verbose_name_plural = _("sandbox disputes")

    def __str__(self):
        return self.id

    @staticmethod
    def records_since():
        """When the sandbox began keeping dispute records (its migration was applied), or None if unknown.

        A dispute the exchange recorded before then has no record: the sandbox
        cannot say what it withdrew or gave back for it.
        """
        return _sandbox_records_since("0024_sandbox_disputes")


class UsageRecord(models.Model):
    """One metered use of purchased data: a data API call (rows read) or a download.

    The access log of the data API: who, what, how much, when and from where.
    Quotas are enforced on Redis counters at request time; these rows are the
    durable record the monthly aggregate (billing) is computed from.
    """

    channel = models.CharField(
        verbose_name=_("channel"), max_length=10, choices=UsageChannel.choices, default=UsageChannel.API
    )
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("buyer"), on_delete=models.PROTECT, related_name="usage_records"
    )
    entitlement = models.ForeignKey(
        Entitlement, verbose_name=_("entitlement"), on_delete=models.PROTECT, related_name="usage_records"
    )
    listing = models.ForeignKey(
        Listing, verbose_name=_("listing"), on_delete=models.PROTECT, related_name="usage_records"
    )
    file = models.ForeignKey(
        DataFile, verbose_name=_("file"), on_delete=models.PROTECT, null=True, blank=True, related_name="usage_records"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        verbose_name=_("api key"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_records",
    )
    rows = models.BigIntegerField(verbose_name=_("rows"), default=0)
    bytes = models.BigIntegerField(verbose_name=_("bytes"), default=0)
    # Billable units for the plan's metered unit (calls, or thousands of rows, rounded up).
    units = models.BigIntegerField(verbose_name=_("units"), default=0)
    status_code = models.PositiveSmallIntegerField(verbose_name=_("status code"), default=200)
    duration_ms = models.PositiveIntegerField(verbose_name=_("duration ms"), default=0)
    ip_address = models.GenericIPAddressField(verbose_name=_("ip address"), null=True, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("usage record")
        verbose_name_plural = _("usage records")
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["entitlement", "created_at"], name="usage_entitlement_at_idx"),
            models.Index(fields=["listing", "created_at"], name="usage_listing_at_idx"),
        ]

    def __str__(self):
        return f"{self.channel} by {self.buyer_id}: {self.rows} rows, {self.bytes} bytes"


class UsageMonthly(models.Model):
    """Usage per entitlement and calendar month (UTC), rebuilt by a beat task from UsageRecord: the billing basis."""

    entitlement = models.ForeignKey(
        Entitlement, verbose_name=_("entitlement"), on_delete=models.PROTECT, related_name="usage_months"
    )
    listing = models.ForeignKey(
        Listing, verbose_name=_("listing"), on_delete=models.PROTECT, related_name="usage_months"
    )
    merchant = models.ForeignKey(
        Merchant, verbose_name=_("merchant"), on_delete=models.PROTECT, related_name="usage_months"
    )
    month = models.DateField(verbose_name=_("month"), help_text=_("First day of the month (UTC)."))
    calls = models.BigIntegerField(verbose_name=_("calls"), default=0)
    rows = models.BigIntegerField(verbose_name=_("rows"), default=0)
    bytes = models.BigIntegerField(verbose_name=_("bytes"), default=0)
    units = models.BigIntegerField(verbose_name=_("units"), default=0)
    billable_units = models.BigIntegerField(
        verbose_name=_("billable units"), default=0, help_text=_("Units beyond the plan's free allowance.")
    )
    amount = models.BigIntegerField(
        verbose_name=_("amount"), default=0, help_text=_("Billable units times the unit price, minor units.")
    )
    currency = models.CharField(verbose_name=_("currency"), max_length=3, choices=CURRENCY_CHOICES, blank=True)
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("monthly usage")
        ordering = ["-month", "pk"]
        verbose_name_plural = _("monthly usage")
        constraints = [
            models.UniqueConstraint(fields=["entitlement", "month"], name="usage_monthly_entitlement_month_unique")
        ]

    def __str__(self):
        return f"{self.entitlement_id} {self.month:%Y-%m}: {self.units} units"


class Notification(models.Model):
    """An in-app notification (also sent by email). ``dedupe_key`` makes a re-run task notify once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(verbose_name=_("kind"), max_length=30, choices=NotificationKind.choices)
    title = models.CharField(verbose_name=_("title"), max_length=200)
    body = models.TextField(verbose_name=_("body"), blank=True)
    url = models.CharField(verbose_name=_("url"), max_length=300, blank=True)
    data = models.JSONField(verbose_name=_("data"), default=dict, blank=True)
    dedupe_key = models.CharField(verbose_name=_("dedupe key"), max_length=150, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    read_at = models.DateTimeField(verbose_name=_("read at"), null=True, blank=True)
    emailed_at = models.DateTimeField(verbose_name=_("emailed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["user", "-created_at"], name="notification_user_at_idx")]

    def __str__(self):
        return f"{self.kind} for {self.user_id}: {self.title}"


class WebhookEndpoint(models.Model):
    """A buyer's (or merchant's) outbound webhook: events are POSTed to ``url``, signed with ``secret``."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(verbose_name=_("url"), max_length=500)
    # Needed in clear to sign each event (HMAC-SHA256); shown to its owner once, at creation.
    secret = models.CharField(verbose_name=_("secret"), max_length=100)
    description = models.CharField(verbose_name=_("description"), max_length=200, blank=True)
    event_types = models.JSONField(
        verbose_name=_("event types"), default=list, blank=True, help_text=_("Empty: every event type.")
    )
    is_active = models.BooleanField(verbose_name=_("is active"), default=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    disabled_at = models.DateTimeField(verbose_name=_("disabled at"), null=True, blank=True)

    class Meta:
        verbose_name = _("webhook endpoint")
        verbose_name_plural = _("webhook endpoints")
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return self.url


class OutboundEvent(models.Model):
    """One event to deliver to one endpoint; every attempt is recorded (OutboundAttempt)."""

    public_id = models.UUIDField(verbose_name=_("public id"), default=uuid.uuid4, unique=True, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, verbose_name=_("endpoint"), on_delete=models.CASCADE, related_name="events"
    )
    type = models.CharField(verbose_name=_("type"), max_length=60)
    payload = models.JSONField(verbose_name=_("payload"))
    dedupe_key = models.CharField(verbose_name=_("dedupe key"), max_length=150)
    status = models.CharField(
        verbose_name=_("status"),
        max_length=20,
        choices=OutboundEventStatus.choices,
        default=OutboundEventStatus.PENDING,
    )
    attempts = models.PositiveIntegerField(verbose_name=_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(verbose_name=_("next attempt at"), null=True, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    delivered_at = models.DateTimeField(verbose_name=_("delivered at"), null=True, blank=True)

    class Meta:
        verbose_name = _("outbound event")
        verbose_name_plural = _("outbound events")
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "dedupe_key"], name="outbound_event_endpoint_dedupe_unique")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="outbound_event_due_idx")]

    def __str__(self):
        return f"{self.type} → {self.endpoint_id} ({self.status})"


class OutboundAttempt(models.Model):
    event = models.ForeignKey(
        OutboundEvent, verbose_name=_("event"), on_delete=models.CASCADE, related_name="attempt_log"
    )
    attempted_at = models.DateTimeField(verbose_name=_("attempted at"), auto_now_add=True)
    status_code = models.PositiveSmallIntegerField(verbose_name=_("status code"), null=True, blank=True)
    error = models.CharField(verbose_name=_("error"), max_length=500, blank=True)
    response_excerpt = models.CharField(verbose_name=_("response excerpt"), max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(verbose_name=_("duration ms"), default=0)

    class Meta:
        verbose_name = _("outbound attempt")
        verbose_name_plural = _("outbound attempts")
        ordering = ["-attempted_at", "-pk"]

    def __str__(self):
        return f"attempt on {self.event_id}: {self.status_code or self.error}"


class LedgerVerification(models.Model):
    """One run of ``ledger_verify`` (command, admin or beat): the chain and every balance recomputed."""

    started_at = models.DateTimeField(verbose_name=_("started at"), auto_now_add=True)
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)
    ok = models.BooleanField(verbose_name=_("ok"), default=False)
    entries_checked = models.BigIntegerField(verbose_name=_("entries checked"), default=0)
    first_break_sequence = models.BigIntegerField(verbose_name=_("first break sequence"), null=True, blank=True)
    first_break_block = models.BigIntegerField(verbose_name=_("first break block"), null=True, blank=True)
    message = models.TextField(verbose_name=_("message"), blank=True)
    trigger = models.CharField(verbose_name=_("trigger"), max_length=20, default="command")  # command, admin, schedule

    class Meta:
        verbose_name = _("ledger verification")
        verbose_name_plural = _("ledger verifications")
        ordering = ["-started_at", "-pk"]

    def __str__(self):
        return f"Verification {self.pk}: {'ok' if self.ok else 'BROKEN'} ({self.entries_checked} entries)"

    @property
    def break_location(self) -> str:
        """Where the first break is: an entry (and its block), a block, or the ledger as a whole."""
        if self.first_break_sequence and self.first_break_block:
            return f"entry #{self.first_break_sequence} in block #{self.first_break_block}"
        if self.first_break_sequence:  # an entry outside every block
            return f"entry #{self.first_break_sequence}"
        if self.first_break_block:
            return f"block #{self.first_break_block}"
        return "the ledger as a whole"


class TransactionCertificate(models.Model):
    """A settled trade's certificate (交易凭证): canonical JSON signed with the exchange's Ed25519 key.

    ``document`` holds the exact canonical bytes (as text) that were signed;
    ``signature`` is their Ed25519 signature (base64); ``key_id`` names the
    public key (sha256 of its raw bytes, hex, first 16 characters).
    """

    number = models.CharField(verbose_name=_("number"), max_length=40, unique=True)
    order = models.OneToOneField(Order, verbose_name=_("order"), on_delete=models.PROTECT, related_name="certificate")
    journal_entry = models.ForeignKey(
        JournalEntry, verbose_name=_("journal entry"), on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    document = models.TextField(verbose_name=_("document"))
    signature = models.CharField(verbose_name=_("signature"), max_length=120)
    key_id = models.CharField(verbose_name=_("key id"), max_length=32)
    issued_at = models.DateTimeField(verbose_name=_("issued at"), default=timezone.now)

    class Meta:
        verbose_name = _("transaction certificate")
        verbose_name_plural = _("transaction certificates")
        ordering = ["-issued_at", "-pk"]

    def __str__(self):
        return self.number


class FeeRule(models.Model):
    """A line of the platform's fee schedule: the commission on sales, by default or for a merchant or category.

    The rule that applies to an order is the most specific one in force when
    it was paid (valid_from at or before paid_at, the latest such): merchant
    and category > merchant > category > default (neither); with no rule at
    all, settings.PLATFORM_FEE_BPS.
    """

    merchant = models.ForeignKey(
        Merchant, verbose_name=_("merchant"), on_delete=models.PROTECT, null=True, blank=True, related_name="fee_rules"
    )
    category = models.ForeignKey(
        "listings.Category",
        verbose_name=_("category"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="fee_rules",
    )
    commission_bps = models.PositiveIntegerField(
        verbose_name=_("commission bps"), help_text=_("Commission in basis points (100 = 1 %), 0 to 10000.")
    )
    valid_from = models.DateTimeField(verbose_name=_("valid from"))
    note = models.CharField(verbose_name=_("note"), max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("fee rule")
        verbose_name_plural = _("fee rules")
        ordering = ["-valid_from", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(commission_bps__lte=10000), name="fee_rule_commission_at_most_100_percent"
            )
        ]

    def __str__(self):
        scope = " / ".join(str(x) for x in (self.merchant, self.category) if x) or "default"
        return f"{scope}: {self.commission_bps / 100:g} % from {self.valid_from:%Y-%m-%d}"
