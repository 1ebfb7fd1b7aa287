"""What the API's cross-cutting tests share: a world of real trades, callers with API keys, and the API's routes.

- ``api_world``: a published listing bought and settled by ``buyer`` (a paid order, an entitlement, a confirmed
  delivery, a certificate), bought again by ``other_buyer``; another merchant with a product of its own; a user
  who bought nothing; staff. Everything is made through the services and the sandbox gateway, as in production.
- ``api_routes()``: every route under ``/api/v1/``, walked from the URL configuration (so new routes are seen), with
  its path written as the OpenAPI schema writes it (``/api/v1/orders/{public_id}/``).
- ``OBJECT_ROUTES``: for each route naming an object, how to make an object of its owner and what each caller
  may do with it; ``PUBLIC_ROUTES`` lists the object routes anyone may read, with the reason.
"""

import contextlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from rest_framework.test import APIClient

from accounts.models import ApiKey, User
from accounts.services import SCOPES, api_key_create
from exchange.choices import NotificationKind, OrderStatus
from exchange.models import (
    AccessRequest,
    Delivery,
    DownloadLog,
    Entitlement,
    Notification,
    Order,
    OrderStatusHistory,
    OutboundEvent,
    TransactionCertificate,
    WebhookEndpoint,
)
from exchange.services.access import access_request_create
from exchange.services.downloads import download_link_make
from exchange.services.notifications import notification_send
from exchange.services.orders import order_create
from exchange.services.outbound import webhook_endpoint_create
from exchange.services.settlement import settlement_run_start
from exchange.signing_key import _loaded
from listings.choices import ListingStatus
from listings.models import DataFile, Listing, ListingStatusHistory, ListingVersion, PricingPlan
from listings.profiling import datafile_profile_run
from listings.services import listing_create, pricing_plan_set, version_upload
from merchants.models import Merchant
from tests.exchange.helpers import approve_in_sandbox, library_links, read_stream
from tests.factories import UserFactory, csv_upload, make_listing, make_merchant

API_PREFIX = "/api/v1/"

# --- callers ----------------------------------------------------------------------------------------------------------


def key_for(user: User, scopes=SCOPES, name: str = "api tests") -> str:
    """A new API key of ``user`` with ``scopes`` (all of them by default); the raw key."""
    return api_key_create(user=user, name=name, scopes=list(scopes))[1]


def api_client(user: User | None, *, raw_key: str | None = None) -> APIClient:
    """A DRF client calling as ``user`` with an API key holding every scope (anonymous for None)."""
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_key or key_for(user)}")
    return client


@pytest.fixture
def generous_rates(settings):
    """Rate limits far above what a test sends, so that every answer is about the request itself."""
    settings.API_RATE = "100000/min"
    settings.API_MONEY_RATE_PER_MINUTE = 100000
    settings.DATA_API_RATE_PER_MINUTE = 100000


@pytest.fixture
def own_signing_key(settings, tmp_path):
    """Certificates signed with a key of the test's own, generated on first use in its tmp folder."""
    settings.EXCHANGE_SIGNING_KEY_FILE = tmp_path / "keys" / "signing_key.pem"
    yield settings.EXCHANGE_SIGNING_KEY_FILE
    _loaded.pop(settings.EXCHANGE_SIGNING_KEY_FILE.resolve(), None)


# --- the world --------------------------------------------------------------------------------------------------------


@dataclass
class World:
    buyer: User
    other_buyer: User
    stranger: User  # bought nothing
    merchant_user: User
    merchant: Merchant
    other_merchant_user: User
    other_merchant: Merchant
    staff: User
    listing: Listing  # the merchant's, bought by buyer (settled) and other_buyer (paid)
    other_listing: Listing  # the other merchant's
    spare_listing: Listing  # the merchant's, bought by nobody yet
    order: Order
    other_order: Order
    certificate: TransactionCertificate
    data_file: DataFile
    web: Any = field(repr=False, default=None)  # a Django test client, for buying through the web UI
    capture: Callable = field(repr=False, default=contextlib.nullcontext)


