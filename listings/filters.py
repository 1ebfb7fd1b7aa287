"""The catalog's one FilterSet, shared by the HTML catalog and the API list (DESIGN.md §5.2).

The structured filters (category, price type, licence, format, merchant,
update frequency) narrow ``filterset.qs``. The term ``q``, the ``sort`` and
the ``cursor`` are validated here but applied by
:func:`listings.search.catalog_query`, because search ranks and paginates a
bounded candidate set rather than filtering a queryset.

Built per request, so kept cheap: the form class is built once and its
fields are shared rather than deep-copied (``_SharedFields``), the filters
are copied shallowly (``_FilterCopies``), and without an explicit queryset
(the published catalog) :meth:`ListingFilter.page` hands catalog_query the
SQL shape of the filters in use, whose statement is compiled once.
"""

import copy
from urllib.parse import urlencode

import django_filters
from django import forms
from django.db.models import Exists, Model, OuterRef, QuerySet
from django.utils.translation import gettext_lazy as _
from django_filters.constants import EMPTY_VALUES

from listings.choices import FileFormat, Licence, PlanKind, UpdateFrequency
from listings.models import Category, Listing, PricingPlan
from listings.search import (
    FACET_NAMES,
    QUERY_MAX_LENGTH,
    SORT_CHOICES,
    CatalogPage,
    CatalogShape,
    CursorError,
    catalog_query,
    cursor_decode,
)
from listings.selectors import listings_published
from merchants.models import Merchant

# The filters that narrow the queryset (the others are applied by catalog_query).
STRUCTURED_FILTERS = ("category", "price_type", "licence", "format", "merchant", "update_frequency")


class _SharedFields(dict):
    """A form's ``base_fields`` that each form instance shares instead of deep-copying.

    Django deep-copies ``base_fields`` into every form so that a view may alter
    its instance's fields (initial values, choices, widget attributes). The
    catalog's form never does: its fields are fixed by the FilterSet's
    declarations; cleaning a value is a pure function of that value (a model
    choice runs ``queryset.get()`` on a clone, caching nothing on the field);
    rendering reads ``choices`` (a model choice iterates a fresh queryset) and
    builds new attribute dicts; errors, cleaned data and bound fields live on
    the form instance. Sharing them is therefore safe, also across threads, and
    saves rebuilding every widget and choice list per request.
    """

    def __deepcopy__(self, memo):
        return dict(self)


class _FilterCopies(dict):
    """A FilterSet's ``base_filters``, copied per instance one filter at a time, shallowly.

    django-filter deep-copies the filters of every FilterSet instance (each gets
    its own ``parent`` and ``model``); a deep copy also copies their querysets
    and choice lists, which no filter changes. A shallow copy with its own
    ``extra`` dict and its own method binding (``FilterMethod`` refers to its
    filter, whose ``parent`` is the instance) keeps every per-instance attribute
    per instance.
    """

    def __deepcopy__(self, memo):
        copies = {}
        for name, filter_ in self.items():
            clone = copy.copy(filter_)
            clone.extra = dict(filter_.extra)
            if filter_.method is not None:
                clone.method = filter_.method  # binds a new FilterMethod to the clone
            copies[name] = clone
        return copies


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
    q = django_filters.CharFilter(
        method="filter_passthrough", max_length=QUERY_MAX_LENGTH, label=_("Search"), strip=True
    )
    category = django_filters.ModelChoiceFilter(
        queryset=Category.objects.all(), to_field_name="slug", label=_("Category")
    )
    price_type = django_filters.ChoiceFilter(
        choices=PlanKind.choices, method="filter_price_type", label=_("Price type")
    )
    licence = django_filters.ChoiceFilter(choices=Licence.choices, label=_("Licence"))
    format = django_filters.ChoiceFilter(field_name="primary_format", choices=FileFormat.choices, label=_("Format"))
    merchant = django_filters.ModelChoiceFilter(
        queryset=Merchant.objects.all(), to_field_name="slug", label=_("Merchant")
    )
    update_frequency = django_filters.ChoiceFilter(choices=UpdateFrequency.choices, label=_("Update frequency"))
    sort = django_filters.ChoiceFilter(choices=SORT_CHOICES, method="filter_passthrough", label=_("Sort by"))
    cursor = django_filters.CharFilter(method="filter_passthrough", max_length=40, label=_("Cursor"))

    class Meta:
        model = Listing
        fields = ["q", "category", "price_type", "licence", "format", "merchant", "update_frequency", "sort"]
        form = CatalogFilterForm

    def __init__(self, data=None, queryset=None, *, request=None, prefix=None):
        # Without a queryset: the published catalog, whose statements catalog_query compiles
        # once per SQL shape (which filters are in use) and re-binds per request.
        self.published_catalog = queryset is None
        super().__init__(data, queryset, request=request, prefix=prefix)
        if self.published_catalog:
            self._queryset = None  # listings_published(), built when first used (a compiled shape never needs it)

    @property
    def queryset(self) -> QuerySet:
        if self._queryset is None:
            self._queryset = listings_published()
        return self._queryset

    @queryset.setter
    def queryset(self, value: QuerySet) -> None:
        self._queryset = value

    def get_form_class(self):
        # The form class depends only on the declared filters: build it once per FilterSet class
        # (django-filter builds a new class per request), with fields shared by its instances.
        cls = type(self)
        if "_form_class" not in cls.__dict__:
            form_class = super().get_form_class()
            form_class.base_fields = _SharedFields(form_class.base_fields)
            cls._form_class = form_class
        return cls._form_class

    def filter_passthrough(self, queryset, name, value):
        # Applied by catalog_query (see the module docstring).
        return queryset

    def filter_price_type(self, queryset, name, value):
        plans = PricingPlan.objects.filter(listing=OuterRef("pk"), kind=value, is_active=True)
        return queryset.filter(Exists(plans))

    def page(self, *, naive: bool = False, cards: bool = False) -> CatalogPage:
        """The catalog page for these (valid) parameters (listings as card dicts if ``cards``)."""
        data = self.form.cleaned_data
        where = {"shape": self.shape()} if self.published_catalog else {"queryset": self.qs}
        return catalog_query(
            **where,
            q=data.get("q") or "",
            sort=data.get("sort") or "",
            offset=cursor_decode(data.get("cursor") or ""),
            naive=naive,
            cards=cards,
        )

    def shape(self) -> CatalogShape:
        """The structured filters in use (the SQL shape) and their values, for catalog_query.

        Only for the published catalog (no queryset given): the shape's key names its base.
        """
        if not self.published_catalog:
            raise ValueError("A SQL shape is defined for the published catalog only.")
        data = self.form.cleaned_data
        values = {}
        for name in STRUCTURED_FILTERS:
            value = data.get(name)
            if value not in EMPTY_VALUES:
                values[name] = value.pk if isinstance(value, Model) else value
        key = (type(self), "published", tuple(values))
        return CatalogShape(key=key, values=values, build=self.narrowed)

    def narrowed(self, values: dict) -> QuerySet:
        """The FilterSet's queryset narrowed by ``values`` of the structured filters (as ``qs`` does)."""
        queryset = self.queryset.all()
        for name in STRUCTURED_FILTERS:
            if name in values:
                queryset = self.filters[name].filter(queryset, values[name])
        return queryset

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


ListingFilter.base_filters = _FilterCopies(ListingFilter.base_filters)
