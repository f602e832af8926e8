"""Data-prediction ODE solvers on arbitrary schedules: the spec (``optsteps.core.solver_spec``), one step of each
solver in scalar and batched-coefficient form (``updates``), and the K-evaluation samplers (``samplers``)."""

from optsteps.core.solver_spec import DEFAULT_ORDER, SOLVERS, SolverSpec, finite_order, step_orders
from optsteps.core.solvers.samplers import (
    Denoiser,
    SolverRun,
    node_coefficients,
    sample,
    sample_ddim,
    sample_dpmpp2m,
    sample_unipc,
)

__all__ = [
    "DEFAULT_ORDER",
    "Denoiser",
    "SOLVERS",
    "SolverRun",
    "SolverSpec",
    "finite_order",
    "node_coefficients",
    "sample",
    "sample_ddim",
    "sample_dpmpp2m",
    "sample_unipc",
    "step_orders",
]
