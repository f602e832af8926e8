"""Start candidates of the start window (docs/algorithms.md §3): a teacher index and a start-state rule
(``core.schedule``: the noise scaled to σ at that time, or raw σ_{t_max} ε), one DP node each."""

from __future__ import annotations

from dataclasses import dataclass

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import START_STATES, start_sigma
from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.options import FULL_WINDOW
from optsteps.optimizers.oss.problem import check_choice


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
    check_choice(rule, START_STATES, "start state")
    if rule == "raw" and start_factor(noise_schedule, t, index, "raw") == start_factor(
        noise_schedule, t, index, "scaled"
    ):
        return "scaled"
    return rule


def check_start_window(window, n: int, nfe: int) -> int:
    """The start window in teacher indices, clipped to N − K (the start must leave room for K steps); "full" is
    N − K itself: the start is searched over the whole grid."""
    if window == FULL_WINDOW:
        return n - nfe
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise OptstepsError(
            f"start_window = {window!r}; use an integer ≥ 0 (teacher indices below t_max; 0 = start at t_max) "
            f"or {FULL_WINDOW!r} (the whole grid)."
        )
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
