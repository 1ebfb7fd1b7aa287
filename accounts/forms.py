from django import forms

from accounts.services import SCOPE_LABELS, SCOPES


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What the key is for, e.g. “nightly import”.")
    scopes = forms.MultipleChoiceField(
        choices=[(scope, SCOPE_LABELS[scope]) for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=["data"],
    )
    expires_in_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, help_text="Leave empty for a key that does not expire."
    )
