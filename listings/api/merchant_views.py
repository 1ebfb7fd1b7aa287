"""The merchant's product API (``/api/v1/merchant/products/``): products, versions, review, pricing plans.

Thin views over the services the web console uses (listings.services). Every endpoint needs the ``merchant``
scope and acts for the caller's merchant: a product of another merchant, or any product for a caller who is not
a member of a merchant, answers 404 exactly as a product that does not exist.

Service refusals become the API's errors: a problem with the input is 400 (``fields`` keyed by input); a product
whose state does not allow the change is 409 with the service's code (``not_editable``, ``incomplete``,
``invalid_transition``, ``too_many_plans``, ``duplicate_kind``), or ``plan_inactive`` for a withdrawn plan.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.exceptions import APIException, ErrorDetail, NotFound, ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from accounts.authentication import HasScope
from common.api import ERRORS, Conflict, errors
from listings.api.merchant_serializers import (
    PlanInputSerializer,
    PlanPatchSerializer,
    PlanSerializer,
    ProductDetailSerializer,
    ProductInputSerializer,
    ProductSerializer,
    ReviewSerializer,
    VersionDetailSerializer,
    VersionSerializer,
    VersionUploadSerializer,
)
from listings.models import DataFile, Listing, ListingReview, ListingVersion, PricingPlan
from listings.services import (
    listing_create,
    listing_submit,
    listing_update,
    pricing_plan_create,
    pricing_plan_deactivate,
    pricing_plan_replace,
    version_upload,
)
from listings.upload_handlers import install_upload_limits, upload_limits
from listings.uploads import SIZE_REFUSAL_CODES
from merchants.selectors import merchant_for_user

MERCHANT_PERMISSIONS = [IsAuthenticated, HasScope("merchant")]


# Service codes that describe the product's state rather than the request: 409, not 400.
CONFLICT_CODES = {"not_editable", "incomplete", "invalid_transition", "too_many_plans", "duplicate_kind"}


def service_refusal(exc: DjangoValidationError, *, code: str = "invalid") -> APIException:
    """A service's ValidationError as the API's error; ``code`` stands in for messages the service left uncoded.

    Errors keyed by field stay keyed by field (400); the rest keep their code, 409 for a state conflict.
    """
    if hasattr(exc, "error_dict"):
        return ValidationError(
            {
                field: [ErrorDetail(message, code=error.code or code) for error in errs for message in error.messages]
                for field, errs in exc.error_dict.items()
            }
        )
    details = [ErrorDetail(message, code=error.code or code) for error in exc.error_list for message in error.messages]
    first = details[0].code if details else code
    if first in CONFLICT_CODES:
        return Conflict(detail=" ".join(details), code=first)
    return ValidationError(details)


def own_products(user):
    """The products of the merchants ``user`` is a member of."""
    return Listing.objects.filter(merchant__members__user=user)


class ProductScopedMixin:
    """For views under ``products/{slug}/``: the caller's product, else 404."""

    permission_classes = MERCHANT_PERMISSIONS

    def get_product(self) -> Listing:
        product = getattr(self, "_product", None)
        if product is None:
            products = own_products(self.request.user).select_related("merchant")
            product = products.filter(slug=self.kwargs["slug"]).first()
            if product is None:
                raise NotFound("No such data product.")
            self._product = product
        return product

    def is_schema_view(self) -> bool:
        # drf-spectacular inspects the views without a real caller.
        return getattr(self, "swagger_fake_view", False)


def caller_merchant(request):
    """The caller's merchant; a caller who belongs to none gets the 404 of a page that does not exist."""
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        raise NotFound("You are not a member of a merchant.")
    return merchant


NOT_A_MERCHANT = OpenApiResponse(ERRORS[404].response, description="The caller is not a member of a merchant.")


@extend_schema_view(
    get=extend_schema(
        summary="The caller's products, newest first",
        responses={200: ProductSerializer, **errors(403), 404: NOT_A_MERCHANT},
    )
)
class ProductListCreateView(generics.ListCreateAPIView):
    permission_classes = MERCHANT_PERMISSIONS
    parser_classes = [JSONParser]
    serializer_class = ProductSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Listing.objects.none()
        merchant = caller_merchant(self.request)
        return merchant.listings.select_related("merchant", "category").prefetch_related("tags")

    @extend_schema(
        summary="Create a draft product",
        request=ProductInputSerializer,
        responses={201: ProductDetailSerializer, **errors(400, 403), 404: NOT_A_MERCHANT},
    )
    def post(self, request):
        merchant = caller_merchant(request)
        data = ProductInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            listing = listing_create(merchant=merchant, actor=request.user, **data.validated_data)
        except DjangoValidationError as exc:
            raise service_refusal(exc) from None
        return Response(ProductDetailSerializer(listing).data, status=status.HTTP_201_CREATED)


