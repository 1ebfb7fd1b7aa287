import re

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import User
from merchants.models import Merchant, MerchantMember

pytestmark = pytest.mark.django_db


def test_signup_verify_email_and_create_merchant(client):
    response = client.post(
        reverse("account_signup"),
        {"email": "new.seller@example.com", "password1": "a-long-unusual-pass", "password2": "a-long-unusual-pass"},
    )
    assert response.status_code == 302
    user = User.objects.get(email="new.seller@example.com")
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^\s]+/accounts/confirm-email/[^\s]+/", mail.outbox[0].body).group(0)
    path = link.split("://", 1)[1].split("/", 1)[1]
    confirm = client.post("/" + path)
    assert confirm.status_code == 302
    assert user.emailaddress_set.get().verified

    assert client.login(email="new.seller@example.com", password="a-long-unusual-pass")
    console = client.get(reverse("listings:console"))
    assert console.status_code == 302 and reverse("merchants:onboard") in console.url
    created = client.post(reverse("merchants:onboard"), {"name": "Seller & Co", "next": reverse("listings:console")})
    assert created.status_code == 302 and created.url == reverse("listings:console")
    merchant = Merchant.objects.get()
    assert (merchant.name, merchant.slug) == ("Seller & Co", "seller-co")
    assert MerchantMember.objects.get().role == "owner"


def test_unverified_user_cannot_sign_in(client):
    client.post(
        reverse("account_signup"),
        {"email": "unverified@example.com", "password1": "a-long-unusual-pass", "password2": "a-long-unusual-pass"},
    )
    client.logout()
    response = client.post(
        reverse("account_login"), {"login": "unverified@example.com", "password": "a-long-unusual-pass"}
    )
    assert response.status_code == 302 and "confirm-email" in response.url
    assert "_auth_user_id" not in client.session


def test_signup_with_mismatched_passwords_creates_nothing(client):
    response = client.post(
        reverse("account_signup"),
        {"email": "x@example.com", "password1": "a-long-unusual-pass", "password2": "another-long-pass"},
    )
    assert response.status_code == 200
    assert "password" in response.content.decode().lower()
    assert User.objects.count() == 0
    assert mail.outbox == []


def test_blank_merchant_name_and_second_organisation_are_refused(client, merchant_user, merchant):
    client.force_login(merchant_user)
    # Already a member: the onboarding page sends them on and creates nothing.
    response = client.post(reverse("merchants:onboard"), {"name": "Second Org"})
    assert response.status_code == 302
    assert Merchant.objects.count() == 1


def test_blank_merchant_name_is_refused(client, buyer):
    client.force_login(buyer)
    response = client.post(reverse("merchants:onboard"), {"name": "   "})
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert Merchant.objects.count() == 0 and MerchantMember.objects.count() == 0


def test_onboard_ignores_offsite_next(client, buyer):
    client.force_login(buyer)
    response = client.post(reverse("merchants:onboard"), {"name": "Ok Org", "next": "https://evil.example/"})
    assert response.status_code == 302 and response.url == "/"
