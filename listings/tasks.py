"""Celery tasks for listings. Each takes primary keys, is safe to run twice,
and retries only errors that may pass (database or network hiccups)."""

import logging
from datetime import timedelta

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from listings import profiling
from listings.choices import ProfileStatus
from listings.models import DataFile

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 300, "max_retries": 8}


@shared_task(**RETRY)
def datafile_profile(data_file_pk: int) -> str:
    """Profile an uploaded file (listings.profiling.datafile_profile_run)."""
    try:
        data_file = profiling.datafile_profile_run(data_file_pk=data_file_pk)
    except DataFile.DoesNotExist:
        return f"data file {data_file_pk}: gone"
    return f"data file {data_file.pk}: {data_file.profile_status}"


@shared_task
def datafile_profile_sweep(older_than_seconds: int = 600) -> int:
    """Re-enqueue files still waiting for profiling (a lost broker message, a dead worker)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    waiting = list(
        DataFile.objects.filter(profile_status=ProfileStatus.PENDING, created_at__lt=cutoff).values_list(
            "pk", flat=True
        )[:1000]
    )
    for pk in waiting:
        datafile_profile.delay(pk)
    if waiting:
        log.info("re-enqueued %d data files waiting for profiling", len(waiting))
    return len(waiting)
