"""The example's search page, document page, JSON API and admin, through Django's test client."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def titles(response: Any) -> list[str]:
    return [doc.title for doc in response.context["search"].results]


def get_doc(corpus: Any, name: str) -> Any:
    return corpus.objects.get(name=name)


class TestSearchPage:
    def test_landing_page(self, client: Client, corpus: Any) -> None:
        response = client.get("/")
        assert response.status_code == 200
        html = response.content.decode()
        assert f"Search {corpus.objects.count():,} documents" in html
        assert 'href="/?q=read%20a%20CSV%20file"' in html
        assert "search" not in response.context
        # Every control has a label, and nothing needs JavaScript.
        for control in ("id_q", "id_kind", "id_module", "id_k"):
            assert f'<label for="{control}">' in html
            assert f'id="{control}"' in html
        assert "<script" not in html

    def test_search_ranks_by_meaning_and_words(self, client: Client, corpus: Any) -> None:
        response = client.get("/", {"q": "write rows to a CSV file"})
        assert response.status_code == 200
        search = response.context["search"]
        assert len(search.results) == 10
        assert search.results[0].module == "csv"
        scores = [doc.score for doc in search.results]
        assert scores == sorted(scores, reverse=True)
        html = response.content.decode()
        assert "10 results for “write rows to a CSV file”" in html
        assert isinstance(search.took_ms, float)
        assert re.search(r"in \d+\.\d ms", html)  # the time taken is reported
        first = search.results[0]
        assert f'href="/doc/{first.pk}/"' in html
        assert f'href="/?like={first.pk}"' in html
        assert f"{first.similarity:.3f}" in html
        assert first.snippet and first.snippet[:40] in html

    def test_k(self, client: Client, corpus: Any) -> None:
        response = client.get("/", {"q": "date", "k": "3"})
        assert len(titles(response)) == 3

    def test_kind_filter_narrows_exactly(self, client: Client, corpus: Any) -> None:
        response = client.get("/", {"q": "write rows to a CSV file", "kind": "function", "k": "5"})
        results = response.context["search"].results
        assert len(results) == 5
        assert {doc.kind for doc in results} == {"function"}
        expected = list(
            corpus.objects.filter(kind="function").hybrid_search("write rows to a CSV file", 5)
        )
        assert [doc.pk for doc in results] == [doc.pk for doc in expected]

    def test_module_filter_includes_submodules(self, client: Client, corpus: Any) -> None:
        corpus.objects.filter(name="json.dumps").update(module="json.encoder")
        response = client.get("/", {"q": "serialize an object", "module": "json", "k": "50"})
        modules = {doc.module for doc in response.context["search"].results}
        assert "json.encoder" in modules
        assert all(m == "json" or m.startswith("json.") for m in modules)

    def test_module_filter_matches_whole_names(self, client: Client, corpus: Any) -> None:
        response = client.get("/", {"q": "serialize an object", "module": "js"})
        assert response.context["search"].results == []
        assert "No document matches these filters" in response.content.decode()

    def test_filters_that_match_nothing(self, client: Client, corpus: Any) -> None:
        response = client.get("/", {"q": "compress", "kind": "topic", "module": "gzip"})
        assert response.status_code == 200
        html = response.content.decode()
        assert "No results for “compress”" in html
        assert "clear the kind or the module" in html

    def test_more_like_this(self, client: Client, corpus: Any) -> None:
        source = get_doc(corpus, "json.dumps")
        response = client.get("/", {"like": source.pk})
        search = response.context["search"]
        assert search.like == source
        assert source.pk not in [doc.pk for doc in search.results]
        assert len(search.results) == 10
        html = response.content.decode()
        assert "documents like" in html
        # Filters applied on this page keep comparing with the same document.
        assert f'name="like" value="{source.pk}"' in html

    def test_more_like_this_with_filter(self, client: Client, corpus: Any) -> None:
        source = get_doc(corpus, "json.dumps")
        response = client.get("/", {"like": source.pk, "module": "gzip"})
        assert {doc.module for doc in response.context["search"].results} == {"gzip"}

    def test_typed_query_wins_over_like(self, client: Client, corpus: Any) -> None:
        source = get_doc(corpus, "json.dumps")
        response = client.get("/", {"like": source.pk, "q": "compress data"})
        assert response.context["search"].like is None
        assert response.context["search"].results[0].module == "gzip"

    def test_more_like_a_missing_document(self, client: Client, corpus: Any) -> None:
        assert client.get("/", {"like": 999_999}).status_code == 404

    def test_empty_query(self, client: Client, corpus: Any) -> None:
        response = client.get("/", {"q": "   ", "kind": "", "module": ""})
        assert response.status_code == 200
        assert "search" not in response.context
        assert "Type a few words to search" in response.content.decode()

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"q": "x", "k": "0"}, "greater than or equal to 1"),
            ({"q": "x", "k": "51"}, "less than or equal to 50"),
            ({"q": "x", "k": "many"}, "Enter a whole number"),
            ({"q": "x", "kind": "planet"}, "Select a valid choice"),
            ({"q": "x" * 501}, "at most 500 characters"),
        ],
    )
    def test_invalid_parameters(
        self, client: Client, corpus: Any, params: dict[str, str], message: str
    ) -> None:
        response = client.get("/", params)
        assert response.status_code == 400
        assert message in response.content.decode()
        assert "search" not in response.context

    def test_documents_without_embedding_are_announced(self, client: Client, corpus: Any) -> None:
        corpus.objects.bulk_create([corpus(kind="topic", name="new", title="New", body="Fresh.")])
        html = client.get("/").content.decode()
        assert "1 of" in html and "have no embedding yet" in html
        assert "embeddings_backfill" in html

    def test_post_is_refused(self, client: Client, corpus: Any) -> None:
        assert client.post("/", {"q": "x"}).status_code == 405


class TestDocumentPage:
    def test_shows_document_and_similar_ones(self, client: Client, corpus: Any) -> None:
        doc = get_doc(corpus, "difflib.unified_diff")
        response = client.get(f"/doc/{doc.pk}/")
        assert response.status_code == 200
        html = response.content.decode()
        assert "<h1>difflib.unified_diff</h1>" in html
        assert doc.signature and "difflib.unified_diff(a, b" in html
        similar = response.context["similar"].results
        assert len(similar) == 5
        assert doc.pk not in [d.pk for d in similar]
        assert similar[0].module == "difflib"

    def test_missing_document(self, client: Client, corpus: Any) -> None:
        assert client.get("/doc/999999/").status_code == 404

    def test_document_without_embedding(self, client: Client, corpus: Any) -> None:
        (doc,) = corpus.objects.bulk_create(
            [corpus(kind="topic", name="new", title="New", body="Fresh.")]
        )
        response = client.get(f"/doc/{doc.pk}/")
        assert response.status_code == 200
        assert "has no embedding yet" in response.content.decode()


class TestAPI:
    def test_search(self, client: Client, corpus: Any) -> None:
        response = client.get("/api/search", {"q": "write rows to a CSV file", "k": "3"})
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        data = response.json()
        assert data["query"] == "write rows to a CSV file"
        assert data["k"] == 3
        assert data["count"] == 3
        assert isinstance(data["took_ms"], float)  # reported, in milliseconds
        first = data["results"][0]
        assert set(first) == {
            "id",
            "title",
            "kind",
            "module",
            "snippet",
            "score",
            "similarity",
            "keyword_score",
            "url",
        }
        assert first["module"] == "csv"
        assert first["url"] == f"http://testserver/doc/{first['id']}/"
        scores = [r["score"] for r in data["results"]]
        assert scores == sorted(scores, reverse=True)

    def test_default_k(self, client: Client, corpus: Any) -> None:
        assert client.get("/api/search", {"q": "date"}).json()["count"] == 10

    def test_filters(self, client: Client, corpus: Any) -> None:
        data = client.get(
            "/api/search", {"q": "parse", "kind": "function", "module": "json", "k": "2"}
        ).json()
        assert data["count"] == 2
        assert {(r["kind"], r["module"]) for r in data["results"]} == {("function", "json")}

    def test_like(self, client: Client, corpus: Any) -> None:
        source = get_doc(corpus, "gzip.compress")
        data = client.get("/api/search", {"like": source.pk, "k": "4"}).json()
        assert data["like"] == source.pk
        assert data["count"] == 4
        assert source.pk not in [r["id"] for r in data["results"]]

    @pytest.mark.parametrize(
        ("params", "error"),
        [
            ({}, "q: pass the text to search for"),
            ({"q": "  "}, "q: pass the text to search for"),
            ({"q": "x", "k": "0"}, "k: Ensure this value is greater than or equal to 1."),
            ({"q": "x", "k": "1000"}, "k: Ensure this value is less than or equal to 50."),
            ({"q": "x", "k": "ten"}, "k: Enter a whole number."),
            ({"q": "x", "kind": "planet"}, "kind: Select a valid choice."),
            ({"like": "-3"}, "like: Ensure this value is greater than or equal to 1."),
        ],
    )
    def test_bad_parameters(
        self, client: Client, corpus: Any, params: dict[str, str], error: str
    ) -> None:
        response = client.get("/api/search", params)
        assert response.status_code == 400
        assert response.json()["error"].startswith(error)

    def test_like_missing_document(self, client: Client, corpus: Any) -> None:
        response = client.get("/api/search", {"like": "999999"})
        assert response.status_code == 404
        assert response.json() == {"error": "like: no document has id 999999."}

    def test_like_document_without_embedding(self, client: Client, corpus: Any) -> None:
        (doc,) = corpus.objects.bulk_create(
            [corpus(kind="topic", name="new", title="New", body="Fresh.")]
        )
        response = client.get("/api/search", {"like": doc.pk})
        assert response.status_code == 409
        assert "has no embedding yet" in response.json()["error"]

    def test_post_is_refused(self, client: Client, corpus: Any) -> None:
        assert client.post("/api/search", {"q": "x"}).status_code == 405


class TestAdmin:
    def test_changelist_searches_by_meaning(self, admin_client: Client, corpus: Any) -> None:
        response = admin_client.get("/admin/docs/document/", {"q": "compress data"})
        assert response.status_code == 200
        rows = list(response.context["cl"].result_list)
        assert rows[0].module == "gzip"
        content = response.content.decode()
        assert "similarity" in content
        # The embedding column shows the row's state, never the hash it holds.
        assert content.count('<td class="field-embedding">embedded</td>') == len(rows[:25])

    def test_change_page(self, admin_client: Client, corpus: Any) -> None:
        doc = get_doc(corpus, "gzip.compress")
        response = admin_client.get(f"/admin/docs/document/{doc.pk}/change/")
        assert response.status_code == 200
        assert f"similar_to={doc.pk}" in response.content.decode()
