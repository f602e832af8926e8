"""Finding and identifying a diffusers pipeline on disk, and choosing its device and dtype.

Nothing is downloaded: hub ids resolve only from the local cache (``local_files_only=True``); anything else is a
clear error. ``pipeline_digest`` identifies a pipeline folder by its config and weight files.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from optsteps.errors import OptstepsError
from optsteps.io.hashing import file_digest


# ---- resolving and identifying a pipeline folder ------------------------------------------------------

def resolve_folder(pipeline: str) -> Path:
    """A local folder, or the snapshot folder of a hub id already in the local cache (nothing is downloaded)."""
    p = Path(pipeline)
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(pipeline, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any hub failure means "not on disk"
        raise OptstepsError(
            f"{pipeline!r} is neither a local diffusers pipeline folder nor a hub id in the local cache ({type(e).__name__}); "
            "download it once where there is network (`huggingface-cli download ID`) or pass the folder path."
        ) from None


def resolve_pipeline(path_or_id) -> Path:
    """A local pipeline folder, or the snapshot folder of a hub id already in the local cache."""
    p = Path(path_or_id)
    if not p.is_dir() and (str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") > 1):
        raise OptstepsError(f"pipeline folder {p} does not exist; pass a diffusers pipeline folder (with "
                            "model_index.json) or a hub id that is in the local cache.")
    root = resolve_folder(str(path_or_id))
    if not (root / "model_index.json").is_file():
        raise OptstepsError(f"{root} has no model_index.json, so it is not a diffusers pipeline folder; save the "
                            "pipeline with `pipe.save_pretrained(folder)` or pass the folder that holds model_index.json.")
    return root


def pipeline_class_name(root) -> str:
    try:
        return str(json.loads((Path(root) / "model_index.json").read_text())["_class_name"])
    except (json.JSONDecodeError, KeyError) as e:
        raise OptstepsError(f"{root}/model_index.json is not a diffusers model index ({e}); re-save the pipeline.") from None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def pipeline_digest(root) -> str:
    """sha256 over every config and weight file of the pipeline folder (paths and contents)."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_dir() or f.name.startswith("."):
            continue
        if f.suffix in WEIGHT_SUFFIXES or f.suffix in (".json", ".txt", ".model"):
            h.update(str(f.relative_to(root)).encode())
            h.update(file_digest(f).encode())
    return h.hexdigest()


# ---- device and dtype ---------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def default_device() -> str:
    """``$OPTSTEPS_DEVICE`` when set (e.g. ``cpu`` to keep a GPU machine's runs bit-comparable with CPU ones),
    else cuda when available, else cpu."""
    return os.environ.get("OPTSTEPS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device, kind: str, dtype=None) -> torch.dtype:
    """fp32 on CPU; on GPU fp16 for UNet pipelines and bf16 for flow transformers (unless ``dtype`` says).
    Half precision is refused on the CPU (slow or unsupported there, and needless)."""
    on_cpu = torch.device(device).type == "cpu"
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            if str(dtype) not in DTYPES:
                raise OptstepsError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}.")
            dtype = DTYPES[str(dtype)]
        if on_cpu and dtype in (torch.float16, torch.bfloat16):
            raise OptstepsError(f"{dtype} is for GPUs; on the CPU use float32 (or run on a CUDA device).")
        return dtype
    if on_cpu:
        return torch.float32
    return torch.bfloat16 if kind in ("sd3", "flux", "wan") else torch.float16
