"""The buyer's side of the REST API: orders, access requests, entitlements, deliveries, receipts, certificates.

Thin views (DESIGN.md §5.2): an input serializer checks the shape, the existing service does the work
(exchange.services.orders, .access, .delivery, .downloads), an output serializer renders. Every
queryset is the caller's own records, so anyone else's object is a 404 like a missing one. Service
refusals become the API's errors: a state that does not allow the operation is a 409, anything else
a 400, each with the service's code.
"""

from collections import defaultdict
from urllib.parse import urlsplit

import django_filters
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpResponse
from django.urls import resolve, reverse
from django.utils import timezone
from django.utils.http import content_disposition_header
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from accounts.authentication import HasScope
from common.api import ERRORS, Conflict, MoneyRateLimit, errors
from exchange.api.serializers import (
    AccessRequestCreateInput,
    AccessRequestSerializer,
    BuyerCertificateSerializer,
    CheckoutSerializer,
    DeliverySerializer,
    EntitlementSerializer,
    OrderCreateInput,
    OrderDetailSerializer,
    OrderSerializer,
)
from exchange.choices import OrderStatus
from exchange.gateways import GatewayError
from exchange.models import AccessRequest, Delivery, Entitlement, Order, TransactionCertificate
from exchange.services.access import access_request_create
from exchange.services.delivery import delivery_receipt_for, receipt_canonical_bytes, versions_allowed
from exchange.services.downloads import (
    NOT_VALID,
    SERVABLE_STATUSES,
    DownloadDenied,
    download_link_make,
    download_resolve,
)
from exchange.services.entitlements import entitlement_is_usable
from exchange.services.orders import (
    IdempotencyConflict,
    OrderTransitionError,
    order_cancel,
    order_checkout_start,
    order_confirm_receipt,
    order_create,
)
from exchange.serving import download_response
from listings.models import ListingVersion, PricingPlan
from listings.selectors import listing_visible

# --- errors ---------------------------------------------------------------------------------------------------------


class DownloadRefused(APIException):
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = "This download link cannot be used now."
    default_code = "download_denied"


class GatewayUnavailable(APIException):
    status_code = status.HTTP_502_BAD_GATEWAY
    default_detail = "The payment provider could not start the checkout; try again."
    default_code = "gateway_error"


# Service codes that describe the state of things rather than the input: answered 409.
CONFLICT_CODES = frozenset(
    {
        "key_reused",
        "already_entitled",
        "access_request_required",
        "not_pending",
        "not_cancellable",
        "not_paid",
        "already_pending",
        "already_approved",
    }
)

_GATEWAY_502 = {
    502: OpenApiResponse(ERRORS[400].response, description="The payment provider failed; nothing was charged.")
}


def api_error(exc: DjangoValidationError) -> APIException:
    """A service's ValidationError as the API's error: 409 for a state conflict, else 400, with its code."""
    if hasattr(exc, "error_dict"):
        return ValidationError(detail=exc.message_dict)
    code, message = exc.code or "invalid", exc.messages[0]
    if isinstance(exc, IdempotencyConflict | OrderTransitionError) or code in CONFLICT_CODES:
        return Conflict(detail=message, code=code)
    return ValidationError(detail=message, code=code)


def _listing_or_400(slug: str, user):
    # A draft of another merchant is as unknown as a slug that does not exist: nothing leaks.
    try:
        return listing_visible(slug=slug, user=user)
    except Http404:
        raise ValidationError(f"No data product {slug!r}.", code="unknown_listing") from None


# --- permissions ------------------------------------------------------------------------------------------------------

READ = HasScope("read")
READ_OR_TRADE = HasScope("read", "trade")
TRADE = HasScope("trade")


class _ScopedViewSet(viewsets.GenericViewSet):
    """The caller's own records (``own``); ``scopes`` maps each action to the permissions it needs beyond
    being signed in (anything unlisted needs ``read``)."""

    model = None
    scopes: dict[str, list] = {}

    def get_permissions(self):
        return [IsAuthenticated(), *self.scopes.get(self.action, [READ])]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return self.model.objects.none()
        return self.own(self.request.user)

    def own(self, user):
        raise NotImplementedError

    def get_object(self):
        # Django's Http404 bypasses the shared handler's shaping (it is not an APIException): raise DRF's own.
        try:
            return super().get_object()
        except Http404:
            raise NotFound(f"No such {self.model._meta.verbose_name}.") from None


