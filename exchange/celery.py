"""The Celery application. Configuration lives in settings under CELERY_*."""

import os

from celery import Celery
from celery.signals import task_postrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")

app = Celery("exchange")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_postrun.connect
def _retire_database_connections(sender=None, **kwargs) -> None:
    """After each task, what Django does after each request: close connections that broke or grew old.

    Celery's own fixup reuses connections for CELERY_DB_REUSE_MAX tasks
    (settings) without looking at them; this keeps a connection that an error
    left unusable, or that passed CONN_MAX_AGE, from reaching the next task.
    """
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
