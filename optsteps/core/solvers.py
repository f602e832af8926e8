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

import math
from typing import Callable

import torch

from optsteps.errors import OptstepsError
from optsteps.core.noise_schedules import NoiseSchedule, as_tensor
from optsteps.core.schedule import Schedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SOLVERS = ("ddim", "dpmpp2m", "unipc")


def node_coefficients(noise_schedule: NoiseSchedule, t) -> tuple[list, list, list]:
    """α, σ, λ at the schedule's times as Python floats (float64)."""
    t = as_tensor(t)
    return (noise_schedule.alpha(t).tolist(), noise_schedule.sigma(t).tolist(), noise_schedule.lambda_(t).tolist())


def ddim_step(x, x0, alpha_s, sigma_s, alpha_t, sigma_t):
    """x_t = (σ_t/σ_s) x_s + (α_t − α_s σ_t/σ_s) x̂_0 — the order-1 step, finite even where λ = ±∞."""
    return (sigma_t / sigma_s) * x + (alpha_t - alpha_s * sigma_t / sigma_s) * x0


def dpmpp2m_step(x, x0, x0_prev, alpha_t, sigma_s, sigma_t, h, h_prev):
    """DPM-Solver++(2M): r = h_prev/h, D = (1 + 1/(2r)) x̂_0 − 1/(2r) x̂_0^{prev}, x_t = (σ_t/σ_s) x − α_t(e^{−h} − 1) D."""
    r = h_prev / h
    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    return (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * d


def unipc_b(h: float, order: int) -> list[float]:
    """UniPC's b-vector for B(h) = e^h − 1 in data prediction: b_k = k!·φ_{k+1}(−h)/B(−h)-style recursion.

    With hh = −h: φ̃_1 = e^{hh} − 1, φ̃_{k+1} = φ̃_k/hh − 1/(k+1)!  (starting from φ̃_1/hh − 1), b_k = k! φ̃_{k+1}/B.
    """
    hh = -h
    phi1 = math.expm1(hh)
    b_h = phi1
    phik = phi1 / hh - 1
    fact = 1
    out = []
    for k in range(1, order + 1):
        out.append(phik * fact / b_h)
        fact *= k + 1
        phik = phik / hh - 1 / fact
    return out


def unipc_rhos(h: float, rks: list[float], order: int, corrector: bool) -> torch.Tensor:
    """Solve R ρ = b for UniP (order−1 unknowns, ρ = ½ at order 2) or UniC (order unknowns, ρ = ½ at order 1).

    R_{k,j} = r_j^{k−1} with r the ratios (λ_{i−j} − λ_i)/h of the step's history, and r = 1 for the new point.
    """
    b = torch.tensor(unipc_b(h, order), dtype=torch.float64)
    r = torch.tensor(list(rks) + [1.0], dtype=torch.float64)
    big_r = torch.stack([r ** (k - 1) for k in range(1, order + 1)])
    if corrector:
        return torch.tensor([0.5], dtype=torch.float64) if order == 1 else torch.linalg.solve(big_r, b)
    if order == 2:
        return torch.tensor([0.5], dtype=torch.float64)
    return torch.linalg.solve(big_r[:-1, :-1], b[:-1])


def unipc_update(x, history, lam, alpha_t, sigma_s, sigma_t, rhos, x0_new=None):
    """One UniPC update from node i to t (predictor if ``x0_new`` is None, else corrector).

    history = [x̂_0 at node i, at i−1, …]; lam = [λ_i, λ_{i−1}, …, λ_t];
    x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) x̂_0^{(i)} − α_t B(h) Σ_k ρ_k D_k,   D_k = (x̂_0^{(i−k)} − x̂_0^{(i)})/r_k.
    """
    h = lam[-1] - lam[0]
    m0 = history[0]
    phi1 = math.expm1(-h)
    out = (sigma_t / sigma_s) * x - alpha_t * phi1 * m0
    res = 0
    for k in range(1, len(history)):
        r_k = (lam[k] - lam[0]) / h
        res = res + float(rhos[k - 1]) * (history[k] - m0) / r_k
    if x0_new is not None:
        res = res + float(rhos[-1]) * (x0_new - m0)
    if isinstance(res, torch.Tensor):
        out = out - alpha_t * phi1 * res
    return out


def _finite_order(order: int, lambdas: list[float], i: int) -> int:
    """Largest order ≤ ``order`` whose stencil λ_{i−order+1} … λ_{i+1} is finite."""
    while order > 1 and not all(math.isfinite(v) for v in lambdas[i - order + 1 : i + 2]):
        order -= 1
    return order


def _prepare(schedule: Schedule, denoiser: Denoiser):
    alphas, sigmas, lambdas = node_coefficients(schedule.noise_schedule, schedule.t)
    ts = schedule.timesteps_t

    def model(x, i):
        return denoiser(x, ts[i])

    return alphas, sigmas, lambdas, model


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, callback=None) -> torch.Tensor:
    """DDIM / Euler: K first-order steps, K evaluations."""
    alphas, sigmas, lambdas, model = _prepare(schedule, denoiser)
    for i in range(schedule.nfe):
        x0 = model(x, i)
        if callback is not None:
            callback(i, x, x0)
        x = ddim_step(x, x0, alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1])
    return x


