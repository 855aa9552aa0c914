"""Fit the built-in static model's token table to all-MiniLM-L6-v2 on WordNet text.

``distill_static_model.py`` gives each vocabulary token the transformer's vector
for that token alone. Here the table is then trained ("tokenlearn") so that the
mean of a text's token rows points where the transformer's embedding of the whole
text points, on a corpus the transformer embedded once:

1. Corpus: WordNet 3.0 (Debian package ``wordnet-base``, the WordNet 3.0 licence,
   a permissive BSD-like licence). Per synset: its definition, each usage example,
   "lemmas: definition", and for synsets with hyponyms a paragraph of the synset's
   and up to ``HYPONYMS`` hyponyms' definitions (longer texts, like documents).
   ``SELECTION_SHARE`` of the synsets (a seeded draw) is held out, with every text
   made from them: it chooses the epoch and the output dimensions, nothing else.
2. The teacher embeds every text (sentence-transformers, normalized); the vectors
   are cached in ``--cache`` under the corpus's SHA-256.
3. The table starts as model2vec's distillation (every token through the
   transformer, mean pooling, centred, SIF-weighted with coefficient 1e-4) in the
   teacher's 384-d space, i.e. the shipped model before its PCA truncation.
4. Training: Adam on 1 - cos(mean of token rows, teacher vector), plus an L2 pull
   toward the starting table (rows the corpus rarely uses stay close to it).
   Tokens are the provider's: no special tokens, [UNK] dropped. Seeded; one thread.
5. Output: the trained table rotated onto its principal axes (uncentred, so the
   rotation changes no cosine) and cut to ``--dims``, stored as int8 with a scale
   per row by ``distill_static_model.write_model``.

Selection metrics (printed per epoch, on the held-out synsets only): the mean
cosine with the teacher's vectors, and nDCG@10 of finding a synset's
"lemmas + examples" text from its definition among all held-out synsets.

Run it in the virtualenv ``distill_static_model.py`` describes, from the
repository root, after ``apt-get install wordnet-base``::

    HF_HUB_OFFLINE=1 nice -n 10 /tmp/distill/bin/python scripts/tokenlearn_static_model.py

Made with the versions listed in ``distill_static_model.py`` and wordnet-base
1:3.0-37 (Debian 12). Deterministic for a given set of versions and thread count:
every draw is seeded, torch runs on one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_static_model as distill  # noqa: E402

SEED = 20261202
WORDNET = Path("/usr/share/wordnet")
SELECTION_SHARE = 0.04
HYPONYMS = 8
MAX_TOKENS = 256  # the teacher's max_seq_length: it never sees more
SIF_COEFFICIENT = 1e-4
Floats = npt.NDArray[np.float32]

NOTICE_WORDNET = """
The token table was then trained so that the mean of a text's token vectors
approximates all-MiniLM-L6-v2's embedding of the text, on text made from WordNet
3.0 (definitions, usage examples and word lists of its synsets), Debian package
wordnet-base. WordNet is used under its licence:

  WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.

  Permission to use, copy, modify and distribute this software and database and
  its documentation for any purpose and without fee or royalty is hereby granted,
  provided that you agree to comply with the following copyright notice and
  statements, including the disclaimer, and that the same appear on ALL copies of
  the software, database and documentation, including modifications that you make
  for internal use or for distribution.

  THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO
  REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT
  LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF
  MERCHANTABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE
  LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY
  PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.

  The name of Princeton University or Princeton may not be used in advertising or
  publicity pertaining to the software and/or database. Title to copyright in this
  software, database and any associated documentation shall at all times remain
  with Princeton University and LICENSEE agrees to preserve same.
"""


# -- corpus -----------------------------------------------------------------------------------


@dataclass
class Synset:
    words: list[str]
    definition: str
    examples: list[str]
    hyponyms: list[str] = field(default_factory=list)


def read_wordnet(directory: Path) -> dict[str, Synset]:
    """Synsets by "offset+pos" from WordNet's data.* files (format: wndb(5WN))."""
    synsets: dict[str, Synset] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        with (directory / f"data.{pos}").open(encoding="latin-1") as lines:
            for line in lines:
                if line.startswith("  "):  # the licence header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                count = int(fields[3], 16)
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
                words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers
                pointers = int(fields[4 + 2 * count])
                start = 5 + 2 * count
                hyponyms = [
                    fields[start + 4 * i + 1] + _pos(fields[start + 4 * i + 2])
                    for i in range(pointers)
                    if fields[start + 4 * i] in ("~", "~i")
                ]
                parts = [p.strip() for p in gloss.strip().split(";")]
                definition = "; ".join(p for p in parts if p and not p.startswith('"'))
                examples = re.findall(r'"([^"]+)"', gloss)
                synsets[fields[0] + _pos(fields[2])] = Synset(
                    words, definition, [e.strip() for e in examples], hyponyms
                )
    return synsets


