"""Pickle-free safetensors shard storage with a JSON manifest (the teacher trajectories' file format).

A shard is one ``.safetensors`` file named by its sample range (``shard_name``) with its metadata under one key,
``"optsteps"`` (JSON); it is written to a temp file and renamed. ``manifest.json`` lists the shards with their
sha256; ``load_shard`` checks the hash before reading.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.atomic import file_mode, write_text_atomic
from optsteps.io.hashing import sha256_file

FORMAT = "optsteps-trajectories/1"
MANIFEST = "manifest.json"


def shard_name(start: int, count: int) -> str:
    return f"shard_{start:08d}_{count:06d}.safetensors"


def write_shard(path: Path, data: dict, meta: dict) -> None:
    """Write the tensors ``data`` with ``meta`` (JSON) to ``path`` via a temp file and an atomic rename."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    os.fchmod(fd, file_mode())
    os.close(fd)
    try:
        # one metadata key: safetensors keeps metadata in a hash map, so several keys come out in a random order
        save_file({k: v.contiguous() for k, v in data.items()}, tmp, metadata={"optsteps": json.dumps(meta, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_manifest(out_dir) -> dict | None:
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise OptstepsError(f"{p} is not valid JSON; delete it and rerun `optsteps trajectories`: it rebuilds the "
                            "manifest from the shards' own metadata (each shard is verified, none is recomputed).") from None


def write_manifest(out_dir, manifest: dict) -> Path:
    return write_text_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def load_shard(out_dir, entry: dict) -> dict:
    """The tensors of the manifest ``entry``'s shard, after checking its sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(out_dir) / entry["file"]
    if not p.is_file():
        raise OptstepsError(f"shard {p} is missing; rerun `optsteps trajectories` to regenerate it.")
    if sha256_file(p) != entry["sha256"]:
        raise OptstepsError(f"shard {p} does not match its manifest hash (truncated or modified); delete it and "
                            "rerun `optsteps trajectories`.")
    try:
        return load_file(p)
    except SafetensorError as e:
        raise OptstepsError(f"shard {p} cannot be read ({e}); delete it and rerun `optsteps trajectories`.") from None


def read_shard_meta(path) -> dict | None:
    """The JSON metadata a shard was written with (``write_shard``), or None if the file is not a readable shard."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("optsteps")
        return json.loads(meta) if meta else None
    except Exception:  # a truncated or foreign file is simply not a shard we can reuse
        return None


def verify_shard(path) -> dict | None:
    """The tensors of ``path`` if the file loads completely and every value is finite, else None."""
    import torch
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
    except Exception:
        return None
    ok = all(bool(torch.isfinite(v).all()) for v in data.values() if v.is_floating_point())
    return data if ok else None
