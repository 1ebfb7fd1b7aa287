"""The state machines that keep their history in a ``<Model>StatusHistory`` table (DESIGN.md §5, rule 3).

Settlement runs, batches and payouts, refunds, disputes, subscriptions and
access requests change status only through ``status_move``: the move is
checked against the model's transition table, one history row records it
(reason and actor), and the status is saved. The caller holds the row lock.
Creating one of these rows goes with ``history_start``, the first history row
(``"" -> initial status``). ``statuses_move`` is the set form for sweeps
(expiry), one history row per object.

Orders, entitlements and deliveries have their own transition functions,
built for their batch paths (``orders.orders_transition_locked``,
``entitlements``, ``delivery``).
"""

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils import timezone

from exchange.choices import (
    AccessRequestStatus,
    DisputeStatus,
    PayoutStatus,
    RefundStatus,
    SettlementBatchStatus,
    SettlementRunStatus,
    SubscriptionStatus,
)
from exchange.models import (
    AccessRequest,
    AccessRequestStatusHistory,
    Dispute,
    DisputeStatusHistory,
    Payout,
    PayoutStatusHistory,
    Refund,
    RefundStatusHistory,
    SettlementBatch,
    SettlementBatchStatusHistory,
    SettlementRun,
    SettlementRunStatusHistory,
    Subscription,
    SubscriptionStatusHistory,
)


class TransitionError(ValidationError):
    """A status move the model's transition table does not allow; nothing was saved."""


RUN_TRANSITIONS = {SettlementRunStatus.RUNNING: {SettlementRunStatus.COMPLETED, SettlementRunStatus.FAILED}}
BATCH_TRANSITIONS = {SettlementBatchStatus.PENDING: {SettlementBatchStatus.COMPLETED, SettlementBatchStatus.FAILED}}
PAYOUT_TRANSITIONS = {PayoutStatus.PENDING: {PayoutStatus.SENT, PayoutStatus.FAILED}}
# A refund waits for the gateway's answer; it ends succeeded (booked) or failed (the amount is free again).
REFUND_TRANSITIONS = {RefundStatus.PENDING: {RefundStatus.SUCCEEDED, RefundStatus.FAILED}}
DISPUTE_TRANSITIONS = {DisputeStatus.OPEN: {DisputeStatus.WON, DisputeStatus.LOST}}
# A failed renewal payment can still be paid in the grace period; a cancelled subscription stays cancelled.
SUBSCRIPTION_TRANSITIONS = {
    SubscriptionStatus.ACTIVE: {SubscriptionStatus.PAST_DUE, SubscriptionStatus.CANCELLED},
    SubscriptionStatus.PAST_DUE: {SubscriptionStatus.ACTIVE, SubscriptionStatus.CANCELLED},
}
ACCESS_REQUEST_TRANSITIONS = {
    AccessRequestStatus.PENDING: {
        AccessRequestStatus.APPROVED,
        AccessRequestStatus.REJECTED,
        AccessRequestStatus.EXPIRED,
    }
}


@dataclass(frozen=True)
class Machine:
    table: dict
    history: type  # the history model
    link: str  # the history's foreign key to the object


MACHINES = {
    SettlementRun: Machine(RUN_TRANSITIONS, SettlementRunStatusHistory, "run"),
    SettlementBatch: Machine(BATCH_TRANSITIONS, SettlementBatchStatusHistory, "batch"),
    Payout: Machine(PAYOUT_TRANSITIONS, PayoutStatusHistory, "payout"),
    Refund: Machine(REFUND_TRANSITIONS, RefundStatusHistory, "refund"),
    Dispute: Machine(DISPUTE_TRANSITIONS, DisputeStatusHistory, "dispute"),
    Subscription: Machine(SUBSCRIPTION_TRANSITIONS, SubscriptionStatusHistory, "subscription"),
    AccessRequest: Machine(ACCESS_REQUEST_TRANSITIONS, AccessRequestStatusHistory, "request"),
}


def _check(machine: Machine, obj, to_status: str) -> None:
    if to_status not in machine.table.get(obj.status, ()):
        raise TransitionError(
            f"{str(obj._meta.verbose_name).capitalize()} {obj.pk} is {obj.status}; it cannot become {to_status}.",
            code="invalid_transition",
        )


def status_move(obj, to_status: str, *, reason: str, actor=None, fields=()):
    """The one place these objects change status; the caller holds ``obj``'s row lock.

    The move is checked against the model's transition table first
    (TransitionError, nothing saved). Then one history row is written and the
    status saved with ``fields``, which the caller has set on ``obj`` already.
    """
    machine = MACHINES[type(obj)]
    _check(machine, obj, to_status)
    machine.history.objects.create(
        **{machine.link: obj}, from_status=obj.status, to_status=to_status, reason=reason[:300], actor=actor
    )
    obj.status = to_status
    obj.save(update_fields=["status", *fields])
    return obj


def statuses_move(objects: list, to_status: str, *, reason: str, actor=None) -> None:
    """``status_move`` for many objects of one model at once (locked by the caller): all allowed, or none moves."""
    if not objects:
        return
    model = type(objects[0])
    machine = MACHINES[model]
    for obj in objects:
        _check(machine, obj, to_status)
    now = timezone.now()
    machine.history.objects.bulk_create(
        machine.history(
            **{machine.link: obj},
            from_status=obj.status,
            to_status=to_status,
            reason=reason[:300],
            actor=actor,
            created_at=now,
        )
        for obj in objects
    )
    model.objects.filter(pk__in=[obj.pk for obj in objects]).update(status=to_status)
    for obj in objects:
        obj.status = to_status


def history_start(objects: list, *, reason: str, actor=None) -> None:
    """The first history row (``"" -> the status they were created with``) of objects just created."""
    if objects:
        machine = MACHINES[type(objects[0])]
        machine.history.objects.bulk_create(
            machine.history(
                **{machine.link: obj}, from_status="", to_status=obj.status, reason=reason[:300], actor=actor
            )
            for obj in objects
        )
