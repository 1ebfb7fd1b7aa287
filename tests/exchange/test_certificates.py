"""Transaction certificates: issued once by settlement, signed with Ed25519, verifiable by anyone with the public key,
checked against the ledger by the exchange; the printable page only for the trade's parties."""

import base64
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse

from audit.models import AuditEvent
from exchange.choices import AccountKind, JournalKind, OrderStatus
from exchange.models import JournalEntry, LedgerBlock, Order, Posting, TransactionCertificate
from exchange.services import certificates as certs
from exchange.services.certificates import (
    MAX_DOCUMENT_BYTES,
    CertificateInputError,
    canonical_bytes,
    certificate_bundle,
    certificate_issue,
    certificate_sign,
    certificate_verify,
)
from exchange.services.ledger import GENESIS_HASH, entry_rehash
from exchange.services.settlement import settlement_run_execute, settlement_run_start
from exchange.signing_key import _loaded, signing_key
from listings.services.review import version_manifest
from tests.exchange.helpers import approve_in_sandbox, library_links, read_stream
from tests.factories import make_listing

pytestmark = pytest.mark.django_db

FREE_PLAN = ({"kind": "free", "amount": 0, "name": "Sample"},)


@pytest.fixture(autouse=True)
def _own_signing_key(settings, tmp_path):
    """Each test signs with a key of its own, generated on first use in its tmp folder."""
    settings.EXCHANGE_SIGNING_KEY_FILE = tmp_path / "keys" / "signing_key.pem"
    yield settings.EXCHANGE_SIGNING_KEY_FILE
    _loaded.pop(settings.EXCHANGE_SIGNING_KEY_FILE.resolve(), None)


@pytest.fixture
def listing(merchant, merchant_user, staff, categories):
    return make_listing(merchant=merchant, owner=merchant_user, reviewer=staff, extra_plans=FREE_PLAN)


def _buy_and_settle(client, buyer, listing, capture, kind="one_time") -> Order:
    """Buy through the sandbox, download (which delivers the order), then run settlement: the real pipeline."""
    client.force_login(buyer)
    plan = listing.plans.get(kind=kind, is_active=True)
    with capture(execute=True):
        client.post(
            reverse("exchange:order_buy", args=[listing.slug]),
            {"accept_licence": "1", "token": "5c1d5d9e-7b86-4a57-8f4d-5b0f6a2a4c11", "plan": plan.pk},
        )
        order = Order.objects.get(plan=plan)
        if order.status == OrderStatus.PENDING_PAYMENT:
            approve_in_sandbox(client, order.checkout_url)
    link = library_links(client.get(reverse("exchange:library")).content.decode())[0]
    read_stream(client.get(link))
    with capture(execute=True):
        settlement_run_start(trigger="test")
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLED
    client.logout()
    return order


@pytest.fixture
def settled(client, buyer, listing, django_capture_on_commit_callbacks, settings):
    settings.PLATFORM_FEE_BPS = 1000
    return _buy_and_settle(client, buyer, listing, django_capture_on_commit_callbacks)


def _bundle_post(client, body, content_type="application/json"):
    return client.post(reverse("certificates:api_verify"), body, content_type=content_type)


def _snapshot():
    return list(TransactionCertificate.objects.order_by("pk").values_list("pk", "number", "document", "signature"))


def _written():
    """Everything verification could conceivably write: certificates, the ledger, the audit log."""
    return (
        _snapshot(),
        JournalEntry.objects.count(),
        Posting.objects.count(),
        LedgerBlock.objects.count(),
        AuditEvent.objects.count(),
    )


def test_a_settled_trade_gets_exactly_one_certificate_with_these_facts(settled, buyer, listing, settings):
    certificate = TransactionCertificate.objects.get()
    sale = JournalEntry.objects.get(kind=JournalKind.SALE, order=settled)
    delivery = settled.entitlement.deliveries.get()
    assert (certificate.order_id, certificate.journal_entry_id) == (settled.pk, sale.pk)
    assert certificate.number == f"DX-{certificate.issued_at.year}-{settled.pk:08d}"
    assert certificate.key_id == signing_key().key_id and len(certificate.key_id) == 16
    document = json.loads(certificate.document)
    assert document == {
        "type": "dx.transaction_certificate",
        "version": "1",
        "number": certificate.number,
        "issued_at": certificate.issued_at.isoformat(),
        "issuer": settings.SITE_URL,
        "key_id": certificate.key_id,
        "order": {"reference": settled.reference, "public_id": str(settled.public_id)},
        "product": {
            "title": "City populations",
            "registration_number": listing.registration_number,
            "slug": listing.slug,
        },
        "versions": [
            {
                "label": delivery.version.label,
                "delivered_at": delivery.ready_at.isoformat(),
                "manifest": version_manifest(version=delivery.version),
            }
        ],
        "buyer": {"name": f"Buyer #{buyer.pk}"},
        "merchant": {"name": "Guiyang Data"},
        "price": {"amount": 1234, "currency": "CNY"},
        "buyer_service_fee": {"amount": 0, "currency": "CNY"},
        "refunded": {"amount": 0, "currency": "CNY"},
        "platform_fee": {"amount": 123, "currency": "CNY"},
        "merchant_proceeds": {"amount": 1111, "currency": "CNY"},
        "paid_at": settled.paid_at.isoformat(),
        "delivered_at": settled.delivered_at.isoformat(),
        "settled_at": settled.settled_at.isoformat(),
        "ledger_entry": {"sequence": sale.sequence, "entry_hash": sale.entry_hash},
    }
    assert listing.registration_number and document["versions"][0]["manifest"][0]["sha256"]
    assert buyer.email not in certificate.document
    # Stored exactly as signed: the canonical form of its own content.
    assert canonical_bytes(document) == certificate.document.encode("utf-8")

    # Settling again (a new run, or the same order handed to the hook twice) issues nothing more.
    settlement_run_execute(run_pk=settlement_run_start(trigger="test").pk)
    again = certificate_issue(order=settled, journal_entry=sale)
    assert again.pk == certificate.pk and _snapshot() == [
        (certificate.pk, certificate.number, certificate.document, certificate.signature)
    ]


