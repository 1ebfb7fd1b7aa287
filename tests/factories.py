import factory
from allauth.account.models import EmailAddress
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import User
from listings.choices import REVIEW_CHECKLIST, ListingStatus
from listings.models import Category, Listing
from listings.profiling import datafile_profile_run
from listings.services import (
    listing_approve,
    listing_create,
    listing_submit,
    pricing_plan_create,
    pricing_plan_set,
    version_upload,
)
from merchants.services import merchant_create

PASSWORD = "correct-horse-battery"
FULL_CHECKLIST = dict.fromkeys(REVIEW_CHECKLIST, True)
SAMPLE_CSV = b"city,year,population\nGuiyang,2024,6400000\nShanghai,2024,24870000\n"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def verified(self, create, extracted, **kwargs):
        if create:
            self.save()
            EmailAddress.objects.create(user=self, email=self.email, verified=True, primary=True)


def csv_upload(content: bytes = SAMPLE_CSV, name: str = "data.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/csv")


def make_merchant(user, name="Acme Data"):
    return merchant_create(user=user, name=name)


def make_listing(
    *,
    merchant,
    owner,
    title="City populations",
    content=SAMPLE_CSV,
    price=1234,
    currency="CNY",
    status=ListingStatus.PUBLISHED,
    reviewer=None,
    extra_plans=(),
    **listing_fields,
) -> Listing:
    """A listing built through the services, driven to ``status``.

    Uploaded files are profiled right away (the real profiler, run in this
    process) so reviewers can approve them, as the worker would have done.
    """
    category, _ = Category.objects.get_or_create(slug="government", defaults={"name": "Government"})
    listing = listing_create(
        merchant=merchant,
        actor=owner,
        title=title,
        summary="Populations by city",
        category=category,
        **listing_fields,
    )
    if status == ListingStatus.DRAFT:
        return listing
    version = version_upload(listing=listing, actor=owner, uploaded_file=csv_upload(content))
    for data_file in version.files.all():
        datafile_profile_run(data_file_pk=data_file.pk)
    pricing_plan_set(listing=listing, actor=owner, amount=price, currency=currency)
    for plan in extra_plans:
        pricing_plan_create(listing=listing, actor=owner, currency=currency, **plan)
    listing_submit(listing=listing, actor=owner)
    if status == ListingStatus.SUBMITTED:
        listing.refresh_from_db()
        return listing
    reviewer = reviewer or UserFactory(is_staff=True)
    listing_approve(listing=listing, reviewer=reviewer, checklist=FULL_CHECKLIST, notes="Reviewed in tests.")
    listing.refresh_from_db()
    return listing
