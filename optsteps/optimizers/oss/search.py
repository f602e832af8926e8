"""``oss_search``: the OSS schedule for one student and NFE — DP, then refinement — as a ``Schedule``; with a
start window the start index and the start-state rule are searched too (docs/algorithms.md §3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.calibration import AmplitudeCalibration
from optsteps.optimizers.oss.dp import dp_batch_shards, dp_one_shard, median_path, start_rows, trace_paths
from optsteps.optimizers.oss.engine import Engine
from optsteps.optimizers.oss.options import DISTANCES, MODES, OBJECTIVES, OSS_SOLVERS, OSSOptions
from optsteps.optimizers.oss.problem import check_choice, check_grid, check_nfe, student_spec
from optsteps.optimizers.oss.refine import TrueError, refine_start
from optsteps.optimizers.oss.shards import Shards, numel
from optsteps.optimizers.oss.starts import check_start_window, start_candidates, start_rule


@dataclass
class OSSResult:
    path: list  # teacher indices 0 = i_0 < … < i_K = N
    schedule: Schedule
    cost: float  # batch-mean squared error per element at N of the student along ``path`` (GITS: its objective)
    model_evals: int  # model evaluations per sample spent by the search (the DP, shared by ``dp_nfes``; GITS: costs)
    dp_path: list = field(default_factory=list)  # the DP's own path (before refinement / median)
    dp_cost: float = float("nan")  # its true final error
    refine_evals: int = 0  # per-sample evaluations of the student runs for refinement / verification
    refine_runs: int = 0
    start_state: str = "scaled"  # the start-state rule the student starts from at t[path[0]] (core.schedule)
    objective: str = "mse"  # what the search minimised: "mse" (= cost) or "l2" (mean per-sample L2 norm)
    objective_value: float = float("nan")  # its value along ``path`` (OSS; GITS: nan)
    dp_nfes: list = field(default_factory=list)  # the K that one DP served (``model_evals`` is spent once for all)
    prefix_reuse: int = 0  # per-sample model evaluations the refinement took from its prefix cache (not spent)
    dp_start_state: str = "scaled"  # the start-state rule of ``dp_path``

    def dp_schedule(self, teacher_t) -> Schedule:
        """The DP's own answer (``dp_path`` from ``dp_start_state``, before refinement) as a schedule: the same
        record with its indices, start state and ``distill_mse`` = ``dp_cost``."""
        extra = {k: v for k, v in self.schedule.extra.items() if k != "start_state"}
        extra.update(teacher_indices=list(self.dp_path), distill_mse=float(self.dp_cost), candidate="dp")
        if self.dp_start_state == "raw":
            extra["start_state"] = "raw"
        s = self.schedule
        return Schedule(
            torch.as_tensor(teacher_t, dtype=torch.float64)[list(self.dp_path)],
            s.noise_schedule,
            model=s.model,
            method=s.method,
            solver=s.solver,
            extra=extra,
        )


def oss_search(
    teacher_t,
    teacher,
    denoiser,
    noise_schedule: NoiseSchedule,
    nfe: int,
    solver: str,
    options: OSSOptions,
    *,
    eval_batch_size: int | None = None,
    model: str = "",
    pair_moves: bool = True,
    lower_order_final: bool = True,
) -> OSSResult:
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
    batch-mean squared error per element at N on the distillation samples, ``model_evals`` = DP evaluations per
    sample), the cost and the evaluation count; ``dp_path``/``dp_cost`` are the DP's own answer before refinement. The
    schedule
    starts at t[path[0]] (its t[0]); ``"start_state": "raw"`` is recorded where the winner starts unscaled.
    ``cost``/``dp_cost`` stay the MSE whatever the objective; ``objective_value`` is the objective's value.
    """
    return oss_search_all(
        teacher_t,
        teacher,
        denoiser,
        noise_schedule,
        [nfe],
        solver,
        options,
        eval_batch_size=eval_batch_size,
        model=model,
        pair_moves=pair_moves,
        lower_order_final=lower_order_final,
    )[nfe]


