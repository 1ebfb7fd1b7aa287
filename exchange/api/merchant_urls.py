"""The merchant's money side of the REST API: sales, payouts, statements, aggregated usage (under /api/v1/merchant/)."""

app_name = "merchant_money_api"

urlpatterns = []
