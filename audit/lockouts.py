"""django-axes glue: one username for both login forms, and no lockout check without a request."""

from axes.backends import AxesStandaloneBackend


def login_username(request, credentials) -> str | None:
    """The account an attempt is for, lower-cased, from allauth's form ("login"/"email") or the admin's ("username").

    Both forms must count against the same name, or an attacker could alternate forms to double the guesses.
    """
    credentials = credentials or {}
    for field in ("email", "username", "login"):
        value = credentials.get(field)
        if value:
            return str(value).strip().lower()
    data = getattr(request, "POST", None) or {}
    for field in ("login", "username", "email"):
        value = data.get(field)
        if value:
            return str(value).strip().lower()
    return None


class AxesRequestBackend(AxesStandaloneBackend):
    """Axes' lockout check for every login made over HTTP.

    Every web login (allauth's, the admin's) passes the request to ``authenticate``; calls without one are
    code authenticating on its own behalf (the test client's ``login``, shell sessions), where there is no
    attacker to lock out, so they fall through to the next backend instead of raising.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
