"""GITS-type additive DP: one-jump costs c(i → j) of a first-order step from the teacher state x̄_i to t_j
against x̄_j, and V(j, k) = min_i [c(j → i) + γ·V(i, k − 1)], γ = 1.15 — additive, hence exact.

With a start window (``start_window`` w): every start candidate r (index i_r ≤ w, state f_r·x̄_0 scaled or
raw, ``starts.start_candidates``) gets its own first-jump costs c_r(→ j) from its own state (one evaluation per
candidate other than (0, scaled), whose row is c(0 → ·)), and the value is min_r min_j [c_r(→ j) + γ·V(j, K − 1)]:
still additive, still exact over (start, path)."""

from __future__ import annotations

import math

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule
from optsteps.core.solvers.updates import ddim_step
from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.engine import Engine
from optsteps.optimizers.oss.options import OSS_SOLVERS, OSSOptions
from optsteps.optimizers.oss.problem import F64, check_choice, check_grid, check_nfe, student_spec
from optsteps.optimizers.oss.refine import TrueError
from optsteps.optimizers.oss.search import OSSResult
from optsteps.optimizers.oss.shards import Shards, numel
from optsteps.optimizers.oss.starts import check_start_window, start_candidates

GITS_GAMMA = 1.15


def gits_costs(
    teacher_t, teacher, denoiser, noise_schedule: NoiseSchedule, eval_batch_size: int | None = None
) -> tuple[torch.Tensor, int]:
    """One-jump costs C [N + 1, N + 1]: C[i, j] = batch-mean squared error (per element) of the first-order
    step from the teacher state x̄_i to t_j against x̄_j (inf where j ≤ i), and the evaluations per sample (N)."""
    t = check_grid(teacher_t, noise_schedule)
    n = len(t) - 1
    shards = Shards(teacher, n + 1)
    engine = Engine(denoiser, noise_schedule, t, 1, "ddim", True, None, eval_batch_size)
    sums = torch.zeros(n + 1, n + 1, dtype=F64)
    for shard in shards:
        S = shard.shape[1]
        feat = shard.shape[2:]
        idx = torch.arange(n)
        m = engine.evaluate(shard[:n].reshape(n * S, *feat), idx.repeat_interleave(S)).reshape(n, S, *feat)
        for i in range(n):
            j = torch.arange(i + 1, n + 1)
            shape = (-1,) + (1,) * (shard.dim() - 1)
            y = ddim_step(
                shard[i].to(F64),
                m[i].to(F64),
                engine.al_t[i],
                engine.si_t[i],
                engine.al_t[j].reshape(shape),
                engine.si_t[j].reshape(shape),
            )
            sums[i, i + 1 :] += (y - shard[i + 1 :].to(F64)).reshape(len(j), -1).pow(2).sum(1)
    cost = sums / (shards.total * numel(shards.feature_shape))
    cost[torch.ones(n + 1, n + 1, dtype=torch.bool).tril()] = float("inf")
    return cost, engine.evaluated // shards.total


