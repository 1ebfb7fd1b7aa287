"""The merchant's money API (``/api/v1/merchant/``): sales, payouts, statements and aggregated usage.

Read-only views over the selectors and services behind the console's pages (exchange.selectors,
exchange.services.statements, exchange.data_api.selectors). Every endpoint needs the ``merchant`` scope and
answers for the caller's merchant; a caller who belongs to no merchant gets 404, as the console pages do.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.exceptions import ErrorDetail, ValidationError
from rest_framework.response import Response

from common.api import errors
from exchange.api.merchant_serializers import PayoutSerializer, SaleSerializer, StatementSerializer, UsageSerializer
from exchange.data_api.selectors import merchant_usage
from exchange.models import Order, Payout
from exchange.selectors import merchant_payouts, merchant_sales
from exchange.services.statements import StatementPeriodError, statement_build, statement_period
from listings.api.merchant_views import MERCHANT_PERMISSIONS, NOT_A_MERCHANT, caller_merchant
from listings.models import Listing


@extend_schema_view(
    get=extend_schema(
        summary="Orders of the merchant's products, newest first (no buyer identities)",
        responses={200: SaleSerializer, **errors(403), 404: NOT_A_MERCHANT},
    )
)
class SaleListView(generics.ListAPIView):
    permission_classes = MERCHANT_PERMISSIONS
    serializer_class = SaleSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Order.objects.none()
        return merchant_sales(merchant=caller_merchant(self.request))


@extend_schema_view(
    get=extend_schema(
        summary="The merchant's payouts, newest first",
        responses={200: PayoutSerializer, **errors(403), 404: NOT_A_MERCHANT},
    )
)
class PayoutListView(generics.ListAPIView):
    permission_classes = MERCHANT_PERMISSIONS
    serializer_class = PayoutSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Payout.objects.none()
        return merchant_payouts(merchant=caller_merchant(self.request))


def _bad_period(message: str) -> ValidationError:
    return ValidationError([ErrorDetail(message, code="bad_period")])


class StatementView(generics.GenericAPIView):
    permission_classes = MERCHANT_PERMISSIONS
    serializer_class = StatementSerializer
    pagination_class = None

    @extend_schema(
        summary="The merchant's statement totals per currency for a period",
        description="`from` and `to` are calendar days (YYYY-MM-DD), both included, in the exchange's time zone; "
        "without them, the current month. A bad date, `from` after `to`, or more than 366 days answers 400 "
        "`bad_period`.",
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, description="First day (default: the month's first)."),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last day (default: the month's last)."),
        ],
        responses={200: StatementSerializer, **errors(400, 403), 404: NOT_A_MERCHANT},
    )
    def get(self, request):
        merchant = caller_merchant(request)
        try:
            period = statement_period(params=request.query_params)
        except StatementPeriodError as exc:
            raise _bad_period(str(exc)) from None
        return Response(StatementSerializer(statement_build(merchant=merchant, period=period)).data)


def _with_product(rows: list[dict], slugs: dict[int, str], *, period: str) -> list[dict]:
    """Selector rows with ``product: {slug, title}`` for the listing's id and title; months as YYYY-MM."""
    out = []
    for row in rows:
        row = dict(row)
        listing_pk, title = row.pop("listing_id"), row.pop("listing__title")
        row["product"] = {"slug": slugs.get(listing_pk, ""), "title": title}
        if period == "month":
            row["month"] = f"{row['month']:%Y-%m}"
        out.append(row)
    return out


class UsageView(generics.GenericAPIView):
    permission_classes = MERCHANT_PERMISSIONS
    serializer_class = UsageSerializer
    pagination_class = None

    @extend_schema(
        summary="Aggregated use of the merchant's products per product and day / month",
        responses={200: UsageSerializer, **errors(403), 404: NOT_A_MERCHANT},
    )
    def get(self, request):
        usage = merchant_usage(merchant=caller_merchant(request))
        ids = {row["listing_id"] for rows in usage.values() for row in rows}
        slugs = dict(Listing.objects.filter(pk__in=ids).values_list("pk", "slug"))
        data = {
            "api_daily": _with_product(usage["api_daily"], slugs, period="day"),
            "api_monthly": _with_product(usage["api_monthly"], slugs, period="month"),
            "downloads_daily": _with_product(usage["downloads_daily"], slugs, period="day"),
            "downloads_monthly": _with_product(usage["downloads_monthly"], slugs, period="month"),
        }
        return Response(UsageSerializer(data).data)
