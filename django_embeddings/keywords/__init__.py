"""Keyword ranking beside the vectors: tokenizer, BM25 index and score fusion.

Internal groundwork for hybrid search; nothing here imports Django, the store
or the cache, so each part can be tested and measured on its own.
"""