def buy(client, user: User, listing: Listing, capture, *, kind: str = "one_time") -> Order:
    """``user`` buys ``listing`` on its ``kind`` plan through the web UI and the sandbox gateway: a paid order."""
    client.force_login(user)
    plan = listing.plans.get(kind=kind, is_active=True)
    with capture(execute=True):
        client.post(
            reverse("exchange:order_buy", args=[listing.slug]),
            {"accept_licence": "1", "token": str(uuid.uuid4()), "plan": plan.pk},
        )
        order = Order.objects.filter(buyer=user, plan=plan).latest("pk")
        if order.status == OrderStatus.PENDING_PAYMENT:
            approve_in_sandbox(client, order.checkout_url)
    client.logout()
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID, order.status
    return order


def download_first_file(client, user: User) -> None:
    """Download the first file of ``user``'s library, which confirms its delivery."""
    client.force_login(user)
    link = library_links(client.get(reverse("exchange:library")).content.decode())[0]
    read_stream(client.get(link))
    client.logout()


def build_world(client, capture) -> World:
    """The trades every API test starts from (see the module's docstring); a few seconds of real pipeline."""
    from listings.models import Category

    Category.objects.get_or_create(slug="government", defaults={"name": "Government"})
    staff = UserFactory(is_staff=True, is_superuser=True, email="api-staff@example.com")
    merchant_user = UserFactory(email="api-merchant@example.com")
    merchant = make_merchant(merchant_user, name="Guiyang Data")
    other_merchant_user = UserFactory(email="api-other-merchant@example.com")
    other_merchant = make_merchant(other_merchant_user, name="Shanghai Data")
    buyer = UserFactory(email="api-buyer@example.com")
    other_buyer = UserFactory(email="api-other-buyer@example.com")
    stranger = UserFactory(email="api-stranger@example.com")
    listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title="City populations")
    other_listing = make_listing(
        merchant=other_merchant, owner=other_merchant_user, reviewer=staff, title="Shanghai metro rides"
    )
    order = buy(client, buyer, listing, capture)
    download_first_file(client, buyer)
    with capture(execute=True):
        settlement_run_start(trigger="api tests")
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED, order.status
    other_order = buy(client, other_buyer, listing, capture)
    spare_listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, title="Guiyang rainfall")
    return World(
        buyer=buyer,
        other_buyer=other_buyer,
        stranger=stranger,
        merchant_user=merchant_user,
        merchant=merchant,
        other_merchant_user=other_merchant_user,
        other_merchant=other_merchant,
        staff=staff,
        listing=listing,
        other_listing=other_listing,
        spare_listing=spare_listing,
        order=order,
        other_order=other_order,
        certificate=TransactionCertificate.objects.get(order=order),
        data_file=listing.versions.get().files.get(),
        web=client,
        capture=capture,
    )


@pytest.fixture
def api_world(db, client, django_capture_on_commit_callbacks, own_signing_key, generous_rates) -> World:
    return build_world(client, django_capture_on_commit_callbacks)


# --- the routes -------------------------------------------------------------------------------------------------------

_CONVERTER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>\w+)>")
_REGEX_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>[^)]*\)")


def _template(pattern) -> str:
    """A URL pattern's text with its parameters as ``{name}``, as OpenAPI paths write them."""
    text = str(pattern.pattern)
    if hasattr(pattern.pattern, "regex") and not hasattr(pattern.pattern, "converters"):
        text = _REGEX_GROUP.sub(r"{\g<name>}", text).lstrip("^").rstrip("$").replace("\\", "")
    return _CONVERTER.sub(r"{\g<name>}", text)


@dataclass(frozen=True)
class ApiRoute:
    path: str  # /api/v1/orders/{public_id}/
    name: str  # namespace:name
    params: tuple[str, ...]
    callback: Any = field(compare=False, repr=False)

    @property
    def is_object_route(self) -> bool:
        return bool(self.params)


def _walk(patterns, prefix: str, namespace: str):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}:{pattern.namespace}" if namespace and pattern.namespace else pattern.namespace
            yield from _walk(pattern.url_patterns, prefix + _template(pattern), inner or namespace)
        elif isinstance(pattern, URLPattern):
            path = "/" + prefix + _template(pattern)
            name = f"{namespace}:{pattern.name}" if namespace else (pattern.name or "")
            params = tuple(re.findall(r"{(\w+)}", path))
            yield ApiRoute(path=path, name=name, params=params, callback=pattern.callback)


