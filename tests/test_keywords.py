"""The keyword groundwork: tokenizer, BM25 index and score fusion (behaviour, not speed)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from django_embeddings.keywords import bm25, fusion
from django_embeddings.keywords.bm25 import BM25Index, top_k
from django_embeddings.keywords.tokenize import MAX_TOKEN_CHARS, tokens

# -- tokenizer --------------------------------------------------------------------------------


def test_plain_words_are_case_folded_and_stop_words_kept() -> None:
    assert tokens("To be, or NOT to be: that is the Question.") == [
        "to", "be", "or", "not", "to", "be", "that", "is", "the", "question",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("snake_case", ["snake_case", "snake", "case"]),
        ("CamelCase", ["camelcase", "camel", "case"]),
        ("HTTPServer", ["httpserver", "http", "server"]),
        ("ERR_CONN_RESET", ["err_conn_reset", "err", "conn", "reset"]),
        ("v1.2.3", ["v1.2.3", "1.2.3", "v1", "1", "2", "3"]),
        ("1.2.3", ["1.2.3", "1", "2", "3"]),
        ("os.path.join", ["os.path.join", "os", "path", "join"]),
        ("real-time", ["real-time", "real", "time"]),
        ("utf8", ["utf8", "utf", "8"]),
    ],
)
def test_compounds_are_kept_whole_and_split(text: str, expected: list[str]) -> None:
    assert tokens(text) == expected


def test_version_query_matches_both_spellings() -> None:
    assert "1.2.3" in tokens("released as v1.2.3 today")
    assert "1.2.3" in tokens("version 1.2.3")


def test_sentence_punctuation_is_no_part_of_a_word() -> None:
    assert tokens("It ends here. Next-line... (paren) end-") == [
        "it", "ends", "here", "next-line", "paren", "end", "next", "line",
    ]  # fmt: skip


def test_unicode_words_are_normalized_and_folded() -> None:
    assert tokens("Straße ＡＢＣ naïve 東京") == ["strasse", "abc", "naïve", "東京"]
    # NFKC composes accents, so a decomposed é matches a composed one.
    assert tokens("cafe\u0301") == tokens("café")


def test_no_words() -> None:
    assert tokens("") == []
    assert tokens("  ... !!! -- ") == []


def test_input_and_tokens_are_capped() -> None:
    assert tokens("word " * 10_000, max_chars=50) == ["word"] * 10
    long = tokens("x" * 500)
    assert long == ["x" * MAX_TOKEN_CHARS]


def test_tokens_are_deterministic() -> None:
    text = "Fix ERR_CONN_RESET in HTTPServer v1.2.3 and os.path"
    assert tokens(text) == tokens(text)


def test_stemmer_applies_to_documents_and_queries_alike() -> None:
    pytest.importorskip("Stemmer")
    from django_embeddings.keywords.tokenize import english_stemmer

    stem = english_stemmer()
    assert tokens("connections connected", stem=stem) == ["connect", "connect"]


# -- BM25 -------------------------------------------------------------------------------------


def reference_scores(
    docs: dict[int, list[str]], query: list[str], k1: float, b: float
) -> dict[int, float]:
    """BM25 straight from its definition (Lucene's idf)."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs.values()) / n
    df = Counter(t for d in docs.values() for t in set(d))
    out: dict[int, float] = {}
    for position, doc in docs.items():
        tf = Counter(doc)
        score = 0.0
        for term, repeats in Counter(query).items():
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += (
                    repeats
                    * idf
                    * tf[term]
                    * (k1 + 1)
                    / (tf[term] + k1 * (1 - b + b * len(doc) / avgdl))
                )
        if score > 0:
            out[position] = score
    return out


def assert_matches(index: BM25Index, docs: dict[int, list[str]], query: list[str]) -> None:
    expected = reference_scores(docs, query, index.k1, index.b) if docs else {}
    found, scores = index.scores(query)
    assert found.tolist() == sorted(expected)
    np.testing.assert_allclose(scores, [expected[p] for p in found.tolist()], rtol=1e-5)


def random_doc(rng: random.Random) -> list[str]:
    words = [f"w{i}" for i in range(40)]
    return [rng.choice(words[: rng.randint(3, 40)]) for _ in range(rng.randint(1, 30))]


@pytest.mark.parametrize("compact_every", [None, 7])
def test_scores_follow_adds_removes_and_replaces(
    compact_every: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny thresholds so automatic compactions happen between the checks too.
    monkeypatch.setattr(bm25, "_MIN_DELTA", 50)
    monkeypatch.setattr(bm25, "_DELTA_SHARE", 1)
    rng = random.Random(7)
    index = BM25Index(k1=1.2, b=0.75)
    docs: dict[int, list[str]] = {}
    for step in range(400):
        action = rng.random()
        position = rng.randrange(60)
        if action < 0.5 and position not in docs:
            docs[position] = random_doc(rng)
            index.add(position, docs[position])
        elif action < 0.75 and docs:
            position = rng.choice(sorted(docs))
            docs[position] = random_doc(rng)
            index.replace(position, docs[position])
        elif docs:
            position = rng.choice(sorted(docs))
            del docs[position]
            index.remove(position)
        if compact_every and step % compact_every == 0:
            index.compact()
        if step % 10 == 0:
            query = [f"w{rng.randrange(45)}" for _ in range(rng.randint(1, 4))]
            assert_matches(index, docs, query)
            assert len(index) == len(docs)
            assert index.average_length == pytest.approx(
                sum(map(len, docs.values())) / len(docs) if docs else 0.0
            )
    for term in ("w0", "w5", "w39"):
        assert index.document_frequency(term) == sum(term in d for d in docs.values())


def test_subset_scores_equal_full_scores_restricted() -> None:
    rng = random.Random(3)
    index = BM25Index()
    docs = {p: random_doc(rng) for p in range(0, 3000, 3)}
    index.extend(docs.items())
    index.add(5000, ["w1", "w2"])  # one in the delta
    query = ["w1", "w2", "w3"]
    full_positions, full_scores = index.scores(query)
    full = dict(zip(full_positions.tolist(), full_scores.tolist(), strict=True))
    for subset in ([3, 6, 9, 5000, 7, 4000], list(range(0, 3000, 6)), []):
        positions, scores = index.scores(query, positions=subset)
        assert positions.tolist() == sorted(p for p in set(subset) if p in full)
        assert scores.tolist() == [full[p] for p in positions.tolist()]


def test_top_k_is_exact_with_ties_to_the_lower_position() -> None:
    index = BM25Index()
    index.extend([(9, ["a", "b"]), (4, ["a", "b"]), (7, ["a"]), (2, ["c"]), (5, ["a", "b"])])
    positions, scores = index.top(["a", "b"], 3)
    assert positions.tolist() == [4, 5, 9]
    assert scores[0] == scores[1] == scores[2]
    positions, _ = index.top(["a", "b"], 10)
    assert positions.tolist() == [4, 5, 9, 7]  # c matches nothing: not returned
    positions, _ = index.top(["a", "b"], 2, positions=[9, 7, 2])
    assert positions.tolist() == [9, 7]


def test_equal_documents_score_equally_whatever_their_history() -> None:
    index = BM25Index()
    index.extend([(0, ["x", "y", "z"]), (1, ["q"])])
    index.add(2, ["z", "y", "x"])  # the delta, terms in another order
    index.replace(1, ["y"])
    positions, scores = index.scores(["x", "y", "z"])
    assert positions.tolist() == [0, 1, 2]
    assert scores[0] == scores[2]


def test_unknown_and_empty_queries_find_nothing() -> None:
    index = BM25Index()
    index.add(0, ["a"])
    for query in ([], ["missing"]):
        positions, scores = index.scores(query)
        assert len(positions) == len(scores) == 0
    assert len(BM25Index().top(["a"], 5)[0]) == 0


def test_removed_terms_no_longer_match() -> None:
    index = BM25Index()
    index.extend([(0, ["gone", "kept"]), (1, ["kept"])])
    index.remove(0)
    assert index.scores(["gone"])[0].tolist() == []
    assert index.document_frequency("gone") == 0
    index.add(0, ["back"])
    assert index.top(["back", "kept"], 5)[0].tolist() == [0, 1]


def test_bad_calls() -> None:
    index = BM25Index()
    index.add(0, ["a"])
    with pytest.raises(ValueError, match="already holds"):
        index.add(0, ["b"])
    with pytest.raises(KeyError):
        index.remove(1)
    with pytest.raises(ValueError, match="Positions"):
        index.add(-1, ["a"])
    with pytest.raises(ValueError, match="k1"):
        BM25Index(k1=-1)
    with pytest.raises(ValueError, match="b="):
        BM25Index(b=1.5)


def test_top_k_helper() -> None:
    positions = np.array([10, 3, 7, 1], dtype=np.int64)
    scores = np.array([0.5, 0.9, 0.5, 0.1], dtype=np.float32)
    assert top_k(positions, scores, 3)[0].tolist() == [3, 7, 10]
    assert top_k(positions, scores, 0)[0].tolist() == []


# -- fusion -----------------------------------------------------------------------------------


def test_reciprocal_rank_fusion() -> None:
    union, fused = fusion.reciprocal_rank([[5, 1, 9], [1, 7]])
    assert union.tolist() == [1, 5, 7, 9]
    expected = {1: 1 / 62 + 1 / 61, 5: 1 / 61, 7: 1 / 62, 9: 1 / 63}
    np.testing.assert_allclose(fused, [expected[p] for p in union.tolist()])
    union, fused = fusion.reciprocal_rank([[1], [2]], weights=[2.0, 1.0])
    assert fused.tolist() == [2 / 61, 1 / 61]
    assert len(fusion.reciprocal_rank([[], []])[0]) == 0


def test_min_max_fusion() -> None:
    fused = fusion.min_max([[0.2, 0.4, 0.6], [10.0, 0.0, 5.0]], [0.3, 0.7])
    np.testing.assert_allclose(fused, [0.7, 0.15, 0.3 + 0.35])
    # A ranker that scores every candidate alike adds nothing.
    np.testing.assert_allclose(fusion.min_max([[1.0, 1.0], [0.0, 2.0]]), [0.0, 1.0])


def test_scores_apart_by_float_noise_count_as_equal() -> None:
    """The same similarity read from a snapshot or a journal row may differ in its last
    bits; fusion must not stretch that to the whole range."""
    noisy = [0.39510, 0.39510 + 3e-8, 0.39510, 0.39510 + 3e-8]
    np.testing.assert_allclose(fusion.min_max([noisy, [0.0, 0.0, 1.0, 0.0]]), [0, 0, 1, 0])
    np.testing.assert_allclose(fusion.z_score([noisy, [2.0, 2.0, 2.0, 2.0]]), [0, 0, 0, 0])


def test_z_score_fusion() -> None:
    fused = fusion.z_score([[1.0, 2.0, 3.0], [3.0, 3.0, 3.0]], [0.5, 0.5])
    np.testing.assert_allclose(fused, 0.5 * np.array([-1.0, 0.0, 1.0]) * math.sqrt(1.5))


def test_fusion_argument_errors() -> None:
    with pytest.raises(ValueError, match="one score per candidate"):
        fusion.min_max([[1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="weights"):
        fusion.z_score([[1.0]], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one"):
        fusion.min_max([])


class TestBulkBuilds:
    """from_terms (with and without a stored order), discard and add_many score exactly as
    documents added one at a time."""

    DOCS = [
        "TLS 1.3 handshake timeout",
        "the quick brown fox",
        "",
        "ERR_CONN_RESET twice ERR_CONN_RESET",
        "handshake handshake fox",
        "v1.2.3 release notes",
        None,
        "quick release",
    ]

    def bags(self):
        from django_embeddings.keywords.terms import bag_of

        return [None if doc is None else bag_of(doc) for doc in self.DOCS]

    def one_at_a_time(self, removed, extra):
        from django_embeddings.keywords.terms import decode

        index = BM25Index()
        for position, bag in enumerate(self.bags()):
            if bag is not None and position not in removed:
                index.add(position, decode(bag))
        for position, bag in extra:
            index.add(position, decode(bag))
        return index

    @pytest.mark.parametrize("dead_rows", ["removed", "alive"])
    @pytest.mark.parametrize("stored_order", [False, True])
    def test_same_scores(self, stored_order, dead_rows):
        from django_embeddings.keywords.terms import Terms, bag_of

        terms = Terms.from_bags(self.bags())
        if stored_order:
            terms.order = np.argsort(terms.ids, kind="stable")
        if dead_rows == "alive":
            alive = np.ones(len(self.DOCS), dtype=bool)
            alive[[1, 6]] = False
            index = BM25Index.from_terms(np.arange(len(self.DOCS)), terms, alive=alive)
        else:
            index = BM25Index.from_terms(np.arange(len(self.DOCS)), terms)
            for position in (1, 6, 99):
                if position in index:  # 6 has no known terms, 99 is no row
                    index.remove(position)
        extra = [(10, bag_of("fox fox release")), (12, bag_of("handshake notes"))]
        index.add_many([10, 11, 12], Terms.from_bags([extra[0][1], None, extra[1][1]]))
        expected = self.one_at_a_time({1}, extra)
        assert len(index) == len(expected) == 8
        assert index.average_length == pytest.approx(expected.average_length)
        for query in (["fox"], ["handshak", "releas"], ["err_conn_reset"], ["quick", "note"]):
            got, want = index.scores(query), expected.scores(query)
            assert got[0].tolist() == want[0].tolist()
            assert got[1] == pytest.approx(want[1])
        assert 11 not in index and 10 in index and 1 not in index
        index.remove(4)  # a snapshot row removed later: the forward map is built then
        index.compact()
        expected.remove(4)
        for query in (["fox"], ["handshak", "releas"]):
            got, want = index.scores(query), expected.scores(query)
            assert got[0].tolist() == want[0].tolist()
            assert got[1] == pytest.approx(want[1])

    @pytest.mark.parametrize("last", [None, "", "fox"])
    def test_add_many_with_empty_and_unknown_rows_anywhere(self, last):
        from django_embeddings.keywords.terms import Terms, decode

        bags = ["", "quick fox", None, "fox:2 dog", last]
        index = BM25Index()
        index.add_many(np.arange(len(bags)), Terms.from_bags(bags))
        expected = BM25Index()
        for position, bag in enumerate(bags):
            if bag is not None:
                expected.add(position, decode(bag))
        assert len(index) == len(expected)
        assert index.average_length == pytest.approx(expected.average_length)
        got, want = index.scores(["fox"]), expected.scores(["fox"])
        assert got[0].tolist() == want[0].tolist()
        assert got[1] == pytest.approx(want[1])

    def test_add_many_refuses_a_taken_position(self):
        from django_embeddings.keywords.terms import Terms

        index = BM25Index.from_terms([0], Terms.from_bags(["a b"]))
        with pytest.raises(ValueError, match="must not hold"):
            index.add_many([0], Terms.from_bags(["c"]))
