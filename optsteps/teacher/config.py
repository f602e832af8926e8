"""The teacher's settings (``params.yaml`` section ``teacher``), next to the code that runs the teacher."""

from __future__ import annotations

from dataclasses import dataclass, field

from optsteps.core.limits import MAX_GUIDANCE, MAX_STEPS, baseline_kind_rule
from optsteps.core.solver_spec import SOLVERS


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher whose trajectories the optimizers read: N steps of ``solver`` on a ``schedule`` grid."""

    solver: str = field(default="unipc", metadata={"choices": SOLVERS})
    steps: int = field(default=100, metadata={"range": (2, MAX_STEPS)})
    schedule: str = field(default="uniform-lambda", metadata={"check": baseline_kind_rule})  # a baseline kind
    guidance: float = field(default=1.0, metadata={"range": (0.0, MAX_GUIDANCE)})
    seed: int = 0
