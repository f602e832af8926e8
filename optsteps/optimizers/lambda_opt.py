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
- ``optimize_lambdas``: trust-constr with one LinearConstraint, multi-start    (§2.6, §2.7)
- ``lambda_opt_schedule``: the ``Schedule`` for a noise schedule               (§2.8, §2.9)
- ``empirical_eps`` / ``fit_p``: a measured error model instead of σ^p/α.

λ window. Where an endpoint λ is infinite (rectified flow at t = 1 and t = 0, VP at t = 0) or beyond the
floor / ceiling (the cosine VP schedule reaches λ ≈ −10 at t = 1), the optimisation runs on the clipped
window [max(λ(t_start), floor), min(λ(t_end), ceiling)], defaults floor = −7 and ceiling = +7
(``DEFAULT_LAMBDA_FLOOR`` / ``DEFAULT_LAMBDA_CEILING``). The schedule's endpoint *times* stay exactly
t_start and t_end; only the interior times are t(λ_i). For the linear / scaled-linear VP schedules
(λ ∈ [−5.1, 4.6] and [−2.7, 3.5]) and EDM (λ ∈ [−4.4, 6.2]) the defaults clip nothing.

Optimisation notes (measured on the linear VP window, see tests/ and benchmarks/):

- F is only piecewise smooth: at the optimum several accumulated node sums c_n = ε_n Σ_s w_{s,n} are
  exactly 0 (kinks). trust-constr on F itself stalls there for hundreds of iterations, so F is minimised in
  its equivalent smooth epigraph form (``_EpigraphProblem``): same objective, same minimisers.
- With T_c ≥ 3 (the default) the problem is well posed: all three starts reach the same
  optimum in about 20–100 iterations (e.g. K = 5: F = 73.4655; with T_c = 3 also K = 10: 19.232,
  K = 20: 10.532).
