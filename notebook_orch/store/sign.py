"""Signed store rows: an HMAC-SHA256 over (fingerprint, pickle) with a per-user secret, checked before any unpickling.

The secret is 32 random bytes in `<user data dir>/notebook_orch/store_secret` (mode 0600,
directory 0700), created on first use, as Jupyter keeps `notebook_secret` to sign trusted
notebooks. The data dir is `$NOTEBOOK_ORCH_DATA_DIR` when set, else `$XDG_DATA_HOME` or
`~/.local/share` (Linux), `~/Library/Application Support` (macOS), `%APPDATA%` (Windows).

Trust boundary: a row verifies only if it was written by someone who can read your
secret file, i.e. by you. Anyone who can merely write the store (a shared folder, a
synced directory, a planted file) cannot make the notebook unpickle what they wrote;
their rows are cache misses with a warning. A row signed by another user of the same
folder is likewise a miss (their outputs are not trusted for you).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import sys
import threading
from pathlib import Path

__all__ = ["reset", "secret_path", "sign", "verify"]

_SECRET_NAME = "store_secret"
_secret: bytes | None = None
_base: hmac.HMAC | None = None     # keyed once; each signature copies it (OpenSSL 3 fetches SHA-256 per new HMAC)
_lock = threading.Lock()


def data_dir() -> Path:
    """The user's notebook_orch data directory (see the module docstring)."""
    env = os.environ.get("NOTEBOOK_ORCH_DATA_DIR")
    if env:
        return Path(env)
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "notebook_orch"


def secret_path() -> Path:
    return data_dir() / _SECRET_NAME


def _load() -> bytes:
    path = secret_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.chmod(path.parent, 0o700)
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) >= 32:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
            return data
        # an empty or truncated file (a crash while creating it): replace it
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    key = os.urandom(32)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


def key() -> bytes:
    """The signing secret of this user (read once per process)."""
    global _secret
    if _secret is None:
        with _lock:
            if _secret is None:
                _secret = _load()
    return _secret


def reset() -> None:
    """Forget the cached secret (the next use reads the file again); for tests and a changed data dir."""
    global _secret, _base
    with _lock:
        _secret = _base = None


def sign(fingerprint: str, blob: bytes) -> bytes:
    """The 32-byte signature of one row: binds the value to its fingerprint (no swapping rows)."""
    global _base
    base = _base
    if base is None:
        base = _base = hmac.new(key(), digestmod=hashlib.sha256)
    h = base.copy()
    h.update(fingerprint.encode())
    h.update(b"\x00")
    h.update(blob)
    return h.digest()


def verify(fingerprint: str, blob: bytes, signature: bytes | None) -> bool:
    """Whether `signature` is this user's signature of (fingerprint, blob); compared in constant time."""
    if not signature:
        return False
    return hmac.compare_digest(sign(fingerprint, blob), bytes(signature))
