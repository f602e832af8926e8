"""Seeded sampling of a model along a schedule, batched, and the L2 to a teacher."""

from __future__ import annotations

import torch

from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import SolverSpec
from optsteps.core.solvers import sample
from optsteps.models.base import DiffusionModel


def generate(
    model: DiffusionModel,
    schedule: Schedule,
    solver: str | SolverSpec,
    n: int,
    seed: int,
    start: int = 0,
    guidance: float = 1.0,
    batch_size: int = 500,
    order: int | None = None,
) -> torch.Tensor:
    """Samples start..start+n−1 (noise and labels depend only on seed and index), started by the schedule's
    start-state rule (``core.schedule.initial_state``) and integrated along ``schedule``
    with ``solver`` (a ``SolverSpec``, or a name completed by ``order``; see ``solvers.sample``)."""
    outs = []
    for b in range(start, start + n, batch_size):
        m = min(batch_size, start + n - b)
        x = model.initial_state(model.noise(m, seed, b), schedule)  # its start-state rule (core.schedule)
        den = model.denoiser(model.labels(m, b), guidance=guidance)
        outs.append(sample(den, x, schedule, solver, order=order))
    return torch.cat(outs)


def l2_to_teacher(x: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean over samples of the per-sample L2 distance ‖x − x_teacher‖₂."""
    return (x - teacher).flatten(1).norm(dim=1).mean().item()
