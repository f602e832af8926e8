"""Reading a teacher back: its shards as tensors (``load_teacher``), the teacher a shards folder was made with
(``manifest_teacher``), a stage's own folder cleared of another model's or teacher's shards (``drop_stale_shards``),
and the denoiser the optimizers call on stacked node states (``LabelledDenoiser``).

Everything here takes what it needs (a ``TeacherConfig``, a model or its ``ModelCard``, a folder), not the params.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from optsteps.errors import OptstepsError
from optsteps.io.paths import inside
from optsteps.io.shards import MANIFEST, read_manifest
from optsteps.teacher.config import TeacherConfig
from optsteps.teacher.trajectories import header, iter_shards

log = logging.getLogger("optsteps.teacher")


def load_teacher(teacher: TeacherConfig, model, traj_dir, samples: int):
    """(t [N+1], states [N+1, S, ...], labels [S] or None) from the first ``samples`` teacher samples of
    ``traj_dir``, checked against ``model`` (the loaded model or its ``ModelCard``) and ``teacher``."""
    states, labels, t = [], [], None
    have = 0
    for sh in iter_shards(traj_dir, model, teacher):
        take = min(sh["states"].shape[1], samples - have)
        states.append(sh["states"][:, :take])
        labels.append(sh["labels"][:take])
        t = sh["t"]
        have += take
        if have >= samples:
            break
    if not states:
        raise OptstepsError(f"{traj_dir} has no shards; run `optsteps trajectories --model {model.name}`.")
    lab = torch.cat(labels)
    return t, torch.cat(states, dim=1), (None if (lab < 0).all() else lab)


def mean_x0_error(teacher: TeacherConfig, model, traj_dir):
    """(t [N+1], e [N]): e_i = mean over the shards' samples of ‖x̂_0(x_{t_i}, t_i) − x_{t_N}‖ (the teacher's
    data-prediction error at each of its times)."""
    sums, count, t = None, 0, None
    for sh in iter_shards(traj_dir, model, teacher):
        err = (sh["x0"] - sh["states"][-1][None]).flatten(2).norm(dim=2).sum(1)  # [N]
        sums = err if sums is None else sums + err
        count += sh["states"].shape[1]
        t = sh["t"]
    return t, sums / count


class LabelledDenoiser:
    """A model denoiser for batches that stack node states of the same S samples (row r is sample r mod S)."""

    def __init__(self, model, labels, guidance: float = 1.0):
        self.model, self.labels, self.guidance = model, labels, guidance

    def __call__(self, x, t):
        if self.labels is None:
            return self.model.denoiser(None, self.guidance)(x, t)
        s = len(self.labels)
        if x.shape[0] % s:
            raise OptstepsError(f"batch of {x.shape[0]} rows is not a whole number of {s}-sample blocks.")
        return self.model.denoiser(self.labels.repeat(x.shape[0] // s), self.guidance)(x, t)


def manifest_teacher(traj_dir, default: TeacherConfig) -> TeacherConfig:
    """The teacher recorded in ``traj_dir``'s manifest (a folder of shards made by `optsteps trajectories
    --teacher-steps … --out DIR`), or ``default`` when it records none: such shards are used as they are, and only a
    real mismatch (another model or noise schedule, checked shard by shard) is refused."""
    man = read_manifest(traj_dir)
    if not man or not isinstance(man.get("teacher"), dict):
        return default
    try:
        teacher = TeacherConfig(**man["teacher"])
    except TypeError:
        raise OptstepsError(
            f"{Path(traj_dir) / MANIFEST} records a teacher optsteps cannot read "
            f"({man['teacher']}); regenerate the shards with `optsteps trajectories`."
        ) from None
    if teacher != default:
        log.info("%s: using the teacher its shards were made with: %s", traj_dir, teacher)
    return teacher


def drop_stale_shards(out: Path, card, teacher: TeacherConfig) -> None:
    """In a stage's own trajectories folder, shards of another model identity or teacher (new weights, a changed
    teacher) are removed, so that the stage regenerates them (a folder passed with --out is never touched)."""
    old = read_manifest(out)
    head = header(card, teacher)
    if old is None or {k: old.get(k) for k in head} == head:
        return
    log.warning(
        "%s holds shards of %s (%s…) / teacher %s; replacing them for %s (%s…)",
        out,
        old.get("model"),
        str(old.get("model_sha256"))[:12],
        old.get("teacher"),
        head["model"],
        head["model_sha256"][:12],
    )
    for e in old.get("shards", []):
        inside(out, e["file"], "manifest shard file").unlink(missing_ok=True)  # never a file outside the folder
    (out / MANIFEST).unlink()
