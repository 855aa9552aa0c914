"""The example's REST API (example_project/docs/rest.py), through DRF's test client."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

URL = "/api/documents/"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def get(api: APIClient, **params: Any) -> Any:
    response = api.get(URL, params)
    assert response.status_code == 200, response.content
    return response.json()


def test_search_ranks_by_meaning_and_words(api: APIClient, corpus: Any) -> None:
    page = get(api, search="write rows to a CSV file")
    assert page["count"] == 10
    results = page["results"]
    assert results[0]["module"] == "csv"
    expected = corpus.objects.hybrid_search("write rows to a CSV file", k=10)
    assert [row["id"] for row in results] == [doc.pk for doc in expected]
    scores = [row["score"] for row in results]
    assert scores == sorted(scores, reverse=True)
    first = corpus.objects.get(pk=results[0]["id"])
    assert results[0]["url"] == f"http://testserver/doc/{first.pk}/"
    assert results[0]["snippet"] == first.snippet


def test_filters_select_the_rows_searched(api: APIClient, corpus: Any) -> None:
    results = get(api, search="write rows to a CSV file", kind="function", k=5)["results"]
    expected = corpus.objects.filter(kind="function").hybrid_search("write rows to a CSV file", k=5)
    assert [row["id"] for row in results] == [doc.pk for doc in expected]
    modules = {row["module"] for row in get(api, search="parse", module="json", k=20)["results"]}
    assert modules and all(m == "json" or m.startswith("json.") for m in modules)


def test_without_a_search_lists_every_document(api: APIClient, corpus: Any) -> None:
    page = get(api)
    assert page["count"] == corpus.objects.count()
    assert len(page["results"]) == 50
    assert {row["similarity"] for row in page["results"]} == {None}
    assert {row["score"] for row in page["results"]} == {None}


def test_bad_parameters_are_400s(api: APIClient, corpus: Any) -> None:
    response = api.get(URL, {"search": "date", "k": "51"})
    assert response.status_code == 400
    assert response.json() == {"k": ["Ensure this value is less than or equal to 50."]}
    response = api.get(URL, {"search": "date", "kind": "planet"})
    assert response.status_code == 400
    assert response.json() == {"kind": ['"planet" is not a valid choice.']}


def test_browsable_api_has_the_search_form(api: APIClient, corpus: Any) -> None:
    response = api.get(URL, {"search": "compress a file", "k": "3"}, HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="search" value="compress a file"' in html
    assert 'name="k" value="3" min="1" max="50"' in html
