"""The teacher's endpoints on the evaluation seeds, cached by content hash.

Every evaluation compares its rows against the teacher (N steps of ``teacher.solver``) run on the same held-out
noises, and the teacher costs as much as all NFE-5 rows of a grid together. Its endpoints depend only on the
model (identity: name and weights hash), the teacher config, the seeds (seed, start, n), the guidance and the
code that samples (the sources of ``optsteps/core``, ``optsteps/models`` and ``optsteps/teacher``), so they are
stored under ``<cache_dir>/teacher-<key>.safetensors`` with the key recorded inside; a file whose recorded key
differs is never used. Models without a weights hash in their identity are not cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

CACHE_FORMAT = "optsteps-teacher-endpoints/1"
CODE_PACKAGES = ("core", "models", "teacher")


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the sources (relative path and bytes) of the packages that produce samples."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in CODE_PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def teacher_key(model, teacher_cfg, n: int, seed: int, start: int, guidance: float) -> str | None:
    ident = dict(model.identity or {})
    if not ident.get("sha256"):
        return None
    blob = {
        "format": CACHE_FORMAT,
        "model": ident,
        "noise_schedule": model.noise_schedule.to_dict(),
        "teacher": asdict(teacher_cfg),
        "n": int(n),
        "seed": int(seed),
        "start": int(start),
        "guidance": float(guidance),
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def cached_teacher(cache_dir, key: str | None, compute):
    """The tensor under ``key`` in ``cache_dir``, or ``compute()`` (then stored there)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from optsteps.io.shards import write_shard

    if cache_dir is None or key is None:
        return compute()
    path = Path(cache_dir) / f"teacher-{key[:24]}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("optsteps", "{}"))
            if meta.get("key") == key:
                return load_file(str(path))["x"]
        except (SafetensorError, OSError, ValueError, KeyError):
            pass  # unreadable or foreign: recompute and replace
    x = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_shard(path, {"x": x.detach().cpu()}, {"key": key, "format": CACHE_FORMAT})
    return x


__all__ = ["code_digest", "teacher_key", "cached_teacher"]
