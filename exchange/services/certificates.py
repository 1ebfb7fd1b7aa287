"""Transaction certificates (交易凭证): what a settled trade was, signed with the exchange's Ed25519 key.

A certificate is a canonical JSON document (keys sorted, no whitespace,
UTF-8, non-ASCII kept as is) and the Ed25519 signature of exactly those
bytes. Settlement issues one per settled order, in the transaction that
settles it (``_settle_order``); orders that moved no money (free plans) get
one too, naming no ledger entry (``"ledger_entry": null``), because the
trade itself (a licence granted, data delivered) still happened.

The bundle is how a certificate travels (download, verification page, API)::

    {"format": "dx-certificate-bundle", "version": "1", "number": "DX-2026-00000042",
     "key_id": "<16 hex>", "document": "<the canonical JSON, as a string>", "signature": "<base64>"}

Only ``document`` and ``signature`` are needed; ``format`` and ``version``,
if given, must be these, and ``number`` and ``key_id``, if given, the
document's own (they are not signed). Anyone can check the signature with the
public key alone (``/verify/public-key.pem``); the exchange can also check the
ledger entry the document names against its hash chain, and that it issued
the number with exactly that document.
"""

import base64
import binascii
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC

from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Subquery
from django.utils import timezone

from common.canonical import canonical_json
from common.db import rows_copy
from exchange.choices import AccountKind, DeliveryStatus, JournalKind
from exchange.models import Delivery, Entitlement, JournalEntry, LedgerBlock, Order, Posting, TransactionCertificate

# Not copies: the ledger's own hashing and genesis hash, so a certificate's ledger check can never disagree with
# ledger_verify about what an entry's hash covers or where a block's chain starts.
from exchange.services.ledger import GENESIS_HASH
from exchange.services.ledger import entry_hash_checks as ledger_entry_hash_checks
from exchange.signing_key import signing_key, verification_keys
from listings.models import DataFile
from merchants.selectors import merchant_is_member

CERTIFICATE_VERSION = "1"
DOCUMENT_TYPE = "dx.transaction_certificate"
BUNDLE_FORMAT = "dx-certificate-bundle"
# Far above a real certificate (~2 KiB plus ~150 bytes per delivered file), far below anything costly to parse.
MAX_DOCUMENT_BYTES = 64 * 1024
# A bundle holds the document as an escaped JSON string; escaping at most doubles the quotes and backslashes.
MAX_BUNDLE_BYTES = 2 * MAX_DOCUMENT_BYTES + 4096
_SIGNATURE_BYTES = 64
# What certificate_number() writes: the year issued and the order's pk (a bigint: 19 digits at most). ASCII digits
# only (``\d`` would take any script's), so a number with a NUL or other junk is refused before any query.
_NUMBER_RE = re.compile(r"DX-[0-9]{4}-[0-9]{8,19}")


class CertificateInputError(ValidationError):
    """What was submitted for verification is not a certificate; ``message`` says why, for people."""


def canonical_bytes(document: dict) -> bytes:
    """The exact bytes a certificate's signature covers."""
    return canonical_json(document)


def certificate_number(*, order: Order, issued_at) -> str:
    """``DX-<year issued>-<order pk, 8 digits or more>``: unique (one certificate per order) and stable."""
    return f"DX-{issued_at.year}-{order.pk:08d}"


def certificate_number_valid(number) -> bool:
    """Whether ``number`` has the form certificate_number() gives; anything else names no certificate.

    Checked before a number from outside (a URL, a submitted document) reaches a query: PostgreSQL refuses a
    string with a NUL character outright (a DataError, not "no such row").
    """
    return isinstance(number, str) and _NUMBER_RE.fullmatch(number) is not None


def buyer_public_name(user) -> str:
    """How a buyer is named on certificates: their chosen display name, else ``Buyer #<pk>``; never the email."""
    return _buyer_name(getattr(user, "display_name", ""), user.pk)


def _buyer_name(display_name: str | None, pk: int) -> str:
    return (display_name or "").strip() or f"Buyer #{pk}"


