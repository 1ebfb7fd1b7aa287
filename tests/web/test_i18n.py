"""The web pages in two languages (English, Simplified Chinese) and in the user's time zone (issue 8).

Switching language goes through Django's ``/i18n/setlang/`` (the switcher in base.html posts there) or the
browser's Accept-Language; a code the site does not offer changes nothing. The ``tz`` cookie set by
static/js/timezone.js shifts rendered times; a zone zoneinfo does not know is ignored. The catalogue in
locale/ is complete and compiled, and no template carries inline styles or scripts the CSP would block.
"""

import ast
import gettext as gettext_module
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.dateparse import parse_datetime

from accounts.services import api_key_create
from exchange.models import Delivery, Order
from exchange.templatetags.timezone_extras import local_moment
from exchange.timezones import TIMEZONE_COOKIE, zone_from_name
from tests.exchange.helpers import approve_in_sandbox, buy

BASE = Path(settings.BASE_DIR)
PO_FILE = BASE / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
SETLANG = "/i18n/setlang/"


# --- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _default_language_afterwards():
    """LocaleMiddleware leaves the last request's language active in the thread: hand the next test English."""
    yield
    translation.deactivate()


@pytest.fixture
def delivered(client, buyer, published_listing, django_capture_on_commit_callbacks):
    """The buyer's paid, delivered purchase of the published listing (through the sandbox gateway)."""
    client.force_login(buyer)
    with django_capture_on_commit_callbacks(execute=True):
        buy(client, published_listing)
        order = Order.objects.get(buyer=buyer, listing=published_listing)
        approve_in_sandbox(client, order.checkout_url)
    client.logout()
    return Delivery.objects.select_related("entitlement__order", "version").get()


def _choose(client, language: str):
    return client.post(SETLANG, {"language": language, "next": "/"})


def _page(client, url: str, **headers) -> str:
    response = client.get(url, **headers)
    assert response.status_code == 200, url
    return response.content.decode()


# --- switching language ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_choosing_chinese_translates_the_buyers_pages_and_english_brings_them_back(client, buyer, delivered):
    order = delivered.entitlement.order
    client.force_login(buyer)
    pages = {
        "catalog": (reverse("listings:catalog"), "Data catalog", "数据产品目录"),
        "library": (reverse("exchange:library"), "<h1>My library</h1>", "<h1>我的数据</h1>"),
        "order": (
            reverse("exchange:order_detail", args=[order.public_id]),
            f"Order {order.reference}",
            f"订单 {order.reference}",
        ),
        "receipt": (reverse("exchange:receipt", args=[delivered.pk]), "<h1>Delivery receipt</h1>", "<h1>交付回执</h1>"),
    }
    for url, english, chinese in pages.values():
        html = _page(client, url)
        assert english in html and chinese not in html, url

    response = _choose(client, "zh-hans")
    assert response.status_code == 302
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"
    for url, english, chinese in pages.values():
        html = _page(client, url)
        assert chinese in html and english not in html, url
    # Amounts keep their symbol and ISO code in either language.
    assert order.amount_display in _page(client, pages["order"][0])
    assert order.amount_display == "¥12.34 CNY"

    _choose(client, "en")
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "en"
    for url, english, chinese in pages.values():
        html = _page(client, url)
        assert english in html and chinese not in html, url


@pytest.mark.django_db
def test_choosing_chinese_translates_the_merchants_sales_and_statement(client, merchant_user, merchant, delivered):
    client.force_login(merchant_user)
    sales, statement = reverse("exchange:sales"), reverse("statements:page")
    assert "Guiyang Data — sales and payouts" in _page(client, sales)
    assert "Guiyang Data — statement" in _page(client, statement)

    _choose(client, "zh-hans")
    html = _page(client, sales)
    assert "Guiyang Data — 销售与打款" in html and "sales and payouts" not in html
    assert delivered.entitlement.order.amount_display in html
    html = _page(client, statement)
    assert "Guiyang Data — 对账单" in html and "— statement" not in html

    _choose(client, "en")
    assert "Guiyang Data — sales and payouts" in _page(client, sales)


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["zh-Hans", "zh-Hans-CN,zh;q=0.9,en;q=0.5", "zh-CN"])
def test_the_browsers_accept_language_picks_chinese(client, header):
    html = _page(client, reverse("listings:catalog"), HTTP_ACCEPT_LANGUAGE=header)
    assert "数据产品目录" in html and "Data catalog" not in html


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["fr-FR,fr;q=0.9", "de", ""])
def test_a_language_the_site_does_not_offer_falls_back_to_english(client, header):
    html = _page(client, reverse("listings:catalog"), HTTP_ACCEPT_LANGUAGE=header)
    assert "Data catalog" in html and "数据产品目录" not in html


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["xx", "fr", "de-AT", "zh-hans'><script>", "", "../../etc/passwd", "zh-hans" * 20])
def test_a_bad_language_code_is_refused_and_changes_nothing(client, bad):
    # Nothing chosen yet: the refusal sets no cookie and the page stays English.
    response = _choose(client, bad)
    assert response.status_code == 302
    assert settings.LANGUAGE_COOKIE_NAME not in response.cookies
    html = _page(client, reverse("listings:catalog"))
    assert "Data catalog" in html
    assert "That language is not available." in html

    # Chinese chosen: a bad code afterwards keeps Chinese.
    _choose(client, "zh-hans")
    response = _choose(client, bad)
    assert settings.LANGUAGE_COOKIE_NAME not in response.cookies
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"
    html = _page(client, reverse("listings:catalog"))
    assert "数据产品目录" in html
    assert "该语言不可用。" in html


