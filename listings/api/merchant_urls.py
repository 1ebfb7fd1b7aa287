"""The merchant's side of the REST API: products, versions, review, pricing, sales, payouts, statements, usage."""

app_name = "merchant_api"

urlpatterns = []
