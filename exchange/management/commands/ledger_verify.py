from django.core.management.base import BaseCommand, CommandError

from exchange.services.ledger import ledger_verify_record


class Command(BaseCommand):
    help = (
        "Recompute the ledger's hash chain and every balance, store the outcome as a LedgerVerification, "
        "print a one-line summary; exit 1 naming the first broken entry."
    )

    def handle(self, *args, **options):
        record = ledger_verify_record(trigger="command")
        took = (record.finished_at - record.started_at).total_seconds()
        if not record.ok:
            where = record.break_location
            raise CommandError(
                f"Ledger BROKEN at {where}: {record.message} "
                f"({record.entries_checked} entries verified before it; verification {record.pk})."
            )
        self.stdout.write(self.style.SUCCESS(f"Ledger OK: {record.message} in {took:.2f}s (verification {record.pk})."))
