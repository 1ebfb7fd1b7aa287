import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from exchange.choices import SettlementRunStatus
from exchange.models import SettlementRun
from exchange.services.settlement import (
    settlement_run_execute,
    settlement_run_progress,
    settlement_run_start,
    settlement_runs_resume,
)


class Command(BaseCommand):
    help = (
        "Start a settlement run; the settlement workers plan it and settle its batches in parallel. "
        "--now does the whole run in this process; --wait follows a run's progress until it ends; "
        "--resume queues again the lost work of a running run (after a crash) instead of starting one."
    )

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--now", action="store_true", help="execute the run here instead of in the workers")
        group.add_argument("--resume", action="store_true", help="queue again the unfinished work of running runs")
        parser.add_argument("--wait", action="store_true", help="print progress until the run completes or fails")
        parser.add_argument("--timeout", type=int, default=3600, help="seconds --wait waits at most (default 3600)")

    def handle(self, *args, now=False, resume=False, wait=False, timeout=3600, **options):
        if timeout < 1:
            raise CommandError("--timeout must be at least 1 second.")
        if resume:
            resumed = settlement_runs_resume(stalled_after_seconds=0)
            if not resumed:
                raise CommandError("No settlement run is running: nothing to resume.")
            self.stdout.write(f"Queued the unfinished work of settlement run(s) {', '.join(map(str, resumed))}.")
            if wait:
                self._follow(resumed[0], timeout)
            return
        try:
            run = settlement_run_start(trigger="command")
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None
        if now:
            run = settlement_run_execute(run_pk=run.pk)
            self._summary(run)
        elif wait:
            self.stdout.write(f"Settlement run {run.pk} started.")
            self._follow(run.pk, timeout)
        else:
            self.stdout.write(f"Settlement run {run.pk} started; the settlement workers will execute it.")

    def _follow(self, run_pk: int, timeout: int) -> None:
        deadline, last = time.monotonic() + timeout, None
        while True:
            run = SettlementRun.objects.get(pk=run_pk)
            batches_done, orders_settled = settlement_run_progress(run)
            progress = (batches_done, orders_settled)
            if progress != last and run.cutoff is not None:
                self.stdout.write(
                    f"  batches {batches_done}/{run.batches_total}, orders {orders_settled}/{run.orders_total}"
                )
                last = progress
            if run.status != SettlementRunStatus.RUNNING:
                self._summary(run)
                return
            if time.monotonic() > deadline:
                raise CommandError(f"Settlement run {run.pk} is still running after {timeout} s.")
            time.sleep(1)

    def _summary(self, run: SettlementRun) -> None:
        if run.status == SettlementRunStatus.FAILED:
            raise CommandError(f"Settlement run {run.pk} failed: {run.error}")
        self.stdout.write(
            f"Settlement run {run.pk}: {run.status}, {run.orders_settled} orders settled, "
            f"{run.payouts_created} payouts created."
        )
