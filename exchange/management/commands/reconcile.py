from django.core.management.base import BaseCommand, CommandError

from exchange.services.reconciliation import reconciliation_report, reconciliation_since


class Command(BaseCommand):
    help = (
        "Compare the ledger with the payment gateway's records (sandbox or Stripe balance transactions); print the "
        "matched count and every difference; exit 1 when there are differences."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", default="", help="Only records from this day on (YYYY-MM-DD).")
        parser.add_argument("--gateway", default="", help="sandbox or stripe (default: settings.PAYMENT_GATEWAY).")

    def handle(self, *args, since="", gateway="", **options):
        try:
            report = reconciliation_report(gateway=gateway or None, since=reconciliation_since(since))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        scope = f" since {since}" if since else ""
        self.stdout.write(f"Reconciliation with {report.gateway}{scope}: {report.matched} matched.")
        for note in report.notes:
            self.stdout.write(f"note: {note}")
        if report.differences:
            for difference in report.differences:
                self.stdout.write(str(difference))
            raise CommandError(f"{len(report.differences)} difference(s) between the ledger and {report.gateway}.")
        self.stdout.write(self.style.SUCCESS("No differences."))
