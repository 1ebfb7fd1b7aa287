app_name = "data_api"

urlpatterns: list = []
