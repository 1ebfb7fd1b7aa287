"""The README's REST API walkthrough, run as written against a live server: find, buy in the sandbox, download,
check every file's sha256 against the delivery's receipt."""

import re
from pathlib import Path

import pytest

from accounts.services import api_key_create
from exchange.models import Delivery, Order
from tests.factories import UserFactory, make_listing, make_merchant

README = Path(__file__).resolve().parents[2] / "README.md"


def _walkthrough() -> str:
    text = README.read_text()
    section = text[text.index("## The REST API") :]
    section = section[: section.index("\n## ", 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.django_db(transaction=True)
def test_the_readme_walkthrough_buys_downloads_and_verifies(live_server, monkeypatch, capsys, staff):
    owner = UserFactory(email="walkthrough-merchant@example.com")
    listing = make_listing(merchant=make_merchant(owner, name="Walkthrough Data"), owner=owner, reviewer=staff)
    buyer = UserFactory(email="walkthrough-buyer@example.com")
    _, raw_key = api_key_create(user=buyer, name="walkthrough", scopes=["read", "trade"])
    monkeypatch.setenv("EXCHANGE_URL", live_server.url)
    monkeypatch.setenv("EXCHANGE_API_KEY", raw_key)

    exec(compile(_walkthrough(), "README.md (REST API walkthrough)", "exec"), {})

    order = Order.objects.get(buyer=buyer, listing=listing)
    files = list(Delivery.objects.get(entitlement__order=order).version.files.order_by("pk"))
    assert capsys.readouterr().out.splitlines() == [
        f"{f.original_name}: {f.size} bytes, sha256 matches the receipt" for f in files
    ]
    assert order.status == "delivered"  # the complete download confirmed the delivery and released escrow