def _pos(code: str) -> str:
    return "a" if code == "s" else code  # satellites live with the adjectives


def synset_texts(key: str, synsets: dict[str, Synset]) -> list[str]:
    synset = synsets[key]
    texts = [synset.definition, f"{', '.join(synset.words)}: {synset.definition}"]
    texts += synset.examples
    children = [synsets[h] for h in synset.hyponyms[:HYPONYMS] if h in synsets]
    if children:
        texts.append(
            " ".join(f"{s.words[0]}: {s.definition}." for s in [synset, *children] if s.definition)
        )
    return [t for t in texts if len(t.split()) >= 2]


@dataclass
class Corpus:
    train: list[str]
    held_out: list[str]
    queries: list[str]  # a held-out synset's definition
    documents: list[str]  # the same synset's lemmas and examples


def build_corpus(directory: Path) -> Corpus:
    synsets = read_wordnet(directory)
    keys = sorted(synsets)
    rng = random.Random(SEED)
    held = set(rng.sample(keys, int(len(keys) * SELECTION_SHARE)))
    train = list(dict.fromkeys(t for k in keys if k not in held for t in synset_texts(k, synsets)))
    held_out = list(dict.fromkeys(t for k in sorted(held) for t in synset_texts(k, synsets)))
    held_set = set(held_out)
    train = [t for t in train if t not in held_set]
    rng.shuffle(train)
    queries, documents = [], []
    for key in sorted(held):
        synset = synsets[key]
        if synset.examples and len(synset.definition.split()) >= 3:
            queries.append(synset.definition)
            documents.append(", ".join(synset.words) + "\n" + " ".join(synset.examples))
    return Corpus(train, held_out, queries, documents)


# -- teacher ----------------------------------------------------------------------------------


def teacher_vectors(model: Any, texts: list[str], cache: Path, label: str) -> Floats:
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"{label}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    started = time.perf_counter()
    vectors = model.encode(
        texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
    ).astype(np.float32)
    print(f"teacher embedded {len(texts):,} {label} texts in {time.perf_counter() - started:.0f}s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


# -- the static model -------------------------------------------------------------------------


def starting_table(teacher: Path) -> tuple[Floats, Any]:
    """model2vec's distillation in the teacher's space: centred, SIF-weighted, no rotation."""
    from model2vec.distill import distill as m2v_distill
    from model2vec.distill.inference import compute_weights

    model = m2v_distill(
        model_name=str(teacher), pca_dims=None, sif_coefficient=None, quantize_to="float32"
    )
    raw = np.asarray(model.embedding, dtype=np.float64)
    weights = compute_weights(len(raw), sif_coefficient=SIF_COEFFICIENT)
    table = (raw - raw.mean(axis=0)) * weights[:, None]
    return table.astype(np.float32), model.tokenizer


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    unk = tokenizer.token_to_id("[UNK]")
    tokenizer = distill._plain_tokenizer(tokenizer)
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [[i for i in enc.ids if i != unk][:MAX_TOKENS] for enc in encoded]


def embed(table: Floats, ids: list[list[int]]) -> Floats:
    out = np.zeros((len(ids), table.shape[1]), dtype=np.float32)
    for row, tokens in enumerate(ids):
        if tokens:
            out[row] = table[tokens].mean(axis=0)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def ndcg_at_10(queries: Floats, documents: Floats) -> float:
    """nDCG@10 where query i's one right answer is document i."""
    scores = queries @ documents.T
    right = scores[np.arange(len(scores)), np.arange(len(scores))]
    ranks = 1 + (scores > right[:, None]).sum(axis=1)
    return float(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0).mean())


@dataclass
class Selection:
    held_ids: list[list[int]]
    held_targets: Floats
    query_ids: list[list[int]]
    document_ids: list[list[int]]

    def score(self, table: Floats) -> dict[str, float]:
        cosine = float("nan")  # with the teacher: only in the teacher's own space
        if table.shape[1] == self.held_targets.shape[1]:
            vectors = embed(table, self.held_ids)
            cosine = float(np.einsum("ij,ij->i", vectors, self.held_targets).mean())
        ndcg = ndcg_at_10(embed(table, self.query_ids), embed(table, self.document_ids))
        return {"cosine": cosine, "ndcg": ndcg}


