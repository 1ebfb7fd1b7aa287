from django.conf import settings
from django.db import models


class AuditAction(models.TextChoices):
    REFUND_REQUESTED = "refund_requested", "Refund requested"
    PAYOUT_SENT = "payout_sent", "Payout sent"
    PAYOUT_FAILED = "payout_failed", "Payout refused"
    SETTLEMENT_RUN_STARTED = "settlement_run_started", "Settlement run started"
    API_KEY_CREATED = "api_key_created", "API key created"
    API_KEY_REVOKED = "api_key_revoked", "API key revoked"
    CONNECT_ACCOUNT_CHANGED = "connect_account_changed", "Payout (Connect) account changed"
    FEE_RULE_CREATED = "fee_rule_created", "Fee rule created"
    FEE_RULE_DELETED = "fee_rule_deleted", "Fee rule deleted"


class AuditEvent(models.Model):
    """One sensitive action: who, when, from where, on what. Append-only (a database trigger refuses changes).

    ``details`` never holds secrets: no raw API key, no card or bank data, only references and amounts.
    """

    action = models.CharField(max_length=40, choices=AuditAction.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Empty for the system (scheduled tasks, workers).",
    )
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["object_type", "object_id"]), models.Index(fields=["action", "-at"])]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.object_repr} at {self.at:%Y-%m-%d %H:%M:%S}"