def oss_search_all(
    teacher_t,
    teacher,
    denoiser,
    noise_schedule: NoiseSchedule,
    nfes,
    solver: str,
    options: OSSOptions,
    *,
    eval_batch_size: int | None = None,
    model: str = "",
    pair_moves: bool = True,
    lower_order_final: bool = True,
) -> dict[int, OSSResult]:
    """``oss_search`` for every K of ``nfes`` with one DP (state distance; the x0 distance runs one per K) and
    one refinement memory: the same schedules as one ``oss_search`` per K, bit for bit, for fewer evaluations.

    Layers 0 … K − 2 of a K-step student are those of every longer one (their states and decisions compare
    the same predecessors; only the last step's order and its target N depend on K), so one DP to max K whose
    layer k holds every node that leaves room for the shortest student still going on serves every K: K's
    last step goes from layer K − 1 to N. Evaluations per sample: ``counts.dp_evaluations_all``. Refinement
    runs of all K share a prefix cache: a student's i-th model input depends only on its start rule and first
    i + 1 indices, so no (rule, prefix) is evaluated twice (``prefix_reuse`` counts what it saved).

    Returns {K: OSSResult}; each result's ``model_evals`` is the shared DP's count and ``dp_nfes`` the K it served.
    """
    check_choice(solver, OSS_SOLVERS, "student solver")
    distance, mode, objective = options.distance, options.mode, options.objective
    check_choice(distance, DISTANCES, "distance")
    check_choice(mode, MODES, "mode")
    check_choice(objective, OBJECTIVES, "objective")
    t = check_grid(teacher_t, noise_schedule)
    n = len(t) - 1
    if isinstance(nfes, int) or not len(nfes):
        raise OptstepsError(f"nfes = {nfes!r}; pass a non-empty list of step counts.")
    nfes = sorted({check_nfe(k, n) for k in nfes})
    for k in nfes:
        check_start_window(options.start_window, n, k)
    if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
        raise OptstepsError(f"eval_batch_size = {eval_batch_size!r}; use a positive integer or None.")
    shards = Shards(teacher, n + 1)
    calibration = AmplitudeCalibration.from_teacher(shards) if options.calibration else None
    error = TrueError(denoiser, shards, t, noise_schedule, solver, calibration, lower_order_final, objective=objective)
    # x0 candidates go through the model in batches that depend on the layer's width: one DP per K keeps them
    groups = [nfes] if distance == "state" else [[k] for k in nfes]
    out = {}
    for group in groups:
        dp = _dp(
            t,
            shards,
            denoiser,
            noise_schedule,
            group,
            solver,
            options,
            calibration,
            eval_batch_size,
            lower_order_final,
            error,
        )
        for k in group:
            out[k] = _finish(
                t,
                noise_schedule,
                k,
                solver,
                options,
                error,
                dp,
                group,
                pair_moves,
                lower_order_final,
                calibration,
                model,
            )
    return out


