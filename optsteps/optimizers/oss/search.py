"""``oss_search``: the OSS schedule for one student and NFE — DP, then refinement — as a ``Schedule``; with a
start window the start index and the start-state rule are searched too (docs/algorithms.md §3)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.calibration import AmplitudeCalibration
from optsteps.optimizers.oss.dp import dp_batch_shards, dp_one_shard, start_rows, trace_paths, median_path
from optsteps.optimizers.oss.engine import Engine
from optsteps.optimizers.oss.options import DISTANCES, MODES, OBJECTIVES, OSS_SOLVERS, OSSOptions
from optsteps.optimizers.oss.problem import check_choice, check_grid, check_nfe, student_spec
from optsteps.optimizers.oss.shards import Shards, numel
from optsteps.optimizers.oss.starts import check_start_window, start_candidates, start_rule
from optsteps.optimizers.oss.refine import TrueError, refine_start


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
    start_state: str = "scaled"  # the start-state rule the student starts from at t[path[0]] (core.schedule)
    objective: str = "mse"  # what the search minimised: "mse" (= cost) or "l2" (mean per-sample L2 norm)
    objective_value: float = float("nan")  # its value along ``path`` (OSS; GITS: nan)


def oss_search(teacher_t, teacher, denoiser, noise_schedule: NoiseSchedule, nfe: int, solver: str,
               options: OSSOptions, *, eval_batch_size: int | None = None, model: str = "", pair_moves: bool = True,
               lower_order_final: bool = True) -> OSSResult:
    """Optimal Stepsize Distillation on a teacher trajectory (see the module docstring).

    teacher_t: the teacher grid t_0 = t_max > … > t_N; teacher: states [N + 1, S, ...] (x̄_0 = noise), a list of
    such shards, or a callable returning a fresh iterable of shards; denoiser: (x [B, ...], t scalar or [B]) →
    x̂_0; nfe: K, 1 ≤ K < N; solver: the student ("ddim" | "dpmpp2m" | "unipc" order 2); options: the search's
    settings (``OSSOptions``: distance, mode, refine, refine_radius, calibration — tables from the teacher —,
    start_window, objective; nfe/solvers/samples/gits are the pipeline's); eval_batch_size: rows per model
    call (None: a whole layer at once); pair_moves: see ``refine_path``; lower_order_final: as in
    ``solvers.sample``. start_window w ≥ 0: the student may start at any teacher index 0 … min(w, N − K), from
    the noise scaled to that time's σ or unscaled (``core.schedule`` start-state rules; the DP's layer 0 holds
    every such start, refinement moves the start too; w = 0: the start t_0 = t_max). objective: "mse"
    (batch-mean squared error per element at N) or "l2" (mean over samples of ‖x_K − x̄_N‖₂, what the
    evaluation reports), minimised by the DP's batch-mode layers, its last layer and the refinement.

    Returns an ``OSSResult``: the index path, the ``Schedule`` (method "oss", extra ``distill_mse`` = the
    batch-mean squared error per element at N on the distillation samples, ``model_evals`` = DP evaluations per sample), the cost and
    the evaluation count; ``dp_path``/``dp_cost`` are the DP's own answer before refinement. The schedule
    starts at t[path[0]] (its t[0]); ``"start_state": "raw"`` is recorded where the winner starts unscaled.
    ``cost``/``dp_cost`` stay the MSE whatever the objective; ``objective_value`` is the objective's value.
    """
    check_choice(solver, OSS_SOLVERS, "student solver")
    distance, mode, objective = options.distance, options.mode, options.objective
    refine, refine_radius = options.refine, options.refine_radius
    check_choice(distance, DISTANCES, "distance")
    check_choice(mode, MODES, "mode")
    check_choice(objective, OBJECTIVES, "objective")
    t = check_grid(teacher_t, noise_schedule)
    n = len(t) - 1
    nfe = check_nfe(nfe, n)
    window = check_start_window(options.start_window, n, nfe)
    starts = start_candidates(noise_schedule, t, window)
    if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
        raise OptstepsError(f"eval_batch_size = {eval_batch_size!r}; use a positive integer or None.")
    shards = Shards(teacher, n + 1)
    calibration = AmplitudeCalibration.from_teacher(shards) if options.calibration else None
    engine = Engine(denoiser, noise_schedule, t, nfe, solver, lower_order_final, calibration, eval_batch_size)
    error = TrueError(denoiser, shards, t, noise_schedule, solver, calibration, lower_order_final, objective=objective)
    per_sample = mode == "per_sample"
    rules = sorted({st.rule for st in starts}, key=("scaled", "raw").index)

    if per_sample:
        paths, rows = [], []
        for shard in shards:
            decisions, fin, idx = dp_one_shard(engine, shard, distance, True, starts, objective)
            last = fin.argmin(0)
            paths.append(trace_paths(decisions, idx[last], n))
            rows.append(start_rows(decisions, last, paths[-1]))
        dp_path = median_path(torch.cat(paths))
        # the rule of the median path: the better of the rules the per-sample paths chose (one run each)
        chosen = {starts[int(r)].rule for r in torch.cat(rows)}
        dp_rule = min((r for r in rules if r in chosen), key=lambda r: error(dp_path, r))
        dp_rule = start_rule(noise_schedule, t, dp_path[0], dp_rule)
        dp_obj = error(dp_path, dp_rule)
    else:
        if shards.single:
            (shard,) = list(shards)
            decisions, fin, idx = dp_one_shard(engine, shard, distance, False, starts, objective)
            fin = fin.sum(1) if objective == "mse" else fin.clamp(min=0).sqrt().sum(1)
        else:
            decisions, fin, idx = dp_batch_shards(engine, shards, distance, starts, objective)
        last = fin.argmin().reshape(1)
        traced = trace_paths(decisions, idx[last], n)
        dp_path = [int(v) for v in traced[0]]
        dp_rule = starts[int(start_rows(decisions, last, traced)[0])].rule
        dp_obj = float(fin.min()) / (shards.total * (numel(shards.feature_shape) if objective == "mse" else 1))
        error.record(dp_path, dp_rule, **{objective: dp_obj})
    dp_cost = error.value(dp_path, dp_rule, "mse")
    dp_evals = engine.evaluated // shards.total

    path, obj, rule = (refine_start(dp_path, dp_rule, error, window, rules, refine_radius, pair_moves) if refine
                       else (dp_path, dp_obj, dp_rule))
    cost = error.value(path, rule, "mse")
    sched = Schedule(
        t[path], noise_schedule, model=model, method="oss", solver=solver,
        extra={
            "distill_mse": float(cost), "model_evals": int(dp_evals), "teacher_indices": list(path),
            "teacher_steps": n, "dp_indices": list(dp_path), "dp_distill_mse": float(dp_cost),
            **student_spec(solver, lower_order_final).json_fields(),
            "distance": distance, "mode": mode, "refined": bool(refine), "calibrated": calibration is not None,
            "refine_model_evals": int(error.evals),
            "objective": objective, "start_window": window,
            **({"start_state": "raw"} if rule == "raw" else {}),
            **({"distill_l2": float(obj), "dp_distill_l2": float(dp_obj)} if objective == "l2" else {}),
        },
    )
    return OSSResult(list(path), sched, float(cost), int(dp_evals), list(dp_path), float(dp_cost),
                     int(error.evals), int(error.runs), rule, objective, float(obj))
