import re

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from common.money import CURRENCY_CHOICES, MoneyError, to_minor
from listings.choices import (
    BillingInterval,
    Licence,
    MeteredUnit,
    PlanKind,
    Sensitivity,
    UpdateFrequency,
    VersionAccess,
)
from listings.models import Category
from listings.services.products import MAX_DICTIONARY_ENTRY_LENGTH

# Tags are typed as "a, b, c"; semicolons and the full-width comma, semicolon and
# enumeration comma of Chinese input methods (U+FF0C, U+FF1B, U+3001) separate too.
TAG_SEPARATORS = re.compile("[,;\uff0c\uff1b\u3001]")


class DateInput(forms.DateInput):
    input_type = "date"


class ListingForm(forms.Form):
    """A data product's descriptive fields; the services validate the rules, this parses the input."""

    title = forms.CharField(label=_("Title"), max_length=200)
    summary = forms.CharField(
        label=_("Summary"), max_length=300, required=False, help_text=_("One sentence shown in the catalog.")
    )
    description = forms.CharField(
        label=_("Description"),
        widget=forms.Textarea(attrs={"rows": 10}),
        required=False,
        help_text=_("Markdown: headings, lists, tables, links and code blocks. HTML is removed."),
    )
    category = forms.ModelChoiceField(
        label=_("Category"),
        queryset=Category.objects.all(),
        required=False,
        empty_label=_("— choose a category —"),
    )
    tags = forms.CharField(
        label=_("Tags"),
        max_length=600,
        required=False,
        help_text=_("Up to 10 keywords, separated by commas (e.g. traffic, guiyang)."),
    )
    licence = forms.ChoiceField(label=_("Licence"), choices=Licence.choices, initial=Licence.CC_BY_4)
    licence_terms = forms.CharField(
        label=_("Licence terms"),
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        help_text=_("Required for a custom licence."),
    )
    update_frequency = forms.ChoiceField(
        label=_("Update frequency"), choices=UpdateFrequency.choices, initial=UpdateFrequency.ONCE
    )
    temporal_start = forms.DateField(required=False, widget=DateInput, label=_("Period covered: from"))
    temporal_end = forms.DateField(required=False, widget=DateInput, label=_("Period covered: to"))
    geographic_coverage = forms.CharField(
        label=_("Geographic coverage"),
        max_length=200,
        required=False,
        help_text=_("e.g. Guizhou province, China"),
    )
    use_scenarios = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        label=_("Allowed use scenarios"),
        help_text=_("One per line."),
    )
    sensitivity = forms.ChoiceField(
        label=_("Sensitivity"), choices=Sensitivity.choices, initial=Sensitivity.NONE, widget=forms.RadioSelect
    )
    requires_access_request = forms.BooleanField(
        required=False,
        label=_("Buyers must request access first"),
        help_text=_("Buyers state their organisation and use scenario; you approve each one before they can buy."),
    )

    def clean_tags(self) -> list[str]:
        return [name.strip() for name in TAG_SEPARATORS.split(self.cleaned_data.get("tags") or "") if name.strip()]

    @classmethod
    def initial_for(cls, listing) -> dict:
        initial = {name: getattr(listing, name) for name in cls.base_fields if name != "tags"}
        initial["tags"] = ", ".join(tag.name for tag in listing.tags.all())
        return initial


# Kept for callers of the first version of the console.
ListingCreateForm = ListingForm


class VersionUploadForm(forms.Form):
    file = forms.FileField(
        label=_("File"),
        help_text=_("CSV or TSV (UTF-8 or GB18030), JSON Lines, or Parquet. Profiled automatically after upload."),
    )
    changelog = forms.CharField(label=_("Changelog"), widget=forms.Textarea(attrs={"rows": 2}), required=False)


class PriceForm(forms.Form):
    price = forms.CharField(label=_("Price"), max_length=20, help_text=_("One-time price in major units, e.g. 99.00"))
    currency = forms.ChoiceField(label=_("Currency"), choices=CURRENCY_CHOICES, initial=settings.DEFAULT_CURRENCY)

    def clean(self):
        data = super().clean()
        if "price" in data and "currency" in data:
            try:
                data["amount"] = to_minor(data["price"], data["currency"])
            except MoneyError as exc:
                self.add_error("price", str(exc))
            else:
                if data["amount"] <= 0:
                    self.add_error("price", _("A one-time price must be greater than zero."))
        return data


