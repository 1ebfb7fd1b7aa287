"""Output serializers of the merchant's money API: sales, payouts, statements, aggregated usage.

Nothing here names a buyer: a sale shows the order, never who placed it; usage is counts per product and day.
"""

from rest_framework import serializers

from exchange.models import Order, Payout
from listings.api.merchant_serializers import ProductRefSerializer


class SaleSerializer(serializers.ModelSerializer):
    """An order of one of the merchant's products. Amounts are minor units of ``currency``."""

    reference = serializers.CharField(read_only=True)
    product = ProductRefSerializer(source="listing", read_only=True)

    class Meta:
        model = Order
        fields = [
            "public_id",
            "reference",
            "product",
            "plan_kind",
            "amount",
            "currency",
            "service_fee",
            "refunded_amount",
            "status",
            "created_at",
            "paid_at",
            "delivered_at",
            "settled_at",
        ]
        read_only_fields = fields


class PayoutSerializer(serializers.ModelSerializer):
    """A payout of a settlement run to the merchant: ``pending``, ``sent`` or ``failed`` (paid again by a later run)."""

    run = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Payout
        fields = ["id", "run", "amount", "currency", "status", "gateway_reference", "created_at", "sent_at"]
        read_only_fields = fields


class StatementTotalsSerializer(serializers.Serializer):
    """One currency's statement in minor units: opening + sales - fees - refunds - disputes
    - (payouts + payouts_returned) + other == closing."""

    currency = serializers.CharField()
    opening = serializers.IntegerField(help_text="What the exchange owed the merchant when the period began.")
    sales = serializers.IntegerField(help_text="Gross sales settled in the period.")
    fees = serializers.IntegerField(help_text="Platform fees (negative shares come back with refunds).")
    refunds = serializers.IntegerField(help_text="Refunds after settlement.")
    disputes = serializers.IntegerField(help_text="Disputes after settlement, net of disputes won.")
    payouts = serializers.IntegerField(help_text="Payouts booked in the period.")
    payouts_returned = serializers.IntegerField(
        help_text="Payouts the gateway refused, owed to the merchant again (zero or negative, under the payouts)."
    )
    other = serializers.IntegerField(help_text="Other adjustments.")
    closing = serializers.IntegerField(help_text="What the exchange owed the merchant when the period ended.")
    payouts_sent = serializers.IntegerField(help_text="Payouts sent through the gateway in the period.")
    lines = serializers.IntegerField(help_text="Ledger entries behind the figures.")


class PeriodSerializer(serializers.Serializer):
    first = serializers.DateField(help_text="The first day, included.")
    last = serializers.DateField(help_text="The last day, included.")


class StatementSerializer(serializers.Serializer):
    merchant = serializers.CharField(source="merchant.slug", read_only=True)
    period = PeriodSerializer(read_only=True)
    totals = StatementTotalsSerializer(many=True, read_only=True, help_text="One entry per currency ever booked.")


class ApiUsageDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    product = ProductRefSerializer()
    calls = serializers.IntegerField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()
    buyers = serializers.IntegerField(help_text="Distinct buyers (a count; never who).")


class ApiUsageMonthSerializer(serializers.Serializer):
    month = serializers.CharField(help_text="YYYY-MM")
    product = ProductRefSerializer()
    calls = serializers.IntegerField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()
    units = serializers.IntegerField()
    amount = serializers.IntegerField(help_text="Billed, in minor units of `currency` (metered plans).")
    currency = serializers.CharField(allow_blank=True)
    buyers = serializers.IntegerField()


class DownloadsDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    product = ProductRefSerializer()
    downloads = serializers.IntegerField()
    completed = serializers.IntegerField()
    bytes = serializers.IntegerField()
    buyers = serializers.IntegerField()


class DownloadsMonthSerializer(serializers.Serializer):
    month = serializers.CharField(help_text="YYYY-MM")
    product = ProductRefSerializer()
    downloads = serializers.IntegerField()
    completed = serializers.IntegerField()
    bytes = serializers.IntegerField()
    buyers = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    """Use of the merchant's products (UTC): data API calls per day (30 days) and per month (12, as of the last
    hourly aggregation), downloads likewise. Aggregates only."""

    api_daily = ApiUsageDaySerializer(many=True)
    api_monthly = ApiUsageMonthSerializer(many=True)
    downloads_daily = DownloadsDaySerializer(many=True)
    downloads_monthly = DownloadsMonthSerializer(many=True)
