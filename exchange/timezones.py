"""Show dates and times in the user's own time zone (issue 8).

The browser reports its IANA zone in the ``tz`` cookie (``static/js/timezone.js`` sets it from
``Intl.DateTimeFormat().resolvedOptions().timeZone``). With ``USE_TZ`` on, Django converts every aware
datetime to the *current* time zone when a template renders it, so activating the zone per request is all the
pages need. The cookie is user input: a name ``zoneinfo`` does not know is ignored and the page keeps
``settings.TIME_ZONE``.
"""

import functools
import zoneinfo

from django.utils import timezone

TIMEZONE_COOKIE = "tz"
# IANA names are short ("America/Argentina/ComodRivadavia" is among the longest); anything longer is not a zone
# and is refused before it reaches the filesystem lookup zoneinfo does.
_MAX_NAME_LENGTH = 64


@functools.cache
def _known_zones() -> frozenset[str]:
    """Every IANA zone name this machine knows (read once: listing them walks the tz database)."""
    return frozenset(zoneinfo.available_timezones())


def zone_from_name(name: str | None) -> zoneinfo.ZoneInfo | None:
    """The time zone called ``name``, or None when ``name`` is empty or not a known IANA zone.

    Checked against the list of known zones rather than by trying ``ZoneInfo(name)``: a cookie may hold a path
    ("../etc/passwd"), a directory of the database ("Asia") or one of its data files ("zone.tab"), which the
    constructor would try to open.
    """
    if not name or len(name) > _MAX_NAME_LENGTH or name not in _known_zones():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


class TimezoneMiddleware:
    """Activates the zone named in the ``tz`` cookie for the request; without a valid one, ``TIME_ZONE`` applies."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        zone = zone_from_name(request.COOKIES.get(TIMEZONE_COOKIE))
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            # The thread serves other requests next: never let one user's zone leak into them.
            timezone.deactivate()
