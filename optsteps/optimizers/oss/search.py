"""``oss_search``: the OSS schedule for one student and NFE — DP, then refinement — as a ``Schedule``."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.calibration import AmplitudeCalibration
from optsteps.optimizers.oss.dp import _dp_batch_shards, _dp_one_shard, _trace, median_path
from optsteps.optimizers.oss.engine import _Engine
from optsteps.optimizers.oss.inputs import (
    DISTANCES,
    MODES,
    OSS_SOLVERS,
    _check_choice,
    _check_grid,
    _check_nfe,
    _numel,
    _Shards,
    student_spec,
)
from optsteps.optimizers.oss.refine import _TrueError, refine_path


@dataclass
class OSSResult:
    path: list  # teacher indices 0 = i_0 < … < i_K = N
    schedule: Schedule
    cost: float  # batch-mean squared error per element at N of the student along ``path`` (GITS: its objective)
    model_evals: int  # model evaluations per sample spent by the search (DP or GITS cost matrix)
    dp_path: list = field(default_factory=list)  # the DP's own path (before refinement / median)
    dp_cost: float = float("nan")  # its true final error
    refine_evals: int = 0  # per-sample evaluations of the student runs for refinement / verification
    refine_runs: int = 0


def oss_search(teacher_t, teacher, denoiser, noise_schedule: NoiseSchedule, nfe: int, solver: str = "ddim",
               distance: str = "state", mode: str = "batch", refine: bool = True, refine_radius: int | None = None,
               pair_moves: bool = True,
               calibration: AmplitudeCalibration | bool | None = None, lower_order_final: bool = True,
               eval_batch_size: int | None = None, model: str = "") -> OSSResult:
    """Optimal Stepsize Distillation on a teacher trajectory (see the module docstring).

    teacher_t: the teacher grid t_0 = t_max > … > t_N; teacher: states [N + 1, S, ...] (x̄_0 = noise), a list of
    such shards, or a callable returning a fresh iterable of shards; denoiser: (x [B, ...], t scalar or [B]) →
    x̂_0; nfe: K, 1 ≤ K < N; solver: the student ("ddim" | "dpmpp2m" | "unipc" order 2); distance: "state" |
    "x0"; mode: "batch" | "per_sample"; calibration: None, True (tables from the teacher) or an
    ``AmplitudeCalibration``; eval_batch_size: rows per model call (None: a whole layer at once);
    refine / refine_radius / pair_moves: see ``refine_path``; lower_order_final: as in ``solvers.sample``.

    Returns an ``OSSResult``: the index path, the ``Schedule`` (method "oss", extra ``distill_mse`` = the
    batch-mean squared error per element at N on the distillation samples, ``model_evals`` = DP evaluations per sample), the cost and
    the evaluation count; ``dp_path``/``dp_cost`` are the DP's own answer before refinement.
    """
    _check_choice(solver, OSS_SOLVERS, "student solver")
    _check_choice(distance, DISTANCES, "distance")
    _check_choice(mode, MODES, "mode")
    t = _check_grid(teacher_t, noise_schedule)
    n = len(t) - 1
    nfe = _check_nfe(nfe, n)
    if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
        raise OptstepsError(f"eval_batch_size = {eval_batch_size!r}; use a positive integer or None.")
    shards = _Shards(teacher, n + 1)
    if calibration is True:
        calibration = AmplitudeCalibration.from_teacher(shards)
    elif calibration is False:
        calibration = None
    engine = _Engine(denoiser, noise_schedule, t, nfe, solver, lower_order_final, calibration, eval_batch_size)
    error = _TrueError(denoiser, shards, t, noise_schedule, solver, calibration, lower_order_final)
    per_sample = mode == "per_sample"

    if per_sample:
        paths = []
        for shard in shards:
            decisions, fin, idx = _dp_one_shard(engine, shard, distance, True)
            paths.append(_trace(decisions, idx[fin.argmin(0)], n))
        dp_path = median_path(torch.cat(paths))
        dp_cost = error(dp_path)
    else:
        if shards.single:
            (shard,) = list(shards)
            decisions, fin, idx = _dp_one_shard(engine, shard, distance, False)
            fin = fin.sum(1)
        else:
            decisions, fin, idx = _dp_batch_shards(engine, shards, distance)
        dp_path = [int(v) for v in _trace(decisions, idx[fin.argmin()].reshape(1), n)[0]]
        dp_cost = float(fin.min()) / (shards.total * _numel(shards.feature_shape))
        error.cache[tuple(dp_path)] = dp_cost
    dp_evals = engine.evaluated // shards.total

    path, cost = (refine_path(dp_path, error, refine_radius, pair_moves) if refine else (dp_path, dp_cost))
    sched = Schedule(
        t[path], noise_schedule, model=model, method="oss", solver=solver,
        extra={
            "distill_mse": float(cost), "model_evals": int(dp_evals), "teacher_indices": list(path),
            "teacher_steps": n, "dp_indices": list(dp_path), "dp_distill_mse": float(dp_cost),
            **student_spec(solver, lower_order_final).json_fields(),
            "distance": distance, "mode": mode, "refined": bool(refine), "calibrated": calibration is not None,
            "refine_model_evals": int(error.evals),
        },
    )
    return OSSResult(list(path), sched, float(cost), int(dp_evals), list(dp_path), float(dp_cost),
                     int(error.evals), int(error.runs))
