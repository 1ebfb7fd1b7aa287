"""A small fake of Stripe's HTTP API on loopback, for driving the real `stripe` SDK in tests.

It speaks the form-encoded requests the SDK sends, answers with Stripe-shaped
JSON, honours Idempotency-Key as Stripe does (a repeated key returns the first
response; with other parameters than its first use, a 400 idempotency_error),
records every request, and can be told to fail or to answer
only after the client has timed out (the "succeeded but timed out" case).
Transfers and refunds can be listed as Stripe lists them: newest first, in
pages (``limit``, ``starting_after``, ``has_more``), filtered by ``created``
(gte/lte) and by ``payment_intent``.
"""

import contextlib
import json
import secrets
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


def _nest(pairs: list[tuple[str, str]]) -> dict:
    """Turn Stripe's bracket notation (a[b][0][c]=v) into nested dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node):
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_listify(node[k]) for k in sorted(node, key=int)]
        return {k: _listify(v) for k, v in node.items()}
    return node


class FakeStripe:
    def __init__(self):
        self.requests: list[tuple[str, str, dict, str | None]] = []
        self.objects: dict[str, dict[str, dict]] = defaultdict(dict)
        self.idempotent: dict[tuple[str, str], tuple[int, dict]] = {}
        self.idempotent_params: dict[tuple[str, str], dict] = {}
        self.fail_next: dict[str, tuple[int, dict]] = {}
        self.delay_next: dict[str, float] = {}
        self.fail_next_get: dict[str, tuple[int, dict]] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def count(self, path: str) -> int:
        return sum(1 for method, p, _, _ in self.requests if method == "POST" and p == path)

    # --- the API ----------------------------------------------------------

    def _create(self, path: str, params: dict) -> tuple[int, dict]:
        if path == "/v1/checkout/sessions":
            obj_id = f"cs_test_{secrets.token_hex(8)}"
            items = params.get("line_items") or [{}]
            price = (items[0].get("price_data") or {}) if items else {}
            amount = int(price.get("unit_amount", 0)) * int(items[0].get("quantity", 1) if items else 1)
            obj = {
                "id": obj_id,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "url": f"https://checkout.stripe.test/c/pay/{obj_id}",
                "amount_total": amount,
                "currency": price.get("currency"),
                "metadata": params.get("metadata", {}),
                "client_reference_id": params.get("client_reference_id"),
                "payment_status": "unpaid",
                "status": "open",
                "payment_intent": None,
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "payment_intent_data": params.get("payment_intent_data", {}),
            }
        elif path == "/v1/transfers":
            obj_id = f"tr_test_{secrets.token_hex(8)}"
            obj = {
                "id": obj_id,
                "object": "transfer",
                "amount": int(params["amount"]),
                "currency": params["currency"],
                "destination": params["destination"],
                "transfer_group": params.get("transfer_group"),
                "metadata": params.get("metadata", {}),
            }
        elif path == "/v1/refunds":
            obj_id = f"re_test_{secrets.token_hex(8)}"
            obj = {
                "id": obj_id,
                "object": "refund",
                "amount": int(params["amount"]),
                "payment_intent": params.get("payment_intent"),
                "status": "succeeded",
                "metadata": params.get("metadata", {}),
            }
        elif path == "/v1/accounts":
            obj_id = f"acct_test_{secrets.token_hex(8)}"
            obj = {"id": obj_id, "object": "account", "type": params.get("type"), "email": params.get("email")}
        elif path == "/v1/account_links":
            obj_id = f"link_{secrets.token_hex(6)}"
            obj = {"object": "account_link", "url": f"https://connect.stripe.test/setup/{params.get('account')}"}
        else:
            return 404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized request URL {path}"}}
        obj.setdefault("created", int(time.time()))
        self.objects[path][obj_id] = obj
        return 200, obj

    LISTABLE = ("/v1/transfers", "/v1/refunds")

    def list_objects(self, path: str, query: dict) -> dict:
        """One page of ``path``'s objects, as Stripe's list endpoints answer."""
        limit = int(query.get("limit", 10))
        items = sorted(self.objects.get(path, {}).values(), key=lambda o: (o["created"], o["id"]), reverse=True)
        created = query.get("created") or {}
        if "gte" in created:
            items = [o for o in items if o["created"] >= int(created["gte"])]
        if "lte" in created:
            items = [o for o in items if o["created"] <= int(created["lte"])]
        if query.get("payment_intent"):
            items = [o for o in items if o.get("payment_intent") == query["payment_intent"]]
        if query.get("starting_after"):
            ids = [o["id"] for o in items]
            items = items[ids.index(query["starting_after"]) + 1 :]
        return {"object": "list", "url": path, "has_more": len(items) > limit, "data": items[:limit]}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Request-Id", f"req_{secrets.token_hex(6)}")
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                params = _nest(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                key = self.headers.get("Idempotency-Key")
                path = self.path.split("?")[0]
                if not (self.headers.get("Authorization") or "").startswith("Bearer sk_test_"):
                    return self._send(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})
                with fake.lock:
                    fake.requests.append(("POST", path, params, key))
                    if key and (path, key) in fake.idempotent and fake.idempotent_params[(path, key)] != params:
                        status, body = (
                            400,
                            {
                                "error": {
                                    "type": "idempotency_error",
                                    "message": "Keys for idempotent requests can only be used with the same parameters "
                                    "they were first used with.",
                                }
                            },
                        )
                    elif key and (path, key) in fake.idempotent:
                        status, body = fake.idempotent[(path, key)]
                    elif path in fake.fail_next:
                        status, body = fake.fail_next.pop(path)
                    else:
                        status, body = fake._create(path, params)
                        if key:
                            fake.idempotent[(path, key)] = (status, body)
                            fake.idempotent_params[(path, key)] = params
                    delay = fake.delay_next.pop(path, 0)
                if delay:
                    time.sleep(delay)  # the work is done; the answer arrives after the client gave up
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(status, body)

            def do_GET(self):
                parts = urlsplit(self.path)
                path, query = parts.path, _nest(parse_qsl(parts.query, keep_blank_values=True))
                with fake.lock:
                    fake.requests.append(("GET", path, query, None))
                    if path in fake.fail_next_get:
                        return self._send(*fake.fail_next_get.pop(path))
                    if path in fake.LISTABLE:
                        return self._send(200, fake.list_objects(path, query))
                    collection, _, obj_id = path.rpartition("/")
                    obj = fake.objects.get(collection, {}).get(obj_id)
                self._send(200, obj) if obj else self._send(404, {"error": {"message": "No such object"}})

        return Handler


def settings_use_fake_stripe(settings, server, *, webhook_secret: str) -> None:
    """Point the Stripe gateway at ``server`` (a started fake) with test keys, no retries and a short timeout."""
    settings.PAYMENT_GATEWAY = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_fake"
    settings.STRIPE_WEBHOOK_SECRET = webhook_secret
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_TIMEOUT_SECONDS = 5
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.SITE_URL = "https://exchange.example"
