"""Merchant statements (``/console/statements/``, page and CSV) and the staff reconciliation report page."""

import csv

from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import render

from exchange.services.reconciliation import reconciliation_report, reconciliation_since
from exchange.services.statements import (
    StatementPeriodError,
    statement_build,
    statement_csv_rows,
    statement_entries,
    statement_lines_for_page,
    statement_period,
)
from merchants.selectors import merchant_for_user

PER_PAGE = 50


class _Echo:
    """A file-like sink for csv.writer that hands each formatted row straight back (for streaming)."""

    def write(self, value: str) -> str:
        return value


def _merchant_or_404(request):
    # Anonymous visitors and buyers get the same 404 as a page that does not exist: nothing leaks.
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        raise Http404("You are not a merchant.")
    return merchant


def _period_or_400(request, merchant, template: str):
    try:
        return statement_period(params=request.GET), None
    except StatementPeriodError as exc:
        response = render(request, template, {"merchant": merchant, "error": str(exc)}, status=400)
        return None, response


def statement_page(request):
    """GET: the merchant's statement for ``?from=&to=`` (default this month), lines paginated by ``?page=``."""
    merchant = _merchant_or_404(request)
    period, error = _period_or_400(request, merchant, "exchange/statement.html")
    if error:
        return error
    statement = statement_build(merchant=merchant, period=period)
    page = Paginator(statement_entries(merchant=merchant, period=period), PER_PAGE).get_page(request.GET.get("page"))
    lines = statement_lines_for_page(merchant=merchant, entries=page.object_list)
    return render(
        request,
        "exchange/statement.html",
        {
            "merchant": merchant,
            "statement": statement,
            "period": period,
            "page": page,
            "lines": lines,
            "query": f"from={period.first}&to={period.last}",
        },
    )


def statement_csv(request):
    """GET: the same statement as a streamed UTF-8 CSV (header row, lines, then totals per currency)."""
    merchant = _merchant_or_404(request)
    period, error = _period_or_400(request, merchant, "exchange/statement.html")
    if error:
        return error
    writer = csv.writer(_Echo())
    rows = statement_csv_rows(merchant=merchant, period=period)
    response = StreamingHttpResponse((writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8")
    filename = f"statement-{merchant.pk}-{period.first}-{period.last}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@staff_member_required
def reconciliation_page(request):
    """GET: the reconciliation report for ``?gateway=`` (default the configured one) from ``?since=YYYY-MM-DD``."""
    raw_since, gateway = request.GET.get("since", "").strip(), request.GET.get("gateway", "").strip()
    context = {"title": "Reconciliation with the payment gateway", "since": raw_since, "gateway": gateway}
    try:
        since = reconciliation_since(raw_since)
        context["report"] = reconciliation_report(gateway=gateway or None, since=since)
    except ValueError as exc:
        context["error"] = str(exc)
        return render(request, "admin/exchange/reconciliation.html", context, status=400)
    return render(request, "admin/exchange/reconciliation.html", context)