def train(
    table: Floats,
    ids: list[list[int]],
    targets: Floats,
    selection: Selection,
    *,
    epochs: int,
    lr: float,
    anchor: float,
    batch: int,
) -> tuple[Floats, int, list[dict[str, float]]]:
    """The table after the epoch with the best selection nDCG@10 (0: the start)."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    start = torch.from_numpy(table.copy())
    weights = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([weights], lr=lr)
    keep = [i for i, t in enumerate(ids) if t]
    order_rng = np.random.default_rng(SEED)
    history = [selection.score(table)]
    print(f"epoch 0: {history[0]}")
    best, best_epoch = table.copy(), 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = order_rng.permutation(keep)
        total = 0.0
        for first in range(0, len(order), batch):
            rows = order[first : first + batch]
            flat = [i for r in rows for i in ids[r]]
            offsets = np.cumsum([0] + [len(ids[r]) for r in rows[:-1]])
            pooled = torch.nn.functional.embedding_bag(
                torch.tensor(flat), weights, torch.tensor(offsets), mode="mean"
            )
            target = torch.from_numpy(targets[rows])
            loss = 1 - torch.nn.functional.cosine_similarity(pooled, target).mean()
            if anchor:
                used = torch.unique(torch.tensor(flat))
                loss = loss + anchor * (weights[used] - start[used]).pow(2).sum(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(rows)
        current = weights.detach().numpy().copy()
        history.append(selection.score(current))
        print(
            f"epoch {epoch}: loss {total / len(order):.4f}, {history[-1]}, "
            f"{time.perf_counter() - started:.0f}s",
            flush=True,
        )
        if history[-1]["ndcg"] > history[best_epoch]["ndcg"]:
            best, best_epoch = current, epoch
    return best, best_epoch, history


def principal_axes(table: Floats, ids: list[list[int]], dims: int) -> Floats:
    """Rotate onto the axes of the corpus's static embeddings (uncentred) and keep ``dims``."""
    sample = embed(table, ids[:50_000]).astype(np.float64)
    _, vectors = np.linalg.eigh(sample.T @ sample)
    axes = vectors[:, ::-1][:, :dims]
    return (table.astype(np.float64) @ axes).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=WORDNET)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tokenlearn-cache"))
    parser.add_argument("--output", type=Path, default=distill.DEFAULT_OUTPUT)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--dtype", choices=["int8", "float16", "float32"], default="int8")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--anchor", type=float, default=0.0, help="L2 pull toward the start")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dry-run", action="store_true", help="train and report, write nothing")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(SEED)
    corpus = build_corpus(args.wordnet)
    print(
        f"WordNet corpus: {len(corpus.train):,} training texts, {len(corpus.held_out):,} held out, "
        f"{len(corpus.queries):,} selection queries"
    )
    teacher = distill.model_dir()
    full = SentenceTransformer(str(teacher), device="cpu")
    train_targets = teacher_vectors(full, corpus.train, args.cache, "train")
    held_targets = teacher_vectors(full, corpus.held_out, args.cache, "held")
    teacher_ndcg = ndcg_at_10(
        teacher_vectors(full, corpus.queries, args.cache, "queries"),
        teacher_vectors(full, corpus.documents, args.cache, "documents"),
    )

    table, tokenizer = starting_table(teacher)
    selection = Selection(
        token_ids(tokenizer, corpus.held_out),
        held_targets,
        token_ids(tokenizer, corpus.queries),
        token_ids(tokenizer, corpus.documents),
    )
    ids = token_ids(tokenizer, corpus.train)
    print(f"teacher selection nDCG@10 {teacher_ndcg:.4f}")
    shipped = principal_axes(table, ids, 256)  # the shipped model's recipe, for reference
    print(f"start cut to 256 dims: {selection.score(shipped)}")
    trained, epoch, _ = train(
        table,
        ids,
        train_targets,
        selection,
        epochs=args.epochs,
        lr=args.lr,
        anchor=args.anchor,
        batch=args.batch,
    )
    print(f"chose epoch {epoch}")
    for dims in sorted({256, 384, args.dims}):
        print(f"trained, {dims} dims: {selection.score(principal_axes(trained, ids, dims))}")
    final = principal_axes(trained, ids, args.dims)
    tensors = distill.quantize(final, args.dims, args.dtype)
    quantized = distill.Encoder(tensors, tokenizer).table
    print(f"trained, {args.dims} dims, {args.dtype}: {selection.score(quantized)}")
    if args.dry_run:
        return
    extra = {
        "training": {
            "method": "tokenlearn",
            "corpus": "WordNet 3.0 (wordnet-base)",
            "epochs": epoch,
            "lr": args.lr,
            "anchor": args.anchor,
            "batch": args.batch,
            "seed": SEED,
        }
    }
    config = distill.write_model(
        args.output,
        tensors,
        tokenizer,
        {"sif_coefficient": SIF_COEFFICIENT},
        extra=extra,
        notice_extra=NOTICE_WORDNET,
    )
    print(json.dumps(config, indent=2))
    total = sum(p.stat().st_size for p in args.output.iterdir() if p.is_file())
    print(f"wrote {args.output}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
