"""Atomic file writes: a temp file in the same folder and an atomic rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import threading
from pathlib import Path

from optsteps.errors import OptstepsError

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


MACHINE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def machine_error(e: OSError, path) -> OptstepsError | None:
    """The one line for a write that the machine refused (disk full, read-only, no permission), or None for
    another error. Atomic writes leave nothing half-written, so the line says what was kept and that a rerun
    resumes."""
    why = MACHINE_ERRORS.get(e.errno)
    if why is None:
        return None
    p = Path(path)
    folder = p.parent if p.suffix else p
    fix = (
        "free space there (or point results:/artifacts: in params.yaml elsewhere)"
        if e.errno in (errno.ENOSPC, errno.EDQUOT)
        else "make the folder writable (or point results:/artifacts: in params.yaml elsewhere)"
    )
    kept = f"the previous {p.name} is kept as it was" if p.exists() else f"{p.name} was not created"
    return OptstepsError(
        f"cannot write {p.name} in {folder}: {why}; nothing was half-written ({kept}, every file "
        f"written before it is complete); {fix} and rerun: it resumes from what is done."
    )


@contextlib.contextmanager
def machine_errors(path):
    """Turn a disk-full / read-only / permission ``OSError`` inside the block into ``machine_error``'s one line."""
    try:
        yield
    except OSError as e:
        err = machine_error(e, path)
        if err is None:
            raise
        raise err from None


def write_bytes_atomic(path, data: bytes) -> Path:
    """``write_text_atomic`` for bytes (images, binary files)."""
    p = Path(path)
    with machine_errors(p):
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
