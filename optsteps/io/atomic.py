"""Atomic file writes: a temp file in the same folder and an atomic rename, so a crash never leaves half a file."""
from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0o666 minus the umask (0o644 for the usual 022).
    ``mkstemp`` creates 0o600 files, which a team sharing a results folder cannot read."""
    with _UMASK_LOCK:  # reading the umask means setting it; the lock keeps threads from seeing the 0
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path, text: str) -> Path:
    """Write via a temp file in the same folder and an atomic rename: a crash never leaves half a file (UTF-8)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path, data: bytes) -> Path:
    """``write_text_atomic`` for bytes (images, binary files)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix="." + p.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def save_png_atomic(img, path) -> Path:
    """Save a PIL image as PNG atomically (encoded in memory, then ``write_bytes_atomic``)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())
