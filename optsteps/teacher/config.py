"""The teacher's settings (``params.yaml`` section ``teacher``), next to the code that runs the teacher."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher whose trajectories the optimizers read: N steps of ``solver`` on a ``schedule`` grid."""
    solver: str = "unipc"
    steps: int = 100
    schedule: str = "uniform-lambda"
    guidance: float = 1.0
    seed: int = 0
