from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import models
from django.test import Client
from django.urls import reverse

from django_embeddings.admin import _searchable
from django_embeddings.fields import content_hash
from django_embeddings.querysets import EmbeddingQuerySetMixin
from tests.testapp.models import Article, Product
from tests.utils import is_embedded

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/testapp/article/"


@pytest.fixture
def client() -> Client:
    user = User.objects.create_superuser("admin", "admin@example.com", "password")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def articles() -> dict[str, Article]:
    bodies = {
        "csv": "csv files",
        "json": "parse json documents and write json files",
        "snakes": "python snakes live in warm forests",
        "pandas": "pandas dataframes read csv and excel files quickly",
    }
    return {title: Article.objects.create(title=title, body=body) for title, body in bodies.items()}


def titles(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [obj.title for obj in response.context["cl"].result_list]


class TestChangelist:
    def test_search_ranks_by_meaning_and_words(self, client, articles):
        response = client.get(CHANGELIST, {"q": "csv files"})
        assert response.status_code == 200
        expected = list(Article.objects.hybrid_search("csv files", k=100))
        assert titles(response) == [a.title for a in expected]
        assert titles(response)[:2] == ["csv", "pandas"]
        content = response.content.decode()
        assert "Searching by meaning and words: the best matches first." in content
        assert 'href="?q=csv+files&amp;semantic=0"' in content
        for column in ("score", "similarity", "keyword_score"):
            assert f'class="column-semantic_{column}"' in content
        assert f">{expected[0].keyword_score:.2f}<" in content
        assert "sorted ascending" not in content  # ranked: no column header claims the order

    def test_without_keywords_search_ranks_by_meaning(self, client, articles, monkeypatch):
        monkeypatch.setattr(Article._meta.get_field("embedding"), "keywords", False)
        response = client.get(CHANGELIST, {"q": "csv files"})
        expected = [a.title for a in Article.objects.semantic_search("csv files", k=100)]
        assert titles(response) == expected
        content = response.content.decode()
        assert "Searching by meaning: the most similar items first." in content
        assert 'class="column-semantic_similarity"' in content
        assert "column-semantic_keyword_score" not in content

    def test_toggle_back_to_word_search(self, client, articles):
        response = client.get(CHANGELIST, {"q": "csv", "semantic": "0"})
        assert response.status_code == 200
        # Django's own search, in the admin's ordering (by title).
        assert titles(response) == ["csv", "pandas"]
        content = response.content.decode()
        assert "Searching by words." in content
        assert 'href="?q=csv"' in content  # the link back to search by meaning
        assert "column-semantic_similarity" not in content
        # The mode survives the next search: the form carries it as a hidden field.
        assert '<input type="hidden" name="semantic" value="0">' in content

    def test_no_search_term_lists_everything_in_the_usual_order(self, client, articles):
        response = client.get(CHANGELIST)
        assert titles(response) == ["csv", "json", "pandas", "snakes"]
        assert "column-semantic_similarity" not in response.content.decode()

    def test_sorting_by_a_column_wins_over_the_rank(self, client, articles):
        response = client.get(CHANGELIST, {"q": "csv files", "o": "-1"})
        assert titles(response) == sorted(titles(response), reverse=True)

    def test_filters_and_search_combine(self, client, articles):
        Article.objects.filter(title="pandas").update(published=False)
        response = client.get(CHANGELIST, {"q": "csv files", "published__exact": "1"})
        assert response.status_code == 200
        assert "pandas" not in titles(response)
        assert titles(response)[0] == "csv"

    def test_k_limits_the_results(self, client, articles, monkeypatch):
        from tests.testapp.admin import ArticleAdmin

        monkeypatch.setattr(ArticleAdmin, "semantic_search_k", 2)
        assert titles(client.get(CHANGELIST, {"q": "csv files"})) == ["csv", "pandas"]

    def test_provider_failure_falls_back_to_word_search(self, client, articles, settings):
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            "default": {"BACKEND": "tests.utils.FailingProvider"}
        }
        response = client.get(CHANGELIST, {"q": "csv"}, follow=True)
        assert titles(response) == ["csv", "pandas"]
        messages = [str(m) for m in response.context["messages"]]
        assert messages[0].startswith("Search by meaning failed (")
        assert messages[0].endswith("); showing word search results.")

    def test_embedding_column_in_list_display(self, client, articles):
        Article.objects.bulk_create([Article(title="unembedded", body="bulk")])
        Article.objects.create(title="empty", body="")
        content = client.get(CHANGELIST).content.decode()
        assert '<th scope="col" class="column-embedding">' in content
        assert content.count('<td class="field-embedding">embedded</td>') == 4
        assert content.count('<td class="field-embedding">pending</td>') == 1
        assert content.count('<td class="field-embedding">-</td>') == 1  # nothing to embed
        assert content.count('class="field-embedding"') == 6  # never the hash

    def test_embedding_column_shows_stale_and_unrecorded_rows(self, client, articles):
        field = Article._meta.get_field("embedding")
        csv = articles["csv"]
        field.store.put(
            str(csv.pk),
            field.store.load_vector(str(csv.pk)),
            content_hash=content_hash(csv.body),
            identity="older-model",
        )
        # Raw SQL or rows from before the field existed: a text, but a NULL column.
        Article.objects.filter(pk=articles["json"].pk).update(embedding=None)
        field.store.delete(str(articles["json"].pk))
        content = client.get(CHANGELIST).content.decode()
        assert content.count('<td class="field-embedding">stale</td>') == 1
        assert content.count('<td class="field-embedding">pending</td>') == 1
        assert content.count('<td class="field-embedding">embedded</td>') == 2

    def test_embedding_column_as_the_link(self, client, articles, monkeypatch):
        from tests.testapp.admin import ArticleAdmin

        monkeypatch.setattr(ArticleAdmin, "list_display", ["embedding", "title"])
        monkeypatch.setattr(ArticleAdmin, "list_display_links", ["embedding"])
        content = client.get(CHANGELIST).content.decode()
        url = reverse("admin:testapp_article_change", args=[articles["csv"].pk])
        assert f'<th class="field-embedding"><a href="{url}">embedded</a></th>' in content

    def test_autocomplete_keeps_word_search(self, client, articles):
        admin = _article_admin()
        request = client.get(CHANGELIST).wsgi_request
        request.resolver_match = None
        queryset, _ = admin.get_search_results(request, Article.objects.all(), "csv")
        assert sorted(a.title for a in queryset) == ["csv", "pandas"]


