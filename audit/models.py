from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class AuditAction(models.TextChoices):
    REFUND_REQUESTED = "refund_requested", _("Refund requested")
    REFUND_RESOLVED = "refund_resolved", _("Held refund recorded from the gateway")
    PAYOUT_SENT = "payout_sent", _("Payout sent")
    PAYOUT_FAILED = "payout_failed", _("Payout refused")
    SETTLEMENT_RUN_STARTED = "settlement_run_started", _("Settlement run started")
    API_KEY_CREATED = "api_key_created", _("API key created")
    API_KEY_REVOKED = "api_key_revoked", _("API key revoked")
    CONNECT_ACCOUNT_CHANGED = "connect_account_changed", _("Payout (Connect) account changed")
    FEE_RULE_CREATED = "fee_rule_created", _("Fee rule created")
    FEE_RULE_DELETED = "fee_rule_deleted", _("Fee rule deleted")
    MERCHANT_VERIFIED = "merchant_verified", _("Merchant verified")
    MERCHANT_REJECTED = "merchant_rejected", _("Merchant verification refused")


class AuditEvent(models.Model):
    """One sensitive action: who, when, from where, on what. Append-only (a database trigger refuses changes).

    ``details`` never holds secrets: no raw API key, no card or bank data, only references and amounts.
    """

    action = models.CharField(verbose_name=_("action"), max_length=40, choices=AuditAction.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("actor"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text=_("Empty for the system (scheduled tasks, workers)."),
    )
    at = models.DateTimeField(verbose_name=_("at"), auto_now_add=True, db_index=True)
    ip = models.GenericIPAddressField(verbose_name=_("ip"), null=True, blank=True)
    object_type = models.CharField(verbose_name=_("object type"), max_length=100, blank=True)
    object_id = models.CharField(verbose_name=_("object id"), max_length=64, blank=True)
    object_repr = models.CharField(verbose_name=_("object repr"), max_length=200, blank=True)
    details = models.JSONField(verbose_name=_("details"), default=dict, blank=True)

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["object_type", "object_id"]), models.Index(fields=["action", "-at"])]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.object_repr} at {self.at:%Y-%m-%d %H:%M:%S}"
