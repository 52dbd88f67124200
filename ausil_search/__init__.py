"""ausil-search: duplicate-audio video retrieval with AuSiL, FAISS and LMDB."""

from .compat import install as _install_old_import_paths

__version__ = "0.1.0"

_install_old_import_paths()
