"""Inputs of the OSS and GITS searches: checks of the teacher grid and NFE, the shard reader (one tensor,
a list of shards or a lazy loader), the student the searches run (``student_spec``), the objective, and the
start candidates of the start window (``start_candidates``; docs/algorithms.md §3)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import START_STATES, start_sigma
from optsteps.core.solvers import DEFAULT_ORDER, SolverSpec
from optsteps.errors import OptstepsError
from optsteps.core.solver_spec import SOLVERS as OSS_SOLVERS  # the one list of solver names


DISTANCES = ("state", "x0")


MODES = ("batch", "per_sample")


OBJECTIVES = ("mse", "l2")  # mse: batch-mean squared error per element; l2: mean per-sample ‖x_K − x̄_N‖₂


F64 = torch.float64


STUDENT_MAX_ORDER = 2  # a DP node carries one previous model output, so students run at order ≤ 2


def student_spec(solver: str, lower_order_final: bool = True) -> SolverSpec:
    """The student OSS and GITS search with and record in the schedule: ``solver`` at order ≤ 2 (DDIM,
    DPM-Solver++(2M), UniPC-2 with its corrector)."""
    _check_choice(solver, OSS_SOLVERS, "solver")
    return SolverSpec(solver, min(DEFAULT_ORDER[solver], STUDENT_MAX_ORDER), lower_order_final)


def _check_grid(teacher_t, noise_schedule: NoiseSchedule) -> torch.Tensor:
    try:
        t = torch.as_tensor(teacher_t, dtype=F64).flatten()
    except (TypeError, ValueError):
        raise OptstepsError(f"teacher grid must be a list of numbers, got {teacher_t!r}.") from None
    if t.numel() < 3:
        raise OptstepsError(f"the teacher grid has {t.numel()} times; OSS needs N ≥ 2 teacher steps (N + 1 times).")
    if not torch.isfinite(t).all():
        raise OptstepsError("the teacher grid contains NaN or inf; pass finite times.")
    bad = torch.nonzero(t[:-1] <= t[1:]).flatten()
    if bad.numel():
        i = int(bad[0])
        raise OptstepsError(
            f"the teacher grid must be strictly descending (t_0 = t_max … t_N), but t[{i}] = {t[i].item():.6g} ≤ "
            f"t[{i + 1}] = {t[i + 1].item():.6g}; pass the teacher's own times from noise to data."
        )
    noise_schedule.check_t(t, "teacher grid")
    return t


def _check_nfe(nfe, n: int) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise OptstepsError(f"nfe must be an integer, got {nfe!r}.")
    if nfe < 1:
        raise OptstepsError(f"nfe = {nfe}; the student needs at least 1 step (1 ≤ nfe < N = {n}).")
    if nfe >= n:
        raise OptstepsError(
            f"nfe = {nfe} but the teacher has only N = {n} steps; choosing {nfe} of them is no search. "
            f"Use nfe < {n} or a finer teacher grid."
        )
    return nfe


def _check_choice(value, options, what):
    if value not in options:
        raise OptstepsError(f"unknown {what} {value!r}; use one of {', '.join(options)}.")


class _Shards:
    """Re-iterable view of the teacher states: one tensor, a list/tuple of tensors, or a callable."""

    def __init__(self, teacher, n_times: int):
        self.n_times = n_times
        if isinstance(teacher, torch.Tensor):
            self._get, self.single = (lambda: [teacher]), True
        elif isinstance(teacher, (list, tuple)):
            if not teacher:
                raise OptstepsError("no teacher shards given; pass a tensor [N + 1, S, ...] or a non-empty list.")
            self._get, self.single = (lambda: teacher), len(teacher) == 1
        elif callable(teacher):
            self._get, self.single = teacher, False
        else:
            try:
                it = iter(teacher)
            except TypeError:
                raise OptstepsError(
                    f"teacher states must be a tensor [N + 1, S, ...], a list of such shards or a callable "
                    f"returning an iterable of shards; got {type(teacher).__name__}."
                ) from None
            if it is teacher:
                raise OptstepsError(
                    "the teacher shards were given as a one-shot iterator, but the search passes over them "
                    "several times; pass a list of shards or a zero-argument callable that returns a fresh iterator."
                )
            self._get, self.single = (lambda: teacher), False
        self.feature_shape = None
        self.total = 0

    def __iter__(self):
        total = 0
        count = 0
        for shard in self._get():
            count += 1
            if not isinstance(shard, torch.Tensor):
                raise OptstepsError(f"teacher shard {count - 1} is a {type(shard).__name__}, not a tensor [N + 1, S, ...].")
            if shard.dim() < 3 or shard.shape[0] != self.n_times or shard.shape[1] < 1:
                raise OptstepsError(
                    f"teacher shard {count - 1} has shape {tuple(shard.shape)}, but the grid has {self.n_times} times: "
                    f"the states must be [N + 1 = {self.n_times}, S, ...] (x̄_0 the noise … x̄_N), with S ≥ 1 samples "
                    f"and at least one feature dimension."
                )
            if self.feature_shape is None:
                self.feature_shape = tuple(shard.shape[2:])
            elif tuple(shard.shape[2:]) != self.feature_shape:
                raise OptstepsError(
                    f"teacher shard {count - 1} has sample shape {tuple(shard.shape[2:])} but earlier shards have "
                    f"{self.feature_shape}; all shards must hold the same kind of samples."
                )
            total += shard.shape[1]
            yield shard
        if count == 0:
            raise OptstepsError("the teacher shards are empty; pass at least one shard [N + 1, S, ...].")
        self.total = total


def _numel(shape) -> int:
    return int(math.prod(shape)) if shape else 1


@dataclass(frozen=True)
class Start:
    """A start candidate: teacher index ``index``, start-state rule ``rule`` (``core.schedule.START_STATES``) and
    the factor f of its state f·x̄_0 (x̄_0 = σ_{t_0} ε, the teacher's first state)."""

    index: int
    rule: str
    factor: float


def start_factor(noise_schedule: NoiseSchedule, t, index: int, rule: str) -> float:
    """f with f·x̄_0 = the sampler's state at t[index] under ``rule`` (``core.schedule.initial_state``), for
    x̄_0 = σ_{t[0]} ε: σ_{t[index]}/σ_{t[0]} (scaled) or σ_{t_max}/σ_{t[0]} (raw). Exactly 1.0 at (0, scaled)."""
    return start_sigma(noise_schedule, float(t[index]), rule) / start_sigma(noise_schedule, float(t[0]))


def start_rule(noise_schedule: NoiseSchedule, t, index: int, rule: str) -> str:
    """``rule``, or "scaled" where the raw state equals the scaled one (at t_max): one name per start state."""
    _check_choice(rule, START_STATES, "start state")
    if rule == "raw" and start_factor(noise_schedule, t, index, "raw") == start_factor(noise_schedule, t, index, "scaled"):
        return "scaled"
    return rule


def check_start_window(window, n: int, nfe: int) -> int:
    """The start window in teacher indices, clipped to N − K (the start must leave room for K steps)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise OptstepsError(f"start_window = {window!r}; use an integer ≥ 0 (teacher indices below t_max; 0 = start "
                            "at t_max).")
    return min(window, n - nfe)


def start_candidates(noise_schedule: NoiseSchedule, t, window: int) -> list[Start]:
    """Every distinct start of the window, ascending by index: (j, scaled) and (j, raw) for j = 0 … window,
    raw dropped where it equals scaled (at t_max). Window 0: the single start (0, scaled), factor 1.0."""
    out = []
    for j in range(window + 1):
        for rule in START_STATES:
            if start_rule(noise_schedule, t, j, rule) == rule:
                out.append(Start(j, rule, start_factor(noise_schedule, t, j, rule)))
    return out
