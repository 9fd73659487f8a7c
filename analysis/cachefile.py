"""Cache entries that cannot lie: a checked envelope, read without trust.

Both caches (the analysis facts in `api.py`, the per-file apply results in
`dslc/apply/resultcache.py`) store one file per key, written atomically
(temporary file + `os.replace`: `replace_atomically`, which `dslc apply`'s
own file writes use too).  An entry is

    MAGIC (8 bytes) | SHA-256 of the payload (32 bytes) | payload length (8 bytes, big endian) | payload

and the payload itself records the key it was made for, the hash of the
content it was made from and the code version that made it.  Reading:

1. the bytes are checked (magic, length, checksum) *before* anything is
   decoded, so truncations, byte flips and garbage never reach `pickle` or
   `json`;
2. the decoded payload must name the requested key, content hash and
   version: an entry copied or moved to another key (which once made dslc
   write another file's rewrite) is refused;
3. pickled payloads are decoded by an unpickler that only builds the
   classes its caller allows (no other globals, no code);
4. any failure at all is a miss: `read` never raises (every `Exception`,
   `MemoryError`, `RecursionError` and `SystemError` included).  The first
   bad entry of a process is logged once on the `dslc.cache` logger; the
   caller then recomputes the result and overwrites the entry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tempfile
from typing import Callable

MAGIC = b"DSLCENT1"
_HEAD = len(MAGIC) + 32 + 8
MAX_ENTRY = 256 * 1024 * 1024  # larger files are not ours

LOG = logging.getLogger("dslc.cache")
_LOGGED: set = set()
BAD_ENTRIES = [0]  # bad entries seen by this process (tests and benchmarks read it)


class Bad(Exception):
    """An entry that exists but cannot be trusted."""


def seal(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "big") + payload


def unseal(data: bytes) -> bytes:
    """The payload of a sealed entry; `Bad` unless every check passes."""
    if len(data) < _HEAD or data[: len(MAGIC)] != MAGIC:
        raise Bad("not a dslc cache entry")
    digest = data[len(MAGIC): len(MAGIC) + 32]
    size = int.from_bytes(data[len(MAGIC) + 32: _HEAD], "big")
    payload = data[_HEAD:]
    if size != len(payload):
        raise Bad(f"truncated or padded ({len(payload)} bytes of {size})")
    if hashlib.sha256(payload).digest() != digest:
        raise Bad("checksum mismatch")
    return payload


def read(path: str) -> bytes | None:
    """The checked payload at `path`; None when missing or bad (never raises)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_ENTRY + 1)
    except OSError:
        return None
    except Exception as exc:  # noqa: BLE001 - never out of the cache
        bad(path, f"cannot read: {type(exc).__name__}")
        return None
    try:
        if len(data) > MAX_ENTRY:
            raise Bad("too large")
        return unseal(data)
    except Exception as exc:  # noqa: BLE001
        bad(path, str(exc) if isinstance(exc, Bad) else f"{type(exc).__name__}: {exc}")
        return None


def write(path: str, payload: bytes) -> None:
    """Write a sealed entry atomically; a cache that cannot be written is only slower."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_atomically(path, seal(payload), prefix=".", suffix=".tmp")
    except Exception:  # noqa: BLE001 - OSError, a full disk, anything
        pass


def replace_atomically(target: str, data: bytes, *, prefix: str, suffix: str, fsync: bool = False,
                       prepare: Callable[[str], None] | None = None) -> None:
    """Write `data` to a new temporary file beside `target` (same file
    system; named `prefix`...`suffix`), flushed to disk when `fsync`, call
    `prepare(temporary path)` (to set its mode, say), then `os.replace` it
    over `target`.  On any failure the temporary file is removed, `target`
    is as it was, and the exception propagates.  (The analysis cache and
    `dslc apply`'s file writes both use it.)"""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=os.path.dirname(target) or ".")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if prepare is not None:
            prepare(tmp)
        os.replace(tmp, target)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def bad(path: str, why: str) -> None:
    """Count a bad entry; log the first one of this process (per cache folder)."""
    BAD_ENTRIES[0] += 1
    folder = os.path.dirname(os.path.dirname(path))
    if folder in _LOGGED:
        return
    _LOGGED.add(folder)
    try:
        LOG.warning("dslc: ignoring an invalid cache entry in %s (%s); it is recomputed and overwritten "
                    "(further invalid entries there are not reported)", folder, why)
    except Exception:  # noqa: BLE001
        pass


class _Restricted(pickle.Unpickler):
    def __init__(self, data: bytes, allowed: dict):
        super().__init__(io.BytesIO(data))
        self.allowed = allowed

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None and self.policy is not None:
            found = self.policy(module, name)
        if found is None:
            raise Bad(f"unexpected class {module}.{name} in a cache entry")
        return found


def loads(payload: bytes, allowed: dict, policy=None):
    """Unpickle `payload`, building only the classes in `allowed`
    ((module, name) -> class) or those `policy(module, name)` returns (it
    returns None to refuse).  Raises on anything else."""
    unpickler = _Restricted(payload, allowed)
    unpickler.policy = policy
    return unpickler.load()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