@pytest.mark.django_db
@pytest.mark.parametrize(("asked", "stored"), [("zh-Hans", "zh-hans"), ("zh-CN", "zh-hans"), ("en-US", "en")])
def test_a_regional_variant_picks_the_language_offered(client, asked, stored):
    assert _choose(client, asked).cookies[settings.LANGUAGE_COOKIE_NAME].value == stored


@pytest.mark.django_db
def test_the_language_switch_only_accepts_a_post(client):
    response = client.get(SETLANG, {"language": "zh-hans"})
    assert settings.LANGUAGE_COOKIE_NAME not in response.cookies
    assert "Data catalog" in _page(client, reverse("listings:catalog"))


def test_emails_are_written_in_the_active_language():
    context = {
        "user": type("U", (), {"display_name": "Li Lei", "email": "li@example.com"})(),
        "notification": {"title": "T", "body": "B", "url": "/orders/x/", "data": {"order_reference": "AB12"}},
        "site_url": "https://exchange.example",
    }
    with translation.override("en"):
        english = render_to_string("exchange/email/refund.txt", context)
    assert english.startswith("Hello Li Lei,")
    assert "Order reference: AB12" in english and english.rstrip().endswith("— Data Exchange")
    with translation.override("zh-hans"):
        chinese = render_to_string("exchange/email/refund.txt", context)
    assert chinese.startswith("Li Lei，您好：")  # noqa: RUF001
    assert "订单参考号：AB12" in chinese and chinese.rstrip().endswith("— 数据交易所")  # noqa: RUF001


# --- time zones ------------------------------------------------------------------------------------------------


@pytest.fixture
def key_made_at_ten_utc(buyer):
    with time_machine.travel(datetime(2026, 3, 3, 10, 0, tzinfo=UTC), tick=False):
        key, _raw = api_key_create(user=buyer, name="nightly import", scopes=["data"])
    return key


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("zone", "shown"),
    [("Asia/Shanghai", "2026-03-03 18:00"), ("America/New_York", "2026-03-03 05:00"), ("UTC", "2026-03-03 10:00")],
)
def test_the_tz_cookie_shows_times_in_the_users_zone(client, buyer, key_made_at_ten_utc, zone, shown):
    client.force_login(buyer)
    client.cookies[TIMEZONE_COOKIE] = zone
    html = _page(client, reverse("accounts:api_keys"))
    assert f"<td>{shown}</td>" in html
    # The zone is the request's only: the thread goes back to the default afterwards.
    assert timezone.get_current_timezone_name() == settings.TIME_ZONE


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad", ["Nope/Nowhere", "asia/shanghai", "Asia", "../../../etc/passwd", "/UTC", "zone.tab", "Asia/Shanghai" * 10]
)
def test_an_invalid_tz_cookie_is_ignored(client, buyer, key_made_at_ten_utc, bad):
    client.force_login(buyer)
    client.cookies[TIMEZONE_COOKIE] = bad
    html = _page(client, reverse("accounts:api_keys"))
    assert "<td>2026-03-03 10:00</td>" in html  # settings.TIME_ZONE (UTC)
    assert TIMEZONE_COOKIE not in client.get(reverse("accounts:api_keys")).cookies  # left as it was


