from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from exchange.services.settlement import settlement_run_execute, settlement_run_start


class Command(BaseCommand):
    help = "Start a settlement run. By default a settlement worker executes it; --now runs it in this process."

    def add_arguments(self, parser):
        parser.add_argument("--now", action="store_true", help="execute the run here instead of in a worker")

    def handle(self, *args, now=False, **options):
        try:
            run = settlement_run_start(trigger="command")
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None
        if now:
            run = settlement_run_execute(run_pk=run.pk)
            self.stdout.write(
                f"Settlement run {run.pk}: {run.status}, {run.orders_settled} orders settled, "
                f"{run.payouts_created} payouts created."
            )
        else:
            self.stdout.write(f"Settlement run {run.pk} started; a settlement worker will execute it.")
