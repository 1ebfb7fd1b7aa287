"""Input and output serializers of the buyer's REST API (``/api/v1/``).

Inputs only check shape (types, lengths); the services decide everything else. Outputs never carry
other people's data: no actor emails on timelines, no merchant decider on access requests. Links are
absolute URLs built from the request.
"""

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from exchange.choices import OrderStatus
from exchange.models import AccessRequest, Delivery, Entitlement, Order, OrderStatusHistory, TransactionCertificate
from exchange.services.entitlements import entitlement_is_usable

# --- inputs ---------------------------------------------------------------------------------------------------------


class OrderCreateInput(serializers.Serializer):
    """A purchase. Creating the order accepts the product's licence as the catalog shows it (``licence``, and
    ``licence_terms`` for a custom one); the order records it (``licence``, ``licence_terms_sha256``,
    ``licence_accepted_at``)."""

    listing = serializers.SlugField(max_length=200, help_text="The data product's slug (as in the catalog).")
    plan = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="A pricing plan of that product (its id); without it the one-time plan is bought.",
    )


class AccessRequestCreateInput(serializers.Serializer):
    listing = serializers.SlugField(max_length=200, help_text="The data product's slug.")
    organisation = serializers.CharField(max_length=200, help_text="The organisation that will use the data.")
    use_scenario = serializers.CharField(
        max_length=5000, help_text="What the data will be used for (at least 20 characters)."
    )


# --- shared pieces ----------------------------------------------------------------------------------------------------


def _absolute(request, path: str | None) -> str | None:
    if not path:
        return None
    return request.build_absolute_uri(path) if request is not None else path


class ListingRefSerializer(serializers.Serializer):
    slug = serializers.CharField()
    title = serializers.CharField()


class PlanRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    name = serializers.CharField(source="display_name")
    amount = serializers.IntegerField(help_text="The plan's price in minor units (per interval or unit).")
    currency = serializers.CharField()
    interval = serializers.CharField(help_text="For subscriptions: month or year; empty otherwise.")


# --- orders -----------------------------------------------------------------------------------------------------------


class TimelineEntrySerializer(serializers.ModelSerializer):
    """One move of the order's status. The actor is never shown."""

    # "from" is a Python keyword, hence the explicit declaration below.
    to = serializers.CharField(source="to_status")
    reason = serializers.CharField()
    at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = OrderStatusHistory
        fields = ["to", "reason", "at"]

    def get_fields(self):
        fields = super().get_fields()
        from_field = serializers.CharField(
            source="from_status", allow_null=True, help_text="null for the first entry (the order placed)."
        )
        return {"from": from_field, **fields}

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["from"] = data["from"] or None
        return data


class OrderLinksSerializer(serializers.Serializer):
    self = serializers.URLField()
    checkout = serializers.URLField(allow_null=True, help_text="The payment page while the order awaits payment.")
    certificate = serializers.URLField(allow_null=True, help_text="The transaction certificate once settled.")


