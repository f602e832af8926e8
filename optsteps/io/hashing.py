"""Content hashes of files: ``sha256_file``, and ``file_digest`` for large weight files (cached by path, size and
mtime; a hub snapshot's blob name is already the content hash)."""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path

_HASH_CACHE: dict = {}
_HEX = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(f: Path) -> str:
    """The file's content digest: for a hub snapshot link, its blob name; else its sha256 (cached)."""
    # hub snapshots link each file to blobs/<sha256 (LFS) or git sha1>: that name already identifies the content
    if f.is_symlink() and _HEX.match(f.resolve().name):
        return f.resolve().name
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(f)
    return _HASH_CACHE[key]


@contextmanager
def persistent_digests(path):
    """``file_digest``'s cache (by path, size and mtime) loaded from the JSON file ``path`` before the block and
    written back (atomically) after it, so that a new process does not hash unchanged weight files again."""
    import json

    from optsteps.io.atomic import write_text_atomic

    path = Path(path)
    try:
        stored = json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        stored = []  # a damaged cache only costs hashing again
    for row in stored:
        if isinstance(row, list) and len(row) == 4:
            _HASH_CACHE[(row[0], row[1], row[2])] = row[3]
    try:
        yield
    finally:
        rows = sorted([k[0], k[1], k[2], v] for k, v in _HASH_CACHE.items())
        if rows != sorted(stored):
            write_text_atomic(path, json.dumps(rows) + "\n")
