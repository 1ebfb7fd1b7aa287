"""The buyer's side of the REST API: orders, access requests, entitlements, deliveries, receipts, certificates."""

app_name = "buyer_api"

urlpatterns = []
