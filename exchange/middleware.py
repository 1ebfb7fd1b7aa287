"""Response headers the exchange adds to every answer (issue 9)."""

from django.conf import settings


class ContentSecurityPolicyMiddleware:
    """Adds the Content-Security-Policy header (``settings.CSP_POLICY``) to every response.

    Outside production it is sent as Content-Security-Policy-Report-Only (``settings.CSP_REPORT_ONLY``), so a
    violation is reported in the browser's console instead of breaking the page. A view that set its own
    policy keeps it; an empty policy sends nothing.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        policy = getattr(settings, "CSP_POLICY", "")
        if policy:
            header = (
                "Content-Security-Policy-Report-Only"
                if getattr(settings, "CSP_REPORT_ONLY", False)
                else "Content-Security-Policy"
            )
            if "Content-Security-Policy" not in response.headers and header not in response.headers:
                response.headers[header] = policy
        return response
