from django.core.management.base import BaseCommand, CommandError

from exchange.services.ledger import ledger_verify


class Command(BaseCommand):
    help = "Recompute the ledger's hash chain and every entry's balance; report the first break."

    def handle(self, *args, **options):
        result = ledger_verify()
        if not result.ok:
            raise CommandError(f"Ledger broken at entry #{result.first_break}: {result.message}")
        self.stdout.write(self.style.SUCCESS(f"Ledger OK: {result.message}."))