def test_the_buyer_is_named_as_they_chose(client, buyer, listing, django_capture_on_commit_callbacks):
    buyer.display_name = "贵阳交通研究院"
    buyer.save(update_fields=["display_name"])
    order = _buy_and_settle(client, buyer, listing, django_capture_on_commit_callbacks)
    document = json.loads(TransactionCertificate.objects.get(order=order).document)
    assert document["buyer"] == {"name": "贵阳交通研究院"}
    assert "贵阳交通研究院" in TransactionCertificate.objects.get().document  # UTF-8 as is, not \u escapes


def test_a_free_trade_gets_a_certificate_naming_no_ledger_entry(
    client, buyer, listing, django_capture_on_commit_callbacks
):
    order = _buy_and_settle(client, buyer, listing, django_capture_on_commit_callbacks, kind="free")
    certificate = TransactionCertificate.objects.get(order=order)
    document = json.loads(certificate.document)
    assert certificate.journal_entry is None and JournalEntry.objects.count() == 0
    assert (document["ledger_entry"], document["price"], document["platform_fee"], document["paid_at"]) == (
        None,
        {"amount": 0, "currency": "CNY"},
        {"amount": 0, "currency": "CNY"},
        order.paid_at.isoformat(),
    )
    result = certificate_verify(document=certificate.document, signature=certificate.signature)
    assert (result.valid, result.reasons) == (True, [])


def test_the_signature_verifies_with_the_public_key_alone(client, settled):
    certificate = TransactionCertificate.objects.get()
    pem = client.get(reverse("certificates:public_key"))
    assert pem.status_code == 200 and pem["X-Key-Id"] == certificate.key_id
    public_key = load_pem_public_key(pem.content)
    assert isinstance(public_key, Ed25519PublicKey)
    public_key.verify(base64.b64decode(certificate.signature), certificate.document.encode("utf-8"))
    api = client.get(reverse("certificates:api_public_key")).json()
    assert api == {
        "algorithm": "Ed25519",
        "key_id": certificate.key_id,
        "public_key_pem": pem.content.decode(),
        "retired_keys": [],
    }


def test_the_genuine_bundle_checks_out_everywhere(client, settled, buyer):
    certificate = TransactionCertificate.objects.get()
    client.force_login(buyer)
    download = client.get(reverse("certificates:bundle", args=[certificate.number]))
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="{certificate.number}.json"'
    bundle = json.loads(download.content)
    assert bundle == {
        "format": "dx-certificate-bundle",
        "version": "1",
        "number": certificate.number,
        "key_id": certificate.key_id,
        "document": certificate.document,
        "signature": certificate.signature,
    }
    client.logout()
    answer = _bundle_post(client, download.content)
    assert answer.status_code == 200
    assert answer.json() == {
        "valid": True,
        "signature_ok": True,
        "ledger_ok": True,
        "known": True,
        "bundle_ok": True,
        "reasons": [],
        "number": certificate.number,
        "key_id": certificate.key_id,
    }
    page = client.post(reverse("certificates:verify"), {"bundle": download.content.decode()})
    assert page.status_code == 200 and "Verified: this certificate is genuine" in page.content.decode()
    public = client.get(reverse("certificates:verify_number", args=[certificate.number]))
    assert public.status_code == 200 and "Verified: this certificate is genuine" in public.content.decode()
    # Anyone may open it by number, so it names no buyer, order or amount.
    document = json.loads(certificate.document)
    shown = public.content.decode()
    assert document["buyer"]["name"] not in shown and document["order"]["reference"] not in shown
    assert "Platform fee" not in shown and "Price" not in shown
    assert document["product"]["title"] in shown and document["ledger_entry"]["entry_hash"] in shown


def test_one_byte_changed_fails_the_signature(client, settled):
    certificate = TransactionCertificate.objects.get()
    tampered = certificate.document.replace('"name":"Guiyang Data"', '"name":"Guiyang Dbta"')
    assert len(tampered) == len(certificate.document) and tampered != certificate.document
    result = certificate_verify(document=tampered, signature=certificate.signature)
    assert (result.signature_ok, result.ledger_ok, result.known, result.valid) == (False, True, False, False)
    assert result.reasons == [
        "The signature does not match the document (it was altered, or not signed by this exchange).",
        f"Certificate {certificate.number} was issued with a different document.",
    ]
    bundle = {**certificate_bundle(certificate), "document": tampered}
    answer = _bundle_post(client, json.dumps(bundle))
    assert answer.status_code == 200 and answer.json()["valid"] is False and answer.json()["signature_ok"] is False
    page = client.post(reverse("certificates:verify"), {"bundle": json.dumps(bundle)})
    html = page.content.decode()
    assert page.status_code == 200 and "NOT verified" in html and "Signature: <strong>invalid</strong>" in html
    assert '<div class="card certificate">' not in html  # a document failing its signature is not shown as facts


def test_a_signature_by_another_key_fails(settled):
    certificate = TransactionCertificate.objects.get()
    foreign = base64.b64encode(Ed25519PrivateKey.generate().sign(certificate.document.encode())).decode()
    result = certificate_verify(document=certificate.document, signature=foreign)
    assert (result.signature_ok, result.ledger_ok, result.known) == (False, True, True)
    assert not result.valid


