"""ODE solvers for the probability-flow ODE on arbitrary schedules, in data-prediction form.

Exact solution between s and t (DPM-Solver++, Lu et al. 2022, eq. 9):
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x_θ(x_λ, λ) dλ.

- ``ddim``: order 1, x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x_θ(x_s)   (DDIM; Euler for flow models).
- ``dpmpp2m``: DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), D = (1 + 1/2r) x_θ^{(i)} − (1/2r) x_θ^{(i−1)}.
- ``unipc``: UniPC (Zhao et al. 2023, Alg. 2/3) with B(h) = e^{h} − 1 (``bh2``), predictor UniP-p and
  corrector UniC that reuses the next model evaluation (no extra NFE, none after the last step).

Every sampler spends exactly K model evaluations for a K-interval schedule. The ``denoiser`` is any
callable (x, t) → x̂_0 with t a float64 scalar tensor. Where λ is infinite at a node (α = 0 at the start
of a flow model, σ = 0 at a clean end), the steps touching it drop to order 1, as diffusers does.
"""
from __future__ import annotations

from typing import Callable

import torch

from optsteps.core.noise_schedules import NoiseSchedule, as_tensor
from optsteps.core.schedule import Schedule
from optsteps.errors import NonFiniteError, OptstepsError
from optsteps.core.solver_spec import SolverSpec, finite, finite_order, step_orders
from optsteps.core.solvers.updates import ddim_step, dpmpp2m_step, unipc_rhos, unipc_update

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def node_coefficients(noise_schedule: NoiseSchedule, t) -> tuple[list, list, list]:
    """α, σ, λ at the schedule's times as Python floats (float64)."""
    t = as_tensor(t)
    return (noise_schedule.alpha(t).tolist(), noise_schedule.sigma(t).tolist(), noise_schedule.lambda_(t).tolist())


def check_finite(x: torch.Tensor, i: int, schedule: Schedule, what: str = "the model output") -> None:
    """Raise ``NonFiniteError`` naming the step, its time and the likely causes if ``x`` holds NaN or ±inf."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = int((~finite).reshape(x.shape[0], -1).any(1).sum()) if x.dim() else 1
    raise NonFiniteError(
        f"{what} is not finite (NaN/inf) in {bad} of {x.shape[0] if x.dim() else 1} samples at step {i + 1} of "
        f"{schedule.nfe} (t = {schedule.t[min(i, schedule.nfe)]:.6g}); likely causes: a NaN/inf guidance scale, "
        "NaN weights (retrain or re-download the model), or a schedule outside the model's time range; nothing "
        "was written from this batch.")


def _prepare(schedule: Schedule, denoiser: Denoiser, times=None):
    """(α, σ, λ per node, the counted model). ``times``: the K + 1 times as 0-dim float64 tensors that may carry
    gradients (the polish, docs/algorithms.md §8); the coefficients are then tensors on the autograd graph."""
    if times is None:
        alphas, sigmas, lambdas = node_coefficients(schedule.noise_schedule, schedule.t)
        ts = schedule.timesteps_t
    else:
        ts = [torch.as_tensor(v, dtype=torch.float64) for v in times]
        if len(ts) != schedule.nfe + 1:
            raise OptstepsError(f"times has {len(ts)} entries but the schedule has {schedule.nfe + 1}; pass one per node.")
        ns = schedule.noise_schedule
        alphas, sigmas, lambdas = ([f(v) for v in ts] for f in (ns.alpha, ns.sigma, ns.lambda_))

    def model(x, i):
        x0 = denoiser(x, ts[i])
        check_finite(x0, i, schedule)
        return x0

    return alphas, sigmas, lambdas, model


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, callback=None, times=None) -> torch.Tensor:
    """DDIM / Euler: K first-order steps, K evaluations."""
    alphas, sigmas, lambdas, model = _prepare(schedule, denoiser, times)
    for i in range(schedule.nfe):
        x0 = model(x, i)
        if callback is not None:
            callback(i, x, x0)
        x = ddim_step(x, x0, alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1])
    return x


def sample_dpmpp2m(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, lower_order_final: bool = True,
                   callback=None, times=None) -> torch.Tensor:
    """DPM-Solver++(2M). First step order 1; the last step is order 1 when ``lower_order_final`` and K < 15
    (diffusers' rule) or when the schedule ends at σ = 0 (``step_orders``, ``finite_order``)."""
    alphas, sigmas, lambdas, model = _prepare(schedule, denoiser, times)
    orders = step_orders(SolverSpec("dpmpp2m", lower_order_final=lower_order_final), schedule.nfe)
    x0_prev = None
    for i in range(schedule.nfe):
        x0 = model(x, i)
        if callback is not None:
            callback(i, x, x0)
        order = finite_order(orders[i], lambdas, i)
        if order == 1:
            x = ddim_step(x, x0, alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1])
        else:
            x = dpmpp2m_step(x, x0, x0_prev, alphas[i + 1], sigmas[i], sigmas[i + 1],
                             lambdas[i + 1] - lambdas[i], lambdas[i] - lambdas[i - 1])
        x0_prev = x0
    return x