def _dp(
    t, shards, denoiser, noise_schedule, nfes, solver, options, calibration, eval_batch_size, lower_order_final, error
):
    """One DP for the K of ``nfes``: {K: (dp_path, dp_rule, dp_obj, refine rows it spent)} and its evaluations."""
    n = len(t) - 1
    starts = start_candidates(noise_schedule, t, check_start_window(options.start_window, n, nfes[0]))
    engine = Engine(denoiser, noise_schedule, t, nfes[-1], solver, lower_order_final, calibration, eval_batch_size)
    distance, objective = options.distance, options.objective
    found = {}
    if options.mode == "per_sample":
        per_k = {k: ([], []) for k in nfes}
        for shard in shards:
            decisions, finals = dp_one_shard(engine, shard, distance, True, starts, objective, nfes)
            for k in nfes:
                fin, idx = finals[k]
                last = fin.argmin(0)
                paths = trace_paths(decisions[: k - 1], idx[last], n)
                per_k[k][0].append(paths)
                per_k[k][1].append(start_rows(decisions[: k - 1], last, paths))
        for k in nfes:
            rows_before, runs_before = error.rows, error.runs
            window = check_start_window(options.start_window, n, k)
            rules = sorted({st.rule for st in start_candidates(noise_schedule, t, window)}, key=("scaled", "raw").index)
            dp_path = median_path(torch.cat(per_k[k][0]))
            # the rule of the median path: the better of the rules the per-sample paths chose (one run each)
            chosen = {starts[int(r)].rule for r in torch.cat(per_k[k][1])}
            dp_rule = min((r for r in rules if r in chosen), key=lambda r: error(dp_path, r))
            dp_rule = start_rule(noise_schedule, t, dp_path[0], dp_rule)
            found[k] = (dp_path, dp_rule, error(dp_path, dp_rule), error.rows - rows_before, error.runs - runs_before)
    else:
        if shards.single:
            (shard,) = list(shards)
            decisions, finals = dp_one_shard(engine, shard, distance, False, starts, objective, nfes)
            finals = {
                k: (fin.sum(1) if objective == "mse" else fin.clamp(min=0).sqrt().sum(1), idx)
                for k, (fin, idx) in finals.items()
            }
        else:
            decisions, finals = dp_batch_shards(engine, shards, distance, starts, objective, nfes)
        for k in nfes:
            fin, idx = finals[k]
            last = fin.argmin().reshape(1)
            traced = trace_paths(decisions[: k - 1], idx[last], n)
            dp_path = [int(v) for v in traced[0]]
            dp_rule = starts[int(start_rows(decisions[: k - 1], last, traced)[0])].rule
            dp_obj = float(fin.min()) / (shards.total * (numel(shards.feature_shape) if objective == "mse" else 1))
            error.record(dp_path, dp_rule, **{objective: dp_obj})
            found[k] = (dp_path, dp_rule, dp_obj, 0, 0)
    return found, engine.evaluated // shards.total


def _finish(
    t, noise_schedule, nfe, solver, options, error, dp, group, pair_moves, lower_order_final, calibration, model
) -> OSSResult:
    """K's DP answer refined (``refine_start``) and written as a schedule."""
    n = len(t) - 1
    found, dp_evals = dp
    dp_path, dp_rule, dp_obj, rows, runs = found[nfe]  # rows, runs: spent by the DP's own choice of the rule
    rows_before, runs_before, reuse_before = error.rows - rows, error.runs - runs, error.reused_rows
    window = check_start_window(options.start_window, n, nfe)
    rules = sorted({st.rule for st in start_candidates(noise_schedule, t, window)}, key=("scaled", "raw").index)
    dp_cost = error.value(dp_path, dp_rule, "mse")
    path, obj, rule = (
        refine_start(
            dp_path,
            dp_rule,
            error,
            window,
            rules,
            options.refine_radius,
            pair_moves,
            max_evals=options.refine_max_evals,
        )
        if options.refine
        else (dp_path, dp_obj, dp_rule)
    )
    cost = error.value(path, rule, "mse")
    refine_evals = (error.rows - rows_before) // max(error.shards.total, 1)
    reused = (error.reused_rows - reuse_before) // max(error.shards.total, 1)
    sched = Schedule(
        t[path],
        noise_schedule,
        model=model,
        method="oss",
        solver=solver,
        extra={
            "distill_mse": float(cost),
            "model_evals": int(dp_evals),
            "teacher_indices": list(path),
            "teacher_steps": n,
            "dp_indices": list(dp_path),
            "dp_distill_mse": float(dp_cost),
            **student_spec(solver, lower_order_final).json_fields(),
            "distance": options.distance,
            "mode": options.mode,
            "refined": bool(options.refine),
            "calibrated": calibration is not None,
            "refine_model_evals": int(refine_evals),
            "objective": options.objective,
            "start_window": window,
            **({"dp_nfe": list(group)} if len(group) > 1 else {}),
            **({"refine_reused_evals": int(reused)} if reused else {}),
            **({"start_state": "raw"} if rule == "raw" else {}),
            **({"distill_l2": float(obj), "dp_distill_l2": float(dp_obj)} if options.objective == "l2" else {}),
        },
    )
    return OSSResult(
        list(path),
        sched,
        float(cost),
        int(dp_evals),
        list(dp_path),
        float(dp_cost),
        int(refine_evals),
        int(error.runs - runs_before),
        rule,
        options.objective,
        float(obj),
        list(group),
        int(reused),
        dp_rule,
    )
