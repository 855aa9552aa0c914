"""The search parameters, validated the same way for the page and the JSON API."""

from __future__ import annotations

from typing import Any

from django import forms

from example_project.docs.models import Document

DEFAULT_K = 10
MAX_K = 50
MAX_QUERY_LENGTH = 500


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Search the documentation",
        required=False,
        max_length=MAX_QUERY_LENGTH,
        strip=True,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "e.g. read a CSV file", "autocomplete": "off"}
        ),
    )
    kind = forms.ChoiceField(
        label="Kind", required=False, choices=[("", "Any kind"), *Document.Kind.choices]
    )
    module = forms.CharField(
        label="Module",
        required=False,
        max_length=100,
        strip=True,
        help_text="A module and its submodules, e.g. email.",
        widget=forms.TextInput(attrs={"list": "modules", "placeholder": "Any module"}),
    )
    k = forms.IntegerField(
        label="Number of results",
        required=False,
        min_value=1,
        max_value=MAX_K,
        widget=forms.NumberInput(attrs={"size": 3, "placeholder": str(DEFAULT_K)}),
    )
    like = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean_k(self) -> int:
        k: int | None = self.cleaned_data.get("k")
        return DEFAULT_K if k is None else k

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("q"):
            data["like"] = None  # a typed query wins over "more like this"
        return data
