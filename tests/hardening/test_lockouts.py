"""Login lockouts (django-axes) on allauth's and the admin's login, and allauth's rate limits (issue 9)."""

import datetime
import threading

import pytest
import time_machine
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib.sessions.models import Session
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.urls import reverse

from accounts.models import User
from tests.factories import PASSWORD, UserFactory

WRONG = "not-the-password"
ATTEMPTS = 200
# PostgreSQL allows 100 connections and other test runs share the server: at most this many requests hold a
# connection at once; the rest of the 200 threads wait at the semaphore and go in as soon as one finishes.
IN_FLIGHT = 40


def _login(client, email, password, ip="127.0.0.1"):
    return client.post(reverse("account_login"), {"login": email, "password": password}, REMOTE_ADDR=ip)


def _admin_login(client, email, password, ip="127.0.0.1"):
    return client.post(
        reverse("admin:login"), {"username": email, "password": password, "next": "/admin/"}, REMOTE_ADDR=ip
    )


def _signed_in(client) -> bool:
    return "_auth_user_id" in client.session


def _authenticated_sessions() -> int:
    return sum(1 for s in Session.objects.all() if "_auth_user_id" in s.get_decoded())


@pytest.fixture
def no_allauth_limits(settings):
    """allauth's own limits would answer first; switched off where the test is about axes alone."""
    settings.ACCOUNT_RATE_LIMITS = False


@pytest.mark.django_db
def test_five_wrong_passwords_lock_the_account_on_allauths_login(client, no_allauth_limits):
    user = UserFactory(email="victim@example.com")
    for n in range(4):
        response = _login(client, "victim@example.com", WRONG, ip=f"10.0.0.{n + 1}")
        assert response.status_code == 200  # the form again, with its error
    # The fifth failure locks (counted per username, whatever the address): a friendly 429 page.
    fifth = _login(client, "Victim@Example.com", WRONG, ip="10.0.0.9")
    assert fifth.status_code == 429
    assert "Too many sign-in attempts" in fifth.content.decode()
    assert "After 5 wrong passwords" in fifth.content.decode()
    right = _login(Client(), "victim@example.com", PASSWORD, ip="10.9.9.9")
    assert right.status_code == 429
    assert _authenticated_sessions() == 0
    # A refused attempt during the lockout counts too (and restarts the cool-off): a guesser who keeps going
    # stays locked out.
    assert AccessAttempt.objects.filter(username="victim@example.com").aggregate(n=Sum("failures_since_start")) == {
        "n": 6
    }
    # Nothing typed into the form is stored by axes.
    assert all(PASSWORD not in a.post_data and WRONG not in a.post_data for a in AccessAttempt.objects.all())
    # After the cool-off (15 minutes by default) the right password works, and resets the count.
    with time_machine.travel(datetime.timedelta(minutes=15, seconds=1)):
        fresh = Client()
        ok = _login(fresh, "victim@example.com", PASSWORD)
        assert ok.status_code == 302 and ok.url == "/"
        assert int(fresh.session["_auth_user_id"]) == user.pk
    assert AccessAttempt.objects.filter(username="victim@example.com").count() == 0


@pytest.mark.django_db
def test_the_admin_login_locks_too_and_shares_the_count_with_allauths(client, no_allauth_limits):
    UserFactory(email="boss@example.com", is_staff=True, is_superuser=True)
    for _ in range(3):
        assert _login(client, "boss@example.com", WRONG).status_code == 200
    assert _admin_login(client, "boss@example.com", WRONG).status_code == 200
    locked = _admin_login(client, "boss@example.com", WRONG)
    assert locked.status_code == 429
    assert "Too many sign-in attempts" in locked.content.decode()
    admin_client = Client()
    assert _admin_login(admin_client, "boss@example.com", PASSWORD).status_code == 429
    assert not _signed_in(admin_client)
    assert admin_client.get("/admin/").status_code == 302  # still asked to sign in


@pytest.mark.django_db
def test_staff_unlock_an_account_in_the_admin(client, staff, no_allauth_limits):
    UserFactory(email="locked@example.com")
    for _ in range(5):
        _login(Client(), "locked@example.com", WRONG)
    assert _login(Client(), "locked@example.com", PASSWORD).status_code == 429
    client.force_login(staff)
    changelist = reverse("admin:axes_accessattempt_changelist")
    page = client.get(changelist)
    assert page.status_code == 200 and "locked@example.com" in page.content.decode()
    pks = list(AccessAttempt.objects.values_list("pk", flat=True))
    response = client.post(changelist, {"action": "delete_selected", "_selected_action": pks, "post": "yes"})
    assert response.status_code == 302
    assert AccessAttempt.objects.count() == 0
    ok = _login(Client(), "locked@example.com", PASSWORD)
    assert ok.status_code == 302 and ok.url == "/"