class _OwnFilterBackend(DjangoFilterBackend):
    """The FilterSet on list actions only; an invalid value is a 400 coded ``bad_<parameter>``."""

    def filter_queryset(self, request, queryset, view):
        if getattr(view, "action", None) != "list":
            return queryset
        filterset = self.get_filterset(request, queryset, view)
        if filterset is None:
            return queryset
        if not filterset.is_valid():
            name, messages = next(iter(filterset.errors.items()))
            raise ValidationError(f"{name}: {messages[0]}", code=f"bad_{name}")
        return filterset.qs


# --- orders -----------------------------------------------------------------------------------------------------------


class OrderFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=OrderStatus.choices, help_text="Only orders in this status.")

    class Meta:
        model = Order
        fields = ["status"]


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=True,
    description="1 to 100 characters, unique per purchase: a repeat answers the first order (200).",
)


@extend_schema_view(
    list=extend_schema(summary="Your orders, newest first", responses={200: OrderSerializer, **errors(400, 403, 404)}),
    retrieve=extend_schema(
        summary="One of your orders, with its timeline", responses={200: OrderDetailSerializer, **errors(403, 404)}
    ),
)
class OrderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _ScopedViewSet):
    """The caller's orders (as buyer). Orders are named by ``public_id``."""

    model = Order

    lookup_field = "public_id"
    filter_backends = [_OwnFilterBackend]
    filterset_class = OrderFilter
    scopes = {
        "list": [READ_OR_TRADE],
        "retrieve": [READ_OR_TRADE],
        "create": [TRADE, MoneyRateLimit()],
        "checkout": [TRADE, MoneyRateLimit()],
        "cancel": [TRADE],
        "confirm": [TRADE],
    }

    def own(self, user):
        orders = Order.objects.filter(buyer=user).select_related("listing", "plan", "certificate")
        return orders if self.action == "list" else orders.prefetch_related("history")

    def get_serializer_class(self):
        return OrderSerializer if self.action == "list" else OrderDetailSerializer

    def _render(self, order: Order, status_code: int = status.HTTP_200_OK) -> Response:
        order = self.get_queryset().get(pk=order.pk)  # fresh, with its timeline
        return Response(self.get_serializer(order).data, status=status_code)

    @extend_schema(
        summary="Buy a data product",
        parameters=[IDEMPOTENCY_KEY],
        request=OrderCreateInput,
        responses={
            201: OpenApiResponse(OrderDetailSerializer, description="The order, created now."),
            200: OpenApiResponse(OrderDetailSerializer, description="The order this Idempotency-Key created before."),
            **errors(400, 403, 409),
        },
    )
    def create(self, request):
        key = request.headers.get("Idempotency-Key", "").strip()
        if not key:
            raise ValidationError(
                "Send an Idempotency-Key header (1 to 100 characters).", code="idempotency_key_required"
            )
        data = OrderCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        listing = _listing_or_400(data.validated_data["listing"], request.user)
        plan = None
        if data.validated_data.get("plan") is not None:
            plan = PricingPlan.objects.filter(pk=data.validated_data["plan"]).first()
            if plan is None:
                raise ValidationError("That pricing plan is not available for this data product.", code="bad_plan")
        try:
            order, created = order_create(buyer=request.user, listing=listing, idempotency_key=key, plan=plan)
        except DjangoValidationError as exc:
            raise api_error(exc) from None
        return self._render(order, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        summary="Open the payment page",
        request=None,
        responses={200: CheckoutSerializer, **errors(403, 404, 409), **_GATEWAY_502},
    )
    def checkout(self, request, public_id):
        order = self.get_object()
        # The service hands back an opened session's URL whatever the order became; the API promises a 409.
        if order.status != OrderStatus.PENDING_PAYMENT:
            raise Conflict(
                f"This order is {order.get_status_display().lower()}, no longer waiting for payment.",
                code="not_pending",
            )
        try:
            url = order_checkout_start(order=order)
        except DjangoValidationError as exc:
            raise api_error(exc) from None
        except GatewayError as exc:
            raise GatewayUnavailable(f"The payment provider could not start the checkout: {exc}.") from None
        return Response({"checkout_url": request.build_absolute_uri(url)})

    @extend_schema(
        summary="Cancel an order waiting for payment",
        request=None,
        responses={200: OrderDetailSerializer, **errors(403, 404, 409)},
    )
    def cancel(self, request, public_id):
        order = self.get_object()
        try:
            order_cancel(order=order, actor=request.user)
        except DjangoValidationError as exc:
            raise api_error(exc) from None
        return self._render(order)

    @extend_schema(
        summary="Confirm you received the data (releases the payment to the merchant)",
        request=None,
        responses={200: OrderDetailSerializer, **errors(403, 404, 409)},
    )
    def confirm(self, request, public_id):
        order = self.get_object()
        try:
            order_confirm_receipt(order=order, actor=request.user)
        except DjangoValidationError as exc:
            raise api_error(exc) from None
        return self._render(order)