@cache
def api_routes() -> tuple[ApiRoute, ...]:
    """Every route under /api/v1/ in the URL configuration but the schema's own (the docs are outside /api/v1/)."""
    routes = [
        route
        for route in _walk(get_resolver().url_patterns, "", "")
        if route.path.startswith(API_PREFIX) and route.name != "api_schema"
    ]
    return tuple(sorted(routes, key=lambda route: route.path))


@cache
def api_schema() -> dict:
    """The OpenAPI schema as drf-spectacular generates it for the whole API."""
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def path_shape(path: str) -> str:
    """A path with its parameters unnamed: the schema renames ``{pk}`` after the model's key (``{id}``)."""
    return re.sub(r"{\w+}", "{}", path)


def documented_path(route: ApiRoute) -> str | None:
    """The schema's path of ``route`` (its parameters named as the schema names them), None if undocumented."""
    shapes = {path_shape(path): path for path in api_schema()["paths"]}
    return shapes.get(path_shape(route.path))


def route_methods(route: ApiRoute) -> list[str]:
    """The methods a route answers: those its schema documents, else those its view defines."""
    path = documented_path(route)
    documented = api_schema()["paths"][path] if path else None
    if documented is not None:
        return sorted(method.upper() for method in documented)
    view = getattr(route.callback, "cls", None) or getattr(route.callback, "view_class", None)
    actions = getattr(route.callback, "actions", None)
    if actions:
        return sorted(method.upper() for method in actions)
    if view is None:
        return ["GET"]
    names = getattr(view, "http_method_names", ["get", "post", "put", "patch", "delete"])
    return sorted(m.upper() for m in names if m not in ("head", "options", "trace") and hasattr(view, m))


# --- the object routes: whose object, and who may do what with it ---------------------------------------------------

PERSONAS = ("anonymous", "stranger", "other_buyer", "other_merchant", "counterparty", "owner", "staff")
# stranger: a buyer without the purchase; other_buyer: a buyer with a purchase of the same product (their own);
# other_merchant: a member of another merchant; counterparty: the other side of the owner's trade (the merchant
# for a buyer's object, the buyer for a merchant's).


def _row(model, pk) -> dict | None:
    return model.objects.filter(pk=pk).values().first()


@dataclass
class Target:
    """One object of the owner's, made for a test: its URL arguments, and its row for before/after comparisons."""

    kwargs: dict[str, Any]
    snapshot: Callable[[], Any]


@dataclass(frozen=True)
class ObjectRoute:
    owner: str  # "buyer" or "merchant"
    make: Callable[[World], Target]
    success: dict[str, int]  # the owner's (and other allowed callers') status per method
    allowed: frozenset[str] = frozenset({"owner"})
    anonymous: int = 401  # 404 where an anonymous caller is answered as for an unknown object
    bodies: dict[str, tuple[str, Callable[[], dict]]] = field(default_factory=dict)  # method: (format, data)

    def user(self, world: World, persona: str) -> User | None:
        owner = world.buyer if self.owner == "buyer" else world.merchant_user
        counterparty = world.merchant_user if self.owner == "buyer" else world.buyer
        return {
            "anonymous": None,
            "stranger": world.stranger,
            "other_buyer": world.other_buyer,
            "other_merchant": world.other_merchant_user,
            "counterparty": counterparty,
            "owner": owner,
            "staff": world.staff,
        }[persona]


def _rows(queryset) -> list[dict]:
    return list(queryset.order_by("pk").values())


def _data_file(world: World) -> Target:
    pk = world.data_file.pk
    return Target({"file_pk": pk}, lambda: _row(DataFile, pk))


def _spare_key(world: World) -> Target:
    key, _ = api_key_create(user=world.buyer, name="spare", scopes=["read"])
    return Target({"prefix": key.prefix}, lambda: _row(ApiKey, key.pk))


def _certificate(world: World) -> Target:
    pk = world.certificate.pk
    return Target({"number": world.certificate.number}, lambda: _row(TransactionCertificate, pk))


def _order_target(order: Order) -> Target:
    return Target(
        {"public_id": order.public_id},
        lambda: (_row(Order, order.pk), _rows(OrderStatusHistory.objects.filter(order=order))),
    )


def _settled_order(world: World) -> Target:
    return _order_target(world.order)


def _pending_order(world: World) -> Target:
    """The buyer's order of the spare product, waiting for payment (the same open order on every call)."""
    order, _ = order_create(buyer=world.buyer, listing=world.spare_listing, idempotency_key="api-tests-pending")
    return _order_target(order)