- With T_c = 0 (the paper author's choice for K ≥ 7; ``trunc=0``) the signed per-node accumulation lets F cancel the ±1/gap weights
  of nearly coincident nodes: the lowest F is reached by collapsing the first and the last steps onto
  the minimal gap and taking one huge step (h ≈ 6) right after the collapsed start (K = 10: F ≈ 3.2,
  against 15.6 at the local optimum the reference's BFGS stops in). The optimiser then runs to
  ``maxiter`` without converging, and the result is as degenerate as the budget allows. ``trunc=3`` is
  the well-posed alternative (it is also what the reference code hard-codes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from optsteps.errors import OptstepsError

DEFAULT_LAMBDA_FLOOR = -7.0
DEFAULT_LAMBDA_CEILING = 7.0
DEFAULT_STARTS = ("uniform_lambda", "uniform_t", "karras")
ERROR_MODELS = ("analytic", "empirical")
_MAX_ORDER = 3


# ---------------------------------------------------------------------------------------------------
# H_m(h) and the exponential-integrator Lagrange weights (docs/algorithms.md §2.4)
# ---------------------------------------------------------------------------------------------------
def exp_moments(h, m_max: int = 2) -> np.ndarray:
    """H_m(h) = ∫_0^h u^m e^u du for m = 0 … m_max; returns an array of shape (m_max + 1, *h.shape).

    H_0 = e^h − 1 (``expm1``) and H_m = h^m e^h − m H_{m−1}. The recurrence cancels for small |h|
    (H_m ≈ h^{m+1}/(m+1)), so there the power series H_m(h) = Σ_{n≥0} h^{m+n+1}/(n! (m+n+1)) is used
    (all terms positive for h > 0, so it is stable at any h > 0; used for |h| < 1, or |h| < 2 + m_max when
    m_max > 2; 20 terms leave < 1e-18 relative at |h| < 1).
    """
    h = np.asarray(h, dtype=np.float64)
    shape = h.shape
    h = h.reshape(-1)
    out = np.empty((m_max + 1, h.size))
    out[0] = np.expm1(h)
    if m_max == 0:
        return out.reshape((m_max + 1,) + shape)
    with np.errstate(over="ignore", invalid="ignore"):
        eh = np.exp(h)
        prev = out[0]
        for m in range(1, m_max + 1):
            prev = h**m * eh - m * prev
            out[m] = prev
    threshold = 1.0 if m_max <= 2 else 2.0 + m_max
    small = np.abs(h) < threshold
    if np.any(small):
        hs = h[small]
        n_terms = 20 if m_max <= 2 else 30 + int(3 * threshold)
        n = np.arange(n_terms)
        # h^n / n! for n = 0 … n_terms − 1
        powers = np.cumprod(np.concatenate([np.ones((hs.size, 1)), hs[:, None] / n[None, 1:]], axis=1), axis=1)
        for m in range(1, m_max + 1):
            out[m, small] = (powers @ (1.0 / (m + n + 1))) * hs ** (m + 1)
    return out.reshape((m_max + 1,) + shape)


def lagrange_weights(nodes, lambda_next: float) -> np.ndarray:
    """General-k weights w_j = ∫_{λ_s}^{λ_next} e^λ ℓ_j(λ) dλ for nodes (λ_{s−k+1}, …, λ_s), λ_s the last.

    With u = λ − λ_s and node offsets d_j = λ_j − λ_s, ℓ_j(λ_s + u) = Π_{m≠j} (u − d_m)/(d_j − d_m)
    = Σ_m c_{j,m} u^m, so w_j = e^{λ_s} Σ_m c_{j,m} H_m(h), h = λ_next − λ_s (docs/algorithms.md §2.4).
    Any k ≥ 1; the closed forms used by the optimizer (``step_weights``) agree with it for k ≤ 3.
    """
    x = np.asarray(nodes, dtype=np.float64).ravel()
    k = x.size
    if k < 1:
        raise OptstepsError("lagrange_weights needs at least one node; pass the step's nodes λ_{s−k+1} … λ_s.")
    d = x - x[-1]
    h = float(lambda_next) - x[-1]
    hm = exp_moments(np.array(h), k - 1)
    w = np.empty(k)
    for j in range(k):
        poly = np.array([1.0])  # coefficients in increasing powers of u
        denom = 1.0
        for m in range(k):
            if m == j:
                continue
            poly = np.convolve(poly, np.array([-d[m], 1.0]))
            denom *= d[j] - d[m]
        w[j] = math.exp(x[-1]) * float(np.dot(poly, hm)) / denom
    return w


def _closed_form_weights(X: np.ndarray, xn: np.ndarray) -> np.ndarray:
    """Closed-form weights (docs/algorithms.md §2.4) for a batch of steps of one order k = X.shape[1] ≤ 3.

    X: (n, k) nodes λ_{s−k+1} … λ_s; xn: (n,) λ_{s+1}. G_m = e^{λ_s} H_m(h):
      k = 1: w_s = G_0 = e^{λ_{s+1}} − e^{λ_s};
      k = 2 (r = h_{s−1}): w_{s−1} = −G_1/r, w_s = (G_1 + r G_0)/r;
      k = 3 (a = h_{s−2}, b = h_{s−1}): w_{s−2} = (G_2 + b G_1)/(a(a+b)), w_{s−1} = −(G_2 + (a+b) G_1)/(ab),
             w_s = (G_2 + (a+2b) G_1 + b(a+b) G_0)/(b(a+b)).
    """
    k = X.shape[1]
    ls = X[:, -1]
    h = xn - ls
    G = np.exp(ls) * exp_moments(h, k - 1)
    if k == 1:
        return G[0][:, None]  # e^{λ_s} expm1(h): no cancellation at small h
    if k == 2:
        r = ls - X[:, 0]
        return np.stack([-G[1] / r, (G[1] + r * G[0]) / r], axis=1)
    if k == 3:
        a = X[:, 1] - X[:, 0]
        b = ls - X[:, 1]
        ab = a + b
        return np.stack([
            (G[2] + b * G[1]) / (a * ab),
            -(G[2] + ab * G[1]) / (a * b),
            (G[2] + (a + 2 * b) * G[1] + b * ab * G[0]) / (b * ab),
        ], axis=1)
    raise OptstepsError(f"closed-form weights exist for orders 1..3, got {k}; use lagrange_weights for higher orders.")


def _lagrange_derivative_tables(X: np.ndarray, xn: np.ndarray, others=None):
    """For a batch of node sets X (n, k): D[i, j] = ℓ_j'(x_i) and L[j] = ℓ_j(x_next).

    Barycentric form: β_j = 1/Π_{m≠j}(x_j − x_m); D_ij = (β_j/β_i)/(x_i − x_j) for i ≠ j,
    D_ii = Σ_{m≠i} 1/(x_i − x_m); ℓ_j(x) = β_j Π_{m≠j}(x − x_m).
    """
    n, k = X.shape
    if k == 1:
        return np.zeros((n, 1, 1)), np.ones((n, 1))
    diff = X[:, :, None] - X[:, None, :]  # x_i − x_j
    eye = np.eye(k, dtype=bool)
    safe = np.where(eye, 1.0, diff)
    beta = 1.0 / np.prod(safe, axis=2)  # β_i = 1/Π_{m≠i}(x_i − x_m)
    D = (beta[:, None, :] / beta[:, :, None]) / safe
    D[:, eye] = np.sum(np.where(eye, 0.0, 1.0 / safe), axis=2)
    dn = xn[:, None] - X  # x_next − x_m
    if others is None:
        others = [[m for m in range(k) if m != j] for j in range(k)]
    L = beta * np.prod(dn[:, others], axis=2)  # β_j Π_{m≠j}(x_next − x_m)
    return D, L


# ---------------------------------------------------------------------------------------------------
# Order pattern, error model (docs/algorithms.md §2.2, §2.3)
# ---------------------------------------------------------------------------------------------------
def default_orders(nfe: int) -> list[int]:
    """k_s = 1 for s ∈ {0, K−1}, 2 for s ∈ {1, K−2}, 3 otherwise (docs/algorithms.md §2.3)."""
    _check_nfe(nfe)
    return [1 if s in (0, nfe - 1) else 2 if s in (1, nfe - 2) else 3 for s in range(nfe)]


def default_trunc(nfe: int) -> int:
    """truncNum T_c = 3 for every K (what the reference code hard-codes). The paper's comment says 0 for
    K ≥ 7 (docs/algorithms.md §2.5), but that objective is degenerate (module notes): on the digits model its
    UniPC-3 schedules at K = 8 and 10 diverge (L2 to the teacher 179× and 363× uniform-λ's), while T_c = 3
    gives 0.64× and 0.78× (benchmarks/lambda_opt_digits.py). Pass ``trunc=0`` for the paper's variant."""
    return 3


def _check_nfe(nfe) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 2:
        raise OptstepsError(
            f"nfe = {nfe!r}: the λ-optimizer needs an integer NFE K ≥ 2 (at least one interior time); "
            "pass nfe=2 or more, or use a fixed schedule for K = 1."
        )
    return int(nfe)


def check_orders(orders, nfe: int) -> list[int]:
    """Validate a per-step order pattern: K entries, k_s ∈ {1, 2, 3}, k_s ≤ s + 1 (step s uses nodes s−k_s+1 … s)."""
    if orders is None:
        return default_orders(nfe)
    try:
        ks = [int(k) for k in orders]
    except (TypeError, ValueError):
        raise OptstepsError(f"orders = {orders!r} is not a list of integers; pass one order (1, 2 or 3) per step.") from None
    if any(float(k) != float(o) for k, o in zip(ks, orders)):
        raise OptstepsError(f"orders = {list(orders)} must be integers 1, 2 or 3.")
    if len(ks) != nfe:
        raise OptstepsError(f"orders has {len(ks)} entries but NFE = {nfe}; pass exactly one order per step (K entries).")
    for s, k in enumerate(ks):
        if not 1 <= k <= _MAX_ORDER:
            raise OptstepsError(f"orders[{s}] = {k} is not in 1..{_MAX_ORDER}; use orders 1, 2 or 3 (UniPC's predictor up to order 3).")
        if k > s + 1:
            raise OptstepsError(
                f"orders[{s}] = {k} > s + 1 = {s + 1}: step {s} has only {s + 1} earlier model outputs; "
                f"lower it to at most {s + 1} (the default pattern is 1-2-3…3-2-1)."
            )
    return ks


def _check_p(p) -> float:
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise OptstepsError(f"p = {p!r} is not a number; pass p = 1 (pixel models) or p = 2 (latent models).") from None
    if not math.isfinite(pf) or pf < 0:
        raise OptstepsError(f"p = {p!r} must be a finite number ≥ 0; pass p = 1 (pixel models) or p = 2 (latent models).")
    return pf


def _check_trunc(trunc, nfe: int) -> int:
    if trunc is None:
        return default_trunc(nfe)
    if isinstance(trunc, bool) or not isinstance(trunc, (int, np.integer)) or trunc < 0:
        raise OptstepsError(f"trunc = {trunc!r} must be an integer ≥ 0 (truncNum T_c); pass None for the default (3).")
    return int(trunc)


def analytic_eps(lambdas, p: float = 1.0) -> np.ndarray:
    """ε(λ) = σ^p/α with α = (1 + e^{−2λ})^{−1/2}, σ = (1 + e^{2λ})^{−1/2} (docs/algorithms.md §2.2).

    log ε = −(p/2) log(1 + e^{2λ}) + ½ log(1 + e^{−2λ}); for p = 1 this is e^{−λ}.
    """
    lam = np.asarray(lambdas, dtype=np.float64)
    return np.exp(-0.5 * p * np.logaddexp(0.0, 2 * lam) + 0.5 * np.logaddexp(0.0, -2 * lam))


def analytic_eps_dlog(lambdas, p: float = 1.0) -> np.ndarray:
    """d log ε/dλ = −p·S(2λ) − S(−2λ), S the logistic function (−1 for p = 1)."""
    lam = np.asarray(lambdas, dtype=np.float64)
    s_pos = 0.5 * (1 + np.tanh(lam))  # S(2λ)
    return -p * s_pos - (1 - s_pos)


class EmpiricalEps:
    """ε(λ) interpolated log-linearly in λ through measured per-time errors; constant beyond the data.

    log ε(λ) = piecewise-linear interpolation of (λ_i, log e_i), λ_i sorted increasing; ``dlog`` is the
    slope of that interpolant (0 outside [λ_min, λ_max]). Built by ``empirical_eps``.
    """

    def __init__(self, lambdas: np.ndarray, errors: np.ndarray):
        self.lambdas = lambdas
        self.log_errors = np.log(errors)
        self.slopes = np.diff(self.log_errors) / np.diff(self.lambdas)

    def __call__(self, lambdas) -> np.ndarray:
        return np.exp(np.interp(np.asarray(lambdas, dtype=np.float64), self.lambdas, self.log_errors))

    def dlog(self, lambdas) -> np.ndarray:
        lam = np.asarray(lambdas, dtype=np.float64)
        idx = np.searchsorted(self.lambdas, lam, side="right") - 1
        inside = (lam >= self.lambdas[0]) & (lam < self.lambdas[-1])
        return np.where(inside, self.slopes[np.clip(idx, 0, self.slopes.size - 1)], 0.0)


def _clean_measurements(lambdas_teacher, errors, what: str):
    lam = np.asarray(lambdas_teacher, dtype=np.float64).ravel()
    err = np.asarray(errors, dtype=np.float64).ravel()
    if lam.shape != err.shape:
        raise OptstepsError(f"{what}: {lam.size} λ values but {err.size} errors; pass one mean error per teacher time.")
    keep = np.isfinite(lam)  # teacher grids of flow models include t = 1 and t = 0 where λ = ∓∞
    lam, err = lam[keep], err[keep]
    if lam.size < 2:
        raise OptstepsError(f"{what} needs at least 2 teacher times with finite λ; measure errors at more times.")
    if not np.all(np.isfinite(err)) or np.any(err <= 0):
        raise OptstepsError(f"{what}: errors must be finite and > 0 (they are interpolated in log space); "
                            "drop the times with zero or NaN error.")
    order = np.argsort(lam)
    lam, err = lam[order], err[order]
    if np.any(np.diff(lam) <= 0):
        raise OptstepsError(f"{what}: duplicate λ values; average the errors of equal teacher times first.")
    return lam, err


def empirical_eps(lambdas_teacher, errors) -> EmpiricalEps:
    """The measured error model λ ↦ ε: log-linear interpolation in λ of per-teacher-time mean errors
    e_i = mean over samples of ‖x_θ(x^T_{t_i}, t_i) − x^T_final‖ (constant extrapolation beyond the data).

    Non-finite λ (flow endpoints) are dropped. Pass the result as ``eps_fn`` to ``optimize_lambdas`` or
    with ``error_model="empirical"`` to ``lambda_opt_schedule``.
    """
    lam, err = _clean_measurements(lambdas_teacher, errors, "empirical_eps")
    return EmpiricalEps(lam, err)


@dataclass(frozen=True)
class PFit:
    """Least-squares fit log e ≈ log c + p log σ(λ) − log α(λ); ``rms`` is the log-space residual."""

    p: float
    scale: float
    rms: float

    def __float__(self) -> float:
        return self.p


def fit_p(lambdas_teacher, errors) -> PFit:
    """Fit p (and a scale c) of the error model c·σ^p/α to measured errors, least squares in log space:

    min_{p, log c} Σ_i (log e_i + log α(λ_i) − log c − p log σ(λ_i))², α, σ the VP-equivalent ones of §2.2.
    The scale does not change the optimizer's argmin (F is linear in ε); p can come out < 0 for data
    that do not follow the model, in which case ``optimize_lambdas`` refuses it.
    """
    lam, err = _clean_measurements(lambdas_teacher, errors, "fit_p")
    log_sigma = -0.5 * np.logaddexp(0.0, 2 * lam)
    log_alpha = -0.5 * np.logaddexp(0.0, -2 * lam)
    target = np.log(err) + log_alpha
    A = np.stack([np.ones_like(lam), log_sigma], axis=1)
    if np.ptp(log_sigma) < 1e-12:
        raise OptstepsError("fit_p: all teacher times have the same σ; measure errors over a range of times.")
    coef, *_ = np.linalg.lstsq(A, target, rcond=None)
    resid = target - A @ coef
    return PFit(p=float(coef[1]), scale=float(np.exp(coef[0])), rms=float(np.sqrt(np.mean(resid**2))))


def _eps_and_dlog(lam: np.ndarray, p: float, eps):
    """ε at every node and d log ε/dλ. ``eps``: None (σ^p/α), an array of per-node values (held fixed),
    or a callable λ ↦ ε (with an optional ``.dlog``; otherwise a central difference of log ε)."""
    if eps is None:
        return analytic_eps(lam, p), analytic_eps_dlog(lam, p)
    if callable(eps):
        e = np.asarray(eps(lam), dtype=np.float64)
        if hasattr(eps, "dlog"):
            dl = np.asarray(eps.dlog(lam), dtype=np.float64)
        else:
            step = 1e-6 * np.maximum(1.0, np.abs(lam))
            with np.errstate(divide="ignore", invalid="ignore"):
                dl = (np.log(np.asarray(eps(lam + step), dtype=np.float64))
                      - np.log(np.asarray(eps(lam - step), dtype=np.float64))) / (2 * step)
    else:
        e = np.asarray(eps, dtype=np.float64).ravel()
        dl = np.zeros_like(e)
    if e.shape != lam.shape:
        raise OptstepsError(f"the error model gave {e.size} values for {lam.size} nodes; it must map λ arrays elementwise.")
    if not np.all(np.isfinite(e)) or np.any(e < 0) or not np.all(np.isfinite(dl)):
        raise OptstepsError("the error model returned negative or non-finite ε; use positive finite errors "
                            "(e.g. empirical_eps of measured mean errors).")
    return e, dl


# ---------------------------------------------------------------------------------------------------
# The objective F(λ) and its gradient (docs/algorithms.md §2.5)
# ---------------------------------------------------------------------------------------------------
class _Group:
    """Steps of one order k with precomputed index arrays (scatter targets for the gradient / Jacobian)."""

    def __init__(self, k: int, steps: np.ndarray, trunc: int, n_nodes: int):
        self.k, self.steps = k, steps
        self.idx = steps[:, None] + np.arange(-k + 1, 1)[None, :]  # nodes(s), (n, k)
        self.nxt = steps + 1
        self.cols = np.concatenate([self.idx, self.nxt[:, None]], axis=1)  # λ's a step's weights depend on
        self.norm_rows = (steps < trunc) if k >= 2 else np.zeros(steps.size, dtype=bool)
        self.acc_rows = (steps >= trunc) if k >= 2 else np.zeros(steps.size, dtype=bool)
        self.smooth_rows = ~self.acc_rows
        self.any_norm, self.any_acc = bool(self.norm_rows.any()), bool(self.acc_rows.any())
        self.any_smooth = bool(self.smooth_rows.any())
        ia = self.idx[self.acc_rows]
        self.acc_idx_flat = ia.ravel()
        # J[n, i] scatter: row = node of the weight, column = λ the weight depends on
        ca = self.cols[self.acc_rows]
        self.jac_flat = (ia[:, :, None] * n_nodes + ca[:, None, :]).ravel()
        self.smooth_cols_flat = self.cols[self.smooth_rows].ravel()
        self.others = [[m for m in range(k) if m != j] for j in range(k)]


class _Plan:
    """Index structure for (K, orders, T_c): steps grouped by order, and each step's term of F."""

    def __init__(self, nfe: int, orders: list[int], trunc: int):
        self.nfe, self.orders, self.trunc = nfe, orders, trunc
        self.n_nodes = nfe + 1
        ks = np.asarray(orders)
        self.groups = [_Group(k, np.nonzero(ks == k)[0], trunc, nfe + 1) for k in (1, 2, 3) if np.any(ks == k)]


def _check_lambdas(lambdas_full, min_size: int = 3) -> np.ndarray:
    lam = np.asarray(lambdas_full, dtype=np.float64).ravel()
    if lam.size < min_size:
        raise OptstepsError(f"the objective needs K + 1 ≥ 3 λ values (NFE ≥ 2), got {lam.size}.")
    if not np.all(np.isfinite(lam)):
        raise OptstepsError("λ values must be finite; clip infinite endpoints into a window first "
                            "(e.g. schedule_lambdas(schedule) clips to [−7, 7]).")
    if np.any(np.diff(lam) <= 0):
        i = int(np.argmin(np.diff(lam)))
        raise OptstepsError(
            f"λ must be strictly increasing (noise → data), but λ[{i}] = {lam[i]:.6g} ≥ λ[{i + 1}] = {lam[i + 1]:.6g}; "
            "pass λ ordered from λ(t_start) to λ(t_end) without duplicates."
        )
    return lam


def step_weights(lambdas_full, orders=None) -> list[np.ndarray]:
    """Per step s the weights (w_{s,s−k_s+1}, …, w_{s,s}) of docs/algorithms.md §2.4 (closed forms, k ≤ 3)."""
    lam = _check_lambdas(lambdas_full, min_size=2)
    nfe = lam.size - 1
    ks = check_orders(orders, nfe)
    out = []
    for s, k in enumerate(ks):
        out.append(_closed_form_weights(lam[None, s - k + 1 : s + 1], lam[s + 1 : s + 2])[0])
    return out


def _local_weight_jacobian(X: np.ndarray, xn: np.ndarray, W: np.ndarray, others=None) -> np.ndarray:
    """dW[:, j, a] = ∂w_{s,j}/∂(λ_{s−k+1+a}) for a < k, and ∂w_{s,j}/∂λ_{s+1} for a = k.

    ∂w_j/∂λ_i = −ℓ_j'(λ_i) w_i − δ_{is} δ_{js} e^{λ_s} (i a node: the Lagrange identity
    ∂ℓ_j/∂λ_i = −ℓ_j'(λ_i) ℓ_i plus the moving lower limit), ∂w_j/∂λ_{s+1} = e^{λ_{s+1}} ℓ_j(λ_{s+1}).
    """
    n, k = W.shape
    D, L = _lagrange_derivative_tables(X, xn, others)
    dW = np.empty((n, k, k + 1))
    dW[:, :, :k] = -np.swapaxes(D, 1, 2) * W[:, None, :]  # [j, a] = −D[a, j] w_a
    dW[:, k - 1, k - 1] -= np.exp(X[:, -1])
    dW[:, :, k] = np.exp(xn)[:, None] * L
    return dW


def _terms(lam: np.ndarray, plan: _Plan, p: float, eps, want_grad: bool):
    """F split as F = F_smooth + Σ_n |c_n| (docs/algorithms.md §2.5):

    F_smooth = Σ_{k_s = 1} w_{s,s} ε_s + Σ_{k_s ≥ 2, s < T_c} ‖(w_{s,j} ε_j)_j‖₂   (smooth: w_{s,s} > 0, ε > 0),
    c_n = ε_n Σ_{s: k_s ≥ 2, s ≥ T_c, n ∈ nodes(s)} w_{s,n}                        (the accumulated term).

    Returns (F_smooth, ∇F_smooth, c, J) with J[n, i] = ∂c_n/∂λ_i (None, None when not ``want_grad``).
    """
    e, dlog = _eps_and_dlog(lam, p, eps)
    nn = plan.n_nodes
    f_smooth = 0.0
    acc = np.zeros(nn)  # A_n = Σ w_{s,n} over the accumulated steps
    g_w = np.zeros(nn)  # ∂F_smooth/∂λ via the weights
    g_e = np.zeros(nn)  # ∂F_smooth/∂ε
    jac = np.zeros(nn * nn) if want_grad else None
    for gr in plan.groups:
        X, xn = lam[gr.idx], lam[gr.nxt]
        W = _closed_form_weights(X, xn)
        E = e[gr.idx]
        gW = None
        if gr.k == 1:
            V = W[:, 0] * E[:, 0]
            f_smooth += float(np.sum(np.abs(V)))
            if want_grad:
                sgn = np.sign(V)
                gW = (sgn * E[:, 0])[:, None]
                g_e += np.bincount(gr.idx[:, 0], sgn * W[:, 0], minlength=nn)
        elif gr.any_norm:
            Wn, En = W[gr.norm_rows], E[gr.norm_rows]
            Vn = Wn * En
            nrm = np.sqrt(np.sum(Vn * Vn, axis=1))
            f_smooth += float(np.sum(nrm))
            if want_grad:
                u = Vn / np.where(nrm > 0, nrm, 1.0)[:, None]
                gW = np.zeros_like(W)
                gW[gr.norm_rows] = u * En
                g_e += np.bincount(gr.idx[gr.norm_rows].ravel(), (u * Wn).ravel(), minlength=nn)
        if gr.any_acc:
            acc += np.bincount(gr.acc_idx_flat, W[gr.acc_rows].ravel(), minlength=nn)
        if not want_grad:
            continue
        dW = _local_weight_jacobian(X, xn, W, gr.others)
        if gW is not None and gr.any_smooth:
            contrib = np.einsum("nj,nja->na", gW[gr.smooth_rows], dW[gr.smooth_rows])
            g_w += np.bincount(gr.smooth_cols_flat, contrib.ravel(), minlength=nn)
        if gr.any_acc:
            jac += np.bincount(gr.jac_flat, dW[gr.acc_rows].ravel(), minlength=nn * nn)
    c = e * acc
    if not want_grad:
        return f_smooth, None, c, None
    J = jac.reshape(nn, nn) * e[:, None]
    J[np.diag_indices(nn)] += c * dlog
    return f_smooth, g_w + g_e * e * dlog, c, J


def _objective_core(lam: np.ndarray, plan: _Plan, p: float, eps, want_grad: bool):
    """F and ∇F (the gradient uses sign(c_n) at the kinks of the accumulated term, sign(0) = 0)."""
    f_smooth, g_smooth, c, J = _terms(lam, plan, p, eps, want_grad)
    total = f_smooth + float(np.sum(np.abs(c)))
    if not want_grad:
        return total, None
    return total, g_smooth + np.sign(c) @ J


def objective(lambdas_full, p: float = 1.0, trunc: int | None = None, orders=None, eps=None) -> float:
    """The bound F(λ) of docs/algorithms.md §2.5 for ANY strictly increasing finite λ_0 … λ_K (T_c = trunc):

      F = Σ_{s: k_s = 1} |w_{s,s} ε_s|
        + Σ_{s: k_s ≥ 2, s < T_c} sqrt(Σ_{j ∈ nodes(s)} (w_{s,j} ε_j)²)
        + Σ_{n = 0..K} |Σ_{s: k_s ≥ 2, s ≥ T_c, n ∈ nodes(s)} w_{s,n} ε_n|

    nodes(s) = s − k_s + 1 … s; weights w of §2.4; ε_n = σ_n^p/α_n (§2.2) unless ``eps`` is given (an array of
    K + 1 per-node values, or a callable λ ↦ ε such as ``empirical_eps(...)``). Defaults: orders 1-2-3…3-2-1,
    T_c = 3 by default (``default_trunc``). Only the predictor is modelled (as in the reference).
    """
    return objective_and_grad(lambdas_full, p, trunc, orders, eps, want_grad=False)[0]


def objective_and_grad(lambdas_full, p: float = 1.0, trunc: int | None = None, orders=None, eps=None,
                       want_grad: bool = True):
    """(F, ∂F/∂λ_0 … ∂F/∂λ_K): F of ``objective`` and its exact gradient (the interior entries 1 … K−1 are
    the optimizer's). Derivation: with g_{s,j} = ∂F/∂w_{s,j} (sign / normalised-vector / accumulated-sign
    factors of the three terms) and the Lagrange identity ∂ℓ_j/∂λ_i = −ℓ_j'(λ_i) ℓ_i,
      ∂w_{s,j}/∂λ_i = −ℓ_j'(λ_i) w_{s,i} − δ_{is} δ_{js} e^{λ_s}   (i a node of step s),
      ∂w_{s,j}/∂λ_{s+1} = e^{λ_{s+1}} ℓ_j(λ_{s+1}),
    plus ∂ε_n/∂λ_n = ε_n · d log ε/dλ. F is piecewise smooth; at a kink the one-sided sign 0 is used.
    """
    lam = _check_lambdas(lambdas_full)
    nfe = lam.size - 1
    pf = _check_p(p)
    plan = _Plan(nfe, check_orders(orders, nfe), _check_trunc(trunc, nfe))
    if eps is not None and not callable(eps) and np.asarray(eps).size != lam.size:
        raise OptstepsError(f"eps has {np.asarray(eps).size} values for {lam.size} nodes; pass K + 1 per-node errors or a callable.")
    return _objective_core(lam, plan, pf, eps, want_grad)


# ---------------------------------------------------------------------------------------------------
# Starts and the optimizer (docs/algorithms.md §2.6, §2.7)
# ---------------------------------------------------------------------------------------------------
def _make_feasible(lam: np.ndarray, gap: float) -> np.ndarray:
    """Endpoints kept; interior clamped into the window and pushed apart to gaps ≥ ``gap``."""
    lam = np.array(lam, dtype=np.float64)
    K = lam.size - 1
    lo, hi = lam[0], lam[-1]
    i = np.arange(K + 1)
    inner = slice(1, K)
    lam[inner] = np.clip(np.nan_to_num(lam[inner], nan=lo, posinf=hi, neginf=lo), lo + i[inner] * gap, hi - (K - i[inner]) * gap)
    for j in range(1, K):
        lam[j] = max(lam[j], lam[j - 1] + gap)
    for j in range(K - 1, 0, -1):
        lam[j] = min(lam[j], lam[j + 1] - gap)
    return lam


def start_lambdas(kind: str, lambda_start: float, lambda_end: float, nfe: int, noise_schedule=None,
                  t_start: float | None = None, t_end: float | None = None, rho: float = 7.0) -> np.ndarray:
    """An initial λ_0 … λ_K with the window's endpoints (not yet made feasible):

    - ``uniform_lambda``: λ_i = λ_T + (i/K)(λ_ε − λ_T);
    - ``uniform_t``: λ_i = λ(t_i), t_i = t_start + (i/K)(t_end − t_start) (needs the noise schedule);
    - ``karras``: σ_i = (σ_max^{1/ρ} + (i/K)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ on σ = e^{−λ}, ρ = 7, λ_i = −log σ_i.
    """
    i = np.arange(nfe + 1) / nfe
    if kind == "uniform_lambda":
        lam = lambda_start + i * (lambda_end - lambda_start)
    elif kind == "karras":
        s_max, s_min = math.exp(-lambda_start / rho), math.exp(-lambda_end / rho)  # σ^{1/ρ}
        lam = -rho * np.log(s_max + i * (s_min - s_max))
    elif kind == "uniform_t":
        if noise_schedule is None:
            raise OptstepsError("the uniform_t start needs the noise schedule; pass noise_schedule= (and t_start/t_end).")
        ts = noise_schedule.default_t_start() if t_start is None else float(t_start)
        te = noise_schedule.default_t_end() if t_end is None else float(t_end)
        lam = noise_schedule.lambda_(np.linspace(ts, te, nfe + 1)).numpy().astype(np.float64)
    else:
        raise OptstepsError(f"unknown start {kind!r}; use one of {DEFAULT_STARTS} or an array of K + 1 λ values.")
    lam = np.array(lam, dtype=np.float64)
    lam[0], lam[-1] = lambda_start, lambda_end
    return lam


class _EpigraphProblem:
    """F = F_smooth + Σ_n |c_n| minimised in its smooth epigraph form (same minimisers, same F):

        min_{x, τ}  F_smooth(λ(x)) + Σ_{n ∈ N} τ_n   s.t.  τ_n − c_n(λ(x)) ≥ 0,  τ_n + c_n(λ(x)) ≥ 0,
                    λ_{i+1} − λ_i ≥ δ  (i = 0 … K−1; one LinearConstraint),

    x = (λ_1 … λ_{K−1}), N the nodes that enter an accumulated step. At the optimum several c_n are 0
    (the non-smooth kinks of F); the epigraph form keeps trust-constr's quasi-Newton model smooth there,
    which takes the iteration count from hundreds to tens.
    """

    def __init__(self, plan: _Plan, lo: float, hi: float, p: float, eps, gap: float):
        from scipy.optimize import LinearConstraint, NonlinearConstraint

        self.plan, self.lo, self.hi, self.p, self.eps = plan, lo, hi, p, eps
        K = plan.nfe
        n = K - 1
        acc_nodes = set()
        for gr in plan.groups:
            acc_nodes.update(gr.acc_idx_flat.tolist())
        self.nodes = np.array(sorted(acc_nodes), dtype=int)
        m = self.nodes.size
        self.n, self.m = n, m
        A = np.zeros((K, n + m))
        for i in range(K):  # row i: λ_{i+1} − λ_i
            if i < n:
                A[i, i] = 1.0
            if i >= 1:
                A[i, i - 1] = -1.0
        lb = np.full(K, gap)
        lb[0] += lo
        lb[-1] -= hi
        self.constraints = [LinearConstraint(A, lb, np.full(K, np.inf))]
        if m:
            self.constraints.append(NonlinearConstraint(self._cons, 0.0, np.inf, jac=self._cons_jac))
        self._key = None

    def full(self, z: np.ndarray) -> np.ndarray:
        return np.concatenate([[self.lo], z[: self.n], [self.hi]])

    def _eval(self, z: np.ndarray, want_grad: bool = True):
        key = (z.tobytes(), want_grad)
        if key != self._key:
            self._val = _terms(self.full(z), self.plan, self.p, self.eps, want_grad)
            self._key = key
        return self._val

    def fun(self, z):
        f_smooth, g_smooth, c, J = self._eval(z)
        tau = z[self.n :]
        return f_smooth + float(np.sum(tau)), np.concatenate([g_smooth[1:-1], np.ones(self.m)])

    def fun_value(self, z):
        return self._eval(z, False)[0] + float(np.sum(z[self.n :]))

    def _cons(self, z, want_grad: bool = True):
        c = self._eval(z, want_grad)[2][self.nodes]
        tau = z[self.n :]
        return np.concatenate([tau - c, tau + c])

    def _cons_jac(self, z):
        Jx = self._eval(z)[3][self.nodes][:, 1:-1]
        eye = np.eye(self.m)
        return np.block([[-Jx, eye], [Jx, eye]])

    def solve(self, lam0: np.ndarray, gtol: float, xtol: float, maxiter: int, gradient: str = "analytic"):
        """One trust-constr run from λ0; ``gradient="2-point"`` replaces every analytic derivative by
        scipy's forward differences (the benchmark's comparison; same problem otherwise)."""
        import warnings

        from scipy.optimize import NonlinearConstraint, minimize

        c0 = _terms(lam0, self.plan, self.p, self.eps, False)[2][self.nodes]
        tau0 = np.abs(c0) * 1.05 + 1e-3 * (np.max(np.abs(c0)) if c0.size else 0.0) + 1e-12
        z0 = np.concatenate([lam0[1:-1], tau0])
        if gradient == "analytic":
            fun, jac, constraints = self.fun, True, self.constraints
        elif gradient == "2-point":
            fun, jac = self.fun_value, "2-point"
            constraints = self.constraints[:1]
            if self.m:
                constraints = constraints + [NonlinearConstraint(lambda z: self._cons(z, False), 0.0, np.inf, jac="2-point")]
        else:
            raise OptstepsError(f"unknown gradient {gradient!r}; use 'analytic' or '2-point'.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # BFGS "delta_grad == 0" notes on the linear τ part
            res = minimize(fun, z0, jac=jac, method="trust-constr", constraints=constraints,
                           options={"gtol": gtol, "xtol": xtol, "maxiter": maxiter})
        return self.full(res.x), res.nit, str(res.message)


@dataclass
class LambdaOptResult:
    """Result of ``optimize_lambdas``: λ_0 … λ_K (endpoints = the window), F, F of uniform-λ, and bookkeeping."""

    lambdas: np.ndarray
    objective: float
    objective_uniform_lambda: float
    wall_time_s: float
    p: float
    trunc: int
    orders: list
    best_start: str
    starts: dict = field(default_factory=dict)  # name → {"initial": F0, "final": F, "nit": n, "message": str}


def _single_thread_blas():
    """trust-constr factorises tiny dense matrices every iteration; multi-threaded OpenBLAS makes that
    10-100x slower on a busy 2-core machine, so the optimisation runs with one BLAS thread when
    ``threadpoolctl`` is importable (a no-op context otherwise)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def optimize_lambdas(lambda_start: float, lambda_end: float, nfe: int, p: float = 1.0, trunc: int | None = None,
                     orders=None, starts: Sequence = DEFAULT_STARTS, eps_fn: Callable | None = None,
                     noise_schedule=None, t_start: float | None = None, t_end: float | None = None,
                     min_gap: float | None = None, maxiter: int = 200, probe_iter: int = 30,
                     gtol: float = 1e-8, xtol: float = 1e-10, gradient: str = "analytic") -> LambdaOptResult:
    """Minimise F(λ_1 … λ_{K−1}) (docs/algorithms.md §2.5) with λ_0 = ``lambda_start`` and λ_K = ``lambda_end`` fixed.

    ``scipy.optimize.minimize(method="trust-constr")`` with the analytic gradient (``objective_and_grad``)
    on the smooth epigraph form of F (``_EpigraphProblem``) and one ``LinearConstraint``
    λ_{i+1} − λ_i ≥ δ (i = 0 … K−1), δ = ``min_gap`` (default 10⁻³ of the uniform spacing), so the
    order-2/3 weights never divide by zero (§2.6, §2.7).

    Multi-start from each entry of ``starts``: "uniform_lambda", "uniform_t" (skipped without
    ``noise_schedule``), "karras" (``start_lambdas``), or arrays of K + 1 λ. Budget: every start runs
    ``probe_iter`` iterations; the start with the lowest F then continues to ``maxiter`` iterations in all.
    The lowest F over all starts *and* all optimised points is kept, so the result's F is never above any
    start's. ``eps_fn`` replaces σ^p/α by a measured error model (``empirical_eps``). ``gradient="2-point"``
    swaps the analytic derivatives for finite differences (for benchmarks only).

    Caveat (measured, see the module notes): with T_c = 0 (``trunc=0``, the paper's choice for K ≥ 7) the signed per-node
    accumulation lets F cancel the huge weights of nearly coincident nodes, and the lowest F lies where
    several steps collapse onto ``min_gap``; the optimiser then runs to ``maxiter`` without converging.
    """
    if gradient not in ("analytic", "2-point"):
        raise OptstepsError(f"unknown gradient {gradient!r}; use 'analytic' or '2-point'.")
    t0 = time.perf_counter()
    nfe = _check_nfe(nfe)
    pf = _check_p(p)
    ks = check_orders(orders, nfe)
    tc = _check_trunc(trunc, nfe)
    if eps_fn is not None and not callable(eps_fn):
        raise OptstepsError("eps_fn must be a callable λ ↦ ε, e.g. empirical_eps(lambdas, errors).")
    try:
        lo, hi = float(lambda_start), float(lambda_end)
    except (TypeError, ValueError):
        raise OptstepsError(f"lambda_start / lambda_end must be numbers, got {lambda_start!r}, {lambda_end!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptstepsError(f"λ window [{lo}, {hi}] is not finite; clip it (lambda_opt_schedule clips to [−7, 7] by default).")
    if not hi > lo:
        raise OptstepsError(f"lambda_start = {lo:.6g} must be below lambda_end = {hi:.6g} (λ grows from noise to data); swap them.")
    gap = 1e-3 * (hi - lo) / nfe if min_gap is None else float(min_gap)
    if not (gap > 0 and gap * nfe < hi - lo):
        raise OptstepsError(f"min_gap = {gap:.3g} leaves no room for {nfe} steps in [{lo:.4g}, {hi:.4g}]; pass a smaller min_gap.")
    if int(maxiter) < 1 or int(probe_iter) < 1:
        raise OptstepsError(f"maxiter = {maxiter}, probe_iter = {probe_iter}: both must be ≥ 1.")
    plan = _Plan(nfe, ks, tc)
    problem = _EpigraphProblem(plan, lo, hi, pf, eps_fn, gap)

    def F(lam):
        return _objective_core(lam, plan, pf, eps_fn, False)[0]

    candidates = []  # (F, λ, name)
    runs = []  # [name, λ at the end of its last run, F there, iterations, message]
    for j, st in enumerate(starts):
        if isinstance(st, str):
            if st == "uniform_t" and noise_schedule is None:
                continue
            name = st
            lam0 = start_lambdas(st, lo, hi, nfe, noise_schedule, t_start, t_end)
        else:
            name = f"custom{j}"
            lam0 = np.array(st, dtype=np.float64).ravel()
            if lam0.size != nfe + 1:
                raise OptstepsError(f"start {j} has {lam0.size} λ values; pass K + 1 = {nfe + 1} (endpoints are replaced by the window).")
            lam0[0], lam0[-1] = lo, hi
        lam0 = _make_feasible(lam0, gap)
        f0 = F(lam0)
        candidates.append((f0, lam0, name))
        runs.append({"name": name, "lam": lam0, "initial": f0, "final": f0, "nit": 0, "message": "not run"})
    if not runs:
        raise OptstepsError("no start was usable; pass starts=('uniform_lambda', 'karras') or a noise_schedule for 'uniform_t'.")

    def run(r, iters):
        lam1, nit, message = problem.solve(r["lam"], gtol=gtol, xtol=xtol, maxiter=iters, gradient=gradient)
        lam1 = _make_feasible(lam1, gap)  # interior-point iterates can violate the ordering by rounding
        f1 = F(lam1)
        if f1 <= r["final"]:
            r["lam"], r["final"] = lam1, f1
        r["nit"] += nit
        r["message"] = message
        candidates.append((f1, lam1, r["name"]))
        return message

    with _single_thread_blas():
        probe = min(int(probe_iter), int(maxiter)) if len(runs) > 1 else int(maxiter)
        for r in runs:
            run(r, probe)
        lead = min(runs, key=lambda r: r["final"])
        rest = int(maxiter) - lead["nit"]
        if rest > 0 and "maximum number" in lead["message"]:
            run(lead, rest)
    best = min(candidates, key=lambda c: c[0])
    report = {r["name"]: {"initial": float(r["initial"]), "final": float(r["final"]), "nit": int(r["nit"]),
                          "message": r["message"]} for r in runs}
    f_uniform = F(start_lambdas("uniform_lambda", lo, hi, nfe))
    return LambdaOptResult(lambdas=best[1], objective=float(best[0]), objective_uniform_lambda=float(f_uniform),
                           wall_time_s=time.perf_counter() - t0, p=pf, trunc=tc, orders=ks, best_start=best[2],
                           starts=report)


# ---------------------------------------------------------------------------------------------------
# Schedules (docs/algorithms.md §2.8, §2.9)
# ---------------------------------------------------------------------------------------------------
def lambda_window(noise_schedule, t_start: float, t_end: float, lambda_floor: float | None = None,
                  lambda_ceiling: float | None = None) -> tuple[float, float]:
    """[max(λ(t_start), floor), min(λ(t_end), ceiling)], defaults floor = −7 and ceiling = +7."""
    floor = DEFAULT_LAMBDA_FLOOR if lambda_floor is None else float(lambda_floor)
    ceiling = DEFAULT_LAMBDA_CEILING if lambda_ceiling is None else float(lambda_ceiling)
    lo = max(float(noise_schedule.lambda_(t_start)), floor)
    hi = min(float(noise_schedule.lambda_(t_end)), ceiling)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptstepsError(f"the λ window [{lo}, {hi}] is not finite after clipping; pass finite lambda_floor / lambda_ceiling.")
    if not hi > lo:
        raise OptstepsError(
            f"the clipped λ window [{lo:.4g}, {hi:.4g}] is empty (t_start = {t_start:.6g}, t_end = {t_end:.6g}, "
            f"floor = {floor}, ceiling = {ceiling}); pass lambda_floor < lambda_ceiling that bracket λ(t_start) < λ(t_end)."
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


def lambda_opt_schedule(noise_schedule, nfe: int, p: float = 1.0, trunc: int | None = None, orders=None,
                        t_start: float | None = None, t_end: float | None = None, lambda_floor: float | None = None,
                        error_model: str = "analytic", eps_fn: Callable | None = None,
                        lambda_ceiling: float | None = None, starts: Sequence = DEFAULT_STARTS,
                        model: str = "", solver: str = "unipc", min_gap: float | None = None,
                        maxiter: int = 200, probe_iter: int = 30):
    """The λ-optimized ``Schedule`` (method "lambda-opt") for ``noise_schedule`` and NFE K (docs/algorithms.md §2).

    Endpoints default to the family's default_t_start / default_t_end. The optimisation runs on the λ window
    of ``lambda_window`` (floor −7, ceiling +7 by default: flow endpoints are ±∞, cosine VP reaches ≈ −10);
    interior times are t(λ_i) with the schedule's exact inverse, endpoint times are exactly t_start, t_end.
    ``error_model``: "analytic" (ε = σ^p/α) or "empirical" (then ``eps_fn`` = ``empirical_eps(...)``).
    Extra fields: objective, objective_uniform_lambda, p, trunc, wall_time_s, orders, lambda_window,
    error_model, best_start.
    """
    from optsteps.core.schedule import from_lambdas

    nfe = _check_nfe(nfe)
    if error_model not in ERROR_MODELS:
        raise OptstepsError(f"unknown error_model {error_model!r}; use 'analytic' (σ^p/α) or 'empirical' (with eps_fn=empirical_eps(...)).")
    if error_model == "empirical" and eps_fn is None:
        raise OptstepsError("error_model='empirical' needs eps_fn; build it with empirical_eps(teacher_lambdas, errors).")
    if error_model == "analytic" and eps_fn is not None:
        raise OptstepsError("eps_fn was given with error_model='analytic'; pass error_model='empirical' to use it.")
    ts = noise_schedule.default_t_start() if t_start is None else float(t_start)
    te = noise_schedule.default_t_end() if t_end is None else float(t_end)
    noise_schedule.check_t([ts, te], "t_start/t_end")
    if not ts > te:
        raise OptstepsError(f"t_start = {ts:.6g} must be greater than t_end = {te:.6g} (sampling runs noise → data); swap them.")
    lo, hi = lambda_window(noise_schedule, ts, te, lambda_floor, lambda_ceiling)
    res = optimize_lambdas(lo, hi, nfe, p=p, trunc=trunc, orders=orders, starts=starts, eps_fn=eps_fn,
                           noise_schedule=noise_schedule, t_start=ts, t_end=te, min_gap=min_gap,
                           maxiter=maxiter, probe_iter=probe_iter)
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
    }
    return from_lambdas(res.lambdas, noise_schedule, ts, te, model=model, method="lambda-opt", solver=solver, extra=extra)
