from django import forms
from django.utils.translation import gettext_lazy as _

from accounts.services import SCOPE_LABELS, SCOPES


class ApiKeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=80, help_text=_("What the key is for, e.g. “nightly import”."))
    scopes = forms.MultipleChoiceField(
        label=_("Scopes"),
        choices=[(scope, _(SCOPE_LABELS[scope])) for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=["data"],
    )
    expires_in_days = forms.IntegerField(
        label=_("Expires in days"),
        required=False,
        min_value=1,
        max_value=3650,
        help_text=_("Leave empty for a key that does not expire."),
    )
