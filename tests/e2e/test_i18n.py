"""The main pages in Simplified Chinese, chosen with the language switcher, without a console error."""

import pytest
from django.conf import settings
from django.test import Client
from django.urls import NoReverseMatch, reverse
from django.utils import translation
from playwright.sync_api import expect

from tests.e2e.conftest import ACTION_TIMEOUT_MS
from tests.factories import UserFactory, make_listing, make_merchant

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

expect.set_options(timeout=ACTION_TIMEOUT_MS)


def in_chinese(text: str) -> str:
    with translation.override("zh-hans"):
        return translation.gettext(text)


def open_in_chinese(page, url: str, *, heading: str | None = None) -> None:
    """Load ``url``: it answers 200 in Chinese (the Content-Language header, the html element's lang).

    ``heading``: an English page heading to find translated instead of checking the lang attribute (allauth's
    account pages have their own layout, without a lang attribute yet).
    """
    response = page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)
    assert response.headers.get("content-language") == "zh-hans", (url, response.headers)
    if heading is None:
        expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    else:
        assert in_chinese(heading) != heading, f"no Chinese translation of {heading!r}"
        expect(page.get_by_role("heading", name=in_chinese(heading), level=1)).to_be_visible()


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_main_pages_in_chinese(web, viewport):
    try:
        reverse("set_language")
    except NoReverseMatch:
        pytest.skip("no language switch yet: the set_language URL (POST /i18n/setlang/) is not configured")
    seller = UserFactory(email="seller@example.com")
    staff = UserFactory(email="reviewer@example.com", is_staff=True)
    listing = make_listing(merchant=make_merchant(seller, name="Guiyang Data"), owner=seller, reviewer=staff)

    page = web.page("visitor")
    page.goto("/")
    switcher = page.locator(f'form[action="{reverse("set_language")}"]').filter(visible=True)
    expect(switcher).to_have_count(1)
    switcher.get_by_label("Language").select_option("zh-hans")
    switcher.get_by_role("button", name="Change language").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    catalog_in_chinese = in_chinese("Catalog")
    assert catalog_in_chinese != "Catalog", "the Chinese catalogue has no translation for the menu's Catalog"
    # The menu (folded away on a phone) is in Chinese.
    menu = page.get_by_role("navigation", include_hidden=True)
    expect(menu.get_by_role("link", name=catalog_in_chinese, exact=True, include_hidden=True).first).to_be_attached()
    expect(menu.get_by_role("link", name="Catalog", exact=True, include_hidden=True)).to_have_count(0)
    web.screenshot(page, "zh-catalog")

    open_in_chinese(page, reverse("listings:detail", args=[listing.slug]))
    web.screenshot(page, "zh-listing")
    open_in_chinese(page, reverse("account_login"), heading="Sign In")
    open_in_chinese(page, reverse("account_signup"), heading="Sign Up")

    # The merchant's pages: signed in through a session made here (signing in is the trade flow's business).
    client = Client()
    client.force_login(seller)
    page.context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": web.base_url,
            }
        ]
    )
    for url in (
        reverse("listings:console"),
        reverse("listings:manage", args=[listing.pk]),
        reverse("exchange:sales"),
        reverse("statements:page"),
        reverse("exchange:library"),
    ):
        open_in_chinese(page, url)
        expect(page.get_by_role("button", name=in_chinese("Sign out"), include_hidden=True).first).to_be_attached()
    web.screenshot(page, "zh-library")
    open_in_chinese(page, reverse("exchange:sales"))
    web.screenshot(page, "zh-sales")

    web.problems.assert_none()
