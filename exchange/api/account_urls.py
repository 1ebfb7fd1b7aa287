"""The account's exchange side of the REST API: outbound webhook endpoints, notifications (under /api/v1/account/)."""

app_name = "account_exchange_api"

urlpatterns = []
