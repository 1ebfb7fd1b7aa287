"""The catalog API: published listings, filtered and searched by the catalog's FilterSet, with what each
product page shows (versions, schema, sample, plans) and the merchants' public profiles. Public (no
credentials needed); anything not published is not found."""

from django.conf import settings
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view, inline_serializer
from rest_framework import generics, permissions, viewsets
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import ErrorDetail, NotFound, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.settings import api_settings

from common.api import ApiCursorPagination, errors
from listings.api.serializers import (
    CardWriter,
    CatalogPageSerializer,
    CatalogPlanSerializer,
    CatalogSampleSerializer,
    CatalogSchemaSerializer,
    CatalogVersionSerializer,
    ListingCardSerializer,
    ListingDetailSerializer,
    MerchantProfileSerializer,
    PingSerializer,
)
from listings.filters import ListingFilter
from listings.models import Listing, ListingVersion
from listings.search import CANDIDATE_CAP
from listings.selectors import listing_page, listing_plans, listings_published
from merchants.models import Merchant


class _SettingsWithoutFormatOverride:
    URL_FORMAT_OVERRIDE = None

    def __getattr__(self, name):
        return getattr(api_settings, name)


class CatalogContentNegotiation(DefaultContentNegotiation):
    """Content negotiation by Accept header only: ``?format=`` is the catalog's file-format filter here."""

    settings = _SettingsWithoutFormatOverride()


@extend_schema_view(
    list=extend_schema(responses={200: CatalogPageSerializer, **errors(400)}),
    retrieve=extend_schema(responses={200: ListingDetailSerializer, **errors(404)}),
)
class CatalogListingViewSet(viewsets.ReadOnlyModelViewSet):
    """Published data products.

    ``list`` takes the catalog's filters (``q``, ``category``, ``price_type``,
    ``licence``, ``format``, ``merchant``, ``update_frequency``, ``sort``,
    ``cursor``) and answers ``{"results", "next", "facets", "matches"}``:
    ``next`` is the cursor of the following page or null; facet counts are
    taken over at most the newest ``CANDIDATE_CAP`` matches, and
    ``matches.capped`` says when that cap was reached (counts are then lower
    bounds). Unknown or malformed filter values answer 400 with the errors per
    parameter.
    """

    permission_classes = [permissions.AllowAny]
    content_negotiation_class = CatalogContentNegotiation
    serializer_class = ListingCardSerializer
    filter_backends = [DjangoFilterBackend]  # documents the parameters; list applies the FilterSet itself
    filterset_class = ListingFilter
    lookup_field = "slug"
    pagination_class = None

    def get_queryset(self):
        return listings_published()

    def list(self, request, *args, **kwargs):
        # No queryset: the FilterSet's published catalog (get_queryset), whose statement is compiled
        # once per combination of filters in use and re-bound per request.
        filterset = ListingFilter(request.query_params, request=request)
        if not filterset.is_valid():
            raise ValidationError(_errors(filterset))
        # The naive search is a benchmark baseline; it exists only where the setting enables it.
        naive = getattr(settings, "BENCH_ENABLE_NAIVE", False) and request.query_params.get("naive") == "1"
        page = filterset.page(naive=naive, cards=True)
        card = CardWriter()
        next_url = None
        if page.next_cursor:
            params = request.query_params.copy()
            params["cursor"] = page.next_cursor
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        return Response(
            {
                "results": [card(row) for row in page.listings],
                "next": page.next_cursor,
                "next_url": next_url,
                "sort": page.sort,
                "facets": {
                    name: [{"value": v.value, "label": v.label, "count": v.count} for v in values]
                    for name, values in page.facets.items()
                },
                "matches": {"counted": page.matches, "capped": page.capped, "cap": CANDIDATE_CAP},
            }
        )

    def retrieve(self, request, *args, **kwargs):
        listing = (
            self.get_queryset().select_related("category").prefetch_related("tags", "plans").filter(slug=kwargs["slug"])
        ).first()
        if listing is None:
            raise NotFound("No such published data product.")
        return Response(ListingDetailSerializer(listing, context={"request": request}).data)


def _errors(filterset) -> dict[str, list[ErrorDetail]]:
    # The form's own codes (invalid_choice, invalid_cursor, max_length...) travel with the messages.
    return {
        name: [ErrorDetail(message, code=error.code or "invalid") for error in errs for message in error.messages]
        for name, errs in filterset.form.errors.as_data().items()
    }


