"""Machine-readable catalog: schema.org Dataset JSON-LD per product and a DCAT export for harvesters.

``listing_jsonld`` describes one product the way search engines read it
(schema.org ``Dataset``); the listing page embeds it with
``{% listing_jsonld listing %}``. ``catalog_dcat`` serves the whole catalog as
a ``dcat:Catalog`` (JSON-LD) for open-data portals, in pages of
``DCAT_PAGE_SIZE`` datasets linked with Hydra (``hydra:next``), so one request
never serialises the whole catalog.
"""

from decimal import Decimal

from django.conf import settings
from django.http import JsonResponse
from django.urls import reverse

from common.money import CURRENCY_EXPONENT
from listings.choices import FileFormat, Licence, PlanKind, UpdateFrequency
from listings.models import Listing
from listings.selectors import listings_published

DCAT_PAGE_SIZE = 100

LICENCE_URLS = {
    Licence.CC_BY_4: "https://creativecommons.org/licenses/by/4.0/",
    Licence.CC_BY_SA_4: "https://creativecommons.org/licenses/by-sa/4.0/",
    Licence.CC_BY_NC_4: "https://creativecommons.org/licenses/by-nc/4.0/",
    Licence.CC_BY_ND_4: "https://creativecommons.org/licenses/by-nd/4.0/",
    Licence.CC0: "https://creativecommons.org/publicdomain/zero/1.0/",
    Licence.ODBL: "https://opendatacommons.org/licenses/odbl/1-0/",
    Licence.ODC_BY: "https://opendatacommons.org/licenses/by/1-0/",
    Licence.PDDL: "https://opendatacommons.org/licenses/pddl/1-0/",
}
MEDIA_TYPES = {
    FileFormat.CSV: "text/csv",
    FileFormat.TSV: "text/tab-separated-values",
    FileFormat.JSONL: "application/jsonl",
    FileFormat.PARQUET: "application/vnd.apache.parquet",
}
# The EU Publications Office frequency vocabulary, which DCAT-AP expects.
_FREQUENCY_BASE = "http://publications.europa.eu/resource/authority/frequency/"
FREQUENCY_URIS = {
    UpdateFrequency.ONCE: "NEVER",
    UpdateFrequency.REALTIME: "UPDATE_CONT",
    UpdateFrequency.DAILY: "DAILY",
    UpdateFrequency.WEEKLY: "WEEKLY",
    UpdateFrequency.MONTHLY: "MONTHLY",
    UpdateFrequency.QUARTERLY: "QUARTERLY",
    UpdateFrequency.YEARLY: "ANNUAL",
    UpdateFrequency.IRREGULAR: "IRREG",
}
DCAT_CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "hydra": "http://www.w3.org/ns/hydra/core#",
}


def _absolute(path: str) -> str:
    return settings.SITE_URL + path


def listing_url(listing: Listing) -> str:
    return _absolute(reverse("listings:detail", args=[listing.slug]))


def licence_url(listing: Listing) -> str:
    """A URL for the licence: the public licence's deed, or the product page's terms when custom."""
    return LICENCE_URLS.get(listing.licence) or f"{listing_url(listing)}#licence"


def _major_units(amount: int, currency: str) -> str:
    exponent = CURRENCY_EXPONENT.get(currency, 2)
    return str(Decimal(amount).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent)))


def _temporal_interval(listing: Listing) -> str | None:
    # ISO 8601 interval; ".." marks an open end (schema.org's convention).
    if not (listing.temporal_start or listing.temporal_end):
        return None
    start = listing.temporal_start.isoformat() if listing.temporal_start else ".."
    end = listing.temporal_end.isoformat() if listing.temporal_end else ".."
    return f"{start}/{end}"


def _keywords(listing: Listing) -> list[str]:
    # tags.all() uses a prefetch when the caller made one.
    return [tag.name for tag in listing.tags.all()]


def _organisation(listing: Listing) -> dict:
    merchant = listing.merchant
    return {
        "@type": "Organization",
        "name": merchant.name,
        "url": _absolute(reverse("listings:merchant_profile", args=[merchant.slug])),
    }


def listing_jsonld(listing: Listing) -> dict:
    """schema.org ``Dataset`` for ``listing`` (a dict ready for json.dumps).

    Reads the listing, its merchant, category, tags and active plans
    (prefetch ``tags`` and ``plans`` when rendering many).
    """
    url = listing_url(listing)
    organisation = _organisation(listing)
    keywords = _keywords(listing)
    if listing.category_id:
        keywords.append(listing.category.name)
    data = {
        "@context": "https://schema.org",
        "@type": "Dataset",
        "@id": url,
        "url": url,
        "name": listing.title,
        "description": "\n\n".join(part for part in (listing.summary, listing.description) if part) or listing.title,
        "license": licence_url(listing),
        "creator": organisation,
        "publisher": organisation,
        "keywords": keywords,
        "isAccessibleForFree": False,
    }
    if listing.registration_number:
        data["identifier"] = listing.registration_number
    if listing.published_at:
        data["datePublished"] = listing.published_at.isoformat()
    if listing.updated_at:
        data["dateModified"] = listing.updated_at.isoformat()
    temporal = _temporal_interval(listing)
    if temporal:
        data["temporalCoverage"] = temporal
    if listing.geographic_coverage:
        data["spatialCoverage"] = {"@type": "Place", "name": listing.geographic_coverage}
    if listing.primary_format:
        data["distribution"] = [
            {
                "@type": "DataDownload",
                "encodingFormat": MEDIA_TYPES.get(listing.primary_format, listing.primary_format),
                # Files are private: the buyer gets signed links after purchase.
                "url": url,
            }
        ]
    offers = []
    for plan in listing.plans.all():
        if not plan.is_active:
            continue
        offers.append(
            {
                "@type": "Offer",
                "name": plan.display_name,
                "price": _major_units(plan.amount, plan.currency),
                "priceCurrency": plan.currency,
                "url": url,
            }
        )
        if plan.kind == PlanKind.FREE:
            data["isAccessibleForFree"] = True
    if offers:
        data["offers"] = offers
    return data


