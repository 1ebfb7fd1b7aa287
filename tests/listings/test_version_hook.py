"""Publishing a version hands it to the tasks named in VERSION_PUBLISHED_TASKS (listings never imports exchange)."""

import pytest

from exchange.choices import DeliveryStatus, NotificationKind
from exchange.models import Delivery, Notification, Order
from listings.models import ListingVersion
from listings.profiling import datafile_profile_run
from listings.services import version_publish, version_upload
from tests.exchange.helpers import approve_in_sandbox, buy
from tests.factories import csv_upload
from tests.listings.catalog_data import without_catalog_bumps

pytestmark = pytest.mark.django_db

V2_CSV = b"city,year,population,province\nGuiyang,2025,6500000,Guizhou\n"
DELIVER = "exchange.tasks.delivery_version_published"


@pytest.fixture
def bought(client, buyer, published_listing, django_capture_on_commit_callbacks):
    client.force_login(buyer)
    with django_capture_on_commit_callbacks(execute=True):
        buy(client, published_listing)
        approve_in_sandbox(client, Order.objects.get().checkout_url)
    assert Delivery.objects.get().status == DeliveryStatus.READY
    return published_listing


def _profiled_v2(listing, owner) -> ListingVersion:
    version = version_upload(listing=listing, actor=owner, uploaded_file=csv_upload(V2_CSV))
    for data_file in version.files.all():
        datafile_profile_run(data_file_pk=data_file.pk)
    return version


def test_publishing_a_version_delivers_it_to_entitled_buyers(
    bought, buyer, merchant_user, settings, django_capture_on_commit_callbacks
):
    settings.VERSION_PUBLISHED_TASKS = [DELIVER]
    v2 = _profiled_v2(bought, merchant_user)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        version_publish(version=v2, actor=merchant_user)
    hooks = [c for c in callbacks if getattr(getattr(c, "func", None), "__self__", None) is not None]
    assert [(c.func.__self__.name, c.args) for c in hooks] == [(DELIVER, (v2.pk,))]
    delivery = Delivery.objects.get(version=v2)
    assert (delivery.entitlement.buyer, delivery.status) == (buyer, DeliveryStatus.READY)
    notice = Notification.objects.get(kind=NotificationKind.NEW_VERSION)
    assert notice.body == "Added columns: province."


def test_no_subscribers_means_nothing_is_scheduled(bought, merchant_user, settings, django_capture_on_commit_callbacks):
    settings.VERSION_PUBLISHED_TASKS = []
    v2 = _profiled_v2(bought, merchant_user)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        version_publish(version=v2, actor=merchant_user)
    assert without_catalog_bumps(callbacks) == []
    assert not Delivery.objects.filter(version=v2).exists()


def test_a_misnamed_subscriber_fails_the_publication_loudly_and_changes_nothing(
    bought, merchant_user, settings, django_capture_on_commit_callbacks
):
    settings.VERSION_PUBLISHED_TASKS = ["exchange.tasks.no_such_task"]
    v2 = _profiled_v2(bought, merchant_user)
    with pytest.raises(ImportError), django_capture_on_commit_callbacks(execute=True) as callbacks:
        version_publish(version=v2, actor=merchant_user)
    assert callbacks == []
    v2.refresh_from_db()
    assert v2.published_at is None
    assert not Delivery.objects.filter(version=v2).exists()


def test_the_review_approval_publishes_through_the_same_hook(
    merchant, merchant_user, staff, settings, django_capture_on_commit_callbacks
):
    from tests.factories import make_listing

    settings.VERSION_PUBLISHED_TASKS = [DELIVER]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        listing = make_listing(merchant=merchant, owner=merchant_user, reviewer=staff)
    version = listing.versions.get()
    hooks = [c for c in callbacks if getattr(getattr(c, "func", None), "__self__", None) is not None]
    hooks = [c for c in hooks if c.func.__self__.name == DELIVER]
    assert [c.args for c in hooks] == [(version.pk,)]
    assert hooks[0]() is not None  # the real task runs: no entitlements yet, so nothing is delivered
    assert not Delivery.objects.exists()
