"""Load the demo: a reviewer, two merchants with products, two buyers.

Everything goes through the same services the web UI uses (files are
profiled in this process, as the worker would). Running it again changes
nothing once the demo users exist.
"""

from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand
from django.db import transaction

from listings.choices import REVIEW_CHECKLIST
from listings.models import Category
from listings.profiling import datafile_profile_run
from listings.services import (
    listing_approve,
    listing_create,
    listing_submit,
    pricing_plan_create,
    pricing_plan_set,
    version_upload,
)
from merchants.services import merchant_create, merchant_verify

DEMO_PASSWORD = "exchange-demo"
REVIEWER = "reviewer@demo.exchange"
BUYERS = ["buyer1@demo.exchange", "buyer2@demo.exchange"]

BUS_CSV = "date,route,district,boardings\n" + "".join(
    f"2025-01-{day:02d},{route},{district},{9000 + day * 37 + n * 411}\n"
    for day in range(1, 29)
    for n, (route, district) in enumerate([("K1", "Yunyan"), ("K2", "Nanming"), ("B3", "Guanshanhu")])
)
TAXI_CSV = "from_district,to_district,median_minutes,trips\nYunyan,Nanming,14,5120\nNanming,Guanshanhu,22,3011\n"
PRICES_CSV = "week,item,store,price_cny\n" + "".join(
    f"2025-W{week:02d},{item},S{store:03d},{price + week * 0.1:.2f}\n"
    for week in range(1, 9)
    for store in (1, 2, 3)
    for item, price in (("rice 5kg", 39.9), ("eggs x10", 12.5), ("soy sauce 500ml", 9.8))
)
CONTACTS_CSV = (
    "customer_id,email,mobile,city\n"
    "1,li.wei@example.cn,13812345678,Shanghai\n2,wang.fang@example.cn,15987654321,Hangzhou\n"
    "3,zhang.min@example.cn,18611112222,Suzhou\n"
)

MERCHANTS = [
    {
        "email": "merchant1@demo.exchange",
        "name": "Guiyang Transit Data Co.",
        "products": [
            {
                "title": "Guiyang bus ridership by route, 2025",
                "summary": "Daily boardings per bus route and district, aggregated from smart-card taps.",
                "description": (
                    "## What is in it\n\nDaily **boardings** per route and district for Guiyang's bus network, "
                    "aggregated from anonymous smart-card taps.\n\n| column | meaning |\n|---|---|\n"
                    "| boardings | taps on that route that day |\n"
                ),
                "category": "transport",
                "tags": ["guiyang", "bus", "mobility"],
                "update_frequency": "daily",
                "geographic_coverage": "Guiyang, Guizhou",
                "use_scenarios": "Urban planning\nAcademic research\nRetail site selection",
                "csv": BUS_CSV,
                "price": 1990,
                "plans": [
                    {"kind": "free", "amount": 0, "name": "Sample week"},
                    {"kind": "subscription", "amount": 9900, "interval": "month"},
                ],
                "publish": True,
            },
            {
                "title": "Guiyang taxi trip durations",
                "summary": "Median trip durations per district pair.",
                "category": "transport",
                "tags": ["guiyang", "taxi"],
                "csv": TAXI_CSV,
                "price": 4900,
                "publish": False,
            },
        ],
    },
    {
        "email": "merchant2@demo.exchange",
        "name": "Shanghai Retail Insights",
        "products": [
            {
                "title": "Shanghai convenience-store prices, weekly",
                "summary": "Shelf prices of staple goods across stores, every week.",
                "category": "consumption",
                "tags": ["shanghai", "prices", "retail"],
                "update_frequency": "weekly",
                "geographic_coverage": "Shanghai",
                "use_scenarios": "Price monitoring\nMarket research",
                "csv": PRICES_CSV,
                "price": 9900,
                "plans": [
                    {"kind": "metered", "amount": 50, "metered_unit": "thousand_rows", "free_units_per_month": 5}
                ],
                "publish": True,
            },
            {
                "title": "East China retail loyalty contacts (de-identified on request)",
                "summary": "Loyalty-programme contacts for approved marketing research only.",
                "category": "e-commerce",
                "tags": ["retail", "marketing"],
                "sensitivity": "personal",
                "requires_access_request": True,
                "use_scenarios": "Approved marketing research",
                "licence": "custom",
                "licence_terms": "Use only for the approved scenario. No resale, no re-identification.",
                "csv": CONTACTS_CSV,
                "price": 29900,
                "publish": True,
            },
        ],
    },
]


def _user(email: str, **extra):
    User = get_user_model()
    user, created = User.objects.get_or_create(email=email, defaults=extra)
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save()
        EmailAddress.objects.update_or_create(user=user, email=email, defaults={"verified": True, "primary": True})
    return user


class Command(BaseCommand):
    help = "Create the demo reviewer, merchants (with products) and buyers. Idempotent."

    @transaction.atomic
    def handle(self, *args, **options):
        reviewer = _user(REVIEWER, is_staff=True, is_superuser=True, display_name="Demo reviewer")
        for spec in MERCHANTS:
            user = _user(spec["email"])
            if user.merchant_memberships.exists():
                continue
            merchant = merchant_create(user=user, name=spec["name"])
            merchant = merchant_verify(merchant=merchant, actor=reviewer, note="Demo merchant: registration checked.")
            for product in spec["products"]:
                product = dict(product)
                csv_text, price = product.pop("csv"), product.pop("price")
                plans, publish = product.pop("plans", []), product.pop("publish")
                product["category"] = Category.objects.get(slug=product["category"])
                listing = listing_create(merchant=merchant, actor=user, **product)
                upload = SimpleUploadedFile(f"{listing.slug}.csv", csv_text.encode(), content_type="text/csv")
                version = version_upload(listing=listing, actor=user, uploaded_file=upload, changelog="First release")
                for data_file in version.files.all():
                    datafile_profile_run(data_file_pk=data_file.pk)
                pricing_plan_set(listing=listing, actor=user, amount=price, currency="CNY")
                for plan in plans:
                    pricing_plan_create(listing=listing, actor=user, currency="CNY", **plan)
                listing_submit(listing=listing, actor=user)
                if publish:
                    listing_approve(
                        listing=listing,
                        reviewer=reviewer,
                        checklist=dict.fromkeys(REVIEW_CHECKLIST, True),
                        notes="Demo data, reviewed.",
                    )
        for email in BUYERS:
            _user(email)
        self.stdout.write(self.style.SUCCESS("Demo data ready."))
