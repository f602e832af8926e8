"""The solver specification: which solver a schedule is run with, at which order, with which final-step rule.

A ``SolverSpec`` is a value. It is the one place that says which local order every step of a K-step run
has (docs/algorithms.md §1.4): the samplers, the OSS engine, the λ-optimizer's order pattern, export and
``apply`` all call ``step_orders``. A schedule made for a solver carries its spec (``Schedule.solver_spec``).

In a schedule's JSON the spec is the ``"solver"`` field plus, only where they differ from the solver's
default, ``"order"``, ``"lower_order_final"`` and ``"corrector"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from optsteps.errors import OptstepsError

SOLVERS = ("ddim", "dpmpp2m", "unipc")
DEFAULT_ORDER = {"ddim": 1, "dpmpp2m": 2, "unipc": 3}  # the order each solver runs at unless told otherwise
FINAL_ORDER_BELOW = 15  # DPM-Solver++ lowers its last step only for K < 15 (diffusers' lower_order_final rule)
SPEC_FIELDS = ("order", "lower_order_final", "corrector")  # the schedule-JSON fields a spec may add


@dataclass(frozen=True)
class SolverSpec:
    """A solver and its options.

    Args:
        name: ``"ddim"`` (order 1; Euler for flow models), ``"dpmpp2m"`` (DPM-Solver++(2M), order ≤ 2) or
            ``"unipc"`` (UniPC bh2 predictor–corrector, order ≤ 3).
        order: the highest local order; ``None`` takes the solver's default (1, 2, 3).
        lower_order_final: lower the order of the last steps (UniPC: step s runs at most order K − s;
            DPM-Solver++: the last step is first order when K < 15), as diffusers does.
        corrector: UniPC's UniC corrector, which reuses the next model evaluation (no extra NFE).
    """

    name: str
    order: int | None = None
    lower_order_final: bool = True
    corrector: bool = True

    def __post_init__(self):
        if self.name not in SOLVERS:
            raise OptstepsError(f"unknown solver {self.name!r}; use one of {', '.join(SOLVERS)}.")
        order = DEFAULT_ORDER[self.name] if self.order is None else self.order
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= DEFAULT_ORDER[self.name]:
            allowed = [str(k) for k in range(1, DEFAULT_ORDER[self.name] + 1)]
            choices = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
            raise OptstepsError(f"{self.name} order {self.order!r} is not supported; use {choices}.")
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "lower_order_final", bool(self.lower_order_final))
        object.__setattr__(self, "corrector", bool(self.corrector))

    def step_orders(self, nfe: int) -> list[int]:
        return step_orders(self, nfe)

    def json_fields(self) -> dict:
        """The schedule-JSON fields beyond ``"solver"``: only those that differ from the defaults."""
        out = {}
        if self.order != DEFAULT_ORDER[self.name]:
            out["order"] = self.order
        if not self.lower_order_final:
            out["lower_order_final"] = False
        if self.name == "unipc" and not self.corrector:
            out["corrector"] = False
        return out

    @classmethod
    def from_fields(cls, solver: str, fields: dict) -> SolverSpec:
        """The spec a schedule JSON describes (``"solver"`` and the optional ``SPEC_FIELDS``)."""
        return cls(solver, fields.get("order"), fields.get("lower_order_final", True), fields.get("corrector", True))


def step_orders(spec: SolverSpec, nfe: int) -> list[int]:
    """Local order of steps s = 0 … K−1 (warm-up from order 1, lower-order final steps).

    DDIM 1…1; DPM-Solver++(2M) 1, 2, …, 2 and a first-order last step when K < 15; UniPC-p
    min(p, s + 1, K − s) (1-2-3…3-2-1). Steps that touch an infinite λ drop further (``finite_order``).
    """
    p, lof = spec.order, spec.lower_order_final
    if spec.name == "dpmpp2m":
        return [min(p, 1 if s == 0 or (s == nfe - 1 and lof and nfe < FINAL_ORDER_BELOW) else 2) for s in range(nfe)]
    return [min(p, s + 1, nfe - s if lof else p) for s in range(nfe)]


def finite(v) -> bool:
    """v is finite: a float or a 0-dim tensor (read without touching its autograd graph)."""
    return math.isfinite(v) if isinstance(v, float) else bool(torch.isfinite(torch.as_tensor(v)))


def finite_order(order: int, lambdas, i: int) -> int:
    """Largest order ≤ ``order`` whose stencil λ_{i−order+1} … λ_{i+1} is finite (α = 0 or σ = 0 at an end)."""
    while order > 1 and not all(finite(v) for v in lambdas[i - order + 1 : i + 2]):
        order -= 1
    return order