def listing_dcat(listing: Listing) -> dict:
    """One ``dcat:Dataset`` node of the catalog export."""
    url = listing_url(listing)
    licence = {"@id": licence_url(listing)}
    node = {
        "@id": url,
        "@type": "dcat:Dataset",
        "dct:title": listing.title,
        "dct:description": listing.summary or listing.title,
        "dct:publisher": {"@type": "foaf:Agent", "foaf:name": listing.merchant.name},
        "dct:license": licence,
        "dcat:landingPage": {"@id": url},
        "dcat:keyword": _keywords(listing),
        "dct:accrualPeriodicity": {"@id": _FREQUENCY_BASE + FREQUENCY_URIS.get(listing.update_frequency, "UNKNOWN")},
    }
    if listing.registration_number:
        node["dct:identifier"] = listing.registration_number
    if listing.published_at:
        node["dct:issued"] = {"@value": listing.published_at.isoformat(), "@type": "xsd:dateTime"}
    node["dct:modified"] = {"@value": listing.updated_at.isoformat(), "@type": "xsd:dateTime"}
    if listing.category_id:
        node["dcat:theme"] = {
            "@id": _absolute(reverse("listings:catalog")) + f"?category={listing.category.slug}",
            "@type": "skos:Concept",
            "skos:prefLabel": listing.category.name,
        }
    if listing.temporal_start or listing.temporal_end:
        period = {"@type": "dct:PeriodOfTime"}
        if listing.temporal_start:
            period["dcat:startDate"] = {"@value": listing.temporal_start.isoformat(), "@type": "xsd:date"}
        if listing.temporal_end:
            period["dcat:endDate"] = {"@value": listing.temporal_end.isoformat(), "@type": "xsd:date"}
        node["dct:temporal"] = period
    if listing.geographic_coverage:
        node["dct:spatial"] = {"@type": "dct:Location", "skos:prefLabel": listing.geographic_coverage}
    if listing.primary_format:
        media_type = MEDIA_TYPES.get(listing.primary_format, listing.primary_format)
        node["dcat:distribution"] = [
            {
                "@type": "dcat:Distribution",
                "dct:format": listing.get_primary_format_display(),
                "dcat:mediaType": {"@id": f"https://www.iana.org/assignments/media-types/{media_type}"},
                "dcat:accessURL": {"@id": url},
                "dct:license": licence,
            }
        ]
    return node


def catalog_dcat(request):
    """The published catalog as a DCAT ``dcat:Catalog`` in JSON-LD, ``DCAT_PAGE_SIZE`` datasets a page.

    Pages follow the primary key (``?after=<last id>``), so a harvester walks
    a million products at the same cost per page; ``hydra:next`` links the
    following page.
    """
    after = request.GET.get("after", "0")
    if not after.isdigit() or len(after) > 18:
        message = "Must be a non-negative integer (the last id of the previous page)."
        return JsonResponse({"after": [message]}, status=400)
    rows = list(
        listings_published()
        .select_related("category")
        .prefetch_related("tags")
        .filter(pk__gt=int(after))
        .order_by("pk")[: DCAT_PAGE_SIZE + 1]
    )
    page, more = rows[:DCAT_PAGE_SIZE], len(rows) > DCAT_PAGE_SIZE
    base = _absolute(reverse("listings:catalog_dcat"))
    view = {"@id": base + (f"?after={after}" if after != "0" else ""), "@type": "hydra:PartialCollectionView"}
    view["hydra:first"] = {"@id": base}
    if more:
        view["hydra:next"] = {"@id": f"{base}?after={page[-1].pk}"}
    document = {
        "@context": DCAT_CONTEXT,
        "@id": base,
        "@type": "dcat:Catalog",
        "dct:title": "Data Exchange catalog",
        "dct:description": "Data products published on the exchange after compliance review.",
        "foaf:homepage": {"@id": _absolute(reverse("listings:catalog"))},
        "dcat:dataset": [listing_dcat(listing) for listing in page],
        "hydra:view": view,
    }
    return JsonResponse(document, content_type="application/ld+json", json_dumps_params={"ensure_ascii": False})
