"""Teacher trajectories as pickle-free safetensors shards with a JSON manifest.

A shard holds samples [start, start + count) of one (model, teacher) pair:

    t        [N+1]            float64  the teacher's grid t_0 = t_start > … > t_N = t_end
    states   [N+1, S, ...]    float32  x_{t_0} (the initial noise state) … x_{t_N} (the teacher's endpoint)
    x0       [N, S, ...]      float32  the teacher's data predictions x̂_0(x_{t_i}, t_i), i < N
    labels   [S]              int64    class labels (−1: unconditional)

``manifest.json`` records the model identity (name, weights hash), the teacher config, and per shard the
seed range, the file name and its sha256. Shards are written to a temp file and renamed; the manifest is
rewritten atomically after each shard. A rerun skips shards whose file exists with the recorded hash, so a
crash loses at most the shard in progress. Loading checks model, teacher config and hash.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from optsteps.core.baselines import baseline_for
from optsteps.core.schedule import Schedule
from optsteps.core.solvers import sample
from optsteps.errors import NonFiniteError, OptstepsError
from optsteps.io.hashing import sha256_file
from optsteps.io.shards import (
    FORMAT,
    load_shard,
    read_manifest,
    read_shard_meta,
    shard_name,
    verify_shard,
    write_manifest,
    write_shard,
)
from optsteps.models.base import DiffusionModel
from optsteps.teacher.config import TeacherConfig


def teacher_schedule(model: DiffusionModel, cfg: TeacherConfig) -> Schedule:
    return baseline_for(cfg.schedule, model, cfg.steps).with_meta(solver=cfg.solver)


def run_teacher(model: DiffusionModel, cfg: TeacherConfig, start: int, count: int) -> dict:
    """States and predictions of samples [start, start + count) along the teacher grid (in memory)."""
    sched = teacher_schedule(model, cfg)
    x = model.initial_state(model.noise(count, cfg.seed, start), sched)
    labels = model.labels(count, start)
    states, x0s = [], []

    def keep(i, xi, x0):
        states.append(xi.float().clone())
        x0s.append(x0.float().clone())

    final = sample(model.denoiser(labels, cfg.guidance), x, sched, cfg.solver, callback=keep)
    states.append(final.float().clone())
    return {
        "t": sched.timesteps_t,
        "states": torch.stack(states),
        "x0": torch.stack(x0s),
        "labels": labels if labels is not None else torch.full((count,), -1, dtype=torch.long),
    }


def header(model: DiffusionModel, cfg: TeacherConfig) -> dict:
    return {
        "format": FORMAT,
        "model": model.identity.get("model", model.name),
        "model_sha256": model.identity.get("sha256", ""),
        "noise_schedule": model.noise_schedule.to_dict(),
        "teacher": asdict(cfg),
    }


def shard_ranges(samples: int, shard_size: int) -> list[tuple[int, int]]:
    if samples < 1 or shard_size < 1:
        raise OptstepsError(f"need samples ≥ 1 and shard_size ≥ 1, got {samples}, {shard_size}.")
    return [(s, min(shard_size, samples - s)) for s in range(0, samples, shard_size)]


def generate_shard(model: DiffusionModel, cfg: TeacherConfig, out_dir, start: int, count: int, node: str = "") -> dict:
    """Compute and write one shard; returns its manifest entry."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = run_teacher(model, cfg, start, count)
    path = out_dir / shard_name(start, count)
    write_shard(path, data, {"start": start, "count": count, **header(model, cfg)})
    return {"file": path.name, "start": start, "count": count, "sha256": sha256_file(path), "node": node}


