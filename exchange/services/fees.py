"""The platform fee schedule: which commission applies to a trade, and how much it is.

A schedule is a list of FeeRule rows, each with a scope (a merchant, a category,
both, or neither = the default) and a ``valid_from``. The rule that applies to
an order is the most specific one in force when the order was paid:

    merchant and category  >  merchant  >  category  >  default  >  settings.PLATFORM_FEE_BPS

and among rules of the same scope, the one with the latest ``valid_from`` (then
the highest pk) that is not after the payment. Rules are never edited once in
force and cannot start in the past (beyond a minute's grace for the clock and
the form), so changing the schedule never changes the fee of a trade already
paid: an order paid before a new rule keeps the old rate.

Rounding happens in exactly one function, :func:`common.money.mul_div_half_up`
(``amount * numerator / denominator`` rounded half up: half a minor unit goes
to the platform), through :func:`common.money.percentage_of` for the
commission, ``fee = amount * bps / 10000``, and :func:`common.money.share_of`
for the share of the buyer service fee kept on a partly refunded order. The
merchant gets the remainder ``gross - fee``, so fee plus proceeds is always
exactly the gross.

Settlement settles many orders per run, so it loads the schedule once into a
:class:`FeeSchedule` (one query) and looks rules up in memory; the order's
category is read with the order (see ``with_fee_category``), so a settled order
costs no query for its fee.
"""

from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, OuterRef, QuerySet, Subquery
from django.utils import timezone

from audit.services import audit_record
from common.money import percentage_of, share_of
from exchange.models import FeeRule, Order
from listings.models import Category, Listing
from merchants.models import Merchant

# How far in the past a new rule may start: the form was filled in a moment ago, and clocks drift.
# Anything earlier would re-price trades already paid, which is what the schedule must never do.
BACKDATE_GRACE = timedelta(minutes=1)

MAX_BPS = 10000

# Annotation name carrying an order's listing category (see with_fee_category).
FEE_CATEGORY_ATTR = "fee_category_id"


def _require_staff(actor) -> None:
    if actor is None or not getattr(actor, "is_authenticated", False) or not actor.is_staff:
        raise PermissionDenied("Only exchange staff may change the fee schedule.")


def fee_rule_validate(
    *, commission_bps, valid_from: datetime, merchant=None, category=None, note: str = "", now: datetime | None = None
) -> None:
    """Raise ValidationError (a dict by field, with codes) unless these make an acceptable new rule.

    Codes: ``commission_bps`` → invalid / out_of_range; ``valid_from`` → invalid / naive / in_past;
    ``merchant`` / ``category`` → invalid; ``note`` → too_long.
    """
    now = now or timezone.now()
    errors: dict[str, ValidationError] = {}
    if isinstance(commission_bps, bool) or not isinstance(commission_bps, int):
        errors["commission_bps"] = ValidationError(
            "The commission must be a whole number of basis points.", code="invalid"
        )
    elif not 0 <= commission_bps <= MAX_BPS:
        errors["commission_bps"] = ValidationError(
            "The commission must be between 0 and 10000 basis points (0 to 100 %%); got %(bps)s.",
            code="out_of_range",
            params={"bps": commission_bps},
        )
    if not isinstance(valid_from, datetime):
        errors["valid_from"] = ValidationError("valid_from must be a date and time.", code="invalid")
    elif timezone.is_naive(valid_from):
        errors["valid_from"] = ValidationError("valid_from must carry a time zone.", code="naive")
    elif valid_from < now - BACKDATE_GRACE:
        errors["valid_from"] = ValidationError(
            "A fee rule cannot start in the past: it would change the fee of trades already paid. "
            "Start it now or later.",
            code="in_past",
        )
    if merchant is not None and (not isinstance(merchant, Merchant) or merchant.pk is None):
        errors["merchant"] = ValidationError("Choose an existing merchant, or none.", code="invalid")
    if category is not None and (not isinstance(category, Category) or category.pk is None):
        errors["category"] = ValidationError("Choose an existing category, or none.", code="invalid")
    if not isinstance(note, str) or len(note) > FeeRule._meta.get_field("note").max_length:
        errors["note"] = ValidationError("The note is text of at most 200 characters.", code="too_long")
    if errors:
        raise ValidationError(errors)


