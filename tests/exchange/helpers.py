import json
import re
import time
import uuid
from contextlib import contextmanager

import psycopg
from django.db import connection
from django.urls import reverse
from psycopg import sql

from exchange.gateways.signing import sign_payload
from exchange.models import Order
from tests.system.conftest import _database_url


def buy(client, listing, token=None):
    """POST the listing's buy form; return the response (a redirect to the gateway)."""
    return client.post(
        reverse("exchange:order_buy", args=[listing.slug]), {"accept_licence": "1", "token": str(token or uuid.uuid4())}
    )


def approve_in_sandbox(client, checkout_url, decision="approve"):
    return client.post(checkout_url, {"decision": decision})


def buy_plan(client, buyer, listing, capture, kind="one_time", token="1b4e28ba-2fa1-11d2-883f-0016d3cca427"):
    """``buyer`` buys ``listing``'s active plan of ``kind`` in the web UI and, when it costs money, pays in the
    sandbox; on-commit work (the payment event, delivery) runs through ``capture``. Returns the order, fresh."""
    client.force_login(buyer)
    plan = listing.plans.get(kind=kind, is_active=True)
    with capture(execute=True):
        client.post(
            reverse("exchange:order_buy", args=[listing.slug]),
            {"accept_licence": "1", "token": token, "plan": plan.pk},
        )
        order = Order.objects.get(plan=plan)
        if order.status == "pending_payment":
            approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    return order


def checkout_completed_event(order: Order, *, event_id=None, amount=None) -> dict:
    return {
        "id": event_id or f"evt_test_{uuid.uuid4().hex[:12]}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": order.gateway_session_id,
                "object": "checkout.session",
                "amount_total": order.amount if amount is None else amount,
                "currency": order.currency.lower(),
                "payment_status": "paid",
                "metadata": {"order_id": str(order.public_id)},
            }
        },
    }


def post_webhook(client, event: dict, *, secret: str, timestamp=None, body=None, header=None):
    raw = body if body is not None else json.dumps(event).encode()
    signature = header if header is not None else sign_payload(body=raw, secret=secret, timestamp=timestamp)
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature else {}
    return client.post(reverse("exchange:webhook", args=["sandbox"]), raw, content_type="application/json", **headers)


def library_links(html: str) -> list[str]:
    return re.findall(r'href="(/download/[^"]+)"', html)


def read_stream(response) -> bytes:
    return b"".join(response.streaming_content)


@contextmanager
def rows_being_referenced(*rows: tuple[str, int]):
    """Another session in the middle of inserting rows that reference ``rows`` (``(table, pk)`` pairs): it holds
    the KEY SHARE locks PostgreSQL's foreign-key checks take, until the block ends. Meanwhile this session gives up
    any lock wait after 3 s, so code that would wait for those locks fails the test instead of hanging it.

    Needs committed rows (``django_db(transaction=True)``).
    """
    with psycopg.connect(_database_url(), autocommit=False) as other:
        for table, pk in rows:
            query = sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR KEY SHARE").format(sql.Identifier(table))
            other.execute(query, [pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
            other.rollback()
