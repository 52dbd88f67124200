"""Indexing and search: the `stores` (LMDB segments, FAISS recall), the `engine` (incremental indexing,
queries), the calibrated match `decision`, `dedup` over an index and its HTML report (`report_html`).
"""
