"""The search page, a document's page and the JSON API.

A text is searched by ``hybrid_search()``: its meaning (the built-in model's
vectors) and its words (the field's keyword index) ranked together, so "yield"
finds the generators' pages and ``os.path.join`` finds ``os.path.join``. Filters
narrow the queryset *before* the search, so
``Document.objects.filter(kind="function").hybrid_search(q, k=10)`` returns the
ten best functions, not the functions among the ten best documents.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from django_embeddings.backfill import embed_queryset
from django_embeddings.exceptions import EmbeddingsError
from example_project.docs.forms import MAX_K, SearchForm
from example_project.docs.models import Document

EXAMPLES = [
    "read a CSV file",
    "parse command line arguments",
    "current date and time",
    "compress a file",
    "reverse a list",
    "wait for tasks to finish",
    "what does yield do",
]
SIMILAR_ON_PAGE = 5
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass
class Search:
    """One search: its hits (each with ``similarity``; a text search's also with
    ``score`` and ``keyword_score``) and how long it took."""

    results: list[Document] = field(default_factory=list)
    took_ms: float = 0.0
    like: Document | None = None
    error: str = ""


def filtered(data: dict[str, Any]) -> QuerySet[Document]:
    documents = Document.objects.all()
    if data.get("kind"):
        documents = documents.filter(kind=data["kind"])
    if data.get("module"):
        module = data["module"]
        documents = documents.filter(Q(module=module) | Q(module__startswith=f"{module}."))
    return documents


def pending() -> int:
    """Documents saved but not embedded yet: what ``embeddings_backfill`` would embed."""
    (result,) = embed_queryset(Document.objects.all(), dry_run=True, batch_size=5000)
    return result.selected


def run_search(data: dict[str, Any], like: Document | None = None) -> Search:
    """Search ``data["q"]``, or the documents most like ``like``, within the filters."""
    documents = filtered(data)
    started = time.perf_counter()
    try:
        if like is not None:
            hits = documents.similar_to(like, k=data["k"])
        else:
            hits = documents.hybrid_search(data["q"], k=data["k"])
        results = list(hits)
    except EmbeddingsError as exc:
        return Search(like=like, error=str(exc))
    took_ms = (time.perf_counter() - started) * 1000
    return Search(results=results, took_ms=took_ms, like=like)


def scores(doc: Document) -> dict[str, float]:
    """A hit's scores, rounded: ``similarity``, and a text search's ``score`` and
    ``keyword_score``."""
    names = ("score", "similarity", "keyword_score")
    return {name: round(getattr(doc, name), 4) for name in names if hasattr(doc, name)}


@require_GET
def search(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET)
    counts = dict(Document.objects.values_list("kind").annotate(n=Count("pk")).order_by())
    form.fields["kind"].choices = [  # type: ignore[attr-defined]
        ("", "Any kind"),
        *((kind, f"{label} ({counts.get(kind, 0):,})") for kind, label in Document.Kind.choices),
    ]
    context: dict[str, Any] = {
        "form": form,
        "total_display": f"{sum(counts.values()):,}",
        "missing": pending(),
        "modules": Document.objects.exclude(module="")
        .order_by("module")
        .values_list("module", flat=True)
        .distinct(),
        "examples": EXAMPLES,
        "python_version": PYTHON_VERSION,
    }
    status = 200
    if not request.GET:
        pass  # the landing page: examples, no search
    elif not form.is_valid():
        status = 400
    else:
        data = form.cleaned_data
        if data["like"]:
            like = get_object_or_404(Document, pk=data["like"])
            context["search"] = run_search(data, like=like)
        elif data["q"]:
            context["search"] = run_search(data)
        else:
            context["message"] = "Type a few words to search: a question, a task or a name."
    return render(request, "docs/search.html", context, status=status)


@require_GET
def document(request: HttpRequest, pk: int) -> HttpResponse:
    doc = get_object_or_404(Document, pk=pk)
    similar = run_search({"k": SIMILAR_ON_PAGE}, like=doc)
    return render(
        request,
        "docs/document.html",
        {"doc": doc, "similar": similar, "python_version": PYTHON_VERSION},
    )


@require_GET
def api_search(request: HttpRequest) -> JsonResponse:
    """``/api/search?q=...&k=...&kind=...&module=...`` (or ``like=<id>`` instead of ``q``)."""
    form = SearchForm(request.GET)
    if not form.is_valid():
        errors = form.errors.get_json_data()
        name, messages = next(iter(errors.items()))
        return JsonResponse(
            {"error": f"{name}: {messages[0]['message']}", "errors": errors}, status=400
        )
    data = form.cleaned_data
    if not data["q"] and not data["like"]:
        return JsonResponse(
            {"error": "q: pass the text to search for, e.g. /api/search?q=read+a+csv+file"},
            status=400,
        )
    like = None
    if data["like"]:
        like = Document.objects.filter(pk=data["like"]).first()
        if like is None:
            return JsonResponse({"error": f"like: no document has id {data['like']}."}, status=404)
    result = run_search(data, like=like)
    if result.error:
        return JsonResponse({"error": result.error}, status=409)
    return JsonResponse(
        {
            "query": data["q"],
            "like": data["like"],
            "kind": data["kind"],
            "module": data["module"],
            "k": data["k"],
            "max_k": MAX_K,
            "took_ms": round(result.took_ms, 2),
            "count": len(result.results),
            "results": [
                {
                    "id": doc.pk,
                    "title": doc.title,
                    "kind": doc.kind,
                    "module": doc.module,
                    "snippet": doc.snippet,
                    **scores(doc),
                    "url": request.build_absolute_uri(doc.get_absolute_url()),
                }
                for doc in result.results
            ],
        }
    )
