"""The problem an OSS/GITS search is given: checks of the teacher grid, the NFE and the named choices, and the
student it runs (``student_spec``; docs/algorithms.md §3)."""

from __future__ import annotations

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.solvers import DEFAULT_ORDER, SolverSpec
from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.options import OSS_SOLVERS

F64 = torch.float64

STUDENT_MAX_ORDER = 2  # a DP node carries one previous model output, so students run at order ≤ 2


def check_choice(value, choices, what):
    if value not in choices:
        raise OptstepsError(f"unknown {what} {value!r}; use one of {', '.join(choices)}.")


def student_spec(solver: str, lower_order_final: bool = True) -> SolverSpec:
    """The student OSS and GITS search with and record in the schedule: ``solver`` at order ≤ 2 (DDIM,
    DPM-Solver++(2M), UniPC-2 with its corrector)."""
    check_choice(solver, OSS_SOLVERS, "solver")
    return SolverSpec(solver, min(DEFAULT_ORDER[solver], STUDENT_MAX_ORDER), lower_order_final)


def check_grid(teacher_t, noise_schedule: NoiseSchedule) -> torch.Tensor:
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


def check_nfe(nfe, n: int) -> int:
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
