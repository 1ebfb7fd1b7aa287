"""The language switch (issue 8): ``POST /i18n/setlang/`` with ``language`` and ``next``, as base.html's form sends.

Django's own ``set_language`` accepts any code it has *a* catalogue for (its own French, say), not only the
site's ``LANGUAGES``: a tampered form could store a cookie the site does not speak, and a user who had chosen
Chinese would silently fall back to English. This view admits only the languages in ``settings.LANGUAGES``
(a regional variant such as ``zh-CN`` maps to the one offered, ``zh-hans``); anything else is refused with a
message and leaves the user's choice as it was. The accepted code is handed to Django's view, which stores it
in the language cookie and redirects to ``next`` when that is a safe URL.
"""

import re

from django.conf import settings
from django.contrib import messages
from django.urls import path
from django.utils.translation import get_supported_language_variant, gettext
from django.views.i18n import set_language as django_set_language

# A BCP 47 style tag ("zh-Hans", "en-US"); anything else is refused before any lookup, which would otherwise
# read "zh-hans'><script>" as a variant of "zh". 20 characters cover a language, script and region.
_CODE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8}){0,2}")
_MAX_CODE_LENGTH = 20


def offered_language(code: str) -> str | None:
    """The code from ``settings.LANGUAGES`` that ``code`` asks for, or None when the site does not offer it."""
    if len(code) > _MAX_CODE_LENGTH or not _CODE.fullmatch(code):
        return None
    try:
        supported = get_supported_language_variant(code.lower())
    except LookupError:
        return None
    return supported if supported in dict(settings.LANGUAGES) else None


def set_language(request):
    """Store the chosen language (one the site offers) and go back to ``next``; refuse any other code."""
    if request.method == "POST" and "language" in request.POST:
        request.POST = request.POST.copy()
        code = offered_language(request.POST["language"])
        if code is None:
            # Without a language Django's view only redirects: the cookie keeps the previous choice.
            del request.POST["language"]
            messages.error(request, gettext("That language is not available."))
        else:
            request.POST["language"] = code
    return django_set_language(request)


urlpatterns = [path("setlang/", set_language, name="set_language")]