@pytest.mark.django_db
def test_a_bad_form_locks_nothing_and_a_blank_login_counts_against_no_one(client, no_allauth_limits):
    UserFactory(email="someone@example.com")
    for _ in range(6):
        assert client.post(reverse("account_login"), {"login": "", "password": WRONG}).status_code == 200
    assert AccessAttempt.objects.count() == 0
    ok = _login(Client(), "someone@example.com", PASSWORD)
    assert ok.status_code == 302 and ok.url == "/"


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_wrong_passwords_never_get_in_and_lock_the_account(no_allauth_limits, settings):
    user = UserFactory(email="target@example.com")
    start = threading.Barrier(ATTEMPTS)
    gate = threading.BoundedSemaphore(IN_FLIGHT)
    results: list[tuple[int, str, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def attempt(n: int):
        client = Client()
        try:
            start.wait(timeout=30)
            with gate:
                try:
                    response = _login(client, "target@example.com", f"{WRONG}-{n}", ip=f"10.1.{n // 250}.{n % 250 + 1}")
                    with lock:
                        results.append((response.status_code, response.get("Location", ""), _signed_in(client)))
                finally:
                    connection.close()
        except BaseException as exc:  # reported below: a thread cannot raise into the test
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(ATTEMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == ATTEMPTS
    # No one got in: no redirect to the signed-in page, no session signed in, on any client or in the database.
    assert {signed_in for _, _, signed_in in results} == {False}
    assert {location for _, location, _ in results} == {""}
    assert _authenticated_sessions() == 0
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}
    # Every attempt was counted (row lock and F() + 1: none lost), and exactly the ones that saw the count
    # still under the limit answered with the form again.
    recorded = AccessAttempt.objects.filter(username="target@example.com").aggregate(n=Sum("failures_since_start"))["n"]
    assert recorded == ATTEMPTS
    assert AccessFailureLog.objects.filter(username="target@example.com").count() == ATTEMPTS
    assert statuses.count(200) == AccessFailureLog.objects.filter(locked_out=False).count()
    assert statuses.count(200) <= 4
    assert statuses.count(429) == ATTEMPTS - statuses.count(200)
    # Locked: the right password is refused too, until the cool-off has passed.
    right = Client()
    assert _login(right, "target@example.com", PASSWORD).status_code == 429
    assert not _signed_in(right)
    with time_machine.travel(datetime.timedelta(minutes=16)):
        ok = _login(right, "target@example.com", PASSWORD)
        assert ok.status_code == 302 and ok.url == "/"
        assert int(right.session["_auth_user_id"]) == user.pk
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_allauth_limits_signups_per_address_in_the_shared_cache(client, settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "signup": "3/10m/ip"}

    def signup(n, ip="192.0.2.10"):
        data = {"email": f"new{n}@example.com", "password1": "a-long-unusual-pass", "password2": "a-long-unusual-pass"}
        return client.post(reverse("account_signup"), data, REMOTE_ADDR=ip)

    for n in range(3):
        assert signup(n).status_code == 302
        client.logout()
    refused = signup(3)
    assert refused.status_code == 429
    assert not User.objects.filter(email="new3@example.com").exists()
    assert User.objects.count() == 3
    # Another address is not limited.
    assert signup(4, ip="192.0.2.11").status_code == 302
    assert User.objects.filter(email="new4@example.com").exists()


def test_the_configured_limits():
    from django.conf import settings

    assert (settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME) == (5, 0.25)
    assert settings.AXES_LOCKOUT_PARAMETERS == ["username"]
    assert settings.AXES_HANDLER == "axes.handlers.database.AxesDatabaseHandler"
    assert settings.ACCOUNT_RATE_LIMITS["login_failed"] == "10/m/ip,5/5m/key"
    assert settings.ACCOUNT_RATE_LIMITS["signup"] == "10/10m/ip"
    assert settings.AUTHENTICATION_BACKENDS[0] == "audit.lockouts.AxesRequestBackend"