@extend_schema(responses={200: PingSerializer, **errors()})
@api_view(["GET"])
@permission_classes([permissions.AllowAny])
def ping(request):
    """A trivial endpoint: the framework's fixed cost per request (a benchmark baseline)."""
    return Response({"ok": True})


# --- what a product page shows ------------------------------------------------------------------------------------


class PublishedListingView(generics.GenericAPIView):
    """A part of a published product's page; any other slug is not found (drafts, products under review...)."""

    permission_classes = [permissions.AllowAny]
    content_negotiation_class = CatalogContentNegotiation
    pagination_class = None

    def published_listing(self, queryset=None) -> Listing:
        listing = (queryset if queryset is not None else listings_published()).filter(slug=self.kwargs["slug"]).first()
        if listing is None:
            raise NotFound("No such published data product.")
        return listing


@extend_schema(responses={200: CatalogVersionSerializer(many=True), **errors(404)})
class ListingVersionsView(PublishedListingView, generics.ListAPIView):
    """The product's published versions, newest first: label, changelog, schema changes and files."""

    serializer_class = CatalogVersionSerializer
    pagination_class = ApiCursorPagination

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no listing
            return ListingVersion.objects.none()
        return ListingVersion.objects.filter(
            listing=self.published_listing(), published_at__isnull=False
        ).prefetch_related("files")


class ListingSchemaView(PublishedListingView):
    """The current (newest published) version's columns, each with the merchant's data dictionary entry."""

    serializer_class = CatalogSchemaSerializer

    @extend_schema(responses={200: CatalogSchemaSerializer, **errors(404)})
    def get(self, request, slug):
        page = listing_page(listing=self.published_listing())
        columns = [
            {"name": column["name"], "type": column.get("type"), "description": column.get("description", "")}
            for column in page["columns"]
        ]
        latest = page["latest"]
        return Response(self.get_serializer({"version": latest.label if latest else None, "columns": columns}).data)


class ListingSampleView(PublishedListingView):
    """The sample rows the product page shows: from the current version's first profiled file."""

    serializer_class = CatalogSampleSerializer

    @extend_schema(responses={200: CatalogSampleSerializer, **errors(404)})
    def get(self, request, slug):
        page = listing_page(listing=self.published_listing())
        columns, rows = page["sample"] or ([], [])
        latest = page["latest"]
        body = {"version": latest.label if latest else None, "columns": columns, "rows": rows}
        return Response(self.get_serializer(body).data)


class ListingPlansView(PublishedListingView):
    """The product's active pricing plans, cheapest commitment first (at most a handful: not paginated)."""

    serializer_class = CatalogPlanSerializer

    @extend_schema(
        responses={
            200: inline_serializer("CatalogPlanList", fields={"results": CatalogPlanSerializer(many=True)}),
            **errors(404),
        }
    )
    def get(self, request, slug):
        listing = self.published_listing(listings_published().prefetch_related("plans"))
        return Response({"results": self.get_serializer(listing_plans(listing=listing), many=True).data})


# --- the merchant profile ---------------------------------------------------------------------------------------------


class ProductPagination(ApiCursorPagination):
    """A merchant's products as its page lists them: the latest published first."""

    ordering = ("-published_at", "-pk")


class MerchantProfileView(generics.GenericAPIView):
    """A merchant's public profile, by the slug its web page uses, with a page of its published products."""

    permission_classes = [permissions.AllowAny]
    content_negotiation_class = CatalogContentNegotiation
    serializer_class = MerchantProfileSerializer
    pagination_class = ProductPagination

    @extend_schema(
        parameters=[
            OpenApiParameter("cursor", OpenApiTypes.STR, description="The products page to show (from `next`)."),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="Products per page (at most 200)."),
        ],
        responses={200: MerchantProfileSerializer, **errors(404)},
    )
    def get(self, request, slug):
        merchant = Merchant.objects.filter(slug=slug).first()
        if merchant is None:
            raise NotFound("No such merchant.")
        products = listings_published().filter(merchant=merchant).select_related("category").prefetch_related("plans")
        page = self.paginate_queryset(products)
        cards = ListingCardSerializer(page, many=True, context=self.get_serializer_context()).data
        context = {**self.get_serializer_context(), "products": self.get_paginated_response(cards).data}
        return Response(MerchantProfileSerializer(merchant, context=context).data)