def gits_start_costs(
    teacher_t,
    teacher,
    denoiser,
    noise_schedule: NoiseSchedule,
    starts,
    cost: torch.Tensor,
    eval_batch_size: int | None = None,
) -> tuple[torch.Tensor, int]:
    """First-jump costs [R, N + 1] of the start candidates ``starts``: the first-order step from f_r·x̄_0 at
    t[i_r] to t_j against x̄_j (inf where j ≤ i_r); the row of (0, scaled) is ``cost``'s row 0. Returns the costs
    and the evaluations per sample they took (one per other candidate)."""
    t = check_grid(teacher_t, noise_schedule)
    n = len(t) - 1
    shards = Shards(teacher, n + 1)
    engine = Engine(denoiser, noise_schedule, t, 1, "ddim", True, None, eval_batch_size)
    out = torch.full((len(starts), n + 1), float("inf"), dtype=F64)
    own = [r for r, st in enumerate(starts) if not (st.index == 0 and st.factor == 1.0)]
    for r, _st in enumerate(starts):
        if r not in own:
            out[r] = cost[0]
    if not own:
        return out, 0
    sums = torch.zeros(len(own), n + 1, dtype=F64)
    for shard in shards:
        S = shard.shape[1]
        feat = shard.shape[2:]
        shape = (-1,) + (1,) * (shard.dim() - 1)
        y = torch.stack([shard[0] * starts[r].factor for r in own])  # [R', S, ...]
        idx = torch.tensor([starts[r].index for r in own])
        m = engine.evaluate(y.reshape(len(own) * S, *feat), idx.repeat_interleave(S)).reshape(len(own), S, *feat)
        for a, r in enumerate(own):
            i = starts[r].index
            j = torch.arange(i + 1, n + 1)
            z = ddim_step(
                y[a].to(F64),
                m[a].to(F64),
                engine.al_t[i],
                engine.si_t[i],
                engine.al_t[j].reshape(shape),
                engine.si_t[j].reshape(shape),
            )
            sums[a, i + 1 :] += (z - shard[i + 1 :].to(F64)).reshape(len(j), -1).pow(2).sum(1)
    part = sums / (shards.total * numel(shards.feature_shape))
    for a, r in enumerate(own):
        out[r, starts[r].index + 1 :] = part[a, starts[r].index + 1 :]
    return out, engine.evaluated // shards.total


def gits_dp_starts(
    cost: torch.Tensor, start_costs: torch.Tensor, start_index, nfe: int, gamma: float = GITS_GAMMA
) -> tuple[float, list[int], int]:
    """min over start rows r of min_j [c_r(→ j) + γ·V(j, K − 1)] (V as in ``gits_dp``): (value, index path from
    the start's index, the winning row r)."""
    n = cost.shape[0] - 1
    nfe = check_nfe(nfe, n)
    c = cost.to(F64)
    value = torch.full((nfe, n + 1), float("inf"), dtype=F64)
    choice = torch.full((nfe, n + 1), -1, dtype=torch.long)
    value[0, n] = 0.0
    for k in range(1, nfe):
        best, arg = (c + gamma * value[k - 1][None, :]).min(1)
        value[k], choice[k] = best, arg
    totals, firsts = (start_costs.to(F64) + gamma * value[nfe - 1][None, :]).min(1)
    r = int(totals.argmin())
    if not math.isfinite(float(totals[r])):
        raise OptstepsError(f"no path of {nfe} steps from any start; check the cost matrices.")
    path = [int(start_index[r]), int(firsts[r])]
    for k in range(nfe - 1, 0, -1):
        path.append(int(choice[k, path[-1]]))
    return float(totals[r]), path, r


def gits_dp(cost: torch.Tensor, nfe: int, gamma: float = GITS_GAMMA) -> tuple[float, list[int]]:
    """V(j, k) = min_{i > j} [c(j → i) + γ·V(i, k − 1)], V(N, 0) = 0; returns (V(0, K), its index path)."""
    n = cost.shape[0] - 1
    nfe = check_nfe(nfe, n)
    c = cost.to(F64)
    inf = float("inf")
    value = torch.full((nfe + 1, n + 1), inf, dtype=F64)
    choice = torch.full((nfe + 1, n + 1), -1, dtype=torch.long)
    value[0, n] = 0.0
    for k in range(1, nfe + 1):
        total = c + gamma * value[k - 1][None, :]  # [j, i]
        best, arg = total.min(1)
        value[k], choice[k] = best, arg
    if not math.isfinite(float(value[nfe, 0])):
        raise OptstepsError(
            f"no path of {nfe} steps through the cost matrix; check that it has finite entries above the diagonal."
        )
    path = [0]
    for k in range(nfe, 0, -1):
        path.append(int(choice[k, path[-1]]))
    return float(value[nfe, 0]), path


