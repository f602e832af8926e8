"""Checks of the λ-optimizer's inputs: NFE, the per-step order pattern (default: UniPC-3's step orders
1-2-3…3-2-1, docs/algorithms.md §2.3), the error exponent p and truncNum T_c (default 3, and why)."""

from __future__ import annotations

import math

import numpy as np

from optsteps.core.solver_spec import SolverSpec, step_orders
from optsteps.errors import OptstepsError
from optsteps.io.limits import check as check_limit

_MAX_ORDER = 3


def default_orders(nfe: int) -> list[int]:
    """k_s = 1 for s ∈ {0, K−1}, 2 for s ∈ {1, K−2}, 3 otherwise (docs/algorithms.md §2.3): UniPC-3's step orders."""
    return step_orders(SolverSpec("unipc"), check_nfe(nfe))


def default_trunc(nfe: int) -> int:
    """truncNum T_c = 3 for every K (what the reference code hard-codes). The paper's comment says 0 for
    K ≥ 7 (docs/algorithms.md §2.5), but that objective's minimum is degenerate (module notes): reached, its
    UniPC-3 schedules on digits at K = 8 and 10 have 179× and 105× uniform-λ's L2 to the teacher (a weaker
    optimizer that stops near uniform-λ gets 0.90× and 0.67×), while T_c = 3 gives 0.64× and 0.78×
    (benchmarks/lambda_opt_trunc.py). Pass ``trunc=0`` for the paper's variant, with ``max_gap`` as a guard."""
    return 3


def check_nfe(nfe) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 2:
        raise OptstepsError(
            f"nfe = {nfe!r}: the λ-optimizer needs an integer NFE K ≥ 2 (at least one interior time); "
            "pass nfe=2 or more, or use a fixed schedule for K = 1."
        )
    return check_limit("MAX_LAMBDA_OPT_NFE", int(nfe), "the λ-optimizer's nfe")


def check_orders(orders, nfe: int) -> list[int]:
    """Validate a per-step order pattern: K entries, k_s ∈ {1, 2, 3}, k_s ≤ s + 1 (step s uses nodes s−k_s+1 … s)."""
    if orders is None:
        return default_orders(nfe)
    try:
        ks = [int(k) for k in orders]
    except (TypeError, ValueError):
        raise OptstepsError(
            f"orders = {orders!r} is not a list of integers; pass one order (1, 2 or 3) per step."
        ) from None
    if any(float(k) != float(o) for k, o in zip(ks, orders)):
        raise OptstepsError(f"orders = {list(orders)} must be integers 1, 2 or 3.")
    if len(ks) != nfe:
        raise OptstepsError(
            f"orders has {len(ks)} entries but NFE = {nfe}; pass exactly one order per step (K entries)."
        )
    for s, k in enumerate(ks):
        if not 1 <= k <= _MAX_ORDER:
            raise OptstepsError(
                f"orders[{s}] = {k} is not in 1..{_MAX_ORDER}; use orders 1, 2 or 3 (UniPC's predictor up to order 3)."
            )
        if k > s + 1:
            raise OptstepsError(
                f"orders[{s}] = {k} > s + 1 = {s + 1}: step {s} has only {s + 1} earlier model outputs; "
                f"lower it to at most {s + 1} (the default pattern is 1-2-3…3-2-1)."
            )
    return ks


def check_p(p) -> float:
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise OptstepsError(f"p = {p!r} is not a number; pass p = 1 (pixel models) or p = 2 (latent models).") from None
    if not math.isfinite(pf) or pf < 0:
        raise OptstepsError(
            f"p = {p!r} must be a finite number ≥ 0; pass p = 1 (pixel models) or p = 2 (latent models)."
        )
    return pf


def check_trunc(trunc, nfe: int) -> int:
    if trunc is None:
        return default_trunc(nfe)
    if isinstance(trunc, bool) or not isinstance(trunc, (int, np.integer)) or trunc < 0:
        raise OptstepsError(f"trunc = {trunc!r} must be an integer ≥ 0 (truncNum T_c); pass None for the default (3).")
    return int(trunc)


def check_lambdas(lambdas_full, min_size: int = 3) -> np.ndarray:
    lam = np.asarray(lambdas_full, dtype=np.float64).ravel()
    if lam.size < min_size:
        raise OptstepsError(f"the objective needs K + 1 ≥ 3 λ values (NFE ≥ 2), got {lam.size}.")
    if not np.all(np.isfinite(lam)):
        raise OptstepsError(
            "λ values must be finite; clip infinite endpoints into a window first "
            "(e.g. schedule_lambdas(schedule) clips to [−7, 7])."
        )
    if np.any(np.diff(lam) <= 0):
        i = int(np.argmin(np.diff(lam)))
        raise OptstepsError(
            f"λ must be strictly increasing (noise → data), but λ[{i}] = {lam[i]:.6g} ≥ λ[{i + 1}] = {lam[i + 1]:.6g}; "
            "pass λ ordered from λ(t_start) to λ(t_end) without duplicates."
        )
    return lam
