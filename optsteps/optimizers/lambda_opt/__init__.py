"""The λ-optimizer of Xue et al. (CVPR 2024, "Accelerating Diffusion Sampling with Optimized Time Steps",
arXiv 2402.17376), written from docs/algorithms.md §2.

The optimized half-log-SNR sequence λ_0 = λ_T < λ_1 < … < λ_K = λ_ε minimises an upper bound F(λ) on
the error that a multistep data-prediction exponential integrator (UniPC's predictor, orders 1-2-3…3-2-1)
accumulates from per-evaluation model errors ε_n. No model evaluation and no data enter: the model only
supplies the endpoints λ(t_start), λ(t_end) and the final map λ → t of its noise schedule.

Pieces (all pure functions on floats / numpy arrays):

- ``exp_moments``: H_m(h) = ∫_0^h u^m e^u du                                   (§2.4)
- ``step_weights`` / ``lagrange_weights``: w_{s,j} = ∫_{λ_s}^{λ_{s+1}} e^λ ℓ_{s,j}(λ) dλ  (§2.4)
- ``default_orders``: k_s = 1, 2, 3, …, 3, 2, 1                               (§2.3)
- ``analytic_eps``: ε_n = σ_n^p/α_n with VP-equivalent α, σ of λ              (§2.2)
- ``objective`` / ``objective_and_grad``: F(λ) and its exact gradient          (§2.5)
- ``LambdaOptOptions``: the options (params.yaml ``lambda_opt`` and the solver's knobs)
- ``optimize_lambdas``: trust-constr with one LinearConstraint, multi-start    (§2.6, §2.7)
- ``lambda_opt_schedule``: the ``Schedule`` for a noise schedule               (§2.8, §2.9)
- ``empirical_eps`` / ``fit_p``: a measured error model instead of σ^p/α.

λ window. Where an endpoint λ is infinite (rectified flow at t = 1 and t = 0, VP at t = 0) or beyond the
floor / ceiling (the cosine VP schedule reaches λ ≈ −10 at t = 1), the optimisation runs on the clipped
window [max(λ(t_start), floor), min(λ(t_end), ceiling)], defaults floor = −7 and ceiling = +7
(``DEFAULT_LAMBDA_FLOOR`` / ``DEFAULT_LAMBDA_CEILING``). The schedule's endpoint *times* stay exactly
t_start and t_end; only the interior times are t(λ_i). For the linear / scaled-linear VP schedules
(λ ∈ [−5.1, 4.6] and [−2.7, 3.5]) and EDM (λ ∈ [−4.4, 6.2]) the defaults clip nothing.

Optimisation notes (the measurements behind them: docs/algorithms.md §2.5 and §2.7):

- F is only piecewise smooth: at the optimum several accumulated node sums c_n = ε_n Σ_s w_{s,n} are
  exactly 0 (kinks), so F is minimised in its equivalent smooth epigraph form (``_EpigraphProblem``): same
  objective, same minimisers, min F_smooth + Σ_n τ_n subject to τ_n ≥ ±c_n.
- With T_c ≥ 3 (the default) the problem is well posed: its minimum is not degenerate.
- With T_c = 0 (the paper author's choice for K ≥ 7; ``trunc=0``) the signed per-node accumulation lets F cancel
  the ±1/gap weights of nearly coincident nodes: F's minimum is degenerate, a collapsed first gap followed by one
  huge step, and a better optimizer of that objective gives a worse schedule. ``max_gap`` (every λ gap ≤ max_gap)
  keeps it out of that region; a lower gap bound does not.
"""

from optsteps.optimizers.lambda_opt.error_models import (
    ERROR_MODELS,
    EmpiricalEps,
    PFit,
    analytic_eps,
    analytic_eps_dlog,
    empirical_eps,
    fit_p,
)
from optsteps.optimizers.lambda_opt.objective import objective, objective_and_grad
from optsteps.optimizers.lambda_opt.options import MAX_NFE, LambdaOptOptions
from optsteps.optimizers.lambda_opt.orders import check_orders, default_orders, default_trunc
from optsteps.optimizers.lambda_opt.schedule import (
    DEFAULT_LAMBDA_CEILING,
    DEFAULT_LAMBDA_FLOOR,
    lambda_opt_schedule,
    lambda_window,
    schedule_lambdas,
)
from optsteps.optimizers.lambda_opt.solve import DEFAULT_STARTS, LambdaOptResult, optimize_lambdas, start_lambdas
from optsteps.optimizers.lambda_opt.weights import exp_moments, lagrange_weights, step_weights

__all__ = [
    "DEFAULT_LAMBDA_CEILING",
    "DEFAULT_LAMBDA_FLOOR",
    "DEFAULT_STARTS",
    "ERROR_MODELS",
    "EmpiricalEps",
    "LambdaOptOptions",
    "LambdaOptResult",
    "MAX_NFE",
    "PFit",
    "analytic_eps",
    "analytic_eps_dlog",
    "check_orders",
    "default_orders",
    "default_trunc",
    "empirical_eps",
    "exp_moments",
    "fit_p",
    "lagrange_weights",
    "lambda_opt_schedule",
    "lambda_window",
    "objective",
    "objective_and_grad",
    "optimize_lambdas",
    "schedule_lambdas",
    "start_lambdas",
    "step_weights",
]