def fee_rule_create(
    *, actor, commission_bps: int, valid_from: datetime | None = None, merchant=None, category=None, note: str = ""
) -> FeeRule:
    """Add a rule to the fee schedule (staff only), in force from ``valid_from`` (default: now).

    Raises PermissionDenied for anyone but staff and ValidationError (see :func:`fee_rule_validate`)
    for bad input; in both cases nothing is created.
    """
    _require_staff(actor)
    now = timezone.now()
    valid_from = now if valid_from is None else valid_from
    fee_rule_validate(
        commission_bps=commission_bps, valid_from=valid_from, merchant=merchant, category=category, note=note, now=now
    )
    rule = FeeRule.objects.create(
        merchant=merchant,
        category=category,
        commission_bps=commission_bps,
        valid_from=valid_from,
        note=note,
        created_by=actor,
    )
    audit_record(
        action="fee_rule_created",
        actor=actor,
        obj=rule,
        commission_bps=commission_bps,
        valid_from=valid_from.isoformat(),
        merchant=merchant.pk if merchant else None,
        category=category.pk if category else None,
    )
    return rule


def fee_rule_delete(*, actor, rule_pk: int) -> None:
    """Withdraw a rule that has not come into force yet (staff only).

    A rule in force is history (trades were priced by it) and is refused with
    ValidationError code ``in_force``; the row lock keeps the check and the
    delete together while the rule's start passes.
    """
    _require_staff(actor)
    with transaction.atomic():
        rule = FeeRule.objects.select_for_update().filter(pk=rule_pk).first()
        if rule is None:
            raise ValidationError("This fee rule does not exist.", code="not_found")
        if rule.valid_from <= timezone.now():
            raise ValidationError(
                "This fee rule is in force and trades may have been priced by it; "
                "add a new rule to change the rate from now on instead.",
                code="in_force",
            )
        audit_record(
            action="fee_rule_deleted",
            actor=actor,
            obj=rule,
            commission_bps=rule.commission_bps,
            valid_from=rule.valid_from.isoformat(),
        )
        rule.delete()


def fee_rule_for(*, merchant_id: int | None, category_id: int | None, at: datetime) -> FeeRule | None:
    """The rule in force at ``at`` for a trade of this merchant in this category, or None (one query).

    Precedence: merchant and category > merchant > category > default; within a
    scope the latest ``valid_from`` not after ``at``, then the highest pk.
    """
    candidates = FeeRule.objects.filter(valid_from__lte=at)
    candidates = candidates.filter(merchant_id__isnull=True) | candidates.filter(merchant_id=merchant_id)
    candidates = candidates.filter(category_id__isnull=True) | candidates.filter(category_id=category_id)
    # Only one merchant and one category can match, so NULLS LAST ranks the scoped rules before the wider ones.
    return candidates.order_by(
        F("merchant_id").asc(nulls_last=True),
        F("category_id").asc(nulls_last=True),
        "-valid_from",
        "-pk",
    ).first()


class FeeSchedule:
    """The whole schedule held in memory, for pricing many orders with one query.

    Rules created after the schedule was loaded are not seen. Such a rule starts
    at most BACKDATE_GRACE before its creation, so lookups for moments at least
    that long before the load are exact; for later moments the schedule asks the
    database (:func:`fee_rule_for`) instead of trusting its snapshot.
    """

    def __init__(self, rules, *, loaded_at: datetime):
        self.loaded_at = loaded_at
        self._by_scope: dict[tuple[int | None, int | None], list[FeeRule]] = defaultdict(list)
        for rule in sorted(rules, key=lambda r: (r.valid_from, r.pk), reverse=True):
            self._by_scope[(rule.merchant_id, rule.category_id)].append(rule)

    @classmethod
    def load(cls) -> "FeeSchedule":
        loaded_at = timezone.now()
        return cls(list(FeeRule.objects.all()), loaded_at=loaded_at)

    def rule_for(self, *, merchant_id: int | None, category_id: int | None, at: datetime) -> FeeRule | None:
        """Same contract as :func:`fee_rule_for`."""
        if at > self.loaded_at - BACKDATE_GRACE:
            return fee_rule_for(merchant_id=merchant_id, category_id=category_id, at=at)
        return self.rule_loaded_for(merchant_id=merchant_id, category_id=category_id, at=at)

    def rule_loaded_for(self, *, merchant_id: int | None, category_id: int | None, at: datetime) -> FeeRule | None:
        """:meth:`rule_for` from the rules loaded only: exact for any moment up to the load, when the question is
        what is in force as the schedule stood then (a payment being recorded)."""
        scopes = [(merchant_id, category_id), (merchant_id, None), (None, category_id), (None, None)]
        for scope in dict.fromkeys(scopes):  # without a category, fewer distinct scopes
            for rule in self._by_scope.get(scope, ()):
                if rule.valid_from <= at:  # newest first: the first one started is the one in force
                    return rule
        return None


