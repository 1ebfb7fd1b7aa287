"""The webhook endpoint leaves asking for a drain to a per-process thread; the cache reuses its Redis client."""

import json
import threading

import pytest
from django.core.cache import cache
from django.urls import reverse

from exchange.gateways.signing import sign_payload
from exchange.models import PaymentEvent
from exchange.services import payments

pytestmark = pytest.mark.django_db

WAIT = 5  # seconds a test waits for the scheduler thread before failing


class Recorder:
    """Stands in for payment_events_drain_schedule: counts calls; can hold the first one until released."""

    def __init__(self, *, hold_first=False, fail_first=False):
        self.calls = 0
        self.started = threading.Event()
        self.second = threading.Event()
        self.release = threading.Event()
        self.hold_first, self.fail_first = hold_first, fail_first
        if not hold_first:
            self.release.set()

    def __call__(self):
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            self.release.wait(WAIT)
            if self.fail_first:
                raise ConnectionError("the broker is down")
        else:
            self.second.set()


@pytest.fixture
def recorder(monkeypatch):
    def install(**options):
        fake = Recorder(**options)
        monkeypatch.setattr(payments, "payment_events_drain_schedule", fake)
        return fake

    return install


def _signed(event_id):
    body = json.dumps({"id": event_id, "object": "event", "type": "customer.created", "data": {"object": {}}}).encode()
    return body


def test_the_webhook_endpoint_schedules_from_the_background_thread(
    client, settings, recorder, monkeypatch, django_capture_on_commit_callbacks
):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    fake = recorder()
    scheduler = payments.BackgroundDrainScheduler()
    monkeypatch.setattr(payments, "_background_scheduler", scheduler)
    body = _signed("evt_bg_1")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            reverse("exchange:webhook", args=["sandbox"]),
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sign_payload(body=body, secret=settings.SANDBOX_WEBHOOK_SECRET),
        )
    assert response.status_code == 200
    assert callbacks == [scheduler.request]  # the request thread only raised the flag
    assert fake.started.wait(WAIT)  # and the scheduler thread asked for the drain
    stored = PaymentEvent.objects.get(event_id="evt_bg_1")
    assert stored.payload == json.loads(body)  # the verified body, stored as it came


def test_requests_during_a_schedule_share_the_next_one(recorder):
    fake = recorder(hold_first=True)
    scheduler = payments.BackgroundDrainScheduler()
    scheduler.request()
    assert fake.started.wait(WAIT)  # the thread is inside the first schedule
    for _ in range(50):
        scheduler.request()  # events committed meanwhile: each may have been missed by that schedule
    fake.release.set()
    assert fake.second.wait(WAIT)  # so one more schedule follows, after all of them
    assert fake.calls == 2


def test_a_failed_schedule_is_retried(recorder):
    fake = recorder(hold_first=True, fail_first=True)
    scheduler = payments.BackgroundDrainScheduler()
    scheduler.request()
    assert fake.started.wait(WAIT)
    fake.release.set()  # the first schedule raises
    assert fake.second.wait(WAIT)  # the thread tries again about a second later
    assert fake.calls == 2


def test_flush_schedules_a_pending_request_at_once(recorder):
    fake = recorder(hold_first=True)
    scheduler = payments.BackgroundDrainScheduler()
    scheduler.flush()
    assert fake.calls == 0  # nothing pending, nothing to do
    scheduler.request()
    assert fake.started.wait(WAIT)
    scheduler.request()  # pending while the thread is busy: what an exiting process must not drop
    scheduler.flush()
    assert fake.calls == 2
    fake.release.set()
    scheduler.flush()
    assert fake.calls == 2  # flush took the request: the thread has nothing left to do


def test_the_redis_cache_builds_one_client_per_connection_pool():
    client = cache._cache.get_client(write=True)
    assert cache._cache.get_client(write=True) is client
    cache.delete("scheduler-test")
    assert cache.add("scheduler-test", 1, timeout=5) is True
    assert cache.add("scheduler-test", 2, timeout=5) is False
    assert cache.get("scheduler-test") == 1
    cache.delete("scheduler-test")
