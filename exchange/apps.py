from django.apps import AppConfig


class ExchangeConfig(AppConfig):
    name = "exchange"
    verbose_name = "Exchange (trading, delivery, settlement)"

    def ready(self):
        import common.db  # noqa: F401  (registers the any_of lookup before any query uses it)
