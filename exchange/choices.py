from django.db import models


class OrderStatus(models.TextChoices):
    PENDING_PAYMENT = "pending_payment", "Pending payment"
    PAID = "paid", "Paid (held in escrow)"
    DELIVERED = "delivered", "Delivered"
    SETTLED = "settled", "Settled"
    DECLINED = "declined", "Declined"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"
    PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"
    REFUNDED = "refunded", "Refunded"
    DISPUTED = "disputed", "Disputed"


_S = OrderStatus
# The one table of allowed order moves (DESIGN.md §5.3).
ORDER_TRANSITIONS: dict[str, set[str]] = {
    _S.PENDING_PAYMENT: {_S.PAID, _S.DECLINED, _S.CANCELLED, _S.EXPIRED},
    _S.PAID: {_S.DELIVERED, _S.PARTIALLY_REFUNDED, _S.REFUNDED, _S.DISPUTED},
    _S.DELIVERED: {_S.SETTLED, _S.PARTIALLY_REFUNDED, _S.REFUNDED, _S.DISPUTED},
    _S.SETTLED: {_S.PARTIALLY_REFUNDED, _S.REFUNDED, _S.DISPUTED},
    _S.PARTIALLY_REFUNDED: {_S.PARTIALLY_REFUNDED, _S.REFUNDED, _S.DISPUTED, _S.SETTLED},
    _S.DISPUTED: {_S.PAID, _S.DELIVERED, _S.SETTLED, _S.REFUNDED},
    _S.DECLINED: set(),
    _S.CANCELLED: set(),
    _S.EXPIRED: set(),
    _S.REFUNDED: set(),
}


class EntitlementStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


_E = EntitlementStatus
# The one table of allowed entitlement moves: lapsed or revoked access can come back (a renewal, a
# dispute won), and anything can be revoked.
ENTITLEMENT_TRANSITIONS: dict[str, set[str]] = {
    _E.ACTIVE: {_E.EXPIRED, _E.REVOKED},
    _E.EXPIRED: {_E.ACTIVE, _E.REVOKED},
    _E.REVOKED: {_E.ACTIVE, _E.EXPIRED},
}


class AccessRequestStatus(models.TextChoices):
    PENDING = "pending", "Waiting for the merchant"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired (no answer in time)"


class RefundStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class DisputeStatus(models.TextChoices):
    OPEN = "open", "Open"
    WON = "won", "Won by the exchange"
    LOST = "lost", "Lost (funds returned to the buyer)"


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Payment failed (grace period)"
    CANCELLED = "cancelled", "Cancelled"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Being prepared"
    READY = "ready", "Ready to download"
    CONFIRMED = "confirmed", "Confirmed"
    FAILED = "failed", "Failed (order refunded)"
    WITHDRAWN = "withdrawn", "Withdrawn (access ended)"


class NotificationKind(models.TextChoices):
    PURCHASE_CONFIRMED = "purchase_confirmed", "Purchase confirmed"
    DELIVERY_READY = "delivery_ready", "Delivery ready"
    DELIVERY_FAILED = "delivery_failed", "Delivery failed"
    NEW_VERSION = "new_version", "New version available"
    ENTITLEMENT_EXPIRING = "entitlement_expiring", "Access about to expire"
    REFUND = "refund", "Refund"
    SALE = "sale", "New sale"


class OutboundEventStatus(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Gave up after retries"


class UsageChannel(models.TextChoices):
    API = "api", "Data API call"
    DOWNLOAD = "download", "File download"


class PaymentEventStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored (type not handled)"
    FAILED = "failed", "Failed"


class JournalKind(models.TextChoices):
    PAYMENT = "payment", "Payment captured (held)"
    REFUND = "refund", "Refund to the buyer"
    DISPUTE = "dispute", "Funds withdrawn by a dispute"
    DISPUTE_WON = "dispute_won", "Disputed funds returned"
    SALE = "sale", "Sale settled (fee and merchant payable)"
    PAYOUT_CREATED = "payout_created", "Payout created"
    PAYOUT_SENT = "payout_sent", "Payout sent"
    RECEIVABLE_NETTED = "receivable_netted", "Merchant receivable netted against the payable"
    PAYOUT_RETURNED = "payout_returned", "Payout refused by the gateway, owed again"


class AccountKind(models.TextChoices):
    GATEWAY_CLEARING = "gateway_clearing", "Gateway clearing"
    ESCROW_HELD = "escrow_held", "Buyer funds held in escrow"
    PLATFORM_REVENUE = "platform_revenue", "Platform revenue (fees)"
    MERCHANT_PAYABLE = "merchant_payable", "Merchant payable"
    MERCHANT_RECEIVABLE = "merchant_receivable", "Merchant receivable (refunds owed back after a payout)"
    PAYOUTS_PENDING = "payouts_pending", "Payouts in transit"


# A merchant's position with the exchange: what it is owed (payable) less what it owes back (receivable).
MERCHANT_ACCOUNT_KINDS = (AccountKind.MERCHANT_PAYABLE, AccountKind.MERCHANT_RECEIVABLE)


class SettlementRunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class SettlementBatchStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class PayoutStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class SandboxSessionStatus(models.TextChoices):
    OPEN = "open", "Open"
    COMPLETE = "complete", "Complete"
    DECLINED = "declined", "Declined"