def sample_dpmpp2m(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, lower_order_final: bool = True,
                   callback=None) -> torch.Tensor:
    """DPM-Solver++(2M). First step order 1; the last step is order 1 when ``lower_order_final`` and K < 15
    (diffusers' rule) or when the schedule ends at σ = 0."""
    alphas, sigmas, lambdas, model = _prepare(schedule, denoiser)
    k = schedule.nfe
    x0_prev = None
    for i in range(k):
        x0 = model(x, i)
        if callback is not None:
            callback(i, x, x0)
        order = 1 if i == 0 or (i == k - 1 and lower_order_final and k < 15) else 2
        order = _finite_order(order, lambdas, i)
        if order == 1:
            x = ddim_step(x, x0, alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1])
        else:
            x = dpmpp2m_step(x, x0, x0_prev, alphas[i + 1], sigmas[i], sigmas[i + 1],
                             lambdas[i + 1] - lambdas[i], lambdas[i] - lambdas[i - 1])
        x0_prev = x0
    return x


def sample_unipc(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, order: int = 3,
                 lower_order_final: bool = True, corrector: bool = True, callback=None) -> torch.Tensor:
    """UniPC-p with the UniC corrector (bh2, data prediction), exactly K evaluations.

    Step i uses order min(order, i + 1) (warm-up) and, with ``lower_order_final``, min(·, K − i).
    The corrector of step i runs after the evaluation at t_{i+1} with the same order as its predictor.
    """
    if order not in (1, 2, 3):
        raise OptstepsError(f"UniPC order {order} is not supported; use 1, 2 or 3.")
    alphas, sigmas, lambdas, model = _prepare(schedule, denoiser)
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
            if all(math.isfinite(v) for v in lam):
                rhos = unipc_rhos(lam[-1] - lam[0], [(lam[j] - lam[0]) / (lam[-1] - lam[0]) for j in range(1, po)], po, True)
                x = unipc_update(x_prev, history[:po], lam, alphas[i], sigmas[i - 1], sigmas[i], rhos, x0_new=x0)
        history = [x0] + history[: order - 1]
        this_order = min(order, i + 1, k - i if lower_order_final else order)
        this_order = _finite_order(this_order, lambdas, i)
        lam = [lambdas[i - j] for j in range(this_order)] + [lambdas[i + 1]]
        h = lam[-1] - lam[0]
        rhos = unipc_rhos(h, [(lam[j] - lam[0]) / h for j in range(1, this_order)], this_order, False) if this_order > 1 else None
        x_prev = x
        x = unipc_update(x, history[:this_order], lam, alphas[i + 1], sigmas[i], sigmas[i + 1], rhos)
        prev_order = this_order
    return x


def sample(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, solver: str = "unipc", order: int | None = None,
           lower_order_final: bool = True, callback=None) -> torch.Tensor:
    """Integrate from t_0 to t_K with ``solver`` ∈ {ddim, dpmpp2m, unipc}; exactly K model evaluations."""
    if solver == "ddim":
        return sample_ddim(denoiser, x, schedule, callback=callback)
    if solver == "dpmpp2m":
        return sample_dpmpp2m(denoiser, x, schedule, lower_order_final=lower_order_final, callback=callback)
    if solver == "unipc":
        return sample_unipc(denoiser, x, schedule, order=order or 3, lower_order_final=lower_order_final,
                            callback=callback)
    raise OptstepsError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}.")
