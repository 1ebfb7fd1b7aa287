"""Who is acting, and from where, for the request being served.

Services never see the request; the middleware puts the client's address and
user here for the length of one request, and audit_record reads them. Tasks and
commands run outside any request: there the actor is whoever the service was
given and the address is empty.
"""

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    ip: str | None = None
    request: object | None = None  # the HttpRequest; its (lazy) user is read only when an event is recorded


_current: ContextVar[RequestContext | None] = ContextVar("audit_request_context", default=None)


def current() -> RequestContext | None:
    return _current.get()


def set_current(ctx: RequestContext | None):
    """Set the context; returns the token to pass to :func:`reset`."""
    return _current.set(ctx)


def reset(token) -> None:
    _current.reset(token)