def with_fee_category(orders: QuerySet) -> QuerySet:
    """Annotate ``orders`` with their listing's category, which the fee depends on.

    A subquery rather than a join, so that ``select_for_update()`` on the orders
    does not also lock their listings.
    """
    category = Listing.objects.filter(pk=OuterRef("listing_id")).values("category_id")[:1]
    return orders.annotate(**{FEE_CATEGORY_ATTR: Subquery(category)})


def _category_id(order: Order) -> int | None:
    if hasattr(order, FEE_CATEGORY_ATTR):
        return getattr(order, FEE_CATEGORY_ATTR)
    return order.listing.category_id  # one query unless the listing was loaded with the order


def commission_bps_for(order: Order, *, schedule: FeeSchedule | None = None) -> int:
    """The commission (basis points) on ``order``: as fixed when it was paid, else the rule in force then.

    An order keeps the commission it was paid under (``Order.commission_bps``,
    set by ``orders_commission_fix`` in the transaction that pays it), so
    moving its listing to another category or changing PLATFORM_FEE_BPS
    afterwards does not re-price it. For an order without one (not paid yet,
    or paid before it was kept): the rule in force when it was paid (its
    creation, if unpaid) for the listing's current category, else the setting.
    ``schedule`` (from :meth:`FeeSchedule.load`) saves the query when pricing
    many orders.
    """
    if order.commission_bps is not None:
        return order.commission_bps
    return _commission_bps_now(order, schedule=schedule)


def _commission_bps_now(order: Order, *, schedule: FeeSchedule | None) -> int:
    at = order.paid_at or order.created_at
    category_id = _category_id(order)
    if schedule is None:
        rule = fee_rule_for(merchant_id=order.merchant_id, category_id=category_id, at=at)
    else:
        rule = schedule.rule_for(merchant_id=order.merchant_id, category_id=category_id, at=at)
    return settings.PLATFORM_FEE_BPS if rule is None else rule.commission_bps


def orders_commission_fix(orders: list[Order]) -> None:
    """Fix each order's commission as it stands now, at its payment (``paid_at`` set); the caller saves it.

    Orders already carrying one keep it. Several orders are priced with one
    schedule and one query for their listings' categories.
    """
    todo = [order for order in orders if order.commission_bps is None]
    if not todo:
        return
    # Loaded after paid_at was stamped: the rules in force at that moment are all in it (two queries per call).
    schedule = FeeSchedule.load()
    categories = dict(Listing.objects.filter(pk__in={o.listing_id for o in todo}).values_list("pk", "category_id"))
    for order in todo:
        rule = schedule.rule_loaded_for(
            merchant_id=order.merchant_id, category_id=categories.get(order.listing_id), at=order.paid_at
        )
        order.commission_bps = settings.PLATFORM_FEE_BPS if rule is None else rule.commission_bps


def order_split(order: Order, *, held: int, schedule: FeeSchedule | None = None) -> tuple[int, int]:
    """How ``held`` minor units of ``order`` settle: (the platform's share, the merchant's share).

    The platform keeps the buyer service fee, in proportion to what is still
    held (``share_of``, half up: a partly refunded order gave back the same
    share of the fee as of the price), plus the commission on the rest
    (``order_fee``). The two shares always add up to ``held``.
    """
    if not 0 <= held <= order.amount:
        raise ValueError(f"held must be between 0 and the order's amount {order.amount}, got {held}")
    service = share_of(order.service_fee, held, order.amount) if order.service_fee else 0
    gross = held - service
    fee = order_fee(order, gross=gross, schedule=schedule)
    return service + fee, gross - fee


def order_fee(order: Order, *, gross: int, schedule: FeeSchedule | None = None) -> int:
    """The platform's fee on ``gross`` minor units of ``order``: percentage_of(gross, commission), half up.

    The merchant's proceeds are ``gross - order_fee(...)``, so the two add up to the gross exactly.
    """
    return percentage_of(gross, commission_bps_for(order, schedule=schedule))
