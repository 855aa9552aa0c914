"""The end-to-end benchmark's keyword and hybrid search section (``--only text``).

On corpora of realistic texts (:mod:`bench.articles`), with the scenarios of
:mod:`bench.endtoend_text_worker`:

5. ``list(qs.keyword_search(text, k=10))`` and ``list(qs.hybrid_search(text, k=10))``
   next to ``list(qs.semantic_search(text, k=10))``, unfiltered and with a filter
   selecting 10 % of the rows;
6. the first of each in a new process (the keyword index is built then), compacted store;
7. ``create()`` of a row with a 100-200 word text: the field with its keyword index,
   with ``keywords=False``, and no field.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from bench.report import _ms, _n
from bench.run import log

if TYPE_CHECKING:
    from bench.endtoend import Plan, Runner

METHODS = ("semantic", "keyword", "hybrid")
FILTER_CALLS = {"none": ("", ""), "10%": ("filter(bucket__lt=10).", " (10 %)")}
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def run_text(runner: Runner, plan: Plan, dbs: list[str], builds: dict[str, Any]) -> dict[str, Any]:
    """Every text scenario on each database and size; corpus builds go into ``builds``."""
    results: dict[str, Any] = {"search": [], "cold": [], "create": []}
    for db in dbs:
        for n in plan.text_sizes:
            tag = f"text-{db}-{n}"
            env = runner.env(db, tag)
            variants = n in plan.text_create_sizes
            log(f"{db}, {n:,} rows of text: bulk_create + embed_queryset")
            builds[tag] = runner.run("text_build", {"n": n, "variants": variants}, env)
            log(f"{db}, {n:,} rows of text: semantic, keyword and hybrid search")
            args = {"n": n, "queries": plan.text_queries, "budget": plan.row_budget}
            results["search"].append(runner.run("text_search", args, env))
            results["cold"] += cold(runner, plan, env, builds[tag])
            if variants:
                log(f"{db}, {n:,} rows of text: create() with and without the keyword index")
                args = {"n": n, "creates": plan.text_creates}
                results["create"].append(runner.run("text_create", args, env))
            runner.discard(tag)
    return results


def cold(
    runner: Runner, plan: Plan, env: dict[str, str], build: dict[str, Any]
) -> list[dict[str, Any]]:
    """Medians of new processes' first searches of each kind. The search process before
    them read the whole store, so its files are in the page cache. A first search slower
    than a second is timed once: its median would not tell more."""
    n = build["n"]
    log(f"{env['BENCH_DB']}, {n:,} rows of text: first searches in new processes")
    out = []
    for method in METHODS:
        runs = [runner.run("text_cold", {"n": n, "method": method}, env)]
        while len(runs) < plan.text_cold_runs and runs[-1]["first_search_seconds"] < 1.0:
            runs.append(runner.run("text_cold", {"n": n, "method": method}, env))
        keys = ("first_search_seconds", "second_search_seconds", "wall_seconds")
        summary: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
        summary.update(
            n=n,
            method=method,
            database=runs[0]["database"],
            runs=len(runs),
            journal_entries=build["journal_entries"],
            keywords_missing=build["keywords_missing"],
        )
        out.append(summary)
    return out


# -- the report ---------------------------------------------------------------------------------


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _share(part: float, whole: int) -> str:
    return f"{100 * part / whole:.0f} %"


def search_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### 5. `keyword_search()` and `hybrid_search()` next to `semantic_search()`, text queries",
        "",
        _row(
            "call (k=10)",
            "rows",
            "db",
            "`semantic_search`",
            "`keyword_search`",
            "`hybrid_search`",
            "source row found (s / k / h)",
            "rows holding a query word",
            "queries",
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results["text"]["search"]:
        for row in item["rows"]:
            prefix, share = FILTER_CALLS[row["filter"]]
            base = row["semantic_ms"]
            cells = [_ms(base)] + [
                f"{_ms(row[f'{method}_ms'])} ({row[f'{method}_ms'] / base:.2f}×)"
                for method in ("keyword", "hybrid")
            ]
            found = " / ".join(str(row[f"{method}_found"]) for method in METHODS)
            lines.append(
                _row(
                    f"`{prefix}…_search(text)`{share}",
                    _n(item["n"]),
                    DATABASES[item["database"]],
                    *cells,
                    f"{found} of {row['queries']}",
                    _share(row["rows_holding_median"], item["n"]),
                    row["queries"],
                )
            )
    lines += [
        "",
        "First search of each search process (a `hybrid_search`: vector index loaded, keyword "
        "index built): "
        + "; ".join(
            f"{DATABASES[item['database']]} {_n(item['n'])} {_ms(item['first_search_ms'])}"
            for item in results["text"]["search"]
        )
        + ".",
        "",
    ]
    return lines


def cold_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### 6. First semantic, keyword or hybrid search in a new process "
        "(compacted store, page cache warm)",
        "",
        _row("call", "rows", "db", "first search", "second search", "whole process", "runs"),
        "|---|---|---|---|---|---|---|",
    ]
    for item in results["text"]["cold"]:
        lines.append(
            _row(
                f"`{item['method']}_search(text, k=10)`",
                _n(item["n"]),
                DATABASES[item["database"]],
                _ms(item["first_search_seconds"] * 1000),
                _ms(item["second_search_seconds"] * 1000),
                f"{item['wall_seconds']:.2f} s",
                item["runs"],
            )
        )
    states = {
        (item["database"], item["n"]): (item["journal_entries"], item["keywords_missing"])
        for item in results["text"]["cold"]
    }
    lines += [
        "",
        "Journal entries and rows without terms in those stores: "
        + "; ".join(
            f"{DATABASES[db]} {_n(n)} {journal:,} and {missing:,}"
            for (db, n), (journal, missing) in states.items()
        )
        + ".",
        "",
    ]
    return lines


def create_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### 7. `create()` of a row with a 100-200 word text: the keyword index's cost",
        "",
        _row("model's field", "rows", "db", "create", "vs `keywords=False`", "vs no field"),
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for item in results["text"]["create"]:
        where = (_n(item["n"]), DATABASES[item["database"]])
        with_kw, without, plain = item["keywords_ms"], item["no_keywords_ms"], item["plain_ms"]
        lines += [
            _row(
                '`EmbeddingField(source="text")` (keyword index)',
                *where,
                _ms(with_kw),
                f"{with_kw / without:.2f}×",
                f"{with_kw / plain:.2f}×",
            ),
            _row(
                "`EmbeddingField(..., keywords=False)`",
                *where,
                _ms(without),
                "(baseline)",
                f"{without / plain:.2f}×",
            ),
            _row("no field", *where, _ms(plain), "", "(baseline)"),
        ]
        build = results["build"].get(f"text-{_db_option(item['database'])}-{item['n']}", {})
        backfill = ""
        if "unindexed_backfill_seconds" in build:
            with_index = build["backfill_seconds"] - build["backfill_provider_seconds"]
            without_index = (
                build["unindexed_backfill_seconds"] - build["unindexed_backfill_provider_seconds"]
            )
            backfill = (
                f"; `embed_queryset` of the {_n(item['n'])} rows took {with_index:.1f} s "
                f"with the keyword index, {without_index:.1f} s without (provider time excluded)"
            )
        notes.append(
            f"{where[1]} {where[0]}: {_ms(item['keywords_provider_ms'])} / "
            f"{_ms(item['no_keywords_provider_ms'])} in the provider per create, excluded; "
            f"{item['words']:.0f} words a text (median); rows left without an embedding: "
            f"{item['keywords_missing_after']} / {item['no_keywords_missing_after']}{backfill}"
        )
    return [*lines, "", "; ".join(notes) + ".", ""]


def _db_option(vendor: str) -> str:
    return "postgres" if vendor == "postgresql" else vendor


def markdown(results: dict[str, Any]) -> list[str]:
    text = results.get("text")
    if not text:
        return []
    lines = []
    if text["search"]:
        lines += search_table(results)
    if text["cold"]:
        lines += cold_table(results)
    if text["create"]:
        lines += create_table(results)
    return lines


NOTES = """\
- **Texts (5-7).** `TextArticle` row `i` has the text `"row i"` followed by 100-200 words
  (150 on average, about 900 characters) in sentences, drawn from a Zipf-distributed vocabulary
  (exponent 1.05) of 50,000 words: 142 of the most common English words first, then pseudo-words,
  5 % of them identifiers (`snake_case`, `CamelCase`, `SHOUT_CASE`, `v1.2.3`); seeded, the same in
  every run (`bench/articles.py`). The corpus provider reads the `"row i"` and embeds the text as
  row `i` of the same seeded vectors as above. Built as above (`bulk_create`, then
  `embed_queryset`, which stores each row's terms with its vector and compacts the store).
- **5. Keyword and hybrid search.** A query is 3 distinct words of a random row's text (the
  common words are often among them, so many rows hold one of its words), as text,
  to `list(TextArticle.objects.semantic_search(q, k=10))`, `.keyword_search(q, k=10)` and
  `.hybrid_search(q, k=10)`, unfiltered and after `.filter(bucket__lt=10)` (10 %). The provider
  embeds a query as a vector near its row's (a dictionary lookup; its time is subtracted all the
  same). The three calls take turns on each query, each going first as often; medians.
  The filtered searches' queries are of rows the filter selects. "Source row found": queries
  whose row is in the top 10; "rows holding a query word": the median share of all rows holding
  one of a query's words as drawn (before identifiers are split and words stemmed).
- **6. First search.** As 4, with a text query of each kind in its own new process, right after
  the search process of 5 (which read the whole store: its files are in the page cache); medians
  of the runs ("runs"; one when it took over a second). The first `keyword_search` or
  `hybrid_search` of a process builds its keyword index from the store's terms. "Journal entries"
  and "rows without terms" are what `manage.py embeddings_status --json` reported after the build.
- **7. Create.** `create()` (autocommit; the field's work, tokenizing included, runs at commit,
  inside the timing) minus provider time, of a row with a new 100-200 word text, on `TextArticle`
  (keyword index, the default), `UnindexedTextArticle` (`keywords=False`) and
  `PlainTextArticle` (no field), the same text each, taking turns, with as many rows in each
  table. The process first runs a search on each field, as a process serving searches has,
  so a save also updates its in-memory indexes.
"""
