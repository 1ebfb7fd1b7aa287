from django.db.models import Prefetch, QuerySet, prefetch_related_objects
from django.http import Http404

from listings.choices import ListingStatus, PlanKind, ProfileStatus
from listings.models import DataFile, Listing, ListingVersion, PricingPlan
from merchants.selectors import merchant_is_member


def listings_published() -> QuerySet[Listing]:
    return Listing.objects.filter(status=ListingStatus.PUBLISHED).select_related("merchant")


def listing_visible(*, slug: str, user) -> Listing:
    """The listing with ``slug`` if ``user`` may see it, else Http404.

    Published listings are public; others only to the merchant's members and staff.
    """
    listing = Listing.objects.select_related("merchant", "category").filter(slug=slug).first()
    if listing is None:
        raise Http404("No such data product.")
    if listing.is_published or (user.is_authenticated and user.is_staff):
        return listing
    if merchant_is_member(merchant=listing.merchant, user=user):
        return listing
    raise Http404("No such data product.")


def listing_for_member(*, pk: int, user) -> Listing:
    """A listing the user may edit (a member of its merchant), else Http404."""
    listing = Listing.objects.select_related("merchant").filter(pk=pk).first()
    if listing is None or not merchant_is_member(merchant=listing.merchant, user=user):
        raise Http404("No such data product.")
    return listing


def listing_active_plan(*, listing: Listing) -> PricingPlan | None:
    """The active one-time plan: the one the checkout sells (other kinds are not charged yet)."""
    return listing.plans.filter(is_active=True, kind=PlanKind.ONE_TIME).order_by("amount", "pk").first()


# The order plans are shown in, side by side: cheapest commitment first.
PLAN_KIND_ORDER = {PlanKind.FREE: 0, PlanKind.ONE_TIME: 1, PlanKind.SUBSCRIPTION: 2, PlanKind.METERED: 3}


def listing_plans(*, listing: Listing) -> list[PricingPlan]:
    """The listing's active plans for display, by kind then price.

    Uses ``listing.plans`` as prefetched when it is (no query then).
    """
    plans = [plan for plan in listing.plans.all() if plan.is_active]
    return sorted(plans, key=lambda plan: (PLAN_KIND_ORDER.get(plan.kind, 9), plan.amount, plan.pk))


def version_columns(*, version: ListingVersion) -> list[dict]:
    """The profiled columns of a version's files, first occurrence of each name wins.

    Uses ``version.files`` as prefetched when it is.
    """
    columns, seen = [], set()
    for data_file in version.files.all():
        if data_file.profile_status != ProfileStatus.DONE:
            continue
        for column in data_file.columns:
            name = column.get("name")
            if name and name not in seen:
                seen.add(name)
                columns.append(column)
    return columns


def datafile_sample_table(*, data_file: DataFile) -> tuple[list[str], list[list]]:
    """The file's sample rows as (header, rows) aligned on its profiled columns.

    Rows may be stored as lists (in column order) or as objects keyed by column name.
    """
    header = [column.get("name", "") for column in data_file.columns]
    rows = []
    for row in data_file.sample_rows or []:
        if isinstance(row, dict):
            if not header:
                header = list(row)
            rows.append([row.get(name) for name in header])
        elif isinstance(row, (list, tuple)):
            rows.append(list(row))
    return header, rows


def listing_page(*, listing: Listing, published_only: bool = True) -> dict:
    """What the public product page shows, read in a fixed number of queries.

    Loads the tags, the active plans and the versions (only the published ones
    when ``published_only``) with their files onto ``listing``, and returns:
    ``plans`` (display order), ``versions`` (newest first), ``latest`` (the
    newest version or None), ``columns`` (its profiled columns, each with the
    merchant's ``description`` from the data dictionary) and ``sample``
    (``(header, rows)`` from its first profiled file, or None).
    """
    versions = ListingVersion.objects.order_by("-created_at", "-pk").prefetch_related("files")
    if published_only:
        versions = versions.filter(published_at__isnull=False)
    prefetch_related_objects(
        [listing],
        "tags",
        Prefetch("plans", queryset=PricingPlan.objects.filter(is_active=True)),
        Prefetch("versions", queryset=versions),
    )
    version_list = list(listing.versions.all())
    latest = version_list[0] if version_list else None
    dictionary = listing.data_dictionary or {}
    columns, sample = [], None
    if latest is not None:
        columns = [
            {**column, "description": dictionary.get(column["name"], "")} for column in version_columns(version=latest)
        ]
        profiled = [f for f in latest.files.all() if f.profile_status == ProfileStatus.DONE and f.sample_rows]
        if profiled:
            sample = datafile_sample_table(data_file=profiled[0])
    return {
        "plans": listing_plans(listing=listing),
        "versions": version_list,
        "latest": latest,
        "columns": columns,
        "sample": sample,
    }


def listing_manage_versions(*, listing: Listing) -> list[dict]:
    """Every version of the listing, newest first, for its merchant's console.

    ``[{"version", "files": [{"file", "columns", "sample": (header, rows)}]}]``;
    two queries whatever the number of versions and files.
    """
    versions = listing.versions.order_by("-created_at", "-pk").prefetch_related("files")
    return [
        {
            "version": version,
            "files": [
                {
                    "file": data_file,
                    "columns": [_column_view(column) for column in data_file.columns],
                    "sample": datafile_sample_table(data_file=data_file),
                }
                for data_file in version.files.all()
            ],
        }
        for version in versions
    ]


def _column_view(column: dict) -> dict:
    """A profiled column with its null ratio as a percentage for display ("12.5%", "" when unknown)."""
    ratio = column.get("null_ratio")
    percent = ""
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        percent = f"{ratio * 100:.1f}".removesuffix(".0") + "%"
    return {**column, "null_percent": percent}
