"""The benchmark of django_embeddings against its peers: ``python -m bench [--quick]``.

Builds deterministic corpora, runs django_embeddings, popoto's EmbeddingField,
bare numpy and FAISS side by side in one run, and prints a Markdown table of
medians and ratios (also written to ``bench/results/``). See ``bench/run.py``.
"""