# The names a certificate shows, as annotations for the orders' own query (``.annotate(**CERTIFIED_NAMES)``): a
# settlement batch reads them with its orders instead of loading a listing, a merchant and a buyer per order.
CERTIFIED_NAMES = {
    "certified_title": F("listing__title"),
    "certified_registration_number": F("listing__registration_number"),
    "certified_slug": F("listing__slug"),
    "certified_merchant": F("merchant__name"),
    "certified_buyer": F("buyer__display_name"),
}


def _names(order: Order) -> tuple[str, str, str, str, str]:
    """(product title, registration number, slug, merchant name, buyer name) from CERTIFIED_NAMES or the relations."""
    if hasattr(order, "certified_title"):
        return (
            order.certified_title,
            order.certified_registration_number,
            order.certified_slug,
            order.certified_merchant,
            _buyer_name(order.certified_buyer, order.buyer_id),
        )
    listing = order.listing
    return listing.title, listing.registration_number, listing.slug, order.merchant.name, buyer_public_name(order.buyer)


def _iso(value) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _delivered_versions_many(orders: list[Order]) -> dict[int, list[dict]]:
    """Per order pk, what the buyer actually got: every delivery that became ready, oldest first.

    A later withdrawal ends access, it does not undo the delivery; failed and
    still-pending deliveries were never received. Three queries for any number
    of orders; each version's manifest is read once.
    """
    wanted = {order.pk for order in orders}
    # The entitlements by a range of order ids (an index range scan; ids in the range not asked for are dropped),
    # then their deliveries by entitlement: joined in one statement, PostgreSQL would scan every delivery.
    entitlements = dict(
        Entitlement.objects.filter(order_id__gte=min(wanted), order_id__lte=max(wanted)).values_list("pk", "order_id")
    )
    entitlements = {pk: order_id for pk, order_id in entitlements.items() if order_id in wanted}
    rows = [
        (entitlements[entitlement_id], ready_at, version_id, label)
        for entitlement_id, ready_at, version_id, label in Delivery.objects.filter(
            entitlement_id__any_of=list(entitlements), ready_at__isnull=False
        )
        .exclude(status__in=[DeliveryStatus.FAILED, DeliveryStatus.PENDING])
        .order_by("pk")
        .values_list("entitlement_id", "ready_at", "version_id", "version__label")
    ]
    manifests: dict[int, list[dict]] = defaultdict(list)
    for file in (
        DataFile.objects.filter(version_id__in={version_id for _, _, version_id, _ in rows})
        .order_by("pk")
        .values("version_id", "original_name", "size", "sha256", "format")
    ):
        manifests[file["version_id"]].append(
            {"name": file["original_name"], "size": file["size"], "sha256": file["sha256"], "format": file["format"]}
        )
    versions: dict[int, list[dict]] = {order.pk: [] for order in orders}
    for order_id, ready_at, version_id, label in rows:
        versions[order_id].append(
            {"label": label, "delivered_at": _iso(ready_at), "manifest": list(manifests.get(version_id, []))}
        )
    return versions


def _sale_split(entry: JournalEntry | None, order: Order) -> tuple[int, int]:
    """(platform fee, merchant proceeds) as booked by the SALE entry; (0, 0) when no money moved.

    Uses the legs an entry just written carries in memory (``journal_entries_write``), else reads its postings.
    """
    if entry is None:
        return 0, 0
    legs = getattr(entry, "_legs", None)
    if legs is not None:
        rows = [(account.kind, amount) for account, amount, currency in legs if currency == order.currency]
    else:
        rows = Posting.objects.filter(entry=entry, currency=order.currency).values_list("account__kind", "amount")
    fee = proceeds = 0
    for kind, amount in rows:
        if kind == AccountKind.PLATFORM_REVENUE:
            fee -= amount  # credits are negative
        elif kind == AccountKind.MERCHANT_PAYABLE:
            proceeds -= amount
    return fee, proceeds


