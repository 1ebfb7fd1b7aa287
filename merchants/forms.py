from django import forms


class MerchantCreateForm(forms.Form):
    name = forms.CharField(max_length=200, label="Organisation name")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    contact_email = forms.EmailField(required=False)
