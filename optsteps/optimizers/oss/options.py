"""``OSSOptions``: the settings of the OSS and GITS searches, one frozen object (params.yaml ``oss``, read by
``pipeline/config.py``). Each field's rule sits in its metadata: ``{"range": (lo, hi)}`` (inclusive, None = open)
or ``{"choices": (...)}``; list fields carry the rule of their items (``"items"``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from optsteps.core.solver_spec import SOLVERS

OSS_SOLVERS = SOLVERS  # the students: DDIM, DPM-Solver++(2M), UniPC-2 with its corrector
DISTANCES = ("state", "x0")  # what an intermediate DP candidate is compared with: x̄_j, or x̂₀ at t_j
MODES = ("batch", "per_sample")  # one DP on the batch-mean cost, or a DP per sample and the median path
OBJECTIVES = ("mse", "l2")  # mse: batch-mean squared error per element; l2: mean per-sample ‖x_K − x̄_N‖₂


@dataclass(frozen=True)
class OSSOptions:
    """OSS/GITS distillation over the teacher shards (docs/algorithms.md §3)."""

    nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10], metadata={"items": {"range": (1, None)}})
    solvers: list = field(default_factory=lambda: ["unipc", "dpmpp2m"], metadata={"items": {"choices": OSS_SOLVERS}})
    samples: int = field(default=64, metadata={"range": (1, None)})  # teacher samples the DP reads (the first S)
    distance: str = field(default="state", metadata={"choices": DISTANCES})
    mode: str = field(default="batch", metadata={"choices": MODES})
    refine: bool = field(default=True, metadata={"choices": (True, False)})
    # single moves of ±1…±radius teacher indices (0: only pair moves; ≥ N: unbounded)
    refine_radius: int = field(default=4, metadata={"range": (0, None)})
    calibration: bool = field(default=False, metadata={"choices": (True, False)})  # amplitude calibration tables
    gits: bool = field(default=True, metadata={"choices": (True, False)})  # also the GITS schedules
    # teacher indices below t_max where the student may start (raw or scaled noise); 0 = t_max
    start_window: int = field(default=0, metadata={"range": (0, None)})
    objective: str = field(default="mse", metadata={"choices": OBJECTIVES})