class TestSimilarItems:
    def test_change_page_links_to_similar_items(self, client, articles):
        csv = articles["csv"]
        response = client.get(reverse("admin:testapp_article_change", args=[csv.pk]))
        assert response.status_code == 200
        content = response.content.decode()
        url = f"{CHANGELIST}?similar_to={csv.pk}"
        assert f'<a href="{url}" class="similarlink">Similar items</a>' in content
        # The embedding column is shown read-only, not as an input.
        assert '<div class="readonly">embedded</div>' in content
        assert 'name="embedding"' not in content
        assert content_hash(csv.body) not in content

    def test_similar_items_are_ranked_and_exclude_the_item(self, client, articles):
        csv = articles["csv"]
        response = client.get(CHANGELIST, {"similar_to": csv.pk})
        assert response.status_code == 200
        expected = [a.title for a in Article.objects.similar_to(csv, k=100)]
        assert titles(response) == expected
        assert "csv" not in titles(response) and len(titles(response)) == 3
        content = response.content.decode()
        assert "Ranked by similarity to the selected item." in content
        assert 'href="?" class="semantic-search-clear"' in content  # stop comparing

    def test_similar_items_and_word_search(self, client, articles):
        response = client.get(CHANGELIST, {"similar_to": articles["csv"].pk, "q": "json"})
        assert titles(response) == ["json"]

    def test_no_link_for_a_row_without_embedding(self, client):
        (article,) = Article.objects.bulk_create([Article(title="x", body="not embedded")])
        response = client.get(reverse("admin:testapp_article_change", args=[article.pk]))
        assert "Similar items" not in response.content.decode()
        assert '<div class="readonly">pending</div>' in response.content.decode()
        empty = Article.objects.create(title="y", body="")
        response = client.get(reverse("admin:testapp_article_change", args=[empty.pk]))
        assert "Similar items" not in response.content.decode()
        assert '<div class="readonly">-</div>' in response.content.decode()

    def test_unknown_or_unembedded_item(self, client, articles):
        response = client.get(CHANGELIST, {"similar_to": "999999"})
        assert response.status_code == 200
        assert [str(m) for m in response.context["messages"]] == [
            "The item to compare with does not exist."
        ]
        (bare,) = Article.objects.bulk_create([Article(title="x", body="not embedded")])
        response = client.get(CHANGELIST, {"similar_to": bare.pk})
        (message,) = [str(m) for m in response.context["messages"]]
        assert message.startswith("testapp.Article.embedding: row pk=")

    def test_action(self, client, articles):
        csv = articles["csv"]
        response = client.post(
            CHANGELIST, {"action": "show_similar_items", "_selected_action": [csv.pk]}
        )
        assert response.status_code == 302
        assert response["Location"] == f"{CHANGELIST}?similar_to={csv.pk}"
        response = client.post(
            CHANGELIST,
            {"action": "show_similar_items", "_selected_action": [csv.pk, articles["json"].pk]},
            follow=True,
        )
        assert [str(m) for m in response.context["messages"]] == [
            "Select exactly one item to see similar ones."
        ]


