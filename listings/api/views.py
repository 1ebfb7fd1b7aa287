"""The catalog API: published listings, filtered and searched by the catalog's FilterSet."""

from django.conf import settings
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import permissions, viewsets
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.settings import api_settings

from listings.api.serializers import (
    CardWriter,
    ListingCardSerializer,
    ListingDetailSerializer,
)
from listings.filters import ListingFilter
from listings.search import CANDIDATE_CAP
from listings.selectors import listings_published


class _SettingsWithoutFormatOverride:
    URL_FORMAT_OVERRIDE = None

    def __getattr__(self, name):
        return getattr(api_settings, name)


class CatalogContentNegotiation(DefaultContentNegotiation):
    """Content negotiation by Accept header only: ``?format=`` is the catalog's file-format filter here."""

    settings = _SettingsWithoutFormatOverride()


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


def _errors(filterset) -> dict[str, list[str]]:
    return {name: [str(message) for message in messages] for name, messages in filterset.errors.items()}


@api_view(["GET"])
@permission_classes([permissions.AllowAny])
def ping(request):
    """A trivial endpoint: the framework's fixed cost per request (a benchmark baseline)."""
    return Response({"ok": True})