def gits_objective(cost: torch.Tensor, path, gamma: float = GITS_GAMMA) -> float:
    """Σ_m γ^m c(i_m → i_{m+1}) — what ``gits_dp`` minimises."""
    return float(sum(gamma**m * float(cost[path[m], path[m + 1]]) for m in range(len(path) - 1)))


def gits_search(
    teacher_t,
    teacher,
    denoiser,
    noise_schedule: NoiseSchedule,
    nfe: int,
    solver: str,
    options: OSSOptions,
    *,
    costs: tuple[torch.Tensor, int] | None = None,
    start_costs: tuple | None = None,
    eval_batch_size: int | None = None,
    model: str = "",
    gamma: float = GITS_GAMMA,
    measure: bool = True,
) -> OSSResult:
    """GITS-type schedule from the teacher's one-jump costs; ``measure`` also runs the student along the path
    to record its true final error on the distillation samples (``distill_mse``, the batch-mean squared error
    per element at N). ``costs``: the (C, evaluations) that ``gits_costs``
    returns for this teacher, to share one cost matrix between solvers and NFEs (it depends on neither).
    ``options.start_window``: as in ``oss_search`` (the start index and rule searched exactly by
    ``gits_dp_starts``); the other options are OSS's. ``start_costs``: (starts, first-jump costs, evaluations) of
    ``start_candidates``/``gits_start_costs`` for a window at least this search's, to share them between solvers
    and NFEs as ``costs`` is shared (a start's first-jump costs depend on neither); its rows of starts inside this
    window are used."""
    check_choice(solver, OSS_SOLVERS, "student solver")
    t = check_grid(teacher_t, noise_schedule)
    nfe = check_nfe(nfe, len(t) - 1)
    if not gamma > 0:
        raise OptstepsError(f"gamma = {gamma}; the GITS discount must be positive (default {GITS_GAMMA}).")
    cost, evals = costs if costs is not None else gits_costs(t, teacher, denoiser, noise_schedule, eval_batch_size)
    if cost.shape != (len(t), len(t)):
        raise OptstepsError(
            f"the GITS cost matrix is {tuple(cost.shape)} but the teacher grid has {len(t)} times; "
            "compute it with gits_costs on this teacher."
        )
    window = check_start_window(options.start_window, len(t) - 1, nfe)
    rule = "scaled"
    if window == 0:
        value, path = gits_dp(cost, nfe, gamma)
    else:
        if start_costs is None:
            starts = start_candidates(noise_schedule, t, window)
            first, more = gits_start_costs(t, teacher, denoiser, noise_schedule, starts, cost, eval_batch_size)
        else:
            wide, wide_first, more = start_costs
            keep = [r for r, st in enumerate(wide) if st.index <= window]
            if max((st.index for st in wide), default=0) < window:
                raise OptstepsError(
                    f"the shared start costs cover starts up to index {max(st.index for st in wide)}, fewer than "
                    f"this search's window {window}; compute them for the widest window."
                )
            starts, first = [wide[r] for r in keep], wide_first[keep]
        evals += more
        value, path, r = gits_dp_starts(cost, first, [st.index for st in starts], nfe, gamma)
        rule = starts[r].rule
    extra = {
        "gits_objective": value,
        "gamma": gamma,
        "model_evals": int(evals),
        "teacher_indices": path,
        "teacher_steps": len(t) - 1,
        **student_spec(solver).json_fields(),
        "start_window": window,
        **({"start_state": "raw"} if rule == "raw" else {}),
    }
    runs = 0
    if measure:
        err = TrueError(denoiser, Shards(teacher, len(t)), t, noise_schedule, solver, None, True)
        extra["distill_mse"] = err(path, rule)
        runs = err.runs
    sched = Schedule(t[path], noise_schedule, model=model, method="gits", solver=solver, extra=extra)
    return OSSResult(
        path, sched, value, int(evals), list(path), extra.get("distill_mse", float("nan")), nfe * runs, runs, rule
    )
