"""ausil-search: duplicate-audio video retrieval with AuSiL, FAISS and LMDB."""

__version__ = "0.1.0"