def sample_unipc(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, order: int = 3,
                 lower_order_final: bool = True, corrector: bool = True, callback=None, times=None) -> torch.Tensor:
    """UniPC-p with the UniC corrector (bh2, data prediction), exactly K evaluations.

    Step i uses order min(order, i + 1) (warm-up) and, with ``lower_order_final``, min(·, K − i)
    (``step_orders``). The corrector of step i runs after the evaluation at t_{i+1} with the same order as
    its predictor.
    """
    orders = step_orders(SolverSpec("unipc", order, lower_order_final, corrector), schedule.nfe)
    alphas, sigmas, lambdas, model = _prepare(schedule, denoiser, times)
    k = schedule.nfe
    history: list[torch.Tensor] = []  # x̂_0 at nodes i, i−1, …
    x_prev = None
    prev_order = 0
    for i in range(k):
        x0 = model(x, i)
        if callback is not None:
            callback(i, x, x0)
        if corrector and x_prev is not None:
            po = prev_order
            lam = [lambdas[i - 1 - j] for j in range(po)] + [lambdas[i]]
            if all(finite(v) for v in lam):
                rhos = unipc_rhos(lam[-1] - lam[0], [(lam[j] - lam[0]) / (lam[-1] - lam[0]) for j in range(1, po)], po, True)
                x = unipc_update(x_prev, history[:po], lam, alphas[i], sigmas[i - 1], sigmas[i], rhos, x0_new=x0)
        history = [x0] + history[: order - 1]
        this_order = finite_order(orders[i], lambdas, i)
        lam = [lambdas[i - j] for j in range(this_order)] + [lambdas[i + 1]]
        h = lam[-1] - lam[0]
        rhos = unipc_rhos(h, [(lam[j] - lam[0]) / h for j in range(1, this_order)], this_order, False) if this_order > 1 else None
        x_prev = x
        x = unipc_update(x, history[:this_order], lam, alphas[i + 1], sigmas[i], sigmas[i + 1], rhos)
        prev_order = this_order
    return x


def sample(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, solver: str | SolverSpec = "unipc",
           order: int | None = None, lower_order_final: bool = True, callback=None, times=None) -> torch.Tensor:
    """Integrate from t_0 to t_K; exactly K model evaluations.

    Args:
        denoiser: (x, t) → x̂_0, t a float64 scalar tensor.
        x: the state at t_0 (``DiffusionModel.initial_state`` of the noise).
        schedule: the K + 1 times.
        solver: a ``SolverSpec``, or a solver name ∈ {ddim, dpmpp2m, unipc} completed by ``order`` and
            ``lower_order_final`` (order ``None``: the solver's default).
        callback: ``callback(i, x_i, x̂_0_i)`` after each model evaluation.
        times: None, or the K + 1 times as 0-dim float64 tensors (equal in value to ``schedule.t``, or moved off
            it) that may require gradients: the run is then differentiable in them (the polish).
    """
    spec = solver if isinstance(solver, SolverSpec) else SolverSpec(solver, order, lower_order_final)
    check_finite(x, 0, schedule, "the initial state")
    if spec.name == "ddim":
        out = sample_ddim(denoiser, x, schedule, callback=callback, times=times)
    elif spec.name == "dpmpp2m":
        out = sample_dpmpp2m(denoiser, x, schedule, lower_order_final=spec.lower_order_final, callback=callback,
                             times=times)
    else:
        out = sample_unipc(denoiser, x, schedule, order=spec.order, lower_order_final=spec.lower_order_final,
                           corrector=spec.corrector, callback=callback, times=times)
    check_finite(out, schedule.nfe, schedule, "the final state")
    return out
