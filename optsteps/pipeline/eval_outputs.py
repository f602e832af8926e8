"""The evaluate stage's rows and resamples as one unit: ``results/eval/<model>.json`` (every row) and
``results/eval/<model>-bootstrap.npz`` (the rows' bootstrap resamples) carry the same ``outputs_id``, a content hash
of both. ``write_evaluation`` writes the npz first and the JSON last, each atomically, so a crash between them
leaves a pair whose ids differ; ``read_evaluation`` (the register stage) refuses such a pair in one line instead of
pairing new rows with an older evaluation's resamples."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.atomic import write_bytes_atomic, write_text_atomic
from optsteps.io.readers import read_bytes, read_json, require
from optsteps.pipeline.layout import eval_path, model_name, resamples_path

OUTPUTS_KEY = "outputs_id"  # in every row of the JSON and as an array of the npz


def outputs_id(rows: list[dict], resamples: list[dict]) -> str:
    """A content hash of the rows (without their ``outputs_id``) and every resampled array."""
    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps([{k: v for k, v in r.items() if k != OUTPUTS_KEY} for r in rows], sort_keys=True).encode())
    for i, res in enumerate(resamples):
        for k in sorted(res):
            a = np.ascontiguousarray(np.asarray(res[k], dtype=np.float64))
            h.update(f"row{i}/{k}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def write_evaluation(p, model, rows: list[dict], resamples: list[dict]) -> Path:
    """Write the npz (resamples, ``evaluation_id``, ``outputs_id``), then the JSON rows (each with ``outputs_id``);
    both atomic. Returns the JSON's path."""
    import numpy as np

    oid = outputs_id(rows, resamples)
    for r in rows:
        r[OUTPUTS_KEY] = oid
    buf = io.BytesIO()
    np.savez(
        buf,
        **{f"row{i}/{k}": v for i, res in enumerate(resamples) for k, v in res.items()},
        evaluation_id=np.array(rows[0].get("evaluation_id", "")),
        **{OUTPUTS_KEY: np.array(oid)},
    )
    write_bytes_atomic(resamples_path(p, model), buf.getvalue())
    out = eval_path(p, model)
    write_text_atomic(out, json.dumps(rows, indent=1) + "\n")
    return out


def read_resamples(path, rows: int, fix: str) -> tuple[list[dict], str | None]:
    """(the rows' resamples, the npz's ``outputs_id`` or None) from ``path``; a file that is no npz is one line."""
    import zipfile

    import numpy as np

    out = [{} for _ in range(rows)]
    data = read_bytes(path, "bootstrap resamples file", fix=fix)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            oid = str(z[OUTPUTS_KEY]) if OUTPUTS_KEY in z.files else None
            for key in z.files:
                if key.startswith("row"):
                    i, metric = key[3:].split("/", 1)
                    if int(i) < rows:
                        out[int(i)][metric] = z[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise OptstepsError(f"{path}: the bootstrap resamples file cannot be read ({e}); {fix}") from None
    return out, oid


def read_evaluation(p, model) -> tuple[list[dict], list[dict]]:
    """(rows, resamples) of the model's last evaluation, after checking that the JSON and the npz are one unit."""
    name = model_name(p, model)
    path, npz = eval_path(p, model), resamples_path(p, model)
    fix = f"rerun `optsteps stage evaluate --model {name}`"
    if not path.is_file():
        raise OptstepsError(f"{path} is missing; run the evaluate stage first ({fix[6:]}).")
    rows = read_json(path, "evaluation results", top=list, fix=fix, allow_nan=True)  # a metric may be NaN
    if not rows:
        raise OptstepsError(f"{path}: the evaluation results hold no rows; {fix}.")
    for i, r in enumerate(rows):
        require(r, {"method": str, "solver": str, "nfe": int}, path, f"[{i}].", fix)
        if i:
            require(r, {"schedule": dict}, path, f"[{i}].", fix)
    ids = {r.get(OUTPUTS_KEY) for r in rows}
    jid = rows[0].get(OUTPUTS_KEY)
    if len(ids) != 1 or not isinstance(jid, str):
        raise OptstepsError(
            f"{path} has no single {OUTPUTS_KEY} (written by an older optsteps, or edited), so its rows cannot be "
            f"matched with {npz.name}; {fix} before registering."
        )
    if not npz.is_file():
        raise OptstepsError(
            f"{npz} is missing while {path.name} expects its resamples (outputs id {jid}); {fix} before registering."
        )
    resamples, nid = read_resamples(npz, len(rows), fix)
    if nid != jid:
        raise OptstepsError(
            f"{path} and {npz} are not one evaluation (outputs ids {jid} and {nid or 'none'}: an evaluate was "
            f"interrupted between writing them); {fix} before registering."
        )
    return rows, resamples