def test_a_document_naming_a_ledger_entry_with_another_hash_fails_the_ledger_check(settled):
    certificate = TransactionCertificate.objects.get()
    document = json.loads(certificate.document)
    sequence = document["ledger_entry"]["sequence"]
    document["ledger_entry"]["entry_hash"] = "ab" * 32
    forged = canonical_bytes(document)
    # Signed with the exchange's own key: the signature holds, only the ledger (and the register) can tell.
    result = certificate_verify(document=forged, signature=certificate_sign(document_bytes=forged))
    assert (result.signature_ok, result.ledger_ok, result.known) == (True, False, False)
    assert result.reasons == [
        f"Ledger entry #{sequence} has a different hash than the document states.",
        f"Certificate {certificate.number} was issued with a different document.",
    ]
    # Another order's entry, with its true hash, does not vouch for this trade either.
    payment = JournalEntry.objects.get(kind=JournalKind.PAYMENT, order=settled)
    document["ledger_entry"] = {"sequence": payment.sequence, "entry_hash": payment.entry_hash}
    document["order"]["public_id"] = "00000000-0000-0000-0000-000000000000"
    forged = canonical_bytes(document)
    result = certificate_verify(document=forged, signature=certificate_sign(document_bytes=forged))
    assert not result.ledger_ok
    assert f"Ledger entry #{payment.sequence} does not belong to the order the document names." in result.reasons
    # No such entry at all.
    document["ledger_entry"] = {"sequence": 10_000, "entry_hash": payment.entry_hash}
    forged = canonical_bytes(document)
    result = certificate_verify(document=forged, signature=certificate_sign(document_bytes=forged))
    assert not result.ledger_ok and "The ledger has no entry #10000." in result.reasons


def test_unknown_numbers_are_404_everywhere(client, settled, staff):
    client.force_login(staff)
    for name in ("certificates:verify_number", "certificates:detail", "certificates:bundle", "certificates:api_detail"):
        assert client.get(reverse(name, args=["DX-2026-99999999"])).status_code == 404, name
    assert client.get(reverse("certificates:api_detail", args=["DX-2026-99999999"])).json() == {
        "error": {"code": "not_found", "message": "No such certificate."}
    }


@pytest.mark.parametrize(
    ("persona", "status"),
    [
        ("anonymous", 404),
        ("other_buyer", 404),
        ("other_merchant_user", 404),
        ("buyer", 200),
        ("merchant_user", 200),
        ("staff", 200),
    ],
)
def test_the_printable_page_bundle_and_api_are_for_the_trade_parties_only(request, client, settled, persona, status):
    user = None if persona == "anonymous" else request.getfixturevalue(persona)
    if user is not None:
        client.force_login(user)
    certificate = TransactionCertificate.objects.get()
    page = client.get(reverse("certificates:detail", args=[certificate.number]))
    bundle = client.get(reverse("certificates:bundle", args=[certificate.number]))
    api = client.get(reverse("certificates:api_detail", args=[certificate.number]))
    to_cert = client.get(reverse("certificates:for_order", args=[settled.public_id]))
    assert (page.status_code, bundle.status_code, api.status_code) == (status, status, status)
    if status == 404:
        assert certificate.number not in page.content.decode() and to_cert.status_code == 404
        return
    html = page.content.decode()
    assert certificate.number in html and certificate.signature in html and "Verified" in html
    assert "¥12.34 CNY" in html and "¥1.23 CNY" in html and "¥11.11 CNY" in html
    assert to_cert.status_code == 302 and to_cert.url == reverse("certificates:detail", args=[certificate.number])
    body = api.json()
    assert body["number"] == certificate.number and body["order"] == str(settled.public_id)
    assert body["bundle"] == certificate_bundle(certificate) and body["verification"]["valid"] is True
    assert body["document"] == json.loads(certificate.document)


def test_the_library_and_order_page_link_to_the_certificate(client, settled, buyer):
    client.force_login(buyer)
    link = reverse("certificates:for_order", args=[settled.public_id])
    assert link in client.get(reverse("exchange:library")).content.decode()
    assert link in client.get(reverse("exchange:order_detail", args=[settled.public_id])).content.decode()


def test_an_order_not_yet_settled_has_no_certificate(client, buyer, listing, django_capture_on_commit_callbacks):
    client.force_login(buyer)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("exchange:order_buy", args=[listing.slug]),
            {"accept_licence": "1", "token": "8d2c7e0f-1d7c-4c8e-9c43-1f1d7e8e6a01"},
        )
        order = Order.objects.get()
        approve_in_sandbox(client, order.checkout_url)
    order.refresh_from_db()
    assert client.get(reverse("certificates:for_order", args=[order.public_id])).status_code == 404
    link = reverse("certificates:for_order", args=[order.public_id])
    assert link not in client.get(reverse("exchange:order_detail", args=[order.public_id])).content.decode()
    with pytest.raises(ValueError, match="not settled"):
        certificate_issue(order=order, journal_entry=None)
    assert TransactionCertificate.objects.count() == 0


def _genuine() -> dict:
    return certificate_bundle(TransactionCertificate.objects.get())


GENUINE = "genuine"  # in a BAD_BUNDLES dict: the genuine bundle's value for that field