def certificate_document(
    *,
    order: Order,
    journal_entry: JournalEntry | None,
    number: str,
    issued_at,
    versions: list[dict] | None = None,
    key_id: str | None = None,
) -> dict:
    """The certificate's content for ``order`` (settled) and its SALE entry (None if no money moved)."""
    fee, proceeds = _sale_split(journal_entry, order)
    title, registration_number, slug, merchant, buyer = _names(order)
    if versions is None:
        versions = _delivered_versions_many([order])[order.pk]
    return {
        "type": DOCUMENT_TYPE,
        "version": CERTIFICATE_VERSION,
        "number": number,
        "issued_at": _iso(issued_at),
        "issuer": settings.SITE_URL,
        "key_id": key_id or signing_key().key_id,
        "order": {"reference": order.reference, "public_id": str(order.public_id)},
        "product": {"title": title, "registration_number": registration_number, "slug": slug},
        "versions": versions,
        "buyer": {"name": buyer},
        "merchant": {"name": merchant},
        "price": {"amount": order.amount, "currency": order.currency},
        "buyer_service_fee": {"amount": order.service_fee, "currency": order.currency},
        "refunded": {"amount": order.refunded_amount, "currency": order.currency},
        "platform_fee": {"amount": fee, "currency": order.currency},
        "merchant_proceeds": {"amount": proceeds, "currency": order.currency},
        "paid_at": _iso(order.paid_at),
        "delivered_at": _iso(order.delivered_at),
        "settled_at": _iso(order.settled_at),
        "ledger_entry": (
            {"sequence": journal_entry.sequence, "entry_hash": journal_entry.entry_hash} if journal_entry else None
        ),
    }


def certificate_sign(*, document_bytes: bytes, key=None) -> str:
    """The base64 Ed25519 signature of ``document_bytes`` with the exchange's key (``key``: it, loaded already)."""
    return base64.b64encode((key or signing_key()).private_key.sign(document_bytes)).decode("ascii")


def certificate_issue(*, order: Order, journal_entry: JournalEntry | None) -> TransactionCertificate:
    """Issue ``order``'s certificate once; a repeat returns the first and writes nothing.

    Call it inside the transaction that settles the order, after
    ``settled_at`` is stamped, with the order's SALE entry (None when the
    trade moved no money). Raises ValueError for an order that is not settled.
    """
    existing = TransactionCertificate.objects.filter(order=order).first()
    if existing is not None:
        return existing
    (certificate,) = [TransactionCertificate(**row) for row in _certificates_build([(order, journal_entry)])]
    try:
        with transaction.atomic():
            certificate.save(force_insert=True)
    except IntegrityError:
        # Another transaction issued it between our check and insert: theirs is the certificate.
        return TransactionCertificate.objects.get(order=order)
    return certificate


CERTIFICATE_COLUMNS = ("number", "order_id", "journal_entry_id", "document", "signature", "key_id", "issued_at")


def _certificates_build(sales: list[tuple[Order, JournalEntry | None]]) -> list[dict]:
    """Signed certificates (their CERTIFICATE_COLUMNS, by name) for settled (order, SALE entry or None) pairs.

    ValueError for an unsettled order.
    """
    for order, _ in sales:
        if order.settled_at is None:
            raise ValueError(f"Order {order.reference} is not settled; only settled trades get a certificate.")
    versions = _delivered_versions_many([order for order, _ in sales])
    key = signing_key()  # loaded once for the whole batch
    issued_at = timezone.now()
    certificates = []
    for order, entry in sales:
        number = certificate_number(order=order, issued_at=issued_at)
        document = canonical_bytes(
            certificate_document(
                order=order,
                journal_entry=entry,
                number=number,
                issued_at=issued_at,
                versions=versions[order.pk],
                key_id=key.key_id,
            )
        )
        certificates.append(
            {
                "number": number,
                "order_id": order.pk,
                "journal_entry_id": entry.pk if entry is not None else None,
                "document": document.decode("utf-8"),
                "signature": certificate_sign(document_bytes=document, key=key),
                "key_id": key.key_id,
                "issued_at": issued_at,  # the stored time is the signed one
            }
        )
    return certificates