class OrderSerializer(serializers.ModelSerializer):
    reference = serializers.CharField(read_only=True)
    status_label = serializers.CharField(source="get_status_display", read_only=True)
    listing = ListingRefSerializer(read_only=True)
    plan = PlanRefSerializer(read_only=True)
    amount = serializers.IntegerField(read_only=True, help_text="The total charged, minor units (fee included).")
    service_fee = serializers.IntegerField(read_only=True, help_text="The buyer service fee included in amount.")
    refunded_amount = serializers.IntegerField(read_only=True)
    certificate_number = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = Order
        fields = [
            "public_id",
            "reference",
            "status",
            "status_label",
            "listing",
            "plan",
            "amount",
            "service_fee",
            "refunded_amount",
            "currency",
            "licence",
            "licence_terms_sha256",
            "licence_accepted_at",
            "created_at",
            "paid_at",
            "delivered_at",
            "settled_at",
            "certificate_number",
            "links",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_certificate_number(self, order) -> str | None:
        certificate = _certificate_of(order)
        return certificate.number if certificate is not None else None

    @extend_schema_field(OrderLinksSerializer)
    def get_links(self, order) -> dict:
        request = self.context.get("request")
        certificate = _certificate_of(order)
        checkout = order.checkout_url if order.status == OrderStatus.PENDING_PAYMENT and order.checkout_url else None
        return {
            "self": _absolute(request, reverse("buyer_api:order-detail", args=[order.public_id])),
            "checkout": _absolute(request, checkout),
            "certificate": _absolute(
                request, reverse("certificates:api_detail", args=[certificate.number]) if certificate else None
            ),
        }


def _certificate_of(order: Order) -> TransactionCertificate | None:
    # The reverse one-to-one raises when there is none; select_related("certificate") makes it free.
    try:
        return order.certificate
    except TransactionCertificate.DoesNotExist:
        return None


class OrderDetailSerializer(OrderSerializer):
    timeline = TimelineEntrySerializer(source="history", many=True, read_only=True)

    class Meta(OrderSerializer.Meta):
        fields = [*OrderSerializer.Meta.fields, "timeline"]
        read_only_fields = fields


class CheckoutSerializer(serializers.Serializer):
    checkout_url = serializers.URLField(help_text="Send the buyer here to pay.")


# --- access requests ------------------------------------------------------------------------------------------------


class AccessRequestSerializer(serializers.ModelSerializer):
    listing = ListingRefSerializer(read_only=True)
    status_label = serializers.CharField(source="get_status_display", read_only=True)

    class Meta:
        model = AccessRequest
        fields = [
            "id",
            "listing",
            "organisation",
            "use_scenario",
            "status",
            "status_label",
            "created_at",
            "expires_at",
            "decided_at",
            "decision_note",
        ]
        read_only_fields = fields


# --- entitlements -----------------------------------------------------------------------------------------------------


class EntitlementSerializer(serializers.ModelSerializer):
    listing = ListingRefSerializer(read_only=True)
    plan = PlanRefSerializer(read_only=True, allow_null=True)
    order = serializers.UUIDField(source="order.public_id", read_only=True)
    usable = serializers.SerializerMethodField(help_text="Whether it gives access now (active, within validity).")

    class Meta:
        model = Entitlement
        fields = [
            "id",
            "status",
            "usable",
            "listing",
            "plan",
            "order",
            "version_access",
            "scenario",
            "granted_at",
            "valid_until",
            "revoked_at",
        ]
        read_only_fields = fields

    def get_usable(self, entitlement) -> bool:
        return entitlement_is_usable(entitlement)


# --- deliveries ---------------------------------------------------------------------------------------------------


class DeliveryFileSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    format = serializers.CharField()
    download_url = serializers.URLField(
        allow_null=True, help_text="A signed link (expires); null unless the delivery may be downloaded now."
    )


class DeliverySerializer(serializers.ModelSerializer):
    entitlement = serializers.IntegerField(source="entitlement_id", read_only=True)
    order = serializers.UUIDField(source="entitlement.order.public_id", read_only=True)
    listing = ListingRefSerializer(source="entitlement.listing", read_only=True)
    version_label = serializers.CharField(source="version.label", read_only=True)
    version_published_at = serializers.DateTimeField(source="version.published_at", read_only=True, allow_null=True)
    files = serializers.SerializerMethodField()
    receipt_url = serializers.SerializerMethodField()

    class Meta:
        model = Delivery
        fields = [
            "id",
            "status",
            "entitlement",
            "order",
            "listing",
            "version_label",
            "version_published_at",
            "prepared_at",
            "ready_at",
            "confirmed_at",
            "files",
            "receipt_sha256",
            "receipt_url",
        ]
        read_only_fields = fields

    @extend_schema_field(DeliveryFileSerializer(many=True))
    def get_files(self, delivery) -> list[dict]:
        request = self.context.get("request")
        links = self.context["links"](delivery)
        return [
            {
                "id": f.pk,
                "name": f.original_name,
                "size": f.size,
                "sha256": f.sha256,
                "format": f.format,
                "download_url": _absolute(request, links.get(f.pk)),
            }
            for f in sorted(delivery.version.files.all(), key=lambda f: f.pk)
        ]

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_receipt_url(self, delivery) -> str | None:
        if not delivery.receipt_sha256:
            return None
        return _absolute(self.context.get("request"), reverse("buyer_api:delivery-receipt", args=[delivery.pk]))


# --- certificates ---------------------------------------------------------------------------------------------------


class BuyerCertificateSerializer(serializers.ModelSerializer):
    order = serializers.UUIDField(source="order.public_id", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = TransactionCertificate
        fields = ["number", "order", "issued_at", "key_id", "url"]
        read_only_fields = fields

    @extend_schema_field(serializers.URLField())
    def get_url(self, certificate) -> str:
        return _absolute(self.context.get("request"), reverse("certificates:api_detail", args=[certificate.number]))
