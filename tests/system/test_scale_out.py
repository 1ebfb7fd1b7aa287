"""Scale-out (issue 9): two workers on separate queues and one beat, all on one Redis, as on several hosts.

Each worker consumes only its own queue, so work spreads by queue; every task beat sends is executed exactly once,
by the one worker of its queue (the other never sees it).
"""

import os
import re
import sys
import time

import pytest
import redis
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from bench._servers import ServerProcess
from tests.system.conftest import _database_url, wait_for
from tests.system.faults import ROOT, start_worker

SWEEPS = {
    # task: the queue its route sends it to (exchange/settings.py CELERY_TASK_ROUTES)
    "exchange.tasks.payment_events_sweep": "default",
    "exchange.tasks.delivery_sweep": "delivery",
}


def _beat(tmp_path, redis_url: str) -> ServerProcess:
    """One beat on the database scheduler, with the project's own schedule emptied: only this test's entries run."""
    folder = tmp_path / "beat_settings"
    folder.mkdir()
    (folder / "scale_out_beat_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n\nCELERY_BEAT_SCHEDULE = {}\n"
    )
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("CELERY_")},
        "DJANGO_SETTINGS_MODULE": "scale_out_beat_settings",
        "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "celery", "-A", "exchange", "beat", "-l", "info", "--max-interval", "1"]
    argv += ["--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "-s", str(tmp_path / "beat-schedule")]
    return ServerProcess("celery beat", argv, env=env, log_path=tmp_path / "beat.log")


def _unused_redis_url(base_url: str) -> str:
    """A database of the tests' Redis server that no connected client has selected, emptied: the test's own broker.

    Any consumer of another database (a worker some other run left behind on the suite's broker database)
    would take this test's tasks from it and make its counts wrong; on a database nobody else uses, every
    task beat sends can reach only this test's workers.
    """
    client = redis.Redis.from_url(base_url)
    in_use = {int(entry["db"]) for entry in client.client_list()} | {client.connection_pool.connection_kwargs["db"]}
    count = int(client.config_get("databases")["databases"])
    free = [number for number in range(count - 1, 0, -1) if number not in in_use]
    if not free:
        pytest.fail(f"every database of the tests' Redis server has a client connected: {sorted(in_use)}")
    url = f"{base_url.rsplit('/', 1)[0]}/{free[0]}"
    redis.Redis.from_url(url).flushdb()
    return url


def _logs(processes: dict) -> str:
    return "\n".join(f"--- {name} (last lines)\n{process.log_tail(25)}" for name, process in processes.items())


def _received(log: str, task: str) -> list[str]:
    return re.findall(rf"Task {re.escape(task)}\[([0-9a-f-]+)\] received", log)


@pytest.mark.django_db(transaction=True)
def test_two_workers_on_their_queues_and_one_beat_share_one_redis(_private_storage, tmp_path, workers):
    redis_url = _unused_redis_url(settings.REDIS_URL)
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    for task in SWEEPS:
        PeriodicTask.objects.create(name=f"scale-out {task}", task=task, interval=every_second)
    by_queue = {}
    for queue in ("default", "delivery"):
        by_queue[queue] = start_worker(
            tmp_path,
            _private_storage,
            redis_url=redis_url,
            label=queue,
            concurrency=1,
            queues=queue,
            short_visibility=False,
        )
        workers.append(by_queue[queue])
    beat = _beat(tmp_path, redis_url)
    try:
        wait_for(
            lambda: beat.log().count("Sending due task") >= 8,
            timeout=40,
            message=lambda: f"beat to send 8 tasks\n{_logs({'beat': beat, **by_queue})}",
        )
    finally:
        beat.stop()
    sent = {task: len(re.findall(rf"Sending due task [^\n]*\({re.escape(task)}\)", beat.log())) for task in SWEEPS}
    assert all(count >= 2 for count in sent.values()), sent

    def succeeded(queue: str, task: str) -> int:
        return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] succeeded", by_queue[queue].log()))

    wait_for(
        lambda: all(succeeded(queue, task) >= sent[task] for task, queue in SWEEPS.items()),
        timeout=30,
        message=lambda: f"the workers to run every task beat sent: {sent}\n{_logs({'beat': beat, **by_queue})}",
    )
    time.sleep(1)  # anything sent twice would arrive by now
    for task, queue in SWEEPS.items():
        other = "delivery" if queue == "default" else "default"
        ids = _received(by_queue[queue].log(), task)
        # Work spreads by queue: each sweep reaches only its own queue's worker ...
        assert _received(by_queue[other].log(), task) == []
        # ... and each task beat sent runs exactly once: as many executions as sends, no task id twice.
        assert len(ids) == len(set(ids)) == sent[task] == succeeded(queue, task)
