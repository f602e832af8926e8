"""Finding and identifying a diffusers pipeline on disk, and choosing its device and dtype.

Nothing is downloaded: hub ids resolve only from the local cache (``local_files_only=True``); anything else is a
clear error. ``pipeline_digest`` identifies a pipeline folder by its config and weight files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from optsteps.errors import OptstepsError
from optsteps.io.hashing import file_digest
from optsteps.io.readers import read_json, require

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
            f"{pipeline!r} is neither a local diffusers pipeline folder nor a hub id in the local cache "
            f"({type(e).__name__}); "
            "download it once where there is network (`huggingface-cli download ID`) or pass the folder path."
        ) from None


def resolve_pipeline(path_or_id) -> Path:
    """A local pipeline folder, or the snapshot folder of a hub id already in the local cache."""
    p = Path(path_or_id)
    if not p.is_dir() and (str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") > 1):
        raise OptstepsError(
            f"pipeline folder {p} does not exist; pass a diffusers pipeline folder (with "
            "model_index.json) or a hub id that is in the local cache."
        )
    root = resolve_folder(str(path_or_id))
    if not (root / "model_index.json").is_file():
        raise OptstepsError(
            f"{root} has no model_index.json, so it is not a diffusers pipeline folder; save the "
            "pipeline with `pipe.save_pretrained(folder)` or pass the folder that holds model_index.json."
        )
    return root


INDEX_FIX = "re-save the pipeline with `pipe.save_pretrained(folder)`"


def read_model_index(root) -> dict:
    """The pipeline's model_index.json, checked: a UTF-8 JSON object with a string ``_class_name``."""
    path = Path(root) / "model_index.json"
    return require(read_json(path, "diffusers model index", fix=INDEX_FIX), {"_class_name": str}, path, fix=INDEX_FIX)


def pipeline_class_name(root) -> str:
    return read_model_index(root)["_class_name"]


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

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


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


# ---- checking a pipeline folder before diffusers reads it ---------------------------------------------

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CONVERT_FIX = (
    "convert them once, where you trust the file, with `pipe.save_pretrained(folder, "
    "safe_serialization=True)` (diffusers/transformers write .safetensors)"
)


def _check_safetensors(path: Path, root, component: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - any failure to open the header means the file is broken
        raise OptstepsError(
            f"{root}: component {component!r}: weights {path.name} cannot be read "
            f"({' '.join(str(e).split())[:80]}; truncated or not safetensors); restore the file "
            "or re-save the pipeline with `pipe.save_pretrained(folder)`."
        ) from None


def check_components(root, components=None) -> None:
    """Every component of the pipeline folder ``root`` that is a network (its folder has a ``config.json``) has its
    weights as readable ``.safetensors`` (sharded ones: every file its index lists); pickle weights (``.bin``,
    ``.pt``, ``.ckpt``) are refused. ``components``: the folder names to check (default: model_index.json's)."""
    root = Path(root)
    if components is None:
        index = read_model_index(root)
        components = [
            k
            for k, v in index.items()
            if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None
        ]
    for comp in components:
        folder = root / comp
        if not folder.is_dir():
            raise OptstepsError(
                f"{root}: component {comp!r} is listed in model_index.json but its folder is missing; "
                "restore it or re-save the pipeline with `pipe.save_pretrained(folder)`."
            )
        if not (folder / "config.json").is_file():
            continue  # a scheduler, tokenizer or feature extractor: configuration only
        indexes = sorted(folder.glob("*.safetensors.index.json"))
        weights = sorted(folder.glob("*.safetensors"))
        if indexes:
            fix = "restore the shards or re-save the pipeline with `pipe.save_pretrained(folder)`"
            for ix in indexes:
                wmap = require(read_json(ix, "safetensors shard index", fix=fix), {"weight_map": dict}, ix, fix=fix)
                for name in sorted(set(map(str, wmap["weight_map"].values()))):
                    shard = (folder / name).resolve()
                    if shard.parent != folder.resolve() or not shard.is_file():
                        raise OptstepsError(
                            f"{root}: component {comp!r}: shard {name!r} listed in {ix.name} is missing; {fix}."
                        )
        if not weights:
            pickles = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise OptstepsError(
                    f"{root}: component {comp!r} has only pickle weights ({', '.join(pickles)}), which "
                    f"optsteps refuses (loading a pickle can run code); {CONVERT_FIX}."
                )
            raise OptstepsError(
                f"{root}: component {comp!r} has no weights file (.safetensors); restore it or re-save "
                "the pipeline with `pipe.save_pretrained(folder)`."
            )
        for w in weights:
            _check_safetensors(w, root, comp)
