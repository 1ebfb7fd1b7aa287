import time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from exchange.choices import PayoutStatus, SettlementRunStatus
from exchange.models import Payout, SettlementRun
from exchange.services.settlement import (
    HELD_FOR_REVIEW,
    payout_resolve,
    payouts_stuck,
    payouts_sweep,
    settlement_run_execute,
    settlement_run_progress,
    settlement_run_start,
    settlement_runs_resume,
)


class Command(BaseCommand):
    help = (
        "Start a settlement run; the settlement workers plan it and settle its batches in parallel. "
        "--now does the whole run in this process, payouts included, without the broker; --wait follows a run's "
        "progress until it ends; --resume queues again the lost work of a running run (after a crash) instead of "
        "starting one. --payouts lists the payouts still pending and queues their sends again; --payout-sent and "
        "--payout-not-sent record what the gateway shows for a payout held for review."
    )

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--now", action="store_true", help="execute the run here instead of in the workers")
        group.add_argument("--resume", action="store_true", help="queue again the unfinished work of running runs")
        group.add_argument(
            "--payouts",
            action="store_true",
            help="list pending payouts; queue again the sends of those pending longer than PAYOUT_SWEEP_AGE_SECONDS",
        )
        group.add_argument(
            "--payout-sent",
            nargs=2,
            metavar=("PAYOUT", "TRANSFER"),
            help="a payout held for review was paid: the gateway shows this transfer for it",
        )
        group.add_argument(
            "--payout-not-sent",
            type=int,
            metavar="PAYOUT",
            help="a payout held for review was not paid: its money goes back to the merchant for the next run",
        )
        parser.add_argument("--wait", action="store_true", help="print progress until the run completes or fails")
        parser.add_argument("--timeout", type=int, default=3600, help="seconds --wait waits at most (default 3600)")

    def handle(self, *args, now=False, resume=False, wait=False, timeout=3600, **options):
        if timeout < 1:
            raise CommandError("--timeout must be at least 1 second.")
        if options.get("payouts"):
            self._payouts()
            return
        if options.get("payout_sent") or options.get("payout_not_sent") is not None:
            self._resolve(options.get("payout_sent"), options.get("payout_not_sent"))
            return
        if resume:
            resumed = settlement_runs_resume(stalled_after_seconds=0)
            if not resumed:
                raise CommandError("No settlement run is running: nothing to resume.")
            self.stdout.write(f"Queued the unfinished work of settlement run(s) {', '.join(map(str, resumed))}.")
            if wait:
                self._follow(resumed[0], timeout)
            return
        try:
            # --now queues nothing: the run, its batches and its payouts are all done here, broker or not.
            run = settlement_run_start(trigger="command", queue=not now)
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None
        if now:
            self._now(run.pk)
        elif wait:
            self.stdout.write(f"Settlement run {run.pk} started.")
            self._follow(run.pk, timeout)
        else:
            self.stdout.write(f"Settlement run {run.pk} started; the settlement workers will execute it.")

    def _now(self, run_pk: int) -> None:
        try:
            run = settlement_run_execute(run_pk=run_pk, queue=False)
        except Exception as exc:
            run = SettlementRun.objects.get(pk=run_pk)
            if run.status == SettlementRunStatus.RUNNING:
                raise CommandError(
                    f"Settlement run {run_pk} stopped: {type(exc).__name__}: {exc}. It is still running; "
                    "continue it with `manage.py settle --resume` (workers) once the cause is fixed."
                ) from exc
            raise CommandError(
                f"Settlement run {run_pk} failed: {run.error}. What it settled stays settled; "
                "the next run settles the rest."
            ) from exc
        self._summary(run)
        counts = {status: run.payouts.filter(status=status).count() for status in PayoutStatus.values}
        if run.payouts_created:
            self.stdout.write(
                f"Payouts: {counts[PayoutStatus.SENT]} sent, {counts[PayoutStatus.FAILED]} refused "
                f"(paid again by the next run), {counts[PayoutStatus.PENDING]} pending (sent again by the payout "
                "sweep; see `manage.py settle --payouts`)."
            )

    def _payouts(self) -> None:
        pending = list(payouts_stuck())
        if not pending:
            self.stdout.write("No payout is pending.")
            return
        swept = payouts_sweep(older_than_seconds=settings.PAYOUT_SWEEP_AGE_SECONDS)
        held = set(swept.held)
        for payout in Payout.objects.filter(pk__in=swept.looked_up).select_related("merchant").order_by("pk"):
            outcome = (
                f"sent as transfer {payout.gateway_reference}"
                if payout.status == PayoutStatus.SENT
                else "not sent: its money is owed again and the next run pays it"
            )
            self.stdout.write(
                f"payout {payout.pk}: {payout.merchant.name} {payout.amount_display}, past its gateway's "
                f"idempotency window; the gateway was asked: {outcome}"
            )
        for payout in payouts_stuck():  # again: the sweep may have held some
            state = (
                "held for review"
                if payout.pk in held or payout.error.startswith(HELD_FOR_REVIEW)
                else "queued again"
                if payout.pk in swept.queued
                else "waiting for its task"
            )
            self.stdout.write(
                f"payout {payout.pk}: {payout.merchant.name} {payout.amount_display}, run {payout.run_id}, "
                f"created {payout.created_at:%Y-%m-%d %H:%M}, {payout.attempts} attempts, {state}"
                + (f": {payout.error}" if payout.error else "")
            )

    def _resolve(self, sent, not_sent) -> None:
        payout_pk, transfer = (sent[0], sent[1]) if sent else (not_sent, "")
        if sent and not transfer.strip():
            # An empty reference means "no transfer" to payout_resolve: never let an unset variable say that.
            raise CommandError("--payout-sent needs the transfer's id at the gateway; use --payout-not-sent if none.")
        try:
            payout = payout_resolve(payout_pk=int(payout_pk), transfer_reference=transfer)
        except ValueError:
            raise CommandError(f"{payout_pk!r} is not a payout number.") from None
        except Payout.DoesNotExist:
            raise CommandError(f"There is no payout {payout_pk}.") from None
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None
        self.stdout.write(f"Payout {payout.pk}: {payout.status}.")

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
