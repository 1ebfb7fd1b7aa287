"""Browser tests: Playwright (sync API) driving Debian's chromium against pytest-django's live server.

Every page a test opens is watched: console errors, uncaught page errors, Content-Security-Policy
violations (the policy is report-only outside production, so chromium reports them as console
messages) and static files that fail to load (HTTP >= 400). A test fails if any occurred.
Screenshots go to var/screenshots/<viewport>/ (git ignores var/).

The flows that need the trade's background work (profiling, payment events, delivery, settlement)
use real Celery worker processes: tests/system's ``celery_worker_process`` fixture, imported below.
"""

import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core import mail

# The worker fixtures of the system tests, shared as they are (a conftest's imported fixtures are registered).
from tests.system.conftest import broker, celery_worker_process, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
# How long one browser action or expectation may wait (milliseconds); the test's own timeout bounds the rest.
ACTION_TIMEOUT_MS = 15_000

VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}


# Pages known to be wider than a phone's screen, with why; they are reported as warnings, any other wide page
# fails the test. Remove an entry when its page is fixed.
WIDE_PAGES: dict[str, str] = {}


def page_width(page) -> int:
    """The page's layout width in CSS pixels (more than the screen's when it scrolls sideways)."""
    return page.evaluate("document.documentElement.scrollWidth")


def activate(page, locator) -> None:
    """Click ``locator``, or on a page wider than the screen focus it and press Enter, as a keyboard user would.

    A phone browser zooms a too-wide page out to fit, and Playwright's pointer check then misses the element.
    """
    if page_width(page) > page.viewport_size["width"]:
        locator.press("Enter")
    else:
        locator.click()


def chromium_path() -> str | None:
    """Debian's chromium (the package .ci/run installs), or None when it is missing."""
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class PageProblems:
    """What went wrong in the pages a test opened, as readable lines."""

    def __init__(self):
        self.items: list[str] = []
        self._expected: list[re.Pattern] = []

    @contextmanager
    def expecting(self, pattern: str):
        """Within the block, console errors matching ``pattern`` are what the test provokes (a refused upload)."""
        self._expected.append(re.compile(pattern))
        try:
            yield
        finally:
            self._expected.pop()

    def watch(self, page, label: str) -> None:
        page.on("console", lambda message: self._console(label, page, message))
        page.on("pageerror", lambda error: self.items.append(f"[{label}] page error on {page.url}: {error}"))
        page.on("response", lambda response: self._response(label, response))
        page.on("requestfailed", lambda request: self._request_failed(label, request))

    def _console(self, label, page, message) -> None:
        text = message.text
        if _is_favicon_404(message):
            # Chromium asks every site for /favicon.ico; the exchange has none yet (see the report).
            return
        if any(pattern.search(text) for pattern in self._expected):
            return
        if message.type == "error" or "Content Security Policy" in text:
            self.items.append(f"[{label}] console {message.type} on {page.url}: {text}")

    def _response(self, label, response) -> None:
        if response.status >= 400 and _is_static(response.url):
            self.items.append(f"[{label}] static file {response.url} answered HTTP {response.status}")

    def _request_failed(self, label, request) -> None:
        if _is_static(request.url):
            self.items.append(f"[{label}] static file {request.url} failed: {request.failure}")

    def assert_none(self) -> None:
        assert not self.items, "problems in the browser:\n" + "\n".join(self.items)


def _is_favicon_404(message) -> bool:
    return (
        message.text.startswith("Failed to load resource")
        and urlsplit(message.location.get("url", "")).path == "/favicon.ico"
    )


def _is_static(url: str) -> bool:
    return f"{settings.STATIC_URL.rstrip('/')}/" in url


@pytest.fixture(scope="module")
def browser():
    """One headless chromium per test module."""
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's package (apt-get install chromium)")
        pytest.skip("the browser tests need Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop in this thread, and Django refuses ORM calls while one
    # runs although the calls here are synchronous. Allowed only while this module's browser is open.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    # Chromium's sandbox refuses to run as root (CI runs as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
            yield launched
            launched.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def viewport() -> str:
    """The viewport a test runs in (a key of VIEWPORTS); tests parametrize it."""
    return "desktop"


class Web:
    """The browser side of one test: a context per person (own cookies), each page watched, screenshots."""

    def __init__(self, *, browser, base_url: str, viewport: str):
        self.browser = browser
        self.base_url = base_url
        self.viewport = viewport
        self.problems = PageProblems()
        self.contexts = []
        self.pages: dict[str, object] = {}
        self.screenshot_dir = SCREENSHOTS / viewport
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)

    def page(self, label: str):
        """A fresh page in a context of its own (a person with an empty cookie jar), watched for problems."""
        context = self.browser.new_context(base_url=self.base_url, locale="en-US", **VIEWPORTS[self.viewport])
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()
        self.problems.watch(page, label)
        self.pages[label] = page
        return page

    def screenshot(self, page, name: str) -> Path:
        """Write the whole page to var/screenshots/<viewport>/<name>.png, and check that it fits the screen."""
        path = self.screenshot_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.check_width(page, name)
        return path

    def check_width(self, page, name: str) -> None:
        """A page wider than the screen (a phone user scrolls sideways) is a problem, unless known (WIDE_PAGES)."""
        width = page_width(page)
        screen = page.viewport_size["width"]
        if width <= screen:
            return
        line = f"[{name}] the page is {width}px wide on a {screen}px screen"
        if name in WIDE_PAGES:
            warnings.warn(f"{line}: {WIDE_PAGES[name]}", stacklevel=2)
        else:
            self.problems.items.append(line)

    def keep_evidence(self) -> None:
        """After a failure: each person's page as a screenshot and its HTML, named failure-<person>."""
        for label, page in self.pages.items():
            try:
                page.screenshot(path=str(self.screenshot_dir / f"failure-{label}.png"), full_page=True)
                (self.screenshot_dir / f"failure-{label}.html").write_text(page.content())
            except Exception as exc:  # the page may be gone; the evidence is a courtesy
                print(f"could not keep the {label} page: {exc}")

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def web(request, browser, live_server, viewport, settings):
    """The browser for one test against the live server; the test fails if a page showed a problem.

    When the test fails, each page is kept as var/screenshots/<viewport>/failure-<person>.png and .html.
    """
    # Links in emails and notifications point at the live server.
    settings.SITE_URL = live_server.url
    session = Web(browser=browser, base_url=live_server.url, viewport=viewport)
    yield session
    report = getattr(request.node, "e2e_call_report", None)
    if report is None or report.failed:
        session.keep_evidence()
    session.close()
    session.problems.assert_none()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep the call phase's report on the test item, for the ``web`` fixture's teardown."""
    report = yield
    if report.when == "call":
        item.e2e_call_report = report
    return report


def email_link(*, to: str, pattern: str, timeout: float = 10.0) -> str:
    """The first URL matching ``pattern`` in a message sent to ``to`` (the live server uses locmem mail)."""

    def find():
        for message in mail.outbox:
            if to in message.to:
                match = re.search(pattern, message.body)
                if match:
                    return match.group(0)
        return None

    return wait_for(find, timeout=timeout, message=f"an email to {to} with a link matching {pattern}")