# --- access requests ------------------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="Your access requests", responses={200: AccessRequestSerializer, **errors(403, 404)}),
    retrieve=extend_schema(
        summary="One of your access requests", responses={200: AccessRequestSerializer, **errors(403, 404)}
    ),
)
class AccessRequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _ScopedViewSet):
    """Requests to buy products that need the merchant's approval of the use scenario first."""

    model = AccessRequest

    serializer_class = AccessRequestSerializer
    scopes = {"list": [READ_OR_TRADE], "retrieve": [READ_OR_TRADE], "create": [TRADE]}

    def own(self, user):
        return AccessRequest.objects.filter(buyer=user).select_related("listing")

    @extend_schema(
        summary="Ask a merchant for access, with your use scenario",
        request=AccessRequestCreateInput,
        responses={201: AccessRequestSerializer, **errors(400, 403, 409)},
    )
    def create(self, request):
        data = AccessRequestCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        listing = _listing_or_400(data.validated_data["listing"], request.user)
        try:
            item = access_request_create(
                listing=listing,
                buyer=request.user,
                organisation=data.validated_data["organisation"],
                use_scenario=data.validated_data["use_scenario"],
            )
        except DjangoValidationError as exc:
            raise api_error(exc) from None
        item = self.get_queryset().get(pk=item.pk)
        return Response(self.get_serializer(item).data, status=status.HTTP_201_CREATED)


# --- entitlements -----------------------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="Your entitlements", responses={200: EntitlementSerializer, **errors(403, 404)}),
    retrieve=extend_schema(
        summary="One of your entitlements", responses={200: EntitlementSerializer, **errors(403, 404)}
    ),
)
class EntitlementViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _ScopedViewSet):
    """The caller's rights to products: status, validity, plan and product."""

    model = Entitlement

    serializer_class = EntitlementSerializer

    def own(self, user):
        return Entitlement.objects.filter(buyer=user).select_related("listing", "plan", "order")


# --- deliveries -------------------------------------------------------------------------------------------------------


def api_download_path(web_link: str) -> str:
    """The API's path for a web download link: the same signed token (``download_link_make``), served to keys."""
    token = resolve(urlsplit(web_link).path).kwargs["token"]
    return reverse("buyer_api:download", args=[token])


def download_links(deliveries, *, user) -> dict[int, dict[int, str]]:
    """For each delivery, ``{file pk: signed API download path}`` when it may be downloaded now, else ``{}``.

    The library's rule (``library_entries``): the entitlement gives access now, its version-access rule
    covers the delivery's version, and the delivery is ready or confirmed. One query for the
    published versions of all the products involved.
    """
    deliveries = list(deliveries)
    published: dict[int, list[ListingVersion]] = defaultdict(list)
    listing_ids = {d.entitlement.listing_id for d in deliveries}
    for version in ListingVersion.objects.filter(listing_id__in=listing_ids, published_at__isnull=False).order_by(
        "-published_at", "-pk"
    ):
        published[version.listing_id].append(version)
    now = timezone.now()
    links: dict[int, dict[int, str]] = {}
    for delivery in deliveries:
        entitlement = delivery.entitlement
        allowed = {v.pk for v in versions_allowed(entitlement, published[entitlement.listing_id])}
        offered = (
            delivery.status in SERVABLE_STATUSES
            and delivery.version_id in allowed
            and entitlement_is_usable(entitlement, now=now)
        )
        links[delivery.pk] = (
            {
                f.pk: api_download_path(download_link_make(delivery=delivery, file=f, user=user))
                for f in delivery.version.files.all()
            }
            if offered
            else {}
        )
    return links


