"""The order table's indexes (migration 0020): each one earns its writes.

Settling, paying or delivering rewrites an order row and so every index of the
table. The buyer column is indexed by the (buyer, idempotency key) constraint
it leads, the gateway session id only by its unique constraint (no pattern-ops
twin), and the access request and subscription, empty on most orders, only
where they are set. What the indexes guard and serve stays: a session id is
still unique, and an access request's or a subscription's orders are still
found through an index.
"""

import pytest
from django.db import IntegrityError, connection, transaction

from exchange.models import Order
from tests.exchange.helpers import buy
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _indexes() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'exchange_order'")
        return dict(cursor.fetchall())


def _plan(sql: str, params: list) -> str:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny test table: ask what an index can serve
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_every_order_index_is_one_the_table_needs():
    indexes = _indexes()
    buyer_led = [name for name, definition in indexes.items() if "(buyer_id" in definition.split(" WHERE ")[0]]
    assert sorted(buyer_led) == ["order_buyer_idempotency_key_unique", "order_one_open_checkout"]
    assert not [name for name in indexes if name.endswith("_like")]
    assert "WHERE (access_request_id IS NOT NULL)" in indexes["order_access_request_idx"]
    assert "WHERE (subscription_id IS NOT NULL)" in indexes["order_subscription_idx"]
    assert "UNIQUE" in indexes["order_gateway_session_unique"]
    # Nothing else indexes the two mostly empty columns (order_one_open_checkout only names one in its condition).
    keys = {name: definition.split(" WHERE ")[0] for name, definition in indexes.items()}
    assert [name for name, key in keys.items() if "access_request_id" in key] == ["order_access_request_idx"]
    assert [name for name, key in keys.items() if "subscription_id" in key] == ["order_subscription_idx"]


def test_lookups_by_access_request_subscription_and_buyer_use_an_index():
    assert "order_access_request_idx" in _plan("SELECT id FROM exchange_order WHERE access_request_id = %s", [7])
    assert "order_subscription_idx" in _plan("SELECT id FROM exchange_order WHERE subscription_id = %s", [7])
    assert "order_buyer_idempotency_key_unique" in _plan("SELECT id FROM exchange_order WHERE buyer_id = %s", [7])


def test_a_gateway_session_id_is_still_unique_and_a_duplicate_changes_nothing(
    client, buyer, other_buyer, published_listing
):
    client.force_login(buyer)
    buy(client, published_listing)
    first = Order.objects.get()
    assert first.gateway_session_id
    second = Order.objects.create(
        buyer=other_buyer,
        listing=published_listing,
        plan=first.plan,
        merchant=first.merchant,
        amount=first.amount,
        currency=first.currency,
        idempotency_key="another-checkout",
        gateway=first.gateway,
    )
    second.gateway_session_id = first.gateway_session_id
    with pytest.raises(IntegrityError, match="order_gateway_session_unique"), transaction.atomic():
        second.save(update_fields=["gateway_session_id"])
    second.refresh_from_db()
    assert second.gateway_session_id is None
    # Orders without a session (free plans) are many: empty is not a duplicate.
    third = Order.objects.create(
        buyer=UserFactory(),
        listing=published_listing,
        plan=first.plan,
        merchant=first.merchant,
        amount=0,
        currency=first.currency,
        idempotency_key="a-third-checkout",
        gateway="none",
    )
    assert Order.objects.filter(gateway_session_id__isnull=True).count() == 2
    assert third.pk != second.pk
