"""One step of each solver, in two forms side by side: the scalar-coefficient step the samplers take
(``*_step``, ``unipc_update``) and the batched coefficient form the OSS engine uses to cost many
candidate steps at once (``*_coefficients``). Both come from the same update (docs/algorithms.md §1):

    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D,   h = λ_t − λ_s,

with D = x̂_0 (order 1; DDIM), D = (1 + 1/2r) x̂_0 − (1/2r) x̂_0^{prev}, r = h_prev/h (DPM-Solver++(2M),
Lu et al. 2022, Alg. 2), or UniPC's D = x̂_0 + B(h)/(e^{−h}−1)·Σ_k ρ_k D_k (Zhao et al. 2023, Alg. 2/3,
B(h) = e^h − 1). A coefficient form gives y = a·x + b·x̂_0 + c·x̂_0^{prev} with the same a, b, c as its
step; tests/test_solvers.py checks the two forms agree.
"""

from __future__ import annotations

import math

import torch


def _expm1(x):
    """e^x − 1 of a float (math) or of a tensor (torch, keeps the autograd graph: the polish differentiates the
    samplers with respect to their times)."""
    return torch.expm1(x) if isinstance(x, torch.Tensor) else math.expm1(x)


def _vector(values) -> torch.Tensor:
    """A float64 vector of floats or 0-dim tensors (stacked, so that gradients flow through tensor entries)."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values])


def _coefficient(v):
    """A solved coefficient as a float, or as a tensor where it carries a gradient."""
    return v if isinstance(v, torch.Tensor) and v.requires_grad else float(v)


# ---- order 1: DDIM / Euler ---------------------------------------------------------------------------
def ddim_step(x, x0, alpha_s, sigma_s, alpha_t, sigma_t):
    """x_t = (σ_t/σ_s) x_s + (α_t − α_s σ_t/σ_s) x̂_0 — the order-1 step, finite even where λ = ±∞."""
    return (sigma_t / sigma_s) * x + (alpha_t - alpha_s * sigma_t / sigma_s) * x0


def ddim_coefficients(alpha_s, sigma_s, alpha_t, sigma_t):
    """(a, b) of ``ddim_step`` = a·x + b·x̂_0: a = σ_t/σ_s, b = α_t − α_s σ_t/σ_s (broadcasting tensors)."""
    return sigma_t / sigma_s, alpha_t - alpha_s * sigma_t / sigma_s


# ---- order 2: DPM-Solver++(2M) -------------------------------------------------------------------------
def dpmpp2m_step(x, x0, x0_prev, alpha_t, sigma_s, sigma_t, h, h_prev):
    """DPM-Solver++(2M): r = h_prev/h, D = (1 + 1/(2r)) x̂_0 − 1/(2r) x̂_0^{prev},
    x_t = (σ_t/σ_s) x − α_t(e^{−h} − 1) D."""
    r = h_prev / h
    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    return (sigma_t / sigma_s) * x - alpha_t * _expm1(-h) * d


def dpmpp2m_coefficients(alpha_t, lam_prev, lam_s, lam_t):
    """(b, c) of the order-2 ``dpmpp2m_step`` = (σ_t/σ_s)·x + b·x̂_0 + c·x̂_0^{prev}, r = (λ_s − λ_prev)/h:
    b = −α_t (e^{−h} − 1)(1 + 1/2r), c = α_t (e^{−h} − 1)/2r (broadcasting tensors)."""
    h = lam_t - lam_s
    phi = torch.expm1(-h)
    r = (lam_s - lam_prev) / h
    return -alpha_t * phi * (1 + 1 / (2 * r)), alpha_t * phi / (2 * r)


# ---- UniPC (bh2, data prediction) ---------------------------------------------------------------------
def unipc_b(h: float, order: int) -> list[float]:
    """UniPC's b-vector for B(h) = e^h − 1 in data prediction: b_k = k!·φ_{k+1}(−h)/B(−h)-style recursion.

    With hh = −h: φ̃_1 = e^{hh} − 1, φ̃_{k+1} = φ̃_k/hh − 1/(k+1)!  (starting from φ̃_1/hh − 1), b_k = k! φ̃_{k+1}/B.
    """
    hh = -h
    phi1 = _expm1(hh)
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
    b = _vector(unipc_b(h, order))
    r = _vector(list(rks) + [1.0])
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
    phi1 = _expm1(-h)
    out = (sigma_t / sigma_s) * x - alpha_t * phi1 * m0
    res = 0
    for k in range(1, len(history)):
        r_k = (lam[k] - lam[0]) / h
        res = res + _coefficient(rhos[k - 1]) * (history[k] - m0) / r_k
    if x0_new is not None:
        res = res + _coefficient(rhos[-1]) * (x0_new - m0)
    if isinstance(res, torch.Tensor):
        out = out - alpha_t * phi1 * res
    return out


def unipc_predictor_coefficients(alpha_t, lam_prev, lam_s, lam_t):
    """(b₁, b₂, c₂) of UniPC's predictor = (σ_t/σ_s)·x + b·x̂_0 + c·x̂_0^{prev} (broadcasting tensors):
    order 1 b₁ = −α_t (e^{−h} − 1); order 2 (ρ = ½, r₁ = (λ_prev − λ_s)/h) b₂ = −α_t (e^{−h} − 1)(1 − ½/r₁),
    c₂ = −α_t (e^{−h} − 1)·½/r₁."""
    h = lam_t - lam_s
    phi = torch.expm1(-h)
    r1 = (lam_prev - lam_s) / h
    return -alpha_t * phi, -alpha_t * phi * (1 - 0.5 / r1), -alpha_t * phi * 0.5 / r1


def unipc_corrector_coefficients(alpha_t, sigma_s, sigma_t, h, rks, rhos) -> list[float]:
    """The corrected state of ``unipc_update(x_p, [m_p, m_pp][:o], …, x0_new=m)`` as coefficients on
    (y, x_p, m_p, m_pp, m): x = (σ_t/σ_s) x_p + w (1 − Σ_k ρ_k/r_k − ρ_new) m_p + w ρ_1/r_1 m_pp + w ρ_new m,
    w = −α_t (e^{−h} − 1); the predicted y itself gets coefficient 0."""
    w = -alpha_t * math.expm1(-h)
    rho = [float(v) for v in rhos]
    return [
        0.0,
        sigma_t / sigma_s,
        w * (1 - sum(rk_rho / rk for rk_rho, rk in zip(rho[:-1], rks)) - rho[-1]),
        w * rho[0] / rks[0] if rks else 0.0,
        w * rho[-1],
    ]