def certificates_issue_many(*, sales: list[tuple[Order, JournalEntry | None]]) -> int:
    """Issue the certificates of several settled orders, each once; return how many were issued now.

    ``certificate_issue``'s contract for each (order, SALE entry or None)
    pair; an order that already has a certificate is skipped. The orders
    should come with their listing, buyer and merchant loaded
    (select_related); the delivered versions of all of them are read in two
    queries, the key loaded once, and the certificates written in one COPY.
    Must run inside the transaction that settles the orders, which holds
    their row locks (so no other transaction issues them meanwhile).
    """
    wanted = [order.pk for order, _ in sales]
    issued = set(TransactionCertificate.objects.filter(order_id__any_of=wanted).values_list("order_id", flat=True))
    todo = [(order, entry) for order, entry in sales if order.pk not in issued]
    if not todo:
        return 0
    return rows_copy(
        TransactionCertificate,
        CERTIFICATE_COLUMNS,
        [tuple(row[name] for name in CERTIFICATE_COLUMNS) for row in _certificates_build(todo)],
    )


def certificate_bundle(certificate: TransactionCertificate) -> dict:
    """The portable form of a certificate (see the module docstring)."""
    return {
        "format": BUNDLE_FORMAT,
        "version": CERTIFICATE_VERSION,
        "number": certificate.number,
        "key_id": certificate.key_id,
        "document": certificate.document,
        "signature": certificate.signature,
    }


