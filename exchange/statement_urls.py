from django.urls import path

from exchange import statement_views

app_name = "statements"

urlpatterns = [
    path("console/statements/", statement_views.statement_page, name="page"),
    path("console/statements.csv", statement_views.statement_csv, name="csv"),
    path("console/reconciliation/", statement_views.reconciliation_page, name="reconciliation"),
]
