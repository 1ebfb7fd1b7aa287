from django.db.models import Prefetch, QuerySet
from django.http import Http404

from exchange.models import Delivery, Entitlement, Order, Payout
from merchants.selectors import merchant_is_member


def order_visible(*, public_id, user) -> Order:
    """The order if ``user`` is its buyer, a member of its merchant, or staff; else Http404."""
    order = Order.objects.select_related("listing", "merchant", "buyer").filter(public_id=public_id).first()
    if order is None or not user.is_authenticated:
        raise Http404("No such order.")
    if order.buyer_id == user.pk or user.is_staff or merchant_is_member(merchant=order.merchant, user=user):
        return order
    raise Http404("No such order.")


def buyer_library(*, user) -> QuerySet[Entitlement]:
    deliveries = Delivery.objects.select_related("version").prefetch_related("version__files")
    return (
        Entitlement.objects.filter(buyer=user)
        .select_related("listing", "order", "listing__merchant")
        .prefetch_related(Prefetch("deliveries", queryset=deliveries))
    )


def buyer_orders(*, user) -> QuerySet[Order]:
    return Order.objects.filter(buyer=user).select_related("listing")


def merchant_sales(*, merchant) -> QuerySet[Order]:
    return Order.objects.filter(merchant=merchant).select_related("listing", "buyer")


def merchant_payouts(*, merchant) -> QuerySet[Payout]:
    return Payout.objects.filter(merchant=merchant).select_related("run")
