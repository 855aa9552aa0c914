"""``/api/async/search``: the JSON search API as an async view.

It answers like ``/api/search`` (for ``q``, or ``like=<id>`` instead), and never
blocks the event loop: the query is embedded through the provider's async path,
and the search itself runs where Django runs every queryset's async methods.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from example_project.docs.forms import SearchForm
from example_project.docs.models import Document
from example_project.docs.views import filtered, scores


@require_GET
async def api_search(request: HttpRequest) -> JsonResponse:
    form = SearchForm(request.GET)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    data = form.cleaned_data
    if data["like"]:
        like = await Document.objects.filter(pk=data["like"]).afirst()
        if like is None:
            return JsonResponse({"error": f"like: no document has id {data['like']}."}, status=404)
        hits = await filtered(data).asimilar_to(like, k=data["k"])
    elif data["q"]:
        hits = await filtered(data).ahybrid_search(data["q"], k=data["k"])
    else:
        return JsonResponse({"error": "q: pass the text to search for."}, status=400)
    results = [
        {
            "id": doc.pk,
            "title": doc.title,
            **scores(doc),
            "url": request.build_absolute_uri(doc.get_absolute_url()),
        }
        async for doc in hits
    ]
    return JsonResponse({"query": data["q"], "count": len(results), "results": results})
