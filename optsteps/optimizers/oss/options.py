"""``OSSOptions``: the settings of the OSS and GITS searches, one frozen object (params.yaml ``oss``, assembled by
``optsteps.pipeline.config``). Each field's metadata is its validation rule (``pipeline.config.check_fields``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from optsteps.core.limits import MAX_SAMPLES, MAX_STEPS
from optsteps.core.solver_spec import SOLVERS

OSS_SOLVERS = SOLVERS  # the students: DDIM, DPM-Solver++(2M), UniPC-2 with its corrector
DISTANCES = ("state", "x0")  # what an intermediate DP candidate is compared with: x̄_j, or x̂₀ at t_j
MODES = ("batch", "per_sample")  # one DP on the batch-mean cost, or a DP per sample and the median path
OBJECTIVES = ("mse", "l2")  # mse: batch-mean squared error per element; l2: mean per-sample ‖x_K − x̄_N‖₂
FULL_WINDOW = "full"  # start_window: every teacher index that leaves room for K steps (w' = N − K)


def _window_rule(value) -> str | None:
    if value == FULL_WINDOW or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAMPLES):
        return None
    return f"use {FULL_WINDOW!r} (the start searched over the whole grid) or an integer in 0 … {MAX_SAMPLES:,}"


@dataclass(frozen=True)
class OSSOptions:
    """OSS/GITS distillation over the teacher shards (docs/algorithms.md §3)."""

    nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10], metadata={"range": (1, MAX_STEPS)})
    solvers: list = field(
        default_factory=lambda: ["unipc", "dpmpp2m"], metadata={"choices": OSS_SOLVERS, "nonempty": True}
    )
    samples: int = field(default=64, metadata={"range": (1, MAX_SAMPLES)})  # teacher samples the DP reads (the first S)
    distance: str = field(default="state", metadata={"choices": DISTANCES})
    mode: str = field(default="batch", metadata={"choices": MODES})
    refine: bool = True
    # single moves of ±1…±radius teacher indices (0: only pair moves; ≥ N: unbounded)
    refine_radius: int = field(default=4, metadata={"range": (0, MAX_SAMPLES)})
    # a hard cap on the refinement's model evaluations per sample and K (0: until no move improves)
    refine_max_evals: int = field(default=0, metadata={"range": (0, MAX_SAMPLES)})
    calibration: bool = False  # amplitude calibration tables
    gits: bool = True  # also the GITS schedules
    # teacher indices below t_max where the student may start (raw or scaled noise); 0 = t_max; "full": all N − K
    start_window: int | str = field(default=FULL_WINDOW, metadata={"check": _window_rule})
    objective: str = field(default="mse", metadata={"choices": OBJECTIVES})  # what the DP and the refinement minimise
    # teacher samples after the first ``samples`` that choose between the candidate schedules (0: no choice)
    heldout_samples: int = field(default=64, metadata={"range": (0, MAX_SAMPLES)})
    # with a start window: the search from t_max (window 0) runs too, and the held-out split picks the better start
    t_max_candidate: bool = True