class ProductDetailView(ProductScopedMixin, generics.GenericAPIView):
    parser_classes = [JSONParser]
    serializer_class = ProductDetailSerializer
    lookup_field = "slug"

    def get_queryset(self):
        return Listing.objects.none()

    @extend_schema(summary="One of the caller's products", responses={200: ProductDetailSerializer, **errors(403, 404)})
    def get(self, request, slug):
        return Response(ProductDetailSerializer(self.get_product()).data)

    @extend_schema(
        summary="Change a draft or rejected product (only the fields sent)",
        request=ProductInputSerializer(partial=True),
        responses={200: ProductDetailSerializer, **errors(400, 403, 404, 409)},
    )
    def patch(self, request, slug):
        listing = self.get_product()
        data = ProductInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        try:
            listing = listing_update(listing=listing, actor=request.user, **data.validated_data)
        except DjangoValidationError as exc:
            raise service_refusal(exc) from None
        return Response(ProductDetailSerializer(listing).data)


class PayloadTooLarge(APIException):
    """413: the file is over UPLOAD_MAX_BYTES ("too_large") or does not fit in the storage quota ("quota_exceeded")."""

    status_code = 413
    default_detail = "The upload is too large."
    default_code = "too_large"


TOO_LARGE = OpenApiResponse(
    ERRORS[400].response,
    description="`too_large`: the file is over the upload limit; `quota_exceeded`: it does not fit in the "
    "merchant's storage quota. A body declared larger than the limit is refused without being read.",
)


def _upload_limits_for(django_request, slug: str):
    """The limits of an upload to the product ``slug`` by the request's user (known by the time the body is parsed:
    the session's user, or the API key's, which DRF puts on the Django request once it has authenticated)."""
    user = getattr(django_request, "user", None)
    merchant_pk = None
    if user is not None and user.is_authenticated:
        merchant_pk = own_products(user).filter(slug=slug).values_list("merchant_id", flat=True).first()
    return upload_limits(merchant_pk=merchant_pk)


class VersionListCreateView(ProductScopedMixin, generics.ListCreateAPIView):
    serializer_class = VersionSerializer
    # Django streams a large upload to a temporary file (FILE_UPLOAD_MAX_MEMORY_SIZE); the service reads it in chunks.
    parser_classes = [MultiPartParser]
    upload_limiter = None

    def initialize_request(self, request, *args, **kwargs):
        # Before DRF wraps the request: with session authentication the CSRF check parses the body during
        # authentication, so the limits must already be in place then.
        if request.method == "POST":
            slug = kwargs.get("slug", "")
            self.upload_limiter = install_upload_limits(request, limits=lambda: _upload_limits_for(request, slug))
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self):
        if self.is_schema_view():
            return ListingVersion.objects.none()
        return self.get_product().versions.prefetch_related(Prefetch("files", queryset=DataFile.objects.order_by("pk")))

    @extend_schema(
        summary="The product's versions, newest first", responses={200: VersionSerializer, **errors(403, 404)}
    )
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)

    @extend_schema(
        summary="Upload a data file as the product's next version (multipart); it is profiled in the background",
        request={"multipart/form-data": VersionUploadSerializer},
        responses={
            201: VersionDetailSerializer,
            **errors(400, 403, 404, 409),
            413: TOO_LARGE,
            415: OpenApiResponse(ERRORS[400].response, description="The request is not multipart/form-data."),
        },
    )
    def post(self, request, slug):
        listing = self.get_product()
        payload = request.data  # parsed here (or during authentication) through the upload limits
        refusal = self.upload_limiter.refusal if self.upload_limiter else None
        if refusal is not None:
            raise PayloadTooLarge(detail=refusal.message, code=refusal.code)
        data = VersionUploadSerializer(data=payload)
        data.is_valid(raise_exception=True)
        try:
            version = version_upload(
                listing=listing,
                actor=request.user,
                uploaded_file=request.FILES["file"],
                changelog=data.validated_data["changelog"],
            )
        except DjangoValidationError as exc:
            codes = {error.code for error in getattr(exc, "error_list", [])}
            if codes & SIZE_REFUSAL_CODES:
                raise PayloadTooLarge(detail=" ".join(exc.messages), code=min(codes & SIZE_REFUSAL_CODES)) from None
            raise service_refusal(exc) from None
        # Read back: profiling may already have run (an eager or fast worker) once the upload committed.
        version = ListingVersion.objects.prefetch_related("files").get(pk=version.pk)
        return Response(VersionDetailSerializer(version).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(
        summary="A version with its files' profiling results (schema, row count, sha256, PII flags, status)",
        responses={200: VersionDetailSerializer, **errors(403, 404)},
    )
)
class VersionDetailView(ProductScopedMixin, generics.RetrieveAPIView):
    serializer_class = VersionDetailSerializer

    def get_queryset(self):
        if self.is_schema_view():
            return ListingVersion.objects.none()
        return self.get_product().versions.prefetch_related(Prefetch("files", queryset=DataFile.objects.order_by("pk")))


