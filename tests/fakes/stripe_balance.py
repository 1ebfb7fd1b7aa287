"""The fake Stripe server plus the platform's balance transactions, for reconciliation tests.

Transfers and refunds made through the API add a balance transaction, as
Stripe does; a charge (which the Checkout flow would create at Stripe) is
added with ``charge``. ``GET /v1/balance_transactions`` lists them newest
first with Stripe's cursor pagination (``limit``, ``starting_after``),
``created[gte]`` and ``expand[]=data.source``.
"""

import json
import secrets
import time
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.stripe_server import FakeStripe, _nest


class FakeStripeWithBalance(FakeStripe):
    def __init__(self):
        super().__init__()
        self.balance_transactions: list[dict] = []  # oldest first; listed newest first
        self.sources: dict[str, dict] = {}

    def _add(self, *, type_: str, amount: int, currency: str, source: dict, created: int | None = None) -> dict:
        self.sources[source["id"]] = source
        txn = {
            "id": f"txn_test_{secrets.token_hex(8)}",
            "object": "balance_transaction",
            "type": type_,
            "amount": amount,
            "currency": currency.lower(),
            "source": source["id"],
            "created": created if created is not None else int(time.time()),
        }
        self.balance_transactions.append(txn)
        return txn

    def charge(self, *, payment_intent: str, amount: int, currency: str, created: int | None = None) -> dict:
        """A captured charge on the platform account (what a paid Checkout Session leaves behind)."""
        source = {
            "id": f"ch_test_{secrets.token_hex(8)}",
            "object": "charge",
            "payment_intent": payment_intent,
            "amount": amount,
            "currency": currency.lower(),
        }
        with self.lock:
            return self._add(type_="charge", amount=amount, currency=currency, source=source, created=created)

    def _create(self, path: str, params: dict) -> tuple[int, dict]:
        status, obj = super()._create(path, params)
        if status == 200 and path == "/v1/transfers":
            self._add(type_="transfer", amount=-obj["amount"], currency=obj["currency"], source=obj)
        elif status == 200 and path == "/v1/refunds":
            self._add(type_="refund", amount=-obj["amount"], currency=params.get("currency", "cny"), source=obj)
        return status, obj

    def _list(self, query: dict) -> dict:
        limit = int(query.get("limit", 10))
        items = sorted(self.balance_transactions, key=lambda t: (t["created"], t["id"]), reverse=True)
        gte = (query.get("created") or {}).get("gte")
        if gte is not None:
            items = [t for t in items if t["created"] >= int(gte)]
        if query.get("starting_after"):
            ids = [t["id"] for t in items]
            items = items[ids.index(query["starting_after"]) + 1 :]
        page = items[:limit]
        if "data.source" in (query.get("expand") or []):
            page = [{**t, "source": self.sources[t["source"]]} for t in page]
        return {"object": "list", "url": "/v1/balance_transactions", "has_more": len(items) > limit, "data": page}

    def _handler(self):
        fake = self
        base = super()._handler()

        class Handler(base):
            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path != "/v1/balance_transactions":
                    return super().do_GET()
                query = _nest(parse_qsl(parts.query, keep_blank_values=True))
                with fake.lock:
                    fake.requests.append(("GET", parts.path, query, None))
                    body = fake._list(query)
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler
