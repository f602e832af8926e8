"""The options of the OSS and GITS searches (``params.yaml`` section ``oss``), next to the searches; assembled by
``optsteps.pipeline.config``. Field metadata are the validation rules (``pipeline.config.check_fields``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from optsteps.core.limits import MAX_SAMPLES, MAX_STEPS
from optsteps.core.solver_spec import SOLVERS
from optsteps.optimizers.oss.inputs import DISTANCES, MODES, OBJECTIVES


@dataclass(frozen=True)
class OSSOptions:
    """OSS/GITS distillation over the teacher shards (docs/algorithms.md §3)."""
    nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10], metadata={"range": (1, MAX_STEPS)})
    solvers: list = field(default_factory=lambda: ["unipc", "dpmpp2m"],
                          metadata={"choices": SOLVERS, "nonempty": True})
    samples: int = field(default=64, metadata={"range": (1, MAX_SAMPLES)})  # teacher samples the DP reads (the first S)
    distance: str = field(default="state", metadata={"choices": DISTANCES})
    mode: str = field(default="batch", metadata={"choices": MODES})
    refine: bool = True
    refine_radius: int = field(default=4, metadata={"range": (0, MAX_SAMPLES)})  # single moves of ±1…±radius indices
    calibration: bool = False
    gits: bool = True
    start_window: int = field(default=0, metadata={"range": (0, MAX_SAMPLES)})  # indices below t_max to start; 0 = t_max
    objective: str = field(default="mse", metadata={"choices": OBJECTIVES})  # what the DP and the refinement minimise


__all__ = ["OSSOptions"]
