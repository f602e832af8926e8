"""The options of the λ-optimizer (``params.yaml`` section ``lambda_opt`` plus the solver's knobs), next to it;
assembled by ``optsteps.pipeline.config``. Field metadata are the validation rules (``pipeline.config.check_fields``;
``param: False`` marks a library option that params.yaml does not carry)."""

from __future__ import annotations

from dataclasses import dataclass, field

from optsteps.core.solver_spec import SOLVERS
from optsteps.io.limits import DEFAULTS as LIMITS
from optsteps.optimizers.lambda_opt.error_models import ERROR_MODELS

# the λ-optimizer is for few-step schedules (K = 100 takes ≈ 17 s of trust-constr on one core): the default bound on
# K, a work limit of ``optsteps.io.limits`` (raised for one run with OPTSTEPS_MAX_LAMBDA_OPT_NFE)
MAX_NFE = LIMITS["MAX_LAMBDA_OPT_NFE"]
DEFAULT_STARTS = ("uniform_lambda", "uniform_t", "karras")
DEFAULT_LAMBDA_FLOOR = -7.0
DEFAULT_LAMBDA_CEILING = 7.0
LIB = {"param": False}


@dataclass(frozen=True)
class LambdaOptOptions:
    """The λ-optimizer (Xue et al. 2024; docs/algorithms.md §2): the pipeline's grid (``nfe`` × ``solvers``), the
    error model ε = σ^p/α (``p``, ``error_model``), and the optimisation (§2.5-§2.9):

    ``trunc`` T_c (None: ``default_trunc``); ``orders`` the per-step order pattern (None: the student solver's);
    ``t_start`` / ``t_end`` (None: the family's defaults); the λ window's ``lambda_floor`` / ``lambda_ceiling``;
    ``starts`` of the multi-start; gaps ``min_gap`` (None: 10⁻³ of the uniform spacing) and ``max_gap`` (None: no
    bound); the budget ``maxiter`` / ``probe_iter``; trust-constr's ``gtol`` / ``xtol``; ``gradient`` "analytic" or
    "2-point" (benchmarks only)."""

    nfe: list = field(
        default_factory=lambda: [4, 5, 6, 8, 10],
        metadata={
            "range": (2, None),
            "limit": "MAX_LAMBDA_OPT_NFE",
            "hint": "the λ-optimizer places K ≥ 2 steps; longer schedules: use uniform-lambda",
        },
    )
    solvers: list = field(default_factory=lambda: ["unipc", "dpmpp2m"], metadata={"choices": SOLVERS, "nonempty": True})
    p: float = field(
        default=1.0, metadata={"range": (0.0, 100.0), "open": "lo", "hint": "1 for pixel models, 2 for latent models"}
    )
    error_model: str = field(default="analytic", metadata={"choices": ERROR_MODELS})
    trunc: int | None = field(default=None, metadata={**LIB, "range": (0, MAX_NFE)})
    orders: tuple | None = field(default=None, metadata=LIB)
    t_start: float | None = field(default=None, metadata=LIB)
    t_end: float | None = field(default=None, metadata=LIB)
    lambda_floor: float = field(default=DEFAULT_LAMBDA_FLOOR, metadata=LIB)
    lambda_ceiling: float = field(default=DEFAULT_LAMBDA_CEILING, metadata=LIB)
    starts: tuple = field(default=DEFAULT_STARTS, metadata=LIB)
    min_gap: float | None = field(default=None, metadata=LIB)
    max_gap: float | None = field(default=None, metadata=LIB)
    maxiter: int = field(default=200, metadata={**LIB, "range": (1, 100_000)})
    probe_iter: int = field(default=30, metadata={**LIB, "range": (1, 100_000)})
    gtol: float = field(default=1e-8, metadata=LIB)
    xtol: float = field(default=1e-10, metadata=LIB)
    gradient: str = field(default="analytic", metadata={**LIB, "choices": ("analytic", "2-point")})


__all__ = ["DEFAULT_LAMBDA_CEILING", "DEFAULT_LAMBDA_FLOOR", "DEFAULT_STARTS", "LambdaOptOptions", "MAX_NFE"]
