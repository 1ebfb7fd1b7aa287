"""The fake Stripe server plus the platform's balance transactions, for reconciliation tests.

Transfers and refunds made through the API add a balance transaction, as
Stripe does; a charge (which the Checkout flow would create at Stripe) is
added with ``charge``, a dispute's withdrawal and reinstatement (``adjustment``
transactions whose source is the dispute) with ``dispute`` and
``dispute_won``. ``GET /v1/balance_transactions`` lists them newest first with
Stripe's cursor pagination (``limit``, ``starting_after``), ``created[gte]``
and ``expand[]=data.source``.

As at Stripe, a balance transaction's ``amount`` and ``currency`` are in the
platform's balance currency (``balance_currency``, CNY): a movement in another
currency is converted at ``rates[currency]`` (recorded as ``exchange_rate``),
while its source object keeps the original amount and currency.
"""

import json
import secrets
import time
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.stripe_server import FakeStripe, _nest


class FakeStripeWithBalance(FakeStripe):
    balance_currency = "cny"
    rates = {"usd": 7.1234, "eur": 7.8}  # one unit of the currency in the balance currency

    def __init__(self):
        super().__init__()
        self.balance_transactions: list[dict] = []  # oldest first; listed newest first
        self.sources: dict[str, dict] = {}

    def _add(self, *, type_: str, amount: int, currency: str, source: dict, created: int | None = None) -> dict:
        """A balance transaction of ``amount`` in ``currency`` (the source's), booked in the balance currency."""
        self.sources[source["id"]] = source
        currency = currency.lower()
        rate = None if currency == self.balance_currency else self.rates[currency]
        txn = {
            "id": f"txn_test_{secrets.token_hex(8)}",
            "object": "balance_transaction",
            "type": type_,
            "amount": amount if rate is None else round(amount * rate),
            "currency": self.balance_currency,
            "exchange_rate": rate,
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

    def dispute(self, *, payment_intent: str, amount: int, currency: str, created: int | None = None) -> dict:
        """The buyer's bank disputes a charge: the funds are withdrawn (a negative adjustment). Returns the dispute."""
        source = {
            "id": f"dp_test_{secrets.token_hex(8)}",
            "object": "dispute",
            "payment_intent": payment_intent,
            "amount": amount,
            "currency": currency.lower(),
            "status": "needs_response",
        }
        with self.lock:
            self._add(type_="adjustment", amount=-amount, currency=currency, source=source, created=created)
        return source

    def dispute_won(self, dispute: dict, created: int | None = None) -> dict:
        """The dispute is won: the funds are reinstated (a positive adjustment with the same dispute as source)."""
        dispute["status"] = "won"
        with self.lock:
            return self._add(
                type_="adjustment",
                amount=dispute["amount"],
                currency=dispute["currency"],
                source=dispute,
                created=created,
            )

    def _currency_of(self, payment_intent: str | None) -> str:
        for source in self.sources.values():
            if source.get("object") == "charge" and source.get("payment_intent") == payment_intent:
                return source["currency"]
        return self.balance_currency

    def _create(self, path: str, params: dict) -> tuple[int, dict]:
        status, obj = super()._create(path, params)
        if status == 200 and path == "/v1/transfers":
            self._add(type_="transfer", amount=-obj["amount"], currency=obj["currency"], source=obj)
        elif status == 200 and path == "/v1/refunds":
            obj.setdefault("currency", self._currency_of(obj.get("payment_intent")))  # a refund is in its charge's
            self._add(type_="refund", amount=-obj["amount"], currency=obj["currency"], source=obj)
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