@pytest.mark.django_db
def test_the_receipt_page_shows_its_times_in_the_users_zone_and_its_json_never_changes(client, buyer, delivered):
    client.force_login(buyer)
    page_url = reverse("exchange:receipt", args=[delivered.pk])
    json_url = reverse("exchange:receipt_json", args=[delivered.pk])
    issued = parse_datetime(delivered.receipt["issued_at"])
    signed_bytes = client.get(json_url).content
    assert f"{issued:%Y-%m-%d %H:%M:%S} UTC" in _page(client, page_url)

    client.cookies[TIMEZONE_COOKIE] = "Asia/Shanghai"
    _choose(client, "zh-hans")
    html = _page(client, page_url)
    shanghai = timezone.localtime(issued, zone_from_name("Asia/Shanghai"))
    assert f"{shanghai:%Y-%m-%d %H:%M:%S} CST" in html and "签发时间" in html
    # The signed receipt itself is the same bytes in every language and zone.
    assert client.get(json_url).content == signed_bytes


def test_local_moment_converts_aware_timestamps_and_leaves_anything_else_alone():
    with timezone.override(zone_from_name("Asia/Shanghai")):
        assert local_moment("2026-03-03T10:00:00+00:00") == "2026-03-03 18:00:00 CST"
        assert local_moment("2026-03-03T10:00:00Z") == "2026-03-03 18:00:00 CST"
        assert local_moment(datetime(2026, 3, 3, 10, tzinfo=UTC)) == "2026-03-03 18:00:00 CST"
        for unchanged in (None, "", "not a time", "2026-03-03T10:00:00", "2026-13-45T99:00:00Z"):
            assert local_moment(unchanged) == unchanged
    assert local_moment("2026-03-03T10:00:00+00:00") == "2026-03-03 10:00:00 UTC"


def test_zone_from_name_accepts_only_known_iana_zones():
    assert str(zone_from_name("Asia/Shanghai")) == "Asia/Shanghai"
    assert str(zone_from_name("Europe/London")) == "Europe/London"
    for bad in (None, "", "Asia", "asia/shanghai", "../etc/passwd", "/UTC", "zone.tab", "x" * 65, "UTC\x00"):
        assert zone_from_name(bad) is None, bad


def test_the_timezone_script_sets_the_cookie_the_middleware_reads():
    script = (BASE / "static" / "js" / "timezone.js").read_text()
    assert "Intl.DateTimeFormat().resolvedOptions().timeZone" in script
    assert '"tz=" + zone' in script and TIMEZONE_COOKIE == "tz"


# --- the message catalogue -------------------------------------------------------------------------------------

# The project catalogue (locale/: templates/ and anything outside an app) and each app's own (<app>/locale/:
# its models, choices, admin, views and forms; makemessages files a string where its source lives).
PO_FILES = [PO_FILE, *sorted(BASE.glob("*/locale/zh_Hans/LC_MESSAGES/django.po"))]
PO_IDS = [str(path.relative_to(BASE)) for path in PO_FILES]

# The allow-list: strings whose every source is a service, an API, a task or a management command. Those are
# also the JSON API's error messages and log lines, which stay English by design (clients match on them);
# a string also used by a page or a form is not allowed to stay untranslated.
ENGLISH_ONLY_SOURCES = re.compile(r"^[a-z_]+/(?:services|api|data_api|tasks|management)\b")


def _unquote(text: str) -> str:
    # A PO string is a C string literal; its escapes (\\n, \\t, \\", \\\\) read the same in Python.
    return ast.literal_eval(text)


def _po_entries(path: Path) -> list[dict]:
    """The entries of a .po file: references, flags, msgctxt, msgid, msgid_plural and msgstr(s)."""
    entries, entry, field = [], None, None
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if not line.strip():
            if entry and entry.get("msgid") is not None:
                entries.append(entry)
            entry, field = None, None
            continue
        entry = entry or {"refs": [], "flags": "", "msgstr": {}}
        if line.startswith("#~"):
            entry["obsolete"] = True
        elif line.startswith("#:"):
            entry["refs"] += [ref.rsplit(":", 1)[0] for ref in line[2:].split()]
        elif line.startswith("#,"):
            entry["flags"] = line[2:]
        elif line.startswith("#"):
            continue
        elif match := re.match(r'^(msgctxt|msgid_plural|msgid|msgstr)(?:\[(\d+)\])?\s+(".*")$', line):
            key, index, value = match.group(1), match.group(2), _unquote(match.group(3))
            if key == "msgstr":
                field = ("msgstr", int(index or 0))
                entry["msgstr"][field[1]] = value
            else:
                field = (key, None)
                entry[key] = value
        elif line.startswith('"') and field:
            key, index = field
            if key == "msgstr":
                entry["msgstr"][index] += _unquote(line)
            else:
                entry[key] += _unquote(line)
    return [e for e in entries if not e.get("obsolete") and e["msgid"] != ""]