def _paid_order(world: World) -> Target:
    """The buyer's paid order of the spare product, its data not yet confirmed as received."""
    existing = Order.objects.filter(buyer=world.buyer, listing=world.spare_listing, status=OrderStatus.PAID).first()
    return _order_target(existing or buy(world.web, world.buyer, world.spare_listing, world.capture))


def _entitlement(world: World) -> Target:
    entitlement = Entitlement.objects.get(order=world.order)
    return Target({"pk": entitlement.pk}, lambda: _row(Entitlement, entitlement.pk))


def _delivery(world: World) -> Delivery:
    return Delivery.objects.get(entitlement__order=world.order)


def _delivery_target(world: World) -> Target:
    delivery = _delivery(world)
    return Target({"pk": delivery.pk}, lambda: _row(Delivery, delivery.pk))


def _download(world: World) -> Target:
    delivery = _delivery(world)
    link = download_link_make(delivery=delivery, file=world.data_file, user=world.buyer)
    token = resolve(link).kwargs["token"]
    return Target(
        {"token": token}, lambda: (_row(Delivery, delivery.pk), _rows(DownloadLog.objects.filter(delivery=delivery)))
    )


def _access_request(world: World) -> Target:
    listing = make_listing(
        merchant=world.merchant,
        owner=world.merchant_user,
        reviewer=world.staff,
        title="Hospital admissions",
        requires_access_request=True,
    )
    item = access_request_create(
        listing=listing, buyer=world.buyer, organisation="Guizhou University", use_scenario="Teaching statistics."
    )
    return Target({"pk": item.pk}, lambda: _row(AccessRequest, item.pk))


def _product_target(listing: Listing, **extra) -> Target:
    return Target(
        {"slug": listing.slug, **extra},
        lambda: (
            _row(Listing, listing.pk),
            _rows(PricingPlan.objects.filter(listing=listing)),
            _rows(ListingVersion.objects.filter(listing=listing)),
            _rows(ListingStatusHistory.objects.filter(listing=listing)),
        ),
    )


def _draft_product(world: World) -> Listing:
    """A draft of the merchant's with a one-time price and no file yet: editable, not ready for review."""
    listing = listing_create(merchant=world.merchant, actor=world.merchant_user, title="Bus punctuality")
    pricing_plan_set(listing=listing, actor=world.merchant_user, amount=990, currency="CNY")
    return listing


def _draft(world: World) -> Target:
    return _product_target(_draft_product(world))


def _complete_draft(world: World) -> Target:
    """A draft with everything review needs (a profiled file, a price, a category): it can be submitted."""
    listing = make_listing(
        merchant=world.merchant, owner=world.merchant_user, title="Air quality", status=ListingStatus.DRAFT
    )
    version = version_upload(listing=listing, actor=world.merchant_user, uploaded_file=csv_upload())
    for data_file in version.files.all():
        datafile_profile_run(data_file_pk=data_file.pk)
    pricing_plan_set(listing=listing, actor=world.merchant_user, amount=500, currency="CNY")
    return _product_target(listing)


def _published_product(world: World) -> Target:
    return _product_target(world.listing)


def _published_version(world: World) -> Target:
    return _product_target(world.listing, pk=world.listing.versions.get().pk)


def _draft_plan(world: World) -> Target:
    listing = _draft_product(world)
    return _product_target(listing, pk=listing.plans.get(is_active=True).pk)


def _webhook(world: World) -> Target:
    endpoint = webhook_endpoint_create(
        user=world.buyer, url="https://hooks.example.com/exchange", description="Orders", event_types=["sale"]
    )
    return Target(
        {"pk": endpoint.pk},
        lambda: (_row(WebhookEndpoint, endpoint.pk), _rows(OutboundEvent.objects.filter(endpoint_id=endpoint.pk))),
    )


def _notification(world: World) -> Target:
    notification = notification_send(
        user=world.buyer, kind=NotificationKind.NEW_VERSION, title="A new version of City populations", email=False
    )
    return Target({"pk": notification.pk}, lambda: _row(Notification, notification.pk))


def _upload() -> dict:
    return {"file": csv_upload(name="next.csv"), "changelog": "Added 2025."}


