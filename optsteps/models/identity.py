"""A trained model's identity: its ``optsteps_model.json`` and the sha256 of its weights, verified at load."""

from __future__ import annotations

import json
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.hashing import file_digest

MODEL_RECORD = "optsteps_model.json"  # a trained or prepared model's record, in its folder under artifacts/models


def read_model_meta(meta_path: Path, name: str, required) -> dict:
    """``optsteps_model.json`` as a dict with the ``required`` keys, or one clear error naming the fix."""
    try:
        meta = json.loads(meta_path.read_text())
        missing = [k for k in required if k not in meta] if isinstance(meta, dict) else list(required)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        meta, missing = None, [f"unreadable: {e}"]
    if missing:
        raise OptstepsError(
            f"{meta_path} is not a valid optsteps model description (missing or bad: {missing}); "
            f"retrain with `optsteps train --model {name} --force`."
        )
    return meta


def verify_weights(weights: Path, recorded_sha256: str, name: str) -> None:
    """The model's identity is the hash of its weights: refuse weights that changed since training (the check
    is cached by path, size and mtime, ``io.hashing.file_digest``)."""
    if not weights.is_file():
        raise OptstepsError(
            f"the weights of {name!r} are missing ({weights}); retrain with `optsteps train --model {name} --force`."
        )
    if file_digest(weights) != recorded_sha256:
        raise OptstepsError(
            f"the weights {weights} do not match the sha256 recorded at training "
            f"({recorded_sha256[:12]}…): they changed or were truncated; retrain with "
            f"`optsteps train --model {name} --force` (shards, schedules and evaluations made for "
            "other weights are refused by that hash)."
        )