class TestModelWithTwoFields:
    def test_search_uses_the_chosen_field(self, client):
        lamp = Product.objects.create(name="lamp", description="a bright desk lamp")
        Product.objects.create(name="chair", description="an office chair")
        response = client.get("/admin/testapp/product/", {"q": "desk lamp"})
        assert response.status_code == 200
        results = list(response.context["cl"].result_list)
        expected = list(Product.objects.semantic_search("desk lamp", field="full_embedding"))
        assert results == expected and results[0] == lamp
        # No search_fields: the box is shown, and word search uses the text columns.
        assert 'id="searchbar"' in response.content.decode()
        words = client.get("/admin/testapp/product/", {"q": "chair", "semantic": "0"})
        assert [p.name for p in words.context["cl"].result_list] == ["chair"]

    def test_change_page_shows_the_column_listed_in_fields(self, client):
        lamp = Product.objects.create(name="lamp", description="a bright desk lamp")
        response = client.get(reverse("admin:testapp_product_change", args=[lamp.pk]))
        assert response.status_code == 200
        content = response.content.decode()
        assert '<div class="form-row field-full_embedding">' in content
        assert '<div class="readonly">embedded</div>' in content
        assert "field-name_embedding" not in content  # not listed in fields

    def test_add_page_and_saving_through_the_admin(self, client):
        response = client.get(reverse("admin:testapp_product_add"))
        assert response.status_code == 200
        response = client.post(
            reverse("admin:testapp_product_add"), {"name": "desk", "description": "oak desk"}
        )
        assert response.status_code == 302
        product = Product.objects.get()
        assert product.name_embedding == content_hash("desk")
        assert product.full_embedding == content_hash("desk\noak desk")
        assert is_embedded(product, "name_embedding") and is_embedded(product, "full_embedding")


def test_plain_querysets_gain_semantic_search(articles):
    plain = models.QuerySet(model=Article).filter(published=True)
    searchable = _searchable(plain)
    assert isinstance(searchable, EmbeddingQuerySetMixin)
    assert [a.title for a in searchable.semantic_search("csv files", k=2)] == ["csv", "pandas"]
    assert _searchable(Article.objects.all()).__class__ is Article.objects.all().__class__


def _article_admin():  # type: ignore[no-untyped-def]
    from django.contrib import admin

    return admin.site._registry[Article]


class TestChecks:
    def check(self, model, **attrs):  # type: ignore[no-untyped-def]
        from django.contrib import admin

        from django_embeddings.admin import SemanticSearchAdminMixin

        cls = type("SomeAdmin", (SemanticSearchAdminMixin, admin.ModelAdmin), attrs)
        return [e for e in cls(model, admin.site).check() if e.id.startswith("django_embeddings")]

    def test_registered_admins_pass(self):
        assert self.check(Article) == []
        assert self.check(Product, semantic_search_field="name_embedding") == []

    @pytest.mark.parametrize(
        ("model", "attrs", "problem"),
        [
            (User, {}, "auth.User has no EmbeddingField"),
            (
                Product,
                {},
                "testapp.Product has several EmbeddingFields ['name_embedding', 'full_embedding']",
            ),
            (
                Article,
                {"semantic_search_field": "body"},
                "semantic_search_field is 'body', but testapp.Article has EmbeddingFields "
                "['embedding']",
            ),
        ],
    )
    def test_errors(self, model, attrs, problem):
        (error,) = self.check(model, **attrs)
        assert error.id == "django_embeddings.E101"
        assert error.msg == f"SomeAdmin searches by meaning, but {problem}."
