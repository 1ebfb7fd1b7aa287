"""Puts the request's client address and user where audit_record can find them."""

from ipaddress import ip_address

from audit.context import RequestContext, reset, set_current


def client_ip(request) -> str | None:
    """REMOTE_ADDR, as the proxy in front (nginx, deploy/) sets it; None when it is not an address."""
    raw = (request.META.get("REMOTE_ADDR") or "").strip()
    try:
        return str(ip_address(raw))
    except ValueError:
        return None


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # The user is read by audit_record when it records (request.user is lazy), so API-key users set later by
        # DRF are seen too: the middleware keeps the request, not a snapshot of its user.
        token = set_current(RequestContext(ip=client_ip(request), request=request))
        try:
            return self.get_response(request)
        finally:
            reset(token)