class ProductSubmitView(ProductScopedMixin, generics.GenericAPIView):
    serializer_class = ProductDetailSerializer

    def get_queryset(self):
        return Listing.objects.none()

    @extend_schema(
        summary="Submit the product for compliance review",
        description="409 `incomplete` lists what is missing (a file, a price, a category, custom licence terms); "
        "409 `invalid_transition` when the product is not a draft or rejected.",
        request=None,
        responses={200: ProductDetailSerializer, **errors(403, 404, 409)},
    )
    def post(self, request, slug):
        try:
            listing = listing_submit(listing=self.get_product(), actor=request.user)
        except DjangoValidationError as exc:
            raise service_refusal(exc, code="incomplete") from None
        return Response(ProductDetailSerializer(listing).data)


@extend_schema_view(
    get=extend_schema(
        summary="The outcomes of the product's reviews, newest first",
        responses={200: ReviewSerializer, **errors(403, 404)},
    )
)
class ReviewListView(ProductScopedMixin, generics.ListAPIView):
    serializer_class = ReviewSerializer

    def get_queryset(self):
        if self.is_schema_view():
            return ListingReview.objects.none()
        return self.get_product().reviews.select_related("version")


class PlanListCreateView(ProductScopedMixin, generics.ListCreateAPIView):
    serializer_class = PlanSerializer
    parser_classes = [JSONParser]

    def get_queryset(self):
        if self.is_schema_view():
            return PricingPlan.objects.none()
        return self.get_product().plans.all()

    @extend_schema(
        summary="The product's pricing plans, active and withdrawn, newest first",
        responses={200: PlanSerializer, **errors(403, 404)},
    )
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)

    @extend_schema(
        summary="Add a pricing plan to a draft or rejected product",
        request=PlanInputSerializer,
        responses={201: PlanSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request, slug):
        listing = self.get_product()
        data = PlanInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            plan = pricing_plan_create(listing=listing, actor=request.user, **data.validated_data)
        except DjangoValidationError as exc:
            raise service_refusal(exc) from None
        return Response(PlanSerializer(plan).data, status=status.HTTP_201_CREATED)


class PlanDetailView(ProductScopedMixin, generics.GenericAPIView):
    serializer_class = PlanSerializer
    parser_classes = [JSONParser]

    def get_queryset(self):
        if self.is_schema_view():
            return PricingPlan.objects.none()
        return self.get_product().plans.all()

    @extend_schema(summary="One pricing plan of the product", responses={200: PlanSerializer, **errors(403, 404)})
    def get(self, request, slug, pk):
        return Response(PlanSerializer(self.get_object()).data)

    @extend_schema(
        summary="Change a plan's terms, or withdraw it (`is_active: false`)",
        description="A plan is never changed in place: orders keep pointing at the plan they were bought under. "
        "Changed terms withdraw this plan and answer the plan that replaces it (a new `id`). Only an active plan "
        "of a draft or rejected product can change.",
        request=PlanPatchSerializer,
        responses={200: PlanSerializer, **errors(400, 403, 404, 409)},
    )
    def patch(self, request, slug, pk):
        plan = self.get_object()
        data = PlanPatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        is_active = changes.pop("is_active", None)
        if is_active is False and changes:
            raise ValidationError(
                {"is_active": [ErrorDetail("Withdraw a plan or change its terms, not both at once.", code="both")]}
            )
        if not plan.is_active and (changes or is_active):
            raise Conflict("A withdrawn plan cannot change or come back; add a new plan instead.", code="plan_inactive")
        try:
            if is_active is False:
                plan = pricing_plan_deactivate(plan=plan, actor=request.user)
            elif changes:
                plan = pricing_plan_replace(plan=plan, actor=request.user, changes=changes)
        except DjangoValidationError as exc:
            raise service_refusal(exc) from None
        return Response(PlanSerializer(plan).data)

    @extend_schema(
        summary="Withdraw a plan (kept for the orders made under it)",
        request=None,
        responses={204: None, **errors(403, 404, 409)},
    )
    def delete(self, request, slug, pk):
        try:
            pricing_plan_deactivate(plan=self.get_object(), actor=request.user)
        except DjangoValidationError as exc:
            raise service_refusal(exc) from None
        return Response(status=status.HTTP_204_NO_CONTENT)
