"""common.db's ``any_of`` lookup: ``__in`` bound as one array parameter, as the settlement batch uses it."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from exchange.choices import AccountKind
from exchange.models import LedgerAccount
from exchange.services.ledger import account_get, merchant_accounts
from tests.factories import UserFactory, make_merchant

pytestmark = pytest.mark.django_db


def test_any_of_matches_what_in_matches_with_one_parameter():
    accounts = [account_get(kind=kind) for kind in (AccountKind.GATEWAY_CLEARING, AccountKind.ESCROW_HELD)]
    wanted = [accounts[0].pk, accounts[1].pk, accounts[1].pk + 1000]
    with CaptureQueriesContext(connection) as queries:
        found = sorted(LedgerAccount.objects.filter(pk__any_of=wanted).values_list("pk", flat=True))
    assert found == sorted(LedgerAccount.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    assert found == sorted(account.pk for account in accounts)
    assert "= ANY(" in queries[0]["sql"] and " IN (" not in queries[0]["sql"]


def test_any_of_works_on_text_and_foreign_key_columns_and_matches_nothing_when_empty():
    clearing = account_get(kind=AccountKind.GATEWAY_CLEARING)
    assert list(LedgerAccount.objects.filter(code__any_of=["gateway_clearing", "nope"])) == [clearing]
    assert not LedgerAccount.objects.filter(code__any_of=[]).exists()
    merchant = make_merchant(UserFactory(), name="Any Of Data")
    (payable,) = merchant_accounts(kind=AccountKind.MERCHANT_PAYABLE, merchants={merchant.pk: merchant.name}).values()
    assert payable.name == "Payable to Any Of Data"
    assert list(LedgerAccount.objects.filter(merchant_id__any_of=[merchant.pk])) == [payable]
    assert list(LedgerAccount.objects.filter(merchant__any_of=[merchant.pk])) == [payable]
    assert not LedgerAccount.objects.filter(merchant__any_of=[merchant.pk + 1]).exists()