def certificate_bundle_bytes(certificate: TransactionCertificate) -> bytes:
    return json.dumps(certificate_bundle(certificate), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


@dataclass
class VerificationResult:
    """The outcome of ``certificate_verify``; ``valid`` only when every check passed."""

    signature_ok: bool
    ledger_ok: bool
    known: bool
    reasons: list[str] = field(default_factory=list)
    number: str | None = None
    key_id: str = ""
    document: dict | None = None
    # False when the bundle around the document states another number or key than the document itself.
    bundle_ok: bool = True

    @property
    def valid(self) -> bool:
        return self.signature_ok and self.ledger_ok and self.known and self.bundle_ok

    def as_dict(self) -> dict:
        return {
            "valid": self.valid,
            "signature_ok": self.signature_ok,
            "ledger_ok": self.ledger_ok,
            "known": self.known,
            "bundle_ok": self.bundle_ok,
            "reasons": list(self.reasons),
            "number": self.number,
            "key_id": self.key_id,
        }


def _json_loads(data: bytes, *, what: str):
    """``data`` parsed as JSON; CertificateInputError naming ``what`` (the bundle, the document) for anything else.

    The parser recurses once per level of nesting, so ``[[[[…`` tens of thousands deep exhausts the stack
    (RecursionError) long before the size limit: that is no certificate either (a real one nests five levels).
    """
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CertificateInputError(f"The {what} is not valid UTF-8 JSON.", code="not_json") from None
    except RecursionError:
        raise CertificateInputError(
            f"The {what} is not valid JSON for a certificate: it is nested far too deeply.", code="not_json"
        ) from None


def _is_text(value) -> bool:
    """False if a string anywhere in the parsed JSON ``value`` holds a lone surrogate, True otherwise.

    JSON may escape half of a UTF-16 pair (``"\\ud800"``); Python parses it into a string that is no text and
    cannot be encoded as UTF-8, so it could be neither signed, stored nor shown. Walked with a stack, not
    recursion, for the same reason as ``_json_loads``.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _shown(value, limit: int = 40) -> str:
    """``value`` as Python writes it (quoted, escapes visible: a NUL shows as ``\\x00``), cut at ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_LONE_SURROGATE = "it contains a lone UTF-16 surrogate (an escape such as \\ud800 without its pair), which is no text"


def _decode_signature(signature) -> tuple[bytes, bool]:
    """(the signature's bytes, whether ``signature`` is exactly their base64); CertificateInputError if it is none.

    Base64 has more than one text for the same bytes (the unused bits of the last character before ``=``), and
    lenient decoding also skips whitespace: a signature with one character changed could still decode to the
    signed bytes. Only the one canonical text is the signature that was issued.
    """
    if not isinstance(signature, str) or not signature:
        raise CertificateInputError(
            "The signature is missing: give the base64 signature that came with the document.", code="missing_signature"
        )
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise CertificateInputError("The signature is not valid base64.", code="bad_signature_encoding") from None
    if len(raw) != _SIGNATURE_BYTES:
        raise CertificateInputError(
            f"The signature must be {_SIGNATURE_BYTES} bytes (Ed25519), this one is {len(raw)}.",
            code="bad_signature_length",
        )
    return raw, base64.b64encode(raw).decode("ascii") == signature


def _document_bytes(document) -> bytes:
    if isinstance(document, str):
        try:
            document = document.encode("utf-8")
        except UnicodeEncodeError:
            raise CertificateInputError(
                f"The document is not valid text: {_LONE_SURROGATE}.", code="not_text"
            ) from None
    if not isinstance(document, bytes):
        raise CertificateInputError("The document must be the certificate's JSON text.", code="bad_document_type")
    if not document.strip():
        raise CertificateInputError("The document is empty.", code="missing_document")
    if len(document) > MAX_DOCUMENT_BYTES:
        raise CertificateInputError(
            f"The document is {len(document)} bytes; certificates are at most {MAX_DOCUMENT_BYTES} bytes.",
            code="too_large",
        )
    return document


def _check_ledger(parsed: dict, reasons: list[str]) -> bool:
    """The named ledger entry's hash and its place in the chain; appends the first failure to ``reasons``.

    The entry must exist, be the SALE entry of the order the document names, carry the hash the document states,
    still recompute to that hash from its content, sit in a block that exists, and link to the entry before it
    in that block (its ``prev_hash`` is that entry's hash; the genesis hash at position 1). What
    ``ledger_verify`` checks for the whole chain, here for one entry, in the same one query for the entry.
    """
    named = parsed.get("ledger_entry")
    order = parsed.get("order") if isinstance(parsed.get("order"), dict) else {}
    if named is None:
        price, refunded = parsed.get("price"), parsed.get("refunded")
        moved = isinstance(price, dict) and isinstance(refunded, dict) and price.get("amount") != refunded.get("amount")
        if "ledger_entry" not in parsed or moved:
            reasons.append("The document names no ledger entry although the trade moved money.")
            return False
        return True  # nothing was booked, nothing to check
    sequence, claimed = (named.get("sequence"), named.get("entry_hash")) if isinstance(named, dict) else (None, None)
    if type(sequence) is not int or not isinstance(claimed, str):
        reasons.append("The document's ledger entry is malformed (needs an integer sequence and an entry_hash).")
        return False
    # Entries name their block by id without a foreign key, so a join could not tell a missing block from a
    # missing entry: whether the block exists, and the hash of the entry before this one, come as subqueries.
    entry = (
        JournalEntry.objects.filter(sequence=sequence)
        .select_related("order")
        .annotate(
            block_exists=Exists(LedgerBlock.objects.filter(pk=OuterRef("block_id"))),
            previous_hash=Subquery(
                JournalEntry.objects.filter(block_id=OuterRef("block_id"), position=OuterRef("position") - 1).values(
                    "entry_hash"
                )[:1]
            ),
        )
        .first()
    )
    if entry is None:
        reasons.append(f"The ledger has no entry #{sequence}.")
        return False
    if entry.order is None or str(entry.order.public_id) != order.get("public_id"):
        reasons.append(f"Ledger entry #{sequence} does not belong to the order the document names.")
        return False
    if entry.kind != JournalKind.SALE:
        reasons.append(f"Ledger entry #{sequence} is a {entry.kind} entry, not the sale that settled the order.")
        return False
    if entry.entry_hash != claimed:
        reasons.append(f"Ledger entry #{sequence} has a different hash than the document states.")
        return False
    if not ledger_entry_hash_checks(entry):
        reasons.append(f"Ledger entry #{sequence} no longer matches its own hash: the ledger was altered.")
        return False
    if not entry.block_exists:
        reasons.append(f"Ledger entry #{sequence} names ledger block {entry.block_id}, which does not exist.")
        return False
    expected = GENESIS_HASH if entry.position == 1 else entry.previous_hash
    if expected is None:
        reasons.append(
            f"Ledger entry #{sequence} is at position {entry.position} of block {entry.block_id}, "
            f"but the block has no entry at position {entry.position - 1}."
        )
        return False
    if entry.prev_hash != expected:
        before = "the genesis hash" if entry.position == 1 else "the hash of the entry before it in its block"
        reasons.append(f"Ledger entry #{sequence} does not link to {before}: the chain was altered.")
        return False
    return True


def certificate_verify(
    *,
    document: str | bytes,
    signature: str,
    bundle_number: str | None = None,
    bundle_key_id: str | None = None,
) -> VerificationResult:
    """Check a certificate: its signature, the ledger entry it names, and that we issued it as it is.

    ``signature_ok``: ``signature`` is the canonical base64 of an Ed25519
    signature over the exact document bytes that verifies with the key the
    document names (the current key or a retired one). ``ledger_ok``: the
    entry the document names is that order's SALE entry with the stated hash,
    its content still recomputes to that hash and it links into its block
    (``_check_ledger``), or the document names none and no money moved.
    ``known``: the number is one we issued, with exactly this document.
    ``bundle_ok``: the number and key id the bundle states around the
    document (``bundle_number``, ``bundle_key_id``; None when it states
    none) are the document's own. ``reasons`` lists every failed check, in
    words.

    Raises CertificateInputError (nothing read or written) when the input is
    not a certificate at all: a missing or malformed signature, a document
    that is not a JSON object, not text, or larger than MAX_DOCUMENT_BYTES.
    Read-only.
    """
    raw_signature, canonical_signature = _decode_signature(signature)
    data = _document_bytes(document)
    parsed = _json_loads(data, what="document")
    if not isinstance(parsed, dict):
        raise CertificateInputError("The document must be a JSON object.", code="not_object")
    if not _is_text(parsed):
        raise CertificateInputError(f"The document is not valid text: {_LONE_SURROGATE}.", code="not_text")

    current = signing_key()
    reasons: list[str] = []
    # The key the document names, if it is the current key or a retired one (a rotation); else the current key.
    named = parsed.get("key_id")
    key = verification_keys().get(named) if isinstance(named, str) else None
    if key is None:
        reasons.append(f"The document names key {_shown(named)}; this exchange signs with {current.key_id}.")
    if not canonical_signature:
        signature_ok = False
        reasons.append(
            "The signature is not the base64 text that was issued (a character was changed or added, "
            "even though it decodes to the same bytes)."
        )
    else:
        try:
            (key or current).public_key.verify(raw_signature, data)
            signature_ok = True
        except InvalidSignature:
            signature_ok = False
            reasons.append(
                "The signature does not match the document (it was altered, or not signed by this exchange)."
            )

    ledger_ok = _check_ledger(parsed, reasons)

    number = parsed.get("number") if isinstance(parsed.get("number"), str) else None
    known = False
    if number is None:
        reasons.append("The document has no certificate number.")
    elif not certificate_number_valid(number):
        reasons.append(f"The document's number {_shown(number)} is not a certificate number (DX-<year>-<digits>).")
        number = None
    else:
        stored = TransactionCertificate.objects.filter(number=number).values_list("document", flat=True).first()
        if stored is None:
            reasons.append(f"This exchange issued no certificate {number}.")
        elif stored.encode("utf-8") != data:
            reasons.append(f"Certificate {number} was issued with a different document.")
        else:
            known = True

    # The bundle's own number and key id are not signed; a bundle stating others than its document misleads.
    bundle_ok = True
    if bundle_number is not None and bundle_number != parsed.get("number"):
        bundle_ok = False
        reasons.append(
            f"The bundle names certificate {_shown(bundle_number)}, but its document is {_shown(parsed.get('number'))}."
        )
    if bundle_key_id is not None and bundle_key_id != parsed.get("key_id"):
        bundle_ok = False
        reasons.append(f"The bundle names key {_shown(bundle_key_id)}, but its document names {_shown(named)}.")
    return VerificationResult(
        signature_ok, ledger_ok, known, reasons, number, (key or current).key_id, parsed, bundle_ok=bundle_ok
    )


@dataclass(frozen=True)
class Bundle:
    """What ``certificate_bundle_parse`` found: the document and signature, and what the bundle says around them."""

    document: str
    signature: str
    number: str | None = None
    key_id: str | None = None


def certificate_bundle_parse(raw: bytes | str) -> Bundle:
    """The bundle in a bundle's JSON text; CertificateInputError, saying why, for anything else."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not raw.strip():
        raise CertificateInputError(
            "Paste or upload a certificate bundle (the JSON file downloaded from the certificate page).",
            code="missing_bundle",
        )
    if len(raw) > MAX_BUNDLE_BYTES:
        # Not len(raw): the API reads at most MAX_BUNDLE_BYTES + 1 bytes of the body, so that is all we know.
        raise CertificateInputError(
            f"The bundle is larger than {MAX_BUNDLE_BYTES} bytes, the most a certificate bundle can be.",
            code="too_large",
        )
    bundle = _json_loads(raw, what="bundle")
    if not isinstance(bundle, dict):
        raise CertificateInputError(
            'The bundle must be a JSON object with "document" and "signature".', code="not_object"
        )
    if not _is_text(bundle):
        raise CertificateInputError(f"The bundle is not valid text: {_LONE_SURROGATE}.", code="not_text")
    document, signature = bundle.get("document"), bundle.get("signature")
    if document is None:
        raise CertificateInputError('The bundle has no "document".', code="missing_document")
    if not isinstance(document, str):
        raise CertificateInputError(
            "The bundle's \"document\" must be a string: the certificate's JSON text exactly as signed.",
            code="bad_document_type",
        )
    if signature is None:
        raise CertificateInputError('The bundle has no "signature".', code="missing_signature")
    if not isinstance(signature, str):
        raise CertificateInputError('The bundle\'s "signature" must be a base64 string.', code="bad_signature_type")
    for name in ("key_id", "number"):
        if bundle.get(name) is not None and not isinstance(bundle[name], str):
            raise CertificateInputError(f'The bundle\'s "{name}" must be a string.', code=f"bad_{name}_type")
    # A format or version this exchange does not write may mean the fields say something else: refused, not guessed.
    if "format" in bundle and bundle["format"] != BUNDLE_FORMAT:
        raise CertificateInputError(
            f'The bundle\'s "format" is {_shown(bundle["format"])}; certificate bundles are {BUNDLE_FORMAT!r}.',
            code="bad_format",
        )
    if "version" in bundle and bundle["version"] != CERTIFICATE_VERSION:
        raise CertificateInputError(
            f'The bundle\'s "version" is {_shown(bundle["version"])}; this exchange reads version '
            f"{CERTIFICATE_VERSION!r}.",
            code="unsupported_version",
        )
    return Bundle(document, signature, bundle.get("number"), bundle.get("key_id"))


def certificate_bundle_verify(raw: bytes | str) -> VerificationResult:
    """Parse a bundle's JSON text and verify it, its stated number and key id included. Read-only.

    CertificateInputError, as ``certificate_bundle_parse`` and ``certificate_verify`` raise it, for input that is
    not a certificate bundle.
    """
    bundle = certificate_bundle_parse(raw)
    return certificate_verify(
        document=bundle.document,
        signature=bundle.signature,
        bundle_number=bundle.number,
        bundle_key_id=bundle.key_id,
    )


def certificate_visible(*, number: str, user) -> TransactionCertificate | None:
    """The certificate if ``user`` is its buyer, a member of its merchant, or staff; else None."""
    if not user.is_authenticated or not certificate_number_valid(number):
        return None
    certificate = (
        TransactionCertificate.objects.select_related("order", "order__merchant", "order__listing")
        .filter(number=number)
        .first()
    )
    if certificate is None:
        return None
    order = certificate.order
    if order.buyer_id == user.pk or user.is_staff or merchant_is_member(merchant=order.merchant, user=user):
        return certificate
    return None
