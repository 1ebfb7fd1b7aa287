from django.db import models
from django.utils.translation import gettext_lazy as _


class OrderStatus(models.TextChoices):
    PENDING_PAYMENT = "pending_payment", _("Pending payment")
    PAID = "paid", _("Paid (held in escrow)")
    DELIVERED = "delivered", _("Delivered")
    SETTLED = "settled", _("Settled")
    DECLINED = "declined", _("Declined")
    CANCELLED = "cancelled", _("Cancelled")
    EXPIRED = "expired", _("Expired")
    PARTIALLY_REFUNDED = "partially_refunded", _("Partially refunded")
    REFUNDED = "refunded", _("Refunded")
    DISPUTED = "disputed", _("Disputed")


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
    ACTIVE = "active", _("Active")
    EXPIRED = "expired", _("Expired")
    REVOKED = "revoked", _("Revoked")


_E = EntitlementStatus
# The one table of allowed entitlement moves: lapsed or revoked access can come back (a renewal, a
# dispute won), and anything can be revoked.
ENTITLEMENT_TRANSITIONS: dict[str, set[str]] = {
    _E.ACTIVE: {_E.EXPIRED, _E.REVOKED},
    _E.EXPIRED: {_E.ACTIVE, _E.REVOKED},
    _E.REVOKED: {_E.ACTIVE, _E.EXPIRED},
}


class AccessRequestStatus(models.TextChoices):
    PENDING = "pending", _("Waiting for the merchant")
    APPROVED = "approved", _("Approved")
    REJECTED = "rejected", _("Rejected")
    EXPIRED = "expired", _("Expired (no answer in time)")


class RefundStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")


class DisputeStatus(models.TextChoices):
    OPEN = "open", _("Open")
    WON = "won", _("Won by the exchange")
    LOST = "lost", _("Lost (funds returned to the buyer)")


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    PAST_DUE = "past_due", _("Payment failed (grace period)")
    CANCELLED = "cancelled", _("Cancelled")


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Being prepared")
    READY = "ready", _("Ready to download")
    CONFIRMED = "confirmed", _("Confirmed")
    FAILED = "failed", _("Failed (order refunded)")
    WITHDRAWN = "withdrawn", _("Withdrawn (access ended)")


class NotificationKind(models.TextChoices):
    PURCHASE_CONFIRMED = "purchase_confirmed", _("Purchase confirmed")
    DELIVERY_READY = "delivery_ready", _("Delivery ready")
    DELIVERY_FAILED = "delivery_failed", _("Delivery failed")
    NEW_VERSION = "new_version", _("New version available")
    ENTITLEMENT_EXPIRING = "entitlement_expiring", _("Access about to expire")
    REFUND = "refund", _("Refund")
    SALE = "sale", _("New sale")


class OutboundEventStatus(models.TextChoices):
    PENDING = "pending", _("Waiting to be sent")
    DELIVERED = "delivered", _("Delivered")
    FAILED = "failed", _("Gave up after retries")


class UsageChannel(models.TextChoices):
    API = "api", _("Data API call")
    DOWNLOAD = "download", _("File download")


class PaymentEventStatus(models.TextChoices):
    RECEIVED = "received", _("Received")
    PROCESSED = "processed", _("Processed")
    IGNORED = "ignored", _("Ignored (type not handled)")
    FAILED = "failed", _("Failed")


class JournalKind(models.TextChoices):
    PAYMENT = "payment", _("Payment captured (held)")
    REFUND = "refund", _("Refund to the buyer")
    DISPUTE = "dispute", _("Funds withdrawn by a dispute")
    DISPUTE_WON = "dispute_won", _("Disputed funds returned")
    SALE = "sale", _("Sale settled (fee and merchant payable)")
    PAYOUT_CREATED = "payout_created", _("Payout created")
    PAYOUT_SENT = "payout_sent", _("Payout sent")
    RECEIVABLE_NETTED = "receivable_netted", _("Merchant receivable netted against the payable")
    PAYOUT_RETURNED = "payout_returned", _("Payout refused by the gateway, owed again")


class AccountKind(models.TextChoices):
    # Not translated: ledger.account_get stores the label as the account's name, which must not depend on
    # the language of whichever request happened to create the account.
    GATEWAY_CLEARING = "gateway_clearing", "Gateway clearing"
    ESCROW_HELD = "escrow_held", "Buyer funds held in escrow"
    PLATFORM_REVENUE = "platform_revenue", "Platform revenue (fees)"
    MERCHANT_PAYABLE = "merchant_payable", "Merchant payable"
    MERCHANT_RECEIVABLE = "merchant_receivable", "Merchant receivable (refunds owed back after a payout)"
    PAYOUTS_PENDING = "payouts_pending", "Payouts in transit"


# A merchant's position with the exchange: what it is owed (payable) less what it owes back (receivable).
MERCHANT_ACCOUNT_KINDS = (AccountKind.MERCHANT_PAYABLE, AccountKind.MERCHANT_RECEIVABLE)


class SettlementRunStatus(models.TextChoices):
    RUNNING = "running", _("Running")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")


class SettlementBatchStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")


class PayoutStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")


class SandboxSessionStatus(models.TextChoices):
    OPEN = "open", _("Open")
    COMPLETE = "complete", _("Complete")
    DECLINED = "declined", _("Declined")
