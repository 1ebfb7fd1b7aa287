"""The account's side of the REST API: API keys, outbound webhook endpoints, notifications."""

app_name = "account_api"

urlpatterns = []
