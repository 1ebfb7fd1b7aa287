"""Response headers the exchange adds to every answer (issue 9)."""

import functools

from django.conf import settings


def _policy_header() -> str:
    """The header the policy goes in: report-only (``settings.CSP_REPORT_ONLY``) or enforced."""
    if getattr(settings, "CSP_REPORT_ONLY", False):
        return "Content-Security-Policy-Report-Only"
    return "Content-Security-Policy"


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
            header = _policy_header()
            if "Content-Security-Policy" not in response.headers and header not in response.headers:
                response.headers[header] = policy
        return response


def _with_inline_styles(policy: str) -> str:
    """``policy`` with ``'unsafe-inline'`` added to its style-src (a style-src is added when it has none)."""
    directives = [part.strip() for part in policy.split(";") if part.strip()]
    for i, directive in enumerate(directives):
        name, _, sources = directive.partition(" ")
        if name.lower() == "style-src":
            if "'unsafe-inline'" not in sources.split():
                directives[i] = f"{directive} 'unsafe-inline'"
            break
    else:
        directives.append("style-src 'self' 'unsafe-inline'")
    return "; ".join(directives)


def inline_styles_allowed(view):
    """Let one view's page use inline styles (Swagger UI and Redoc inject them); the rest of the policy stays.

    The middleware keeps a policy the view has set, so only the decorated pages carry the relaxed one.
    """

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        policy = getattr(settings, "CSP_POLICY", "")
        if policy:
            response.headers[_policy_header()] = _with_inline_styles(policy)
        return response

    return wrapped
