"""The catalog's one FilterSet, shared by the HTML catalog and the API list (DESIGN.md §5.2).

The structured filters (category, price type, licence, format, merchant,
update frequency) narrow ``filterset.qs``. The term ``q``, the ``sort`` and
the ``cursor`` are validated here but applied by
:func:`listings.search.catalog_query`, because search ranks and paginates a
bounded candidate set rather than filtering a queryset.
"""

from urllib.parse import urlencode

import django_filters
from django import forms
from django.db.models import Exists, OuterRef

from listings.choices import FileFormat, Licence, PlanKind, UpdateFrequency
from listings.models import Category, Listing, PricingPlan
from listings.search import (
    FACET_NAMES,
    QUERY_MAX_LENGTH,
    SORT_CHOICES,
    CatalogPage,
    CursorError,
    catalog_query,
    cursor_decode,
)
from merchants.models import Merchant


class CatalogFilterForm(forms.Form):
    def clean_cursor(self):
        cursor = self.cleaned_data.get("cursor") or ""
        try:
            cursor_decode(cursor)
        except CursorError as exc:
            raise forms.ValidationError(
                "Not a valid page cursor; start again from the first page.", code="invalid_cursor"
            ) from exc
        return cursor


class ListingFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_passthrough", max_length=QUERY_MAX_LENGTH, label="Search", strip=True)
    category = django_filters.ModelChoiceFilter(queryset=Category.objects.all(), to_field_name="slug", label="Category")
    price_type = django_filters.ChoiceFilter(choices=PlanKind.choices, method="filter_price_type", label="Price type")
    licence = django_filters.ChoiceFilter(choices=Licence.choices, label="Licence")
    format = django_filters.ChoiceFilter(field_name="primary_format", choices=FileFormat.choices, label="Format")
    merchant = django_filters.ModelChoiceFilter(queryset=Merchant.objects.all(), to_field_name="slug", label="Merchant")
    update_frequency = django_filters.ChoiceFilter(choices=UpdateFrequency.choices, label="Update frequency")
    sort = django_filters.ChoiceFilter(choices=SORT_CHOICES, method="filter_passthrough", label="Sort by")
    cursor = django_filters.CharFilter(method="filter_passthrough", max_length=40, label="Cursor")

    class Meta:
        model = Listing
        fields = ["q", "category", "price_type", "licence", "format", "merchant", "update_frequency", "sort"]
        form = CatalogFilterForm

    def get_form_class(self):
        # The form class depends only on the declared filters: build it once per FilterSet class
        # (django-filter builds a new class per request; forms still deep-copy their fields).
        cls = type(self)
        if "_form_class" not in cls.__dict__:
            cls._form_class = super().get_form_class()
        return cls._form_class

    def filter_passthrough(self, queryset, name, value):
        # Applied by catalog_query (see the module docstring).
        return queryset

    def filter_price_type(self, queryset, name, value):
        plans = PricingPlan.objects.filter(listing=OuterRef("pk"), kind=value, is_active=True)
        return queryset.filter(Exists(plans))

    def page(self, *, naive: bool = False) -> CatalogPage:
        """The catalog page for these (valid) parameters."""
        data = self.form.cleaned_data
        return catalog_query(
            queryset=self.qs,
            q=data.get("q") or "",
            sort=data.get("sort") or "",
            offset=cursor_decode(data.get("cursor") or ""),
            naive=naive,
        )

    def error_list(self) -> list[tuple[str, str]]:
        """(parameter label, message) for each invalid parameter, for people to read."""
        return [
            (self.filters[name].label if name in self.filters else name, str(message))
            for name, messages in self.errors.items()
            for message in messages
        ]

    def active_filters(self) -> dict[str, str]:
        """The raw values of the filters in use (for links that keep them), without the cursor."""
        return {name: self.data[name] for name in self.filters if self.data.get(name) and name != "cursor"}

    def facet_groups(self, page: CatalogPage) -> list[dict]:
        """The facet sidebar: per facet its values with counts and links that toggle them."""
        params = self.active_filters()
        groups = []
        for name in FACET_NAMES:
            selected = params.get(name)
            values = [
                {
                    "label": value.label,
                    "count": value.count,
                    "active": value.value == selected,
                    "query": _query(params, name, None if value.value == selected else value.value),
                }
                for value in page.facets.get(name, [])
            ]
            groups.append(
                {
                    "name": name,
                    "title": self.filters[name].label,
                    "values": values,
                    "clear_query": _query(params, name, None) if selected else None,
                }
            )
        return groups


def _query(params: dict[str, str], name: str, value: str | None) -> str:
    """A catalog query string: ``params`` with ``name`` set to ``value`` (removed when None), page one."""
    changed = {**params, name: value}
    return "?" + urlencode({key: item for key, item in changed.items() if item})