def generate_trajectories(
    model: DiffusionModel,
    cfg: TeacherConfig,
    out_dir,
    samples: int,
    shard_size: int,
    progress: bool = True,
    runner=None,
    report=None,
) -> dict:
    """Write every missing shard of samples [0, samples) and the manifest; returns the manifest.

    ``runner(pending: list[(start, count)]) -> iterable of entries`` can fan shards out (e.g. Ray actors);
    by default shards are computed here, one after the other. ``report(done, total)``: called with done = 0 once the
    inputs are checked and work begins, then after each shard written by this call (``total``: the shards missing at
    the start), for progress lines; with it, no progress bar.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = header(model, cfg)
    old = read_manifest(out_dir)
    entries = {}
    if old is not None:
        if {k: old.get(k) for k in head} != head:
            raise OptstepsError(
                f"{out_dir} holds trajectories of another model or teacher config ({old.get('model')}, "
                f"{old.get('teacher')}); use another --out folder or delete it."
            )
        for e in old.get("shards", []):
            p = out_dir / e["file"]
            if p.is_file() and sha256_file(p) == e["sha256"]:
                entries[(e["start"], e["count"])] = e
    else:
        entries = recover_entries(out_dir, head, shard_ranges(samples, shard_size))
    pending = [r for r in shard_ranges(samples, shard_size) if r not in entries]

    def save_manifest():
        m = dict(
            head,
            samples=samples,
            shard_size=shard_size,
            shards=[entries[k] for k in sorted(entries) if k in set(shard_ranges(samples, shard_size))],
        )
        write_manifest(out_dir, m)
        return m

    if report is not None and pending:
        report(0, len(pending))
    if runner is None:
        it = pending
        if progress and pending and report is None:
            from tqdm import tqdm

            it = tqdm(pending, desc=f"teacher {model.name}", mininterval=2.0)
        done = (generate_shard(model, cfg, out_dir, start, count) for start, count in it)
    else:
        done = runner(pending)
    for i, e in enumerate(done, 1):
        entries[(e["start"], e["count"])] = e
        save_manifest()
        if report is not None:
            report(i, len(pending))
    return save_manifest()


def recover_entries(out_dir, head: dict, ranges) -> dict:
    """Manifest entries rebuilt from the shards' own metadata when the manifest is lost: every shard file of a
    wanted range whose metadata matches ``head`` and that loads completely with finite values is kept as is."""
    entries = {}
    wanted = set(ranges)
    for p in sorted(Path(out_dir).glob("shard_*.safetensors")):
        meta = read_shard_meta(p)
        if meta is None or {k: meta.get(k) for k in head} != head:
            continue
        key = (meta.get("start"), meta.get("count"))
        if key in wanted and p.name == shard_name(*key) and verify_shard(p) is not None:
            entries[key] = {"file": p.name, "start": key[0], "count": key[1], "sha256": sha256_file(p), "node": ""}
    return entries


def iter_shards(out_dir, model: DiffusionModel | None = None, cfg: TeacherConfig | None = None):
    """Yield the shards of ``out_dir`` (checked against ``model``/``cfg`` when given), one at a time."""
    m = read_manifest(out_dir)
    if m is None:
        name = model.name if model is not None else "MODEL"
        raise OptstepsError(
            f"no trajectories in {out_dir} (manifest.json missing); run `optsteps trajectories --model "
            f"{name} --out {out_dir}` (it reuses any shards there without recomputing them)."
        )
    if model is not None:
        if m["model"] != model.identity.get("model", model.name) or m["model_sha256"] != model.identity.get(
            "sha256", ""
        ):
            raise OptstepsError(
                f"{out_dir} holds trajectories of model {m['model']} ({m['model_sha256'][:12]}), not of "
                f"{model.name} ({model.identity.get('sha256', '')[:12]}); regenerate them for this model."
            )
    if cfg is not None and m["teacher"] != asdict(cfg):
        raise OptstepsError(
            f"{out_dir} was made with teacher {m['teacher']}, not {asdict(cfg)}; regenerate or use the same config."
        )
    for e in m["shards"]:
        shard = load_shard(out_dir, e)
        bad = [k for k, v in shard.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteError(
                f"shard {Path(out_dir) / e['file']} holds NaN/inf values in {bad} (made from NaN "
                "weights or guidance?); fix the cause, delete the shard and rerun `optsteps trajectories`."
            )
        yield shard
