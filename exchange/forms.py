from django import forms


class BuyForm(forms.Form):
    # A one-time token rendered into the form; it becomes the order's
    # idempotency key, so a double-submitted form yields one order.
    token = forms.UUIDField(widget=forms.HiddenInput)