# The fields each kind of plan asks for (besides kind, name and version access).
PLAN_KIND_FIELDS = {
    PlanKind.FREE: [],
    PlanKind.ONE_TIME: ["price", "currency"],
    PlanKind.SUBSCRIPTION: ["price", "currency", "interval"],
    PlanKind.METERED: ["price", "currency", "metered_unit", "free_units_per_month", "monthly_cap_units"],
}
PLAN_OPTIONAL_FIELDS = ["price", "currency", "interval", "metered_unit", "free_units_per_month", "monthly_cap_units"]


class PlanForm(forms.Form):
    """Add a plan of one kind; only that kind's fields are on the form (see PLAN_KIND_FIELDS).

    The kind is chosen by the caller (the view reads it from the unprefixed ``kind`` field).
    """

    name = forms.CharField(
        label=_("Name"), max_length=80, required=False, help_text=_("Optional, e.g. “Research licence”.")
    )
    price = forms.CharField(label=_("Price"), max_length=20, help_text=_("In major units, e.g. 99.00"))
    currency = forms.ChoiceField(label=_("Currency"), choices=CURRENCY_CHOICES, initial=settings.DEFAULT_CURRENCY)
    interval = forms.ChoiceField(choices=BillingInterval.choices, label=_("Billed"))
    metered_unit = forms.ChoiceField(choices=MeteredUnit.choices, label=_("Price"))
    free_units_per_month = forms.IntegerField(min_value=0, initial=0, label=_("Free units per month"))
    monthly_cap_units = forms.IntegerField(
        min_value=1, required=False, label=_("Monthly cap (units)"), help_text=_("Leave empty for no cap.")
    )
    version_access = forms.ChoiceField(
        label=_("Version access"), choices=VersionAccess.choices, initial=VersionAccess.ALL
    )

    def __init__(self, *args, kind: str, **kwargs):
        kwargs.setdefault("prefix", f"plan-{kind}")
        super().__init__(*args, **kwargs)
        self.kind = kind
        wanted = PLAN_KIND_FIELDS[kind]
        for name in PLAN_OPTIONAL_FIELDS:
            if name not in wanted:
                del self.fields[name]
        if kind == PlanKind.METERED:
            self.fields["price"].label = _("Price per unit")
            self.fields["price"].help_text = _("In major units, e.g. 0.05")
        elif kind == PlanKind.SUBSCRIPTION:
            self.fields["price"].label = _("Price per interval")

    @property
    def title(self) -> str:
        return PlanKind(self.kind).label

    def clean(self):
        data = super().clean()
        data["kind"] = self.kind
        if self.kind == PlanKind.FREE:
            data["amount"], data["currency"] = 0, settings.DEFAULT_CURRENCY
        elif "price" in data and "currency" in data:
            try:
                data["amount"] = to_minor(data["price"], data["currency"])
            except MoneyError as exc:
                self.add_error("price", str(exc))
        return data

    def service_kwargs(self) -> dict:
        """The cleaned data as ``pricing_plan_create`` keyword arguments."""
        data = self.cleaned_data
        kwargs = {
            "kind": self.kind,
            "amount": data["amount"],
            "currency": data["currency"],
            "name": data.get("name", ""),
            "version_access": data["version_access"],
        }
        for name in ("interval", "metered_unit", "free_units_per_month", "monthly_cap_units"):
            if name in self.fields:
                kwargs[name] = data.get(name)
        return kwargs


class DataDictionaryForm(forms.Form):
    """One description field per profiled column (field names are positional: column names are free text)."""

    def __init__(self, *args, columns: list[dict], dictionary: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.column_names = []
        for index, column in enumerate(columns):
            name = column["name"]
            self.column_names.append(name)
            self.fields[f"col_{index}"] = forms.CharField(
                label=name,
                required=False,
                max_length=MAX_DICTIONARY_ENTRY_LENGTH,
                initial=dictionary.get(name, ""),
                help_text=column.get("type", ""),
                widget=forms.TextInput(attrs={"placeholder": _("What this column means, its unit, its source")}),
            )

    def descriptions(self) -> dict[str, str]:
        return {name: self.cleaned_data.get(f"col_{i}", "") for i, name in enumerate(self.column_names)}
