"""Pickle-free safetensors shard storage with a JSON manifest (the teacher trajectories' file format).

A shard is one ``.safetensors`` file named by its sample range (``shard_name``) with its metadata under one key,
``"optsteps"`` (JSON); it is written to a temp file and renamed. ``manifest.json`` lists the shards with their
sha256; ``load_shard`` checks the hash before reading.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.atomic import file_mode, machine_errors, write_text_atomic
from optsteps.io.hashing import sha256_file
from optsteps.io.paths import inside
from optsteps.io.readers import read_json, require

FORMAT = "optsteps-trajectories/1"
MANIFEST = "manifest.json"


def shard_name(start: int, count: int) -> str:
    return f"shard_{start:08d}_{count:06d}.safetensors"


def write_shard(path: Path, data: dict, meta: dict) -> None:
    """Write the tensors ``data`` with ``meta`` (JSON) to ``path`` via a temp file and an atomic rename."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with machine_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
        os.fchmod(fd, file_mode())
        os.close(fd)
        try:
            # one metadata key: safetensors keeps metadata in a hash map, so several keys come out in a random order
            try:
                save_file(
                    {k: v.contiguous() for k, v in data.items()},
                    tmp,
                    metadata={"optsteps": json.dumps(meta, sort_keys=True)},
                )
            except SafetensorError as e:  # an OS error inside safetensors' writer: "… Os { code: 28, … }"
                code = re.search(r"code: (\d+)", str(e))
                if code is None:
                    raise
                raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
            os.chmod(tmp, file_mode())  # safetensors re-creates the file 0600; every output gets one mode
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


MANIFEST_FIX = (
    "delete it and rerun `optsteps trajectories`: it rebuilds the manifest from the shards' own metadata "
    "(each shard is verified, none is recomputed)"
)
MANIFEST_SCHEMA = {"model": str, "model_sha256": str, "teacher": dict, "shards": list}
ENTRY_SCHEMA = {"file": str, "start": int, "count": int, "sha256": str}


def read_manifest(out_dir) -> dict | None:
    """The folder's ``manifest.json`` (None if there is none), checked: a JSON object whose ``shards`` is a list of
    entries {file, start, count, sha256}, each ``file`` a plain name inside the folder."""
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        return None
    m = require(read_json(p, "shards manifest", fix=MANIFEST_FIX), MANIFEST_SCHEMA, p, fix=MANIFEST_FIX)
    for i, e in enumerate(m["shards"]):
        require(e, ENTRY_SCHEMA, p, where=f"shards[{i}].", fix=MANIFEST_FIX)
        inside(out_dir, e["file"], f"{p}: shards[{i}].file")
    return m


def write_manifest(out_dir, manifest: dict) -> Path:
    return write_text_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def load_shard(out_dir, entry: dict) -> dict:
    """The tensors of the manifest ``entry``'s shard, after checking its sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = inside(out_dir, entry["file"], "shard file")
    if not p.is_file():
        raise OptstepsError(f"shard {p} is missing; rerun `optsteps trajectories` to regenerate it.")
    if sha256_file(p) != entry["sha256"]:
        raise OptstepsError(
            f"shard {p} does not match its manifest hash (truncated or modified); delete it and "
            "rerun `optsteps trajectories`."
        )
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