def test_the_po_parser_reads_the_catalogue():
    entries = _po_entries(PO_FILE)
    by_id = {(e.get("msgctxt"), e["msgid"]): e for e in entries}
    assert by_id[(None, "My library")]["msgstr"] == {0: "我的数据"}
    assert by_id[("date", "Paid")]["msgstr"] == {0: "付款时间"}
    multiline = by_id[
        (
            None,
            "Download links are personal and expire after a few minutes: open your library to get fresh ones.\n"
            "Each delivery has a receipt listing every file with its size and SHA-256, so you can verify what\n"
            "you received.",
        )
    ]
    assert multiline["msgstr"][0].startswith("下载链接")


def test_the_web_pages_catalogue_is_the_big_one():
    assert len(_po_entries(PO_FILE)) > 400


@pytest.mark.parametrize("po_file", PO_FILES, ids=PO_IDS)
def test_every_message_has_a_chinese_translation(po_file):
    missing = [
        (e.get("msgctxt"), e["msgid"], e["refs"][:3])
        for e in _po_entries(po_file)
        if not all(ENGLISH_ONLY_SOURCES.match(ref) for ref in e["refs"])
        and ("fuzzy" in e["flags"] or not e["msgstr"] or not all(e["msgstr"].values()))
    ]
    assert missing == []


@pytest.mark.parametrize("po_file", PO_FILES, ids=PO_IDS)
def test_translations_keep_every_placeholder_and_tag(po_file):
    placeholder = re.compile(r"%\([a-z_]+\)[sd]|<[^>]+>")
    broken = []
    for e in _po_entries(po_file):
        source = e.get("msgid_plural") or e["msgid"]
        for text in e["msgstr"].values():
            if text and sorted(placeholder.findall(text)) != sorted(placeholder.findall(source)):
                broken.append((e["msgid"], text))
    assert broken == []


@pytest.mark.parametrize("po_file", PO_FILES, ids=PO_IDS)
def test_the_compiled_catalogue_matches_the_po_file(po_file):
    """CI does not run compilemessages: the committed .mo must hold exactly the .po's translations."""
    with po_file.with_suffix(".mo").open("rb") as handle:
        compiled = gettext_module.GNUTranslations(handle)
    stale = []
    for e in _po_entries(po_file):
        if "fuzzy" in e["flags"] or not e["msgstr"].get(0):
            continue
        msgid = e["msgid"] if e.get("msgctxt") is None else f"{e['msgctxt']}\x04{e['msgid']}"
        got = compiled.ngettext(msgid, e["msgid_plural"], 1) if e.get("msgid_plural") else compiled.gettext(msgid)
        if got != e["msgstr"][0]:
            stale.append(e["msgid"])
    assert stale == []


# --- no inline styles or scripts -------------------------------------------------------------------------------

TEMPLATES = sorted(p for p in (BASE / "templates").rglob("*") if p.is_file() and p.suffix in {".html", ".txt"})


def test_there_are_templates_to_check():
    assert len(TEMPLATES) > 40


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(BASE / "templates")))
def test_no_template_has_inline_styles_or_scripts(path):
    """The Content-Security-Policy allows neither: styles live in static/css, scripts in static/js."""
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\sstyle\s*=", text, re.IGNORECASE), "style attribute"
    inline_scripts = [tag for tag in re.findall(r"<script\b[^>]*>", text, re.IGNORECASE) if "src=" not in tag]
    assert inline_scripts == []
    assert not re.search(r"<[a-z][^>]*\son[a-z]+\s*=", text, re.IGNORECASE), "inline event handler"


def test_plan_prices_read_in_the_active_language():
    from django.utils import translation

    from listings.models import PricingPlan

    monthly = PricingPlan(kind="subscription", amount=3000, currency="CNY", interval="month")
    yearly = PricingPlan(kind="subscription", amount=30000, currency="USD", interval="year")
    free = PricingPlan(kind="free", amount=0, currency="CNY")
    with translation.override("en"):
        assert [monthly.price_display, yearly.price_display, free.price_display] == [
            "¥30.00 CNY / month",
            "$300.00 USD / year",
            "Free",
        ]
    with translation.override("zh-hans"):
        assert [monthly.price_display, yearly.price_display, free.price_display] == [
            "¥30.00 CNY / 月",
            "$300.00 USD / 年",
            "免费",
        ]
