from django import forms
from django.conf import settings

from common.money import CURRENCY_CHOICES, MoneyError, to_minor


class ListingCreateForm(forms.Form):
    title = forms.CharField(max_length=200)
    summary = forms.CharField(max_length=300, required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False)


class VersionUploadForm(forms.Form):
    file = forms.FileField(help_text="A CSV file (UTF-8 or GB18030).")
    changelog = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class PriceForm(forms.Form):
    price = forms.CharField(max_length=20, help_text="One-time price in major units, e.g. 99.00")
    currency = forms.ChoiceField(choices=CURRENCY_CHOICES, initial=settings.DEFAULT_CURRENCY)

    def clean(self):
        data = super().clean()
        if "price" in data and "currency" in data:
            try:
                data["amount"] = to_minor(data["price"], data["currency"])
            except MoneyError as exc:
                self.add_error("price", str(exc))
            else:
                if data["amount"] <= 0:
                    self.add_error("price", "A one-time price must be greater than zero.")
        return data


class RejectForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))
