"""The web catalog's rendered results, cached per catalog generation.

The catalog page is the busiest page of the exchange and the same for everyone: its results (the cards, the facet
counts, the sort menu and the page links) depend only on the published catalog, the filters, the language and the
time zone. ``listings.views.catalog`` renders them once per combination and keeps the HTML in the shared cache, so
the next visitor with the same filters costs two cache reads instead of the search query and the card rendering.

Freshness: every cached entry carries the catalog's **generation** in its key, a counter in the shared cache that
``catalog_changed`` bumps whenever something the catalog shows is saved or deleted (the signal receivers in
``listings.apps``): a listing, a version, a plan, a category, a tag, a merchant, and (for the UPDATE that sends
no signal) ``listings.search.listing_refresh_catalog_fields``. It is bumped at once and again when
the transaction commits, so a page read between the change and its commit (and cached under the new generation
with the old rows) is orphaned by the second bump. Anything that changes the catalog without a model signal
(a queryset ``update``, raw SQL) is bounded by the entries' lifetime, ``CATALOG_CACHE_SECONDS`` (30 s by default;
0 turns the cache off), which also bounds how stale "updated … ago" can read.

If the counter itself is lost (the cache was flushed or evicted it), it starts again from the current time in
nanoseconds, never from a value an older entry may still carry.
"""

import hashlib
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.utils.translation import get_language

GENERATION_KEY = "catalog:generation"


def catalog_generation() -> int:
    """The current generation of the published catalog (created on first use)."""
    generation = cache.get(GENERATION_KEY)
    if generation is None:
        cache.add(GENERATION_KEY, time.time_ns(), timeout=None)
        generation = cache.get(GENERATION_KEY)
    return int(generation)


def catalog_generation_bump() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:  # no counter yet (or evicted): start one newer than any entry's
        cache.add(GENERATION_KEY, time.time_ns(), timeout=None)


def catalog_changed(**_signal_kwargs) -> None:
    """Something the catalog shows changed: cached results stop being served, now and when the change commits."""
    catalog_generation_bump()
    transaction.on_commit(catalog_generation_bump)


def results_key(*, params: dict[str, str], cursor: str) -> str:
    """The cache key of the results for ``params`` (the raw filters in use) and ``cursor``, in the current catalog
    generation, language and time zone."""
    parts = [f"{name}={value}" for name, value in sorted(params.items())]
    parts.append(f"cursor={cursor}")
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    zone = timezone.get_current_timezone_name()
    return f"catalog:results:{catalog_generation()}:{get_language()}:{zone}:{digest}"


def cached_results(*, params: dict[str, str], cursor: str, render: Callable[[], dict]) -> dict:
    """The results for ``params`` and ``cursor``: from the cache, or ``render()``-ed and kept for the next visitor."""
    seconds = settings.CATALOG_CACHE_SECONDS
    if seconds <= 0:
        return render()
    key = results_key(params=params, cursor=cursor)
    results = cache.get(key)
    if results is None:
        results = render()
        cache.set(key, results, timeout=seconds)
    return results