BAD_BUNDLES = [
    ("", "missing_bundle", "Paste or upload a certificate bundle"),
    ("not json at all", "not_json", "The bundle is not valid UTF-8 JSON."),
    ("[1, 2]", "not_object", 'The bundle must be a JSON object with "document" and "signature".'),
    ({"signature": "x"}, "missing_document", 'The bundle has no "document".'),
    ({"document": {"a": 1}, "signature": "x"}, "bad_document_type", 'The bundle\'s "document" must be a string'),
    ({"document": "{}"}, "missing_signature", 'The bundle has no "signature".'),
    ({"document": "{}", "signature": 5}, "bad_signature_type", 'The bundle\'s "signature" must be a base64 string.'),
    ({"document": "{}", "signature": "%%%"}, "bad_signature_encoding", "The signature is not valid base64."),
    ({"document": "{}", "signature": "QUJD"}, "bad_signature_length", "this one is 3"),
    ({"document": "nope", "signature": GENUINE}, "not_json", "The document is not valid UTF-8 JSON."),
    ({"document": "[]", "signature": GENUINE}, "not_object", "The document must be a JSON object."),
    ({"document": " ", "signature": GENUINE}, "missing_document", "The document is empty."),
    (
        {"document": json.dumps({"pad": "x" * MAX_DOCUMENT_BYTES}), "signature": GENUINE},
        "too_large",
        f"certificates are at most {MAX_DOCUMENT_BYTES} bytes",
    ),
    # The parser reads at most one byte more than the limit: the message states the limit, not a size it never saw.
    (
        "x" * (certs.MAX_BUNDLE_BYTES * 3),
        "too_large",
        f"The bundle is larger than {certs.MAX_BUNDLE_BYTES} bytes, the most a certificate bundle can be.",
    ),
    # Nested deeper than the parser's recursion limit (RecursionError): the bundle itself, or the document in it.
    ("[" * 50_000 + "]" * 50_000, "not_json", "The bundle is not valid JSON for a certificate: it is nested far too"),
    (
        {"document": "[" * 30_000 + "]" * 30_000, "signature": GENUINE},
        "not_json",
        "The document is not valid JSON for a certificate: it is nested far too deeply.",
    ),
    (
        {"document": '{"a":' * 10_000 + "1" + "}" * 10_000, "signature": GENUINE},
        "not_json",
        "The document is not valid JSON for a certificate: it is nested far too deeply.",
    ),
    # Half a UTF-16 pair, escaped: parses, but is no text (it cannot even be encoded as UTF-8 to be shown).
    (
        '{"document": "{\\"number\\": \\"\\ud800\\"}", "signature": "%s"}' % ("A" * 86 + "=="),
        "not_text",
        "The bundle is not valid text: it contains a lone UTF-16 surrogate",
    ),
    (
        {"document": GENUINE, "signature": GENUINE, "number": "\ud800"},
        "not_text",
        "The bundle is not valid text: it contains a lone UTF-16 surrogate",
    ),
    (
        {"document": '{"number": "DX-2026-00000001", "key_id": "\\udfff"}', "signature": GENUINE},
        "not_text",
        "The document is not valid text: it contains a lone UTF-16 surrogate",
    ),
    # The signature exactly as issued: no whitespace around it.
    ({"document": GENUINE, "signature": " " + GENUINE}, "bad_signature_encoding", "The signature is not valid base64."),
    (
        {"document": GENUINE, "signature": GENUINE + "\n"},
        "bad_signature_encoding",
        "The signature is not valid base64.",
    ),
    # The bundle's own fields: another format or version is refused, not guessed at.
    (
        {**dict.fromkeys(("document", "signature", "number", "key_id"), GENUINE), "format": "x", "version": "1"},
        "bad_format",
        "The bundle's \"format\" is 'x'; certificate bundles are 'dx-certificate-bundle'.",
    ),
    (
        {**dict.fromkeys(("document", "signature", "number", "key_id", "format"), GENUINE), "version": "9"},
        "unsupported_version",
        "The bundle's \"version\" is '9'; this exchange reads version '1'.",
    ),
    (
        {"document": GENUINE, "signature": GENUINE, "version": 1},
        "unsupported_version",
        "The bundle's \"version\" is 1; this exchange reads version '1'.",
    ),
    ({"document": GENUINE, "signature": GENUINE, "number": 42}, "bad_number_type", 'The bundle\'s "number" must be'),
    ({"document": GENUINE, "signature": GENUINE, "key_id": ["x"]}, "bad_key_id_type", 'The bundle\'s "key_id" must'),
]


def _bad_body(bundle) -> str:
    if isinstance(bundle, str):
        return bundle
    genuine = _genuine()
    fields = {}
    for name, value in bundle.items():
        if isinstance(value, str) and GENUINE in value and name in genuine:
            value = value.replace(GENUINE, genuine[name])
        fields[name] = value
    return json.dumps(fields)