OBJECT_ROUTES: dict[str, ObjectRoute] = {
    # The data API and certificates.
    "data_api:file_rows": ObjectRoute(
        owner="buyer",
        make=_data_file,
        success={"GET": 200},
        # The rows are the product's: whoever holds an entitlement to it reads them, as other_buyer does.
        allowed=frozenset({"owner", "other_buyer"}),
    ),
    "data_api:key_revoke": ObjectRoute(owner="buyer", make=_spare_key, success={"POST": 200}),
    # The account.
    "account_api:key-revoke": ObjectRoute(owner="buyer", make=_spare_key, success={"POST": 200}),
    "account_exchange_api:webhook": ObjectRoute(
        owner="buyer",
        make=_webhook,
        success={"GET": 200, "PATCH": 200, "DELETE": 204},
        bodies={"PATCH": ("json", lambda: {"is_active": False})},
    ),
    "account_exchange_api:webhook-rotate": ObjectRoute(owner="buyer", make=_webhook, success={"POST": 200}),
    "account_exchange_api:webhook-attempts": ObjectRoute(owner="buyer", make=_webhook, success={"GET": 200}),
    "account_exchange_api:notification-read": ObjectRoute(owner="buyer", make=_notification, success={"POST": 200}),
    "certificates:api_detail": ObjectRoute(
        owner="buyer",
        make=_certificate,
        success={"GET": 200},
        # The trade's two parties and staff read it; anyone else, signed in or not, gets the unknown number's 404.
        allowed=frozenset({"owner", "counterparty", "staff"}),
        anonymous=404,
    ),
    # The buyer's records.
    "buyer_api:order-detail": ObjectRoute(owner="buyer", make=_settled_order, success={"GET": 200}),
    "buyer_api:order-checkout": ObjectRoute(owner="buyer", make=_pending_order, success={"POST": 200}),
    "buyer_api:order-cancel": ObjectRoute(owner="buyer", make=_pending_order, success={"POST": 200}),
    "buyer_api:order-confirm": ObjectRoute(owner="buyer", make=_paid_order, success={"POST": 200}),
    "buyer_api:access-request-detail": ObjectRoute(owner="buyer", make=_access_request, success={"GET": 200}),
    "buyer_api:entitlement-detail": ObjectRoute(owner="buyer", make=_entitlement, success={"GET": 200}),
    "buyer_api:delivery-detail": ObjectRoute(owner="buyer", make=_delivery_target, success={"GET": 200}),
    "buyer_api:delivery-receipt": ObjectRoute(owner="buyer", make=_delivery_target, success={"GET": 200}),
    "buyer_api:download": ObjectRoute(owner="buyer", make=_download, success={"GET": 200}),
    # The merchant's products.
    "merchant_api:product-detail": ObjectRoute(
        owner="merchant",
        make=_draft,
        success={"GET": 200, "PATCH": 200},
        bodies={"PATCH": ("json", lambda: {"summary": "Changed through the API"})},
    ),
    "merchant_api:product-submit": ObjectRoute(owner="merchant", make=_complete_draft, success={"POST": 200}),
    "merchant_api:review-list": ObjectRoute(owner="merchant", make=_published_product, success={"GET": 200}),
    "merchant_api:version-list": ObjectRoute(
        owner="merchant",
        make=_draft,
        success={"GET": 200, "POST": 201},
        bodies={"POST": ("multipart", _upload)},
    ),
    "merchant_api:version-detail": ObjectRoute(owner="merchant", make=_published_version, success={"GET": 200}),
    "merchant_api:plan-list": ObjectRoute(
        owner="merchant",
        make=_draft,
        success={"GET": 200, "POST": 201},
        bodies={"POST": ("json", lambda: {"kind": "free", "name": "Sample"})},
    ),
    "merchant_api:plan-detail": ObjectRoute(
        owner="merchant",
        make=_draft_plan,
        success={"GET": 200, "PATCH": 200, "DELETE": 204},
        bodies={"PATCH": ("json", lambda: {"is_active": False})},
    ),
}

_CATALOG = "The public catalog: anyone reads a published product (drafts are the catalog tests' concern)."
PUBLIC_ROUTES: dict[str, str] = {
    "catalog_api:listing-detail": _CATALOG,
    "catalog_api:listing-versions": _CATALOG,
    "catalog_api:listing-schema": _CATALOG,
    "catalog_api:listing-sample": _CATALOG,
    "catalog_api:listing-plans": _CATALOG,
    "catalog_api:merchant-detail": "A merchant's public profile, shown on each of its products.",
}
