"""Moved to `notebook_orch.store.fingerprint` (persistence is one package); this name stays importable."""
from .store.fingerprint import *
from .store.fingerprint import __all__  # noqa: F401
