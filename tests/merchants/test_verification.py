"""Merchant verification (KYC): the services, the audit trail, and the admin page a reviewer uses."""

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.urls import reverse

from audit.models import AuditAction, AuditEvent
from merchants.choices import VerificationStatus
from merchants.models import Merchant
from merchants.services import merchant_reject, merchant_verify
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _state(merchant):
    merchant = Merchant.objects.get(pk=merchant.pk)
    return (merchant.verification_status, merchant.verified_at, merchant.verification_note)


def test_a_new_merchant_awaits_verification(merchant):
    assert merchant.verification_status == VerificationStatus.PENDING
    assert not merchant.is_verified
    assert merchant.verified_at is None


def test_verify_records_the_time_note_and_an_audit_event(merchant, staff):
    merchant_verify(merchant=merchant, actor=staff, note="  Business licence checked.  ")
    status, verified_at, note = _state(merchant)
    assert (status, note) == (VerificationStatus.VERIFIED, "Business licence checked.")
    assert verified_at is not None
    event = AuditEvent.objects.get(action=AuditAction.MERCHANT_VERIFIED)
    assert (event.actor, event.object_id, event.details["previous"]) == (staff, str(merchant.pk), "pending")


def test_verifying_twice_is_refused_and_changes_nothing(merchant, staff):
    merchant_verify(merchant=merchant, actor=staff)
    before, events = _state(merchant), AuditEvent.objects.count()
    with pytest.raises(ValidationError, match="already verified"):
        merchant_verify(merchant=merchant, actor=staff, note="again")
    assert _state(merchant) == before
    assert AuditEvent.objects.count() == events


def test_reject_needs_a_reason_and_a_blank_one_changes_nothing(merchant, staff):
    before = _state(merchant)
    with pytest.raises(ValidationError) as raised:
        merchant_reject(merchant=merchant, actor=staff, reason="   ")
    assert "reason" in raised.value.message_dict
    assert _state(merchant) == before
    assert not AuditEvent.objects.filter(action=AuditAction.MERCHANT_REJECTED).exists()


def test_withdrawing_a_verification_clears_it_and_can_be_verified_again(merchant, staff):
    merchant_verify(merchant=merchant, actor=staff)
    merchant_reject(merchant=merchant, actor=staff, reason="Licence expired.")
    assert _state(merchant) == (VerificationStatus.REJECTED, None, "Licence expired.")
    with pytest.raises(ValidationError, match="already refused"):
        merchant_reject(merchant=merchant, actor=staff, reason="Still expired.")
    assert _state(merchant)[2] == "Licence expired."
    merchant_verify(merchant=merchant, actor=staff, note="Renewed licence seen.")
    assert merchant.__class__.objects.get(pk=merchant.pk).is_verified
    actions = list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))
    assert actions == ["merchant_verified", "merchant_rejected", "merchant_verified"]


def test_admin_verification_page_verifies_and_refuses(client, staff, merchant):
    url = reverse("admin:merchants_merchant_verification", args=[merchant.pk])
    client_for(client, staff)
    page = client.get(url)
    assert page.status_code == 200
    assert merchant.name in page.content.decode()
    assert "email verified" in page.content.decode()

    blank = client.post(url, {"decision": "reject", "note": ""})
    assert blank.status_code == 400
    assert "Say why the verification is refused" in blank.content.decode()
    assert _state(merchant)[0] == VerificationStatus.PENDING

    bad = client.post(url, {"decision": "approve-everything", "note": ""})
    assert bad.status_code == 400
    assert _state(merchant)[0] == VerificationStatus.PENDING

    done = client.post(url, {"decision": "verify", "note": "Registration number checked."})
    assert done.status_code == 302
    assert _state(merchant)[0] == VerificationStatus.VERIFIED
    change = client.get(reverse("admin:merchants_merchant_change", args=[merchant.pk]))
    assert reverse("admin:merchants_merchant_verification", args=[merchant.pk]) in change.content.decode()


def test_admin_verification_needs_the_change_permission(client, merchant):
    viewer = UserFactory(is_staff=True, email="viewer@example.com")
    viewer.user_permissions.add(Permission.objects.get(codename="view_merchant"))
    client_for(client, viewer)
    url = reverse("admin:merchants_merchant_verification", args=[merchant.pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"decision": "verify"}).status_code == 403
    assert _state(merchant)[0] == VerificationStatus.PENDING


def test_bulk_action_verifies_only_the_pending_ones(client, staff, merchant, other_merchant_user):
    other = other_merchant_user.merchant_memberships.get().merchant
    merchant_verify(merchant=other, actor=staff)
    client_for(client, staff)
    response = client.post(
        reverse("admin:merchants_merchant_changelist"),
        {"action": "verify_selected", "_selected_action": [merchant.pk, other.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert _state(merchant)[0] == VerificationStatus.VERIFIED
    assert AuditEvent.objects.filter(action=AuditAction.MERCHANT_VERIFIED).count() == 2
    assert "1 were already verified" in response.content.decode()


def test_buyers_see_the_badge_only_once_the_merchant_is_verified(client, staff, published_listing):
    merchant = published_listing.merchant
    pages = [
        reverse("listings:detail", args=[published_listing.slug]),
        reverse("listings:merchant_profile", args=[merchant.slug]),
        reverse("listings:catalog"),
    ]
    for url in pages:
        assert "Verified merchant" not in client.get(url).content.decode(), url
    merchant_verify(merchant=merchant, actor=staff)
    for url in pages:
        assert "Verified merchant" in client.get(url).content.decode(), url


def test_the_merchant_sees_the_state_and_the_reason_in_the_console(client, staff, merchant, merchant_user):
    client_for(client, merchant_user)
    assert "Awaiting verification" in client.get(reverse("listings:console")).content.decode()
    merchant_reject(merchant=merchant, actor=staff, reason="The registration number does not match.")
    page = client.get(reverse("listings:console")).content.decode()
    assert "Rejected" in page and "The registration number does not match." in page
