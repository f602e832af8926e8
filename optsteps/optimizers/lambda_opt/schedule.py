"""The λ-optimized ``Schedule`` for a noise schedule: the λ window (floor / ceiling for infinite ends),
the optimisation, and the map back to times t(λ_i) (docs/algorithms.md §2.8, §2.9)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from optsteps.core.solver_spec import SolverSpec
from optsteps.errors import OptstepsError
from optsteps.optimizers.lambda_opt.error_models import ERROR_MODELS
from optsteps.optimizers.lambda_opt.options import DEFAULT_LAMBDA_CEILING, DEFAULT_LAMBDA_FLOOR, LambdaOptOptions
from optsteps.optimizers.lambda_opt.orders import check_nfe
from optsteps.optimizers.lambda_opt.solve import optimize_lambdas


def lambda_window(
    noise_schedule, t_start: float, t_end: float, lambda_floor: float | None = None, lambda_ceiling: float | None = None
) -> tuple[float, float]:
    """[max(λ(t_start), floor), min(λ(t_end), ceiling)], defaults floor = −7 and ceiling = +7."""
    floor = DEFAULT_LAMBDA_FLOOR if lambda_floor is None else float(lambda_floor)
    ceiling = DEFAULT_LAMBDA_CEILING if lambda_ceiling is None else float(lambda_ceiling)
    lo = max(float(noise_schedule.lambda_(t_start)), floor)
    hi = min(float(noise_schedule.lambda_(t_end)), ceiling)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptstepsError(
            f"the λ window [{lo}, {hi}] is not finite after clipping; pass finite lambda_floor / lambda_ceiling."
        )
    if not hi > lo:
        raise OptstepsError(
            f"the clipped λ window [{lo:.4g}, {hi:.4g}] is empty (t_start = {t_start:.6g}, t_end = {t_end:.6g}, "
            f"floor = {floor}, ceiling = {ceiling}); "
            "pass lambda_floor < lambda_ceiling that bracket λ(t_start) < λ(t_end)."
        )
    return lo, hi


def schedule_lambdas(schedule, lambda_floor: float | None = None, lambda_ceiling: float | None = None) -> np.ndarray:
    """λ_0 … λ_K of any ``Schedule`` clipped into its λ window (``lambda_window``), ready for ``objective``.

    The endpoints become the window's; interior λ outside the window are clamped to it (a clamp that
    creates duplicates makes ``objective`` refuse the schedule).
    """
    lam = schedule.lambdas.numpy().astype(np.float64)
    lo, hi = lambda_window(schedule.noise_schedule, schedule.t[0], schedule.t[-1], lambda_floor, lambda_ceiling)
    lam = np.clip(lam, lo, hi)
    lam[0], lam[-1] = lo, hi
    return lam


def lambda_opt_schedule(
    noise_schedule,
    nfe: int,
    solver: str | SolverSpec,
    options: LambdaOptOptions | None = None,
    *,
    eps_fn: Callable | None = None,
    model: str = "",
    progress: Callable[[int, int], None] | None = None,
):
    """The λ-optimized ``Schedule`` (method "lambda-opt") for ``noise_schedule`` and NFE K (docs/algorithms.md §2).

    ``solver`` is the student (its step orders are the default order pattern); ``options`` (``LambdaOptOptions``)
    the error model and the optimisation. Endpoints default to the family's default_t_start / default_t_end. The
    optimisation runs on the λ window of ``lambda_window`` (floor −7, ceiling +7 by default: flow endpoints are
    ±∞, cosine VP reaches ≈ −10); interior times are t(λ_i) with the schedule's exact inverse, endpoint times are
    exactly t_start, t_end.
    ``error_model``: "analytic" (ε = σ^p/α) or "empirical" (then ``eps_fn`` = ``empirical_eps(...)``).
    Extra fields: objective, objective_uniform_lambda, p, trunc, wall_time_s, orders, lambda_window,
    error_model, best_start. ``progress(done, budget)``: the optimiser's iterations (``optimize_lambdas``).
    """
    from optsteps.core.schedule import from_lambdas

    o = LambdaOptOptions() if options is None else options
    error_model, orders = o.error_model, o.orders
    nfe = check_nfe(nfe)
    spec = solver if isinstance(solver, SolverSpec) else SolverSpec(solver)
    if orders is None:
        orders = spec.step_orders(nfe)
    if error_model not in ERROR_MODELS:
        raise OptstepsError(
            f"unknown error_model {error_model!r}; "
            "use 'analytic' (σ^p/α) or 'empirical' (with eps_fn=empirical_eps(...))."
        )
    if error_model == "empirical" and eps_fn is None:
        raise OptstepsError(
            "error_model='empirical' needs eps_fn; build it with empirical_eps(teacher_lambdas, errors)."
        )
    if error_model == "analytic" and eps_fn is not None:
        raise OptstepsError("eps_fn was given with error_model='analytic'; pass error_model='empirical' to use it.")
    ts = noise_schedule.default_t_start() if o.t_start is None else float(o.t_start)
    te = noise_schedule.default_t_end() if o.t_end is None else float(o.t_end)
    noise_schedule.check_t([ts, te], "t_start/t_end")
    if not ts > te:
        raise OptstepsError(
            f"t_start = {ts:.6g} must be greater than t_end = {te:.6g} (sampling runs noise → data); swap them."
        )
    lo, hi = lambda_window(noise_schedule, ts, te, o.lambda_floor, o.lambda_ceiling)
    res = optimize_lambdas(
        lo,
        hi,
        nfe,
        dataclasses.replace(o, orders=orders, t_start=ts, t_end=te),
        eps_fn=eps_fn,
        noise_schedule=noise_schedule,
        progress=progress,
    )
    extra = {
        "objective": res.objective,
        "objective_uniform_lambda": res.objective_uniform_lambda,
        "p": res.p,
        "trunc": res.trunc,
        "wall_time_s": res.wall_time_s,
        "orders": list(res.orders),
        "lambda_window": [lo, hi],
        "error_model": error_model,
        "best_start": res.best_start,
        **({"max_gap": float(o.max_gap)} if o.max_gap is not None else {}),
    }
    extra.update(spec.json_fields())
    return from_lambdas(
        res.lambdas, noise_schedule, ts, te, model=model, method="lambda-opt", solver=spec.name, extra=extra
    )
