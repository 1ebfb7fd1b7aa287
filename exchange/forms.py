from django import forms


class BuyForm(forms.Form):
    # A one-time token rendered into the form; it becomes the order's
    # idempotency key, so a double-submitted form yields one order.
    token = forms.UUIDField(widget=forms.HiddenInput)
    # Which of the listing's plans; empty means the one-time plan.
    plan = forms.IntegerField(required=False, widget=forms.HiddenInput)
    # The buyer ticks "I accept the licence" (the order records which licence, and when).
    accept_licence = forms.BooleanField(required=True)


class AccessRequestForm(forms.Form):
    # Presence and length rules live in the service (access_request_create), which says what is missing.
    organisation = forms.CharField(max_length=200, required=False)
    use_scenario = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=5000, required=False)
