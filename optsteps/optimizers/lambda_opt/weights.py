"""Exponential-integrator Lagrange weights of the λ-optimizer (docs/algorithms.md §2.4):
H_m(h) = ∫_0^h u^m e^u du and w_{s,j} = ∫_{λ_s}^{λ_{s+1}} e^λ ℓ_{s,j}(λ) dλ, in closed form and stable for small h."""

from __future__ import annotations

import math

import numpy as np

from optsteps.errors import OptstepsError
from optsteps.optimizers.lambda_opt.orders import check_lambdas, check_orders


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


def closed_form_weights(X: np.ndarray, xn: np.ndarray) -> np.ndarray:
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
        return np.stack(
            [
                (G[2] + b * G[1]) / (a * ab),
                -(G[2] + ab * G[1]) / (a * b),
                (G[2] + (a + 2 * b) * G[1] + b * ab * G[0]) / (b * ab),
            ],
            axis=1,
        )
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


def step_weights(lambdas_full, orders=None) -> list[np.ndarray]:
    """Per step s the weights (w_{s,s−k_s+1}, …, w_{s,s}) of docs/algorithms.md §2.4 (closed forms, k ≤ 3)."""
    lam = check_lambdas(lambdas_full, min_size=2)
    nfe = lam.size - 1
    ks = check_orders(orders, nfe)
    out = []
    for s, k in enumerate(ks):
        out.append(closed_form_weights(lam[None, s - k + 1 : s + 1], lam[s + 1 : s + 2])[0])
    return out


def local_weight_jacobian(X: np.ndarray, xn: np.ndarray, W: np.ndarray, others=None) -> np.ndarray:
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