@pytest.mark.parametrize(("bundle", "code", "message"), BAD_BUNDLES)
def test_bad_input_is_refused_clearly_and_changes_nothing(client, settled, bundle, code, message):
    before = _written()
    body = _bad_body(bundle)
    answer = _bundle_post(client, body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == code and message in error["message"]
    shown = message.replace('"', "&quot;").replace("'", "&#x27;")
    page = client.post(reverse("certificates:verify"), {"bundle": body})
    assert page.status_code == 400 and shown in page.content.decode()
    upload = client.post(
        reverse("certificates:verify"), {"upload": SimpleUploadedFile("cert.json", body.encode("utf-8"))}
    )
    assert upload.status_code == 400
    if code not in ("missing_bundle", "too_large"):  # the form itself refuses an empty or oversized file
        assert shown in upload.content.decode()
    assert _written() == before


def test_an_upload_is_verified_and_an_oversized_one_refused(client, settled):
    from django.core.files.uploadedfile import SimpleUploadedFile

    genuine = json.dumps(_genuine()).encode()
    page = client.post(reverse("certificates:verify"), {"upload": SimpleUploadedFile("cert.json", genuine)})
    assert page.status_code == 200 and "Verified: this certificate is genuine" in page.content.decode()
    huge = SimpleUploadedFile("cert.json", b" " * (certs.MAX_BUNDLE_BYTES + 1))
    page = client.post(reverse("certificates:verify"), {"upload": huge})
    assert page.status_code == 400 and f"bundles are at most {certs.MAX_BUNDLE_BYTES} bytes" in page.content.decode()


def test_a_document_that_is_not_text_is_refused_without_a_query(settled, django_assert_num_queries):
    # Given directly (not through a bundle), a lone surrogate cannot even be encoded to check the signature.
    genuine = _genuine()
    with django_assert_num_queries(0), pytest.raises(CertificateInputError) as refused:
        certificate_verify(document=genuine["document"][:-1] + '"\ud800"}', signature=genuine["signature"])
    assert refused.value.code == "not_text" and "lone UTF-16 surrogate" in refused.value.messages[0]


@pytest.mark.parametrize(
    "number", ["DX\x00", "DX-2026-0000\x001", "DX-2026-1", "DX-२०२६-00000001", "DX-2026-00000001 ", "' OR 1=1 --"]
)
def test_a_number_that_is_no_certificate_number_is_not_found_everywhere(client, settled, staff, number):
    """PostgreSQL refuses a NUL in a string outright: such a number must be "no such certificate", never a 500."""
    before = _written()
    assert client.get(reverse("certificates:verify_number", args=[number])).status_code == 404
    client.force_login(staff)  # staff sees every certificate, so only the number can make these 404
    for name in ("certificates:detail", "certificates:bundle", "certificates:api_detail"):
        assert client.get(reverse(name, args=[number])).status_code == 404, name
    assert client.get(reverse("certificates:api_detail", args=[number])).json() == {
        "error": {"code": "not_found", "message": "No such certificate."}
    }
    assert _written() == before


def test_the_raw_nul_urls_are_not_found(client, settled, staff):
    client.force_login(staff)
    for url in (
        "/verify/DX%00/",
        "/certificates/DX%00/",
        "/certificates/DX%00/bundle.json",
        "/api/v1/certificates/DX%00/",
    ):
        assert client.get(url).status_code == 404, url


def test_a_signed_document_with_a_malformed_number_is_invalid_not_an_error(client, settled):
    certificate = TransactionCertificate.objects.get()
    document = json.loads(certificate.document)
    document["number"] = "DX\x00"
    forged = canonical_bytes(document)
    result = certificate_verify(document=forged, signature=certificate_sign(document_bytes=forged))
    assert (result.signature_ok, result.ledger_ok, result.known, result.valid) == (True, True, False, False)
    assert result.reasons == ["The document's number 'DX\\x00' is not a certificate number (DX-<year>-<digits>)."]
    bundle = {"document": forged.decode(), "signature": certificate_sign(document_bytes=forged)}
    answer = _bundle_post(client, json.dumps(bundle))
    assert answer.status_code == 200 and answer.json()["valid"] is False and answer.json()["number"] is None
    page = client.post(reverse("certificates:verify"), {"bundle": json.dumps(bundle)})
    assert page.status_code == 200 and "NOT verified" in page.content.decode()


def _other_base64_text(signature: str) -> str:
    """The same bytes written differently: the last character before "==" carries 4 unused bits; flip one."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert signature.endswith("==") and len(signature) == 88
    return signature[:-3] + alphabet[alphabet.index(signature[-3]) ^ 1] + "=="


def test_a_signature_with_one_character_changed_fails_even_when_it_decodes_to_the_same_bytes(client, settled):
    certificate = TransactionCertificate.objects.get()
    changed = _other_base64_text(certificate.signature)
    assert changed != certificate.signature
    assert base64.b64decode(changed, validate=True) == base64.b64decode(certificate.signature)
    result = certificate_verify(document=certificate.document, signature=changed)
    assert (result.signature_ok, result.ledger_ok, result.known, result.valid) == (False, True, True, False)
    assert result.reasons == [
        "The signature is not the base64 text that was issued (a character was changed or added, "
        "even though it decodes to the same bytes)."
    ]
    before = _written()
    bundle = json.dumps({**certificate_bundle(certificate), "signature": changed})
    answer = _bundle_post(client, bundle)
    assert answer.status_code == 200 and (answer.json()["valid"], answer.json()["signature_ok"]) == (False, False)
    page = client.post(reverse("certificates:verify"), {"bundle": bundle})
    assert page.status_code == 200 and "Signature: <strong>invalid</strong>" in page.content.decode()
    assert _written() == before


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (
            "number",
            "DX-9999-99999999",
            "The bundle names certificate 'DX-9999-99999999', but its document is {number!r}.",
        ),
        ("key_id", "zz", "The bundle names key 'zz', but its document names {key_id!r}."),
    ],
)
def test_a_bundle_stating_another_number_or_key_than_its_document_is_invalid(client, settled, field, value, reason):
    certificate = TransactionCertificate.objects.get()
    before = _written()
    bundle = json.dumps({**certificate_bundle(certificate), field: value})
    answer = _bundle_post(client, bundle)
    assert answer.status_code == 200
    assert answer.json() == {
        "valid": False,
        "signature_ok": True,
        "ledger_ok": True,
        "known": True,
        "bundle_ok": False,
        "reasons": [reason.format(number=certificate.number, key_id=certificate.key_id)],
        "number": certificate.number,
        "key_id": certificate.key_id,
    }
    page = client.post(reverse("certificates:verify"), {"bundle": bundle})
    assert page.status_code == 200 and "NOT verified" in page.content.decode()
    assert _written() == before


def test_a_bundle_of_only_document_and_signature_still_verifies(client, settled):
    genuine = _genuine()
    answer = _bundle_post(client, json.dumps({"document": genuine["document"], "signature": genuine["signature"]}))
    assert answer.status_code == 200 and answer.json()["valid"] is True and answer.json()["bundle_ok"] is True


def test_the_key_is_generated_once_with_0600_and_reused(_own_signing_key):
    path = _own_signing_key
    assert not path.exists()
    first = signing_key()
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    pem = path.read_bytes()
    _loaded.clear()  # as a new process would: load from the file again
    second = signing_key()
    assert second.key_id == first.key_id and path.read_bytes() == pem
    message = b"same key"
    second.public_key.verify(first.private_key.sign(message), message)


def test_production_refuses_to_generate_a_missing_key(settings, _own_signing_key):
    settings.DEPLOY_ENV = "production"
    with pytest.raises(ImproperlyConfigured, match=r"EXCHANGE_SIGNING_KEY_FILE .* does not exist"):
        signing_key()
    assert not _own_signing_key.exists()


def test_a_key_file_that_is_not_ed25519_is_refused(_own_signing_key):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    _own_signing_key.parent.mkdir(parents=True)
    _own_signing_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ImproperlyConfigured, match="not Ed25519"):
        signing_key()


def test_production_without_a_key_file_refuses_to_start(tmp_path):
    env = {
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": "s" * 64,
        "EXCHANGE_VAR_DIR": str(tmp_path),
        "EXCHANGE_SIGNING_KEY_FILE": str(tmp_path / "missing.pem"),
        "PATH": "/usr/bin:/bin",
    }
    code = "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='exchange.settings'; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"EXCHANGE_SIGNING_KEY_FILE {tmp_path / 'missing.pem'} is required in production" in result.stderr
    assert not (tmp_path / "missing.pem").exists()


def test_the_fee_on_the_certificate_is_the_sale_entrys(settled):
    sale = JournalEntry.objects.get(kind=JournalKind.SALE)
    legs = dict(sale.postings.values_list("account__kind", "amount"))
    document = json.loads(TransactionCertificate.objects.get().document)
    assert document["platform_fee"]["amount"] == -legs[AccountKind.PLATFORM_REVENUE] == 123
    assert document["merchant_proceeds"]["amount"] == -legs[AccountKind.MERCHANT_PAYABLE] == 1111


def test_verification_never_writes(settled, django_assert_num_queries):
    certificate = TransactionCertificate.objects.get()
    with django_assert_num_queries(3):  # the entry, its postings, the register: reads only
        result = certificate_verify(document=certificate.document, signature=certificate.signature)
    assert result.valid
    with pytest.raises(InvalidSignature):
        signing_key().public_key.verify(base64.b64decode(certificate.signature), b"another document")


# The ledger check: the named entry's hash and its place in the chain ----------------------------------------------


@contextlib.contextmanager
def _ledger_writable():
    """The ledger's append-only triggers off, as the database owner could tamper; on again afterwards."""
    tables = ("exchange_journalentry", "exchange_ledgerblock")
    with connection.cursor() as cursor:
        # ALTER TABLE refuses while deferred checks are pending on the table: run them now (they pass).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")


def _rehashed(entry: JournalEntry, *, prev_hash: str) -> str:
    """The hash ``entry`` would have after ``prev_hash``: what a forger rewriting the chain would store."""
    return entry_rehash(entry, prev_hash=prev_hash)


def _verify_naming(entry_hash: str):
    """The certificate re-signed by the exchange's own key naming its SALE entry with ``entry_hash``: only the
    ledger can tell."""
    document = json.loads(TransactionCertificate.objects.get().document)
    document["ledger_entry"]["entry_hash"] = entry_hash
    forged = canonical_bytes(document)
    return certificate_verify(document=forged, signature=certificate_sign(document_bytes=forged))


def test_a_payment_entry_of_the_same_order_does_not_vouch_for_the_sale(settled):
    payment = JournalEntry.objects.get(kind=JournalKind.PAYMENT, order=settled)
    document = json.loads(TransactionCertificate.objects.get().document)
    document["ledger_entry"] = {"sequence": payment.sequence, "entry_hash": payment.entry_hash}
    forged = canonical_bytes(document)
    result = certificate_verify(document=forged, signature=certificate_sign(document_bytes=forged))
    assert (result.signature_ok, result.ledger_ok) == (True, False)
    assert result.reasons[0] == (
        f"Ledger entry #{payment.sequence} is a payment entry, not the sale that settled the order."
    )


@pytest.mark.parametrize("sequence", [2**63, -(2**63) - 1, 2**63 - 1])
def test_a_sequence_beyond_the_ledgers_range_is_no_entry(settled, sequence):
    # Beyond a bigint: Django answers "no rows" without asking PostgreSQL, which would refuse the query.
    document = json.loads(TransactionCertificate.objects.get().document)
    document["ledger_entry"]["sequence"] = sequence
    forged = canonical_bytes(document)
    result = certificate_verify(document=forged, signature=certificate_sign(document_bytes=forged))
    assert (result.signature_ok, result.ledger_ok) == (True, False)
    assert result.reasons[0] == f"The ledger has no entry #{sequence}."


def test_a_sale_entry_in_a_block_that_does_not_exist_fails_the_ledger_check(client, settled):
    certificate = TransactionCertificate.objects.get()
    sale = JournalEntry.objects.get(kind=JournalKind.SALE)
    with _ledger_writable() as cursor:
        cursor.execute("DELETE FROM exchange_ledgerblock WHERE id = %s", [sale.block_id])
    assert not LedgerBlock.objects.filter(pk=sale.block_id).exists()
    before = _written()
    result = certificate_verify(document=certificate.document, signature=certificate.signature)
    assert (result.signature_ok, result.ledger_ok, result.known, result.valid) == (True, False, True, False)
    assert result.reasons == [
        f"Ledger entry #{sale.sequence} names ledger block {sale.block_id}, which does not exist."
    ]
    answer = _bundle_post(client, certs.certificate_bundle_bytes(certificate))
    assert answer.status_code == 200 and (answer.json()["valid"], answer.json()["ledger_ok"]) == (False, False)
    page = client.get(reverse("certificates:verify_number", args=[certificate.number]))
    html = page.content.decode()
    assert page.status_code == 200 and "does not match the ledger" in html and "which does not exist" in html
    assert _written() == before


def test_a_sale_entry_whose_memo_was_rewritten_fails_the_ledger_check(settled):
    certificate = TransactionCertificate.objects.get()
    sale = JournalEntry.objects.get(kind=JournalKind.SALE)
    assert sale.memo  # settlement describes the sale; the hash covers what it says
    with _ledger_writable() as cursor:
        cursor.execute("UPDATE exchange_journalentry SET memo = %s WHERE id = %s", ["a gift, not a sale", sale.pk])
    result = certificate_verify(document=certificate.document, signature=certificate.signature)
    assert (result.signature_ok, result.ledger_ok, result.valid) == (True, False, False)
    assert result.reasons == [f"Ledger entry #{sale.sequence} no longer matches its own hash: the ledger was altered."]


def test_the_first_entry_of_a_block_must_follow_the_genesis_hash(settled):
    sale = JournalEntry.objects.get(kind=JournalKind.SALE)
    assert sale.position == 1 and sale.prev_hash == GENESIS_HASH
    # Its own hash recomputed over another prev_hash, and the document re-signed naming it: all consistent but the link.
    forged = _rehashed(sale, prev_hash="ab" * 32)
    with _ledger_writable() as cursor:
        cursor.execute(
            "UPDATE exchange_journalentry SET prev_hash = %s, entry_hash = %s WHERE id = %s",
            ["ab" * 32, forged, sale.pk],
        )
    result = _verify_naming(forged)
    assert (result.signature_ok, result.ledger_ok) == (True, False)
    assert (
        result.reasons[0] == f"Ledger entry #{sale.sequence} does not link to the genesis hash: the chain was altered."
    )


def test_a_later_entry_must_follow_the_entry_before_it_in_its_block(settled):
    sale = JournalEntry.objects.get(kind=JournalKind.SALE)
    payment = JournalEntry.objects.get(kind=JournalKind.PAYMENT, order=settled)
    last = JournalEntry.objects.filter(block_id=payment.block_id).order_by("-position").first()
    # Moved behind the payment block's last entry: block and position are not in its hash, its link is.
    with _ledger_writable() as cursor:
        cursor.execute(
            "UPDATE exchange_journalentry SET block_id = %s, position = %s WHERE id = %s",
            [payment.block_id, last.position + 1, sale.pk],
        )
    result = _verify_naming(sale.entry_hash)
    assert (result.signature_ok, result.ledger_ok) == (True, False)
    assert result.reasons[0] == (
        f"Ledger entry #{sale.sequence} does not link to the hash of the entry before it in its block: "
        "the chain was altered."
    )
    # Linked to that entry (and rehashed accordingly), it is in its place again.
    relinked = _rehashed(sale, prev_hash=last.entry_hash)
    with _ledger_writable() as cursor:
        cursor.execute(
            "UPDATE exchange_journalentry SET prev_hash = %s, entry_hash = %s WHERE id = %s",
            [last.entry_hash, relinked, sale.pk],
        )
    result = _verify_naming(relinked)
    assert (result.signature_ok, result.ledger_ok) == (True, True)
    # With a gap before it, there is nothing to link to.
    with _ledger_writable() as cursor:
        cursor.execute("UPDATE exchange_journalentry SET position = %s WHERE id = %s", [last.position + 2, sale.pk])
    result = _verify_naming(relinked)
    assert not result.ledger_ok and result.reasons[0] == (
        f"Ledger entry #{sale.sequence} is at position {last.position + 2} of block {payment.block_id}, "
        f"but the block has no entry at position {last.position + 1}."
    )


# The README's standalone verification, run as written ----------------------------------------------------------------


def _readme_snippet(language: str) -> str:
    """The README's ``language`` code block in the transaction certificates item, as a reader would copy it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    item = readme[readme.index("- **Transaction certificates") : readme.index("- **Rotating the signing key**")]
    return textwrap.dedent(re.search(rf"```{language}\n(.*?\n) *```", item, re.S).group(1))


def _readme_cases(genuine: dict) -> dict[str, tuple[bytes, bool]]:
    """Bundle files, by what is wrong with them, and whether they are genuine."""
    altered = genuine["document"].replace('"name":"Guiyang Data"', '"name":"Guiyang Dbta"')
    assert altered != genuine["document"]
    return {
        "genuine": (json.dumps(genuine, indent=2, ensure_ascii=False).encode(), True),
        "document altered": (json.dumps({**genuine, "document": altered}).encode(), False),
        "other base64 text": (
            json.dumps({**genuine, "signature": _other_base64_text(genuine["signature"])}).encode(),
            False,
        ),
        "signature with a space": (json.dumps({**genuine, "signature": " " + genuine["signature"]}).encode(), False),
    }


def _download(client, buyer, tmp_path) -> dict:
    """The bundle and the public key as a reader downloads them; the bundle parsed."""
    certificate = TransactionCertificate.objects.get()
    client.force_login(buyer)
    download = client.get(reverse("certificates:bundle", args=[certificate.number]))
    (tmp_path / "exchange-public-key.pem").write_bytes(client.get(reverse("certificates:public_key")).content)
    return json.loads(download.content)


def test_the_readme_python_snippet_accepts_the_genuine_bundle_and_refuses_the_rest_without_a_traceback(
    client, settled, buyer, tmp_path
):
    genuine = _download(client, buyer, tmp_path)
    script = tmp_path / "verify.py"
    script.write_text(_readme_snippet("python"), encoding="utf-8")
    cases = {
        name: (body, "valid: " + genuine["number"] if ok else "INVALID: altered, or not signed by this key")
        for name, (body, ok) in _readme_cases(genuine).items()
    }
    cases["other base64 text"] = (
        cases["other base64 text"][0],
        "INVALID: not a certificate bundle (ValueError: the signature is not the base64 text issued)",
    )
    cases["signature with a space"] = (cases["signature with a space"][0], "INVALID: not a certificate bundle (Error: ")
    cases.update(
        {
            "no signature": (json.dumps({"document": genuine["document"]}).encode(), "(KeyError: 'signature')"),
            "not JSON": (b"nope", "(JSONDecodeError: Expecting value"),
            "a list": (b"[1, 2]", "(TypeError: list indices must be integers"),
            "nested absurdly deep": (b"[" * 50_000 + b"]" * 50_000, "(RecursionError: maximum recursion depth"),
        }
    )
    for name, (body, expected) in cases.items():
        bundle = tmp_path / "DX.json"
        bundle.write_bytes(body)
        run = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "exchange-public-key.pem"), str(bundle)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in run.stderr, (name, run.stderr)
        if expected.startswith("valid: "):
            assert (run.returncode, run.stdout, run.stderr) == (0, expected + "\n", ""), name
        else:
            assert run.returncode == 1 and expected in run.stderr and run.stdout == "", (name, run.stderr)


@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("jq", "openssl", "base64", "cmp")), reason="no jq/openssl")
def test_the_readme_openssl_snippet_accepts_the_genuine_bundle_and_refuses_the_rest(client, settled, buyer, tmp_path):
    genuine = _download(client, buyer, tmp_path)
    script = _readme_snippet("sh")
    assert "DX-2026-00000042.json" in script
    for name, (body, ok) in _readme_cases(genuine).items():
        (tmp_path / "DX-2026-00000042.json").write_bytes(body)
        run = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        if ok:
            assert (run.returncode, run.stdout) == (0, "Signature Verified Successfully\n"), (name, run.stderr)
            continue
        # Refused at the step that can tell: openssl (the bytes), cmp (the base64 text), base64 -d (not base64).
        said = {"document altered": "Signature Verification Failure", "other base64 text": "differ"}
        assert run.returncode != 0 and "Signature Verified Successfully" not in run.stdout, (name, run.stdout)
        assert said.get(name, "invalid input") in run.stdout + run.stderr, (name, run.stdout, run.stderr)


# Rotating the signing key ----------------------------------------------------------------------------------------


def _rotate(settings, tmp_path, *, keep_old: bool) -> str:
    """Archive the current public key, switch to a new key file; list the old key as retired if ``keep_old``."""
    old = signing_key()
    archived = tmp_path / "retired" / f"{old.key_id}.pem"
    archived.parent.mkdir(parents=True, exist_ok=True)
    archived.write_text(old.public_key_pem)
    settings.EXCHANGE_SIGNING_KEY_FILE = tmp_path / "keys" / "rotated.pem"
    settings.EXCHANGE_SIGNING_RETIRED_KEYS = [archived] if keep_old else []
    assert signing_key().key_id != old.key_id
    return old.key_id


def test_certificates_signed_before_a_rotation_verify_with_the_retired_key(client, settled, settings, tmp_path):
    certificate = TransactionCertificate.objects.get()
    old_id = _rotate(settings, tmp_path, keep_old=True)
    new = signing_key()

    result = certificate_verify(document=certificate.document, signature=certificate.signature)
    assert (result.valid, result.key_id, result.reasons) == (True, old_id, [])
    # The pages name the key the certificate was verified with, not the one the exchange signs with now.
    for page in (
        client.post(reverse("certificates:verify"), {"bundle": json.dumps(certificate_bundle(certificate))}),
        client.get(reverse("certificates:verify_number", args=[certificate.number])),
    ):
        html = page.content.decode()
        assert page.status_code == 200 and "Verified: this certificate is genuine" in html
        assert f"Signature: <strong>valid</strong> (key <code>{old_id}</code>)" in html
        assert f"(key <code>{new.key_id}</code>)" not in html
    # Only the current key signs: what the old key signed still verifies, nothing new is signed with it.
    document = certificate.document.replace(old_id, new.key_id).encode()
    resigned = certs.certificate_sign(document_bytes=document)
    new.public_key.verify(base64.b64decode(resigned), document)

    api = client.get(reverse("certificates:api_public_key")).json()
    retired_pem = (tmp_path / "retired" / f"{old_id}.pem").read_text()
    assert api == {
        "algorithm": "Ed25519",
        "key_id": new.key_id,
        "public_key_pem": new.public_key_pem,
        "retired_keys": [{"key_id": old_id, "public_key_pem": retired_pem}],
    }
    pem = client.get(reverse("certificates:public_key"), {"key_id": old_id})
    assert (pem.status_code, pem["X-Key-Id"], pem.content.decode()) == (200, old_id, retired_pem)
    assert client.get(reverse("certificates:public_key"))["X-Key-Id"] == new.key_id
    unknown = client.get(reverse("certificates:public_key"), {"key_id": "0123456789abcdef"})
    assert unknown.status_code == 404 and "never signed with a key '0123456789abcdef'" in unknown.content.decode()


def test_without_the_retired_key_an_old_certificate_is_refused_and_says_why(settled, settings, tmp_path):
    certificate = TransactionCertificate.objects.get()
    old_id = _rotate(settings, tmp_path, keep_old=False)
    result = certificate_verify(document=certificate.document, signature=certificate.signature)
    assert (result.valid, result.signature_ok, result.ledger_ok, result.known) == (False, False, True, True)
    assert result.reasons[0] == f"The document names key {old_id!r}; this exchange signs with {signing_key().key_id}."


@pytest.mark.parametrize("content", [b"not a key", "rsa"], ids=["garbage", "rsa"])
def test_a_retired_key_file_that_is_not_an_ed25519_public_key_is_refused_by_name(settings, tmp_path, content):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if content == "rsa":
        content = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    bad = tmp_path / "retired.pem"
    bad.write_bytes(content)
    settings.EXCHANGE_SIGNING_RETIRED_KEYS = [bad]
    with pytest.raises(ImproperlyConfigured, match=f"EXCHANGE_SIGNING_RETIRED_KEYS: {bad}"):
        certs.verification_keys()