@extend_schema_view(
    list=extend_schema(summary="Your deliveries", responses={200: DeliverySerializer, **errors(403, 404)}),
    retrieve=extend_schema(
        summary="One of your deliveries, with signed download links",
        responses={200: DeliverySerializer, **errors(403, 404)},
    ),
)
class DeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _ScopedViewSet):
    """What was handed over: each version of a product an entitlement gives, its files and receipt."""

    model = Delivery

    serializer_class = DeliverySerializer

    def own(self, user):
        return (
            Delivery.objects.filter(entitlement__buyer=user)
            .select_related("entitlement__listing", "entitlement__order", "version")
            .prefetch_related("version__files")
        )

    def get_serializer_context(self):
        links = getattr(self, "_links", {})
        return {**super().get_serializer_context(), "links": lambda delivery: links.get(delivery.pk, {})}

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        self._links = download_links(page, user=request.user)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def retrieve(self, request, pk):
        delivery = self.get_object()
        self._links = download_links([delivery], user=request.user)
        return Response(self.get_serializer(delivery).data)

    @extend_schema(
        summary="The delivery's receipt, exactly as issued",
        description=(
            "The canonical JSON (sorted keys, no spaces, UTF-8) frozen when the delivery became ready; "
            "its SHA-256 is in `X-Receipt-SHA256`. 404 until the delivery has a receipt."
        ),
        responses={200: OpenApiTypes.OBJECT, **errors(403, 404)},
    )
    def receipt(self, request, pk):
        delivery = delivery_receipt_for(pk=self.get_object().pk, user=request.user)
        if delivery is None:
            raise NotFound("This delivery has no receipt yet: it is issued when the delivery becomes ready.")
        return HttpResponse(
            receipt_canonical_bytes(delivery.receipt),
            content_type="application/json",
            headers={
                "Content-Disposition": content_disposition_header(False, f"receipt-{delivery.pk}.json"),
                "X-Receipt-SHA256": delivery.receipt_sha256,
                "Cache-Control": "private, no-store",
            },
        )


class DownloadView(GenericAPIView):
    """``GET /api/v1/downloads/<token>/``: a purchased file through its signed link, for API keys and sessions.

    The same token and checks as the web library's link (``download_resolve``), and the same serving
    (ranges, ``X-Content-SHA256``, the access log; a complete download confirms the delivery). A link
    that is not the caller's, or not valid at all, is a 404; one that was valid but may not be used
    now (expired, access ended, being prepared...) is a 403 that says why.
    """

    permission_classes = [IsAuthenticated, READ]

    def perform_content_negotiation(self, request, force=False):
        # Clients of a file ask for anything; errors still answer JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        summary="Download a purchased file",
        responses={
            # Served with the file's own type (text/csv, application/vnd.apache.parquet, ...).
            (200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The whole file, with its own type."),
            (206, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The range asked."),
            302: OpenApiResponse(description="Object storage: fetch the file from `Location` (a presigned URL)."),
            403: OpenApiResponse(
                ERRORS[403].response, description="The link cannot be used now (expired, access ended...)."
            ),
            416: OpenApiResponse(description="The range lies outside the file."),
            **errors(404),
        },
    )
    def get(self, request, token):
        try:
            delivery, data_file = download_resolve(token=token, user=request.user)
        except DownloadDenied as exc:
            if str(exc) == NOT_VALID:
                raise NotFound("No such download.") from None
            raise DownloadRefused(str(exc)) from None
        return download_response(request, delivery=delivery, data_file=data_file)


# --- certificates ---------------------------------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        summary="Your transaction certificates", responses={200: BuyerCertificateSerializer, **errors(403, 404)}
    )
)
class CertificateListView(mixins.ListModelMixin, GenericAPIView):
    """The certificates of the caller's settled purchases; each links to ``/api/v1/certificates/{number}/``."""

    serializer_class = BuyerCertificateSerializer
    permission_classes = [IsAuthenticated, READ]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return TransactionCertificate.objects.none()
        return TransactionCertificate.objects.filter(order__buyer=self.request.user).select_related("order")

    def get(self, request):
        return self.list(request)
