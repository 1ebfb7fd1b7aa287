"""Load the demo: a reviewer, two merchants with products, two buyers.

Everything goes through the same services the web UI uses. Running it again
changes nothing once the demo users exist.
"""

from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand
from django.db import transaction

from listings.services import listing_approve, listing_create, listing_submit, pricing_plan_set, version_upload
from merchants.services import merchant_create

DEMO_PASSWORD = "exchange-demo"
REVIEWER = "reviewer@demo.exchange"
MERCHANTS = [
    (
        "merchant1@demo.exchange",
        "Guiyang Transit Data Co.",
        [
            (
                "Guiyang bus ridership by route, 2025",
                "Daily boardings per bus route, anonymised and aggregated.",
                "date,route,boardings\n2025-01-01,K1,10234\n2025-01-01,K2,8812\n2025-01-02,K1,11020\n",
                1990,
                True,
            ),
            (
                "Guiyang taxi trip durations",
                "Median trip durations per district pair.",
                "from,to,median_minutes\nYunyan,Nanming,14\nNanming,Guanshanhu,22\n",
                4900,
                False,
            ),
        ],
    ),
    (
        "merchant2@demo.exchange",
        "Shanghai Retail Insights",
        [
            (
                "Shanghai convenience-store prices, weekly",
                "Shelf prices of 200 staple goods across 50 stores.",
                "week,item,store,price_cny\n2025-W01,rice 5kg,S001,39.90\n2025-W01,eggs 10,S001,12.50\n",
                9900,
                True,
            ),
        ],
    ),
]
BUYERS = ["buyer1@demo.exchange", "buyer2@demo.exchange"]


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
        for email, org, products in MERCHANTS:
            user = _user(email)
            if user.merchant_memberships.exists():
                continue
            merchant = merchant_create(user=user, name=org)
            for title, summary, csv_text, price, publish in products:
                listing = listing_create(merchant=merchant, actor=user, title=title, summary=summary)
                upload = SimpleUploadedFile(f"{listing.slug}.csv", csv_text.encode(), content_type="text/csv")
                version_upload(listing=listing, actor=user, uploaded_file=upload, changelog="First release")
                pricing_plan_set(listing=listing, actor=user, amount=price, currency="CNY")
                listing_submit(listing=listing, actor=user)
                if publish:
                    listing_approve(listing=listing, reviewer=reviewer, notes="Demo data, reviewed.")
        for email in BUYERS:
            _user(email)
        self.stdout.write(self.style.SUCCESS("Demo data ready."))
