"""refundable_amount: the one answer to "what could staff still refund of this order" (service and admin)."""

import pytest

from exchange.choices import OrderStatus
from exchange.models import Order
from exchange.services.refunds import refundable_amount


@pytest.mark.parametrize(
    ("status", "refunded", "expected"),
    [
        (OrderStatus.PAID, 0, 1234),
        (OrderStatus.DELIVERED, 234, 1000),
        (OrderStatus.SETTLED, 0, 1234),
        (OrderStatus.PARTIALLY_REFUNDED, 1000, 234),
        (OrderStatus.PARTIALLY_REFUNDED, 1234, 0),
        (OrderStatus.PENDING_PAYMENT, 0, 0),
        (OrderStatus.REFUNDED, 1234, 0),
        (OrderStatus.DISPUTED, 0, 0),
        (OrderStatus.DECLINED, 0, 0),
    ],
)
def test_refundable_amount_follows_the_status_and_what_was_refunded(status, refunded, expected):
    order = Order(amount=1234, refunded_amount=refunded, currency="CNY", status=status)
    assert refundable_amount(order) == expected
