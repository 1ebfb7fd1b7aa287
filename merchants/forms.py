from django import forms
from django.utils.translation import gettext_lazy as _


class MerchantCreateForm(forms.Form):
    name = forms.CharField(max_length=200, label=_("Organisation name"))
    description = forms.CharField(label=_("Description"), widget=forms.Textarea(attrs={"rows": 3}), required=False)
    contact_email = forms.EmailField(label=_("Contact email"), required=False)
