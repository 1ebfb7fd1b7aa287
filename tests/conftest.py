import shutil
from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import UserFactory, make_listing, make_merchant


@pytest.fixture(autouse=True)
def _empty_cache():
    """Rate limits and cached values live in Redis; no test inherits another's."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _private_storage(tmp_path, settings):
    """Each test stores uploads in its own folder, removed afterwards."""
    root = tmp_path / "private"
    root.mkdir()
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**settings.STORAGES["default"], "OPTIONS": {"location": str(root), "base_url": None}},
    }
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def staff(db):
    return UserFactory(is_staff=True, is_superuser=True, email="reviewer@example.com")


@pytest.fixture
def merchant_user(db):
    return UserFactory(email="merchant@example.com")


@pytest.fixture
def merchant(merchant_user):
    return make_merchant(merchant_user, name="Guiyang Data")


@pytest.fixture
def other_merchant_user(db):
    user = UserFactory(email="other-merchant@example.com")
    make_merchant(user, name="Shanghai Data")
    return user


@pytest.fixture
def buyer(db):
    return UserFactory(email="buyer@example.com")


@pytest.fixture
def other_buyer(db):
    return UserFactory(email="other-buyer@example.com")


@pytest.fixture
def published_listing(merchant, merchant_user, staff):
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff)


@pytest.fixture
def draft_listing(merchant, merchant_user):
    from listings.choices import ListingStatus

    return make_listing(merchant=merchant, owner=merchant_user, title="Draft data", status=ListingStatus.DRAFT)


def client_for(client, user):
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def var_dir() -> Path:
    return Path(settings.VAR_DIR)


@pytest.fixture
def categories(db):
    """The seeded categories (transactional tests truncate migration data, so re-create them)."""
    from listings.models import Category

    names = [("government", "Government"), ("finance", "Finance"), ("transport", "Transport")]
    for position, (slug, name) in enumerate(names):
        Category.objects.get_or_create(slug=slug, defaults={"name": name, "position": position})
    return {c.slug: c for c in Category.objects.all()}
