"""Timestamps of signed documents shown in the reader's time zone (issue 8).

Receipts and transaction certificates keep their timestamps as ISO 8601 text in UTC: that text is what is
hashed and signed, so the JSON never changes. The HTML pages show the same instants converted to the active
time zone (the ``tz`` cookie, see exchange.timezones) with the zone's abbreviation, so nobody misreads them.
"""

import datetime

from django import template
from django.utils import dateformat, timezone
from django.utils.dateparse import parse_datetime

register = template.Library()

MOMENT_FORMAT = "Y-m-d H:i:s T"


@register.filter
def local_moment(value, fmt: str = MOMENT_FORMAT):
    """``{{ receipt.issued_at|local_moment }}``: an aware ISO timestamp (or datetime) in the active zone.

    Anything that is not an aware timestamp (None, an empty string, malformed text) is returned unchanged, so
    a page still shows exactly what the document says.
    """
    moment = value
    if isinstance(value, str):
        try:
            moment = parse_datetime(value)
        except ValueError:
            return value
    if not isinstance(moment, datetime.datetime) or timezone.is_naive(moment):
        return value
    return dateformat.format(timezone.localtime(moment), fmt)
