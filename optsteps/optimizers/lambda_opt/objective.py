"""The λ-optimizer's objective F(λ) — the bound on the accumulated solver error with truncNum T_c — and its
exact gradient (docs/algorithms.md §2.5)."""

from __future__ import annotations

import numpy as np

from optsteps.errors import OptstepsError
from optsteps.optimizers.lambda_opt.error_models import eps_and_dlog
from optsteps.optimizers.lambda_opt.orders import check_lambdas, check_orders, check_p, check_trunc
from optsteps.optimizers.lambda_opt.weights import closed_form_weights, local_weight_jacobian


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


class ObjectivePlan:
    """Index structure for (K, orders, T_c): steps grouped by order, and each step's term of F."""

    def __init__(self, nfe: int, orders: list[int], trunc: int):
        self.nfe, self.orders, self.trunc = nfe, orders, trunc
        self.n_nodes = nfe + 1
        ks = np.asarray(orders)
        self.groups = [_Group(k, np.nonzero(ks == k)[0], trunc, nfe + 1) for k in (1, 2, 3) if np.any(ks == k)]


def objective_terms(lam: np.ndarray, plan: ObjectivePlan, p: float, eps, want_grad: bool):
    """F split as F = F_smooth + Σ_n |c_n| (docs/algorithms.md §2.5):

    F_smooth = Σ_{k_s = 1} w_{s,s} ε_s + Σ_{k_s ≥ 2, s < T_c} ‖(w_{s,j} ε_j)_j‖₂   (smooth: w_{s,s} > 0, ε > 0),
    c_n = ε_n Σ_{s: k_s ≥ 2, s ≥ T_c, n ∈ nodes(s)} w_{s,n}                        (the accumulated term).

    Returns (F_smooth, ∇F_smooth, c, J) with J[n, i] = ∂c_n/∂λ_i (None, None when not ``want_grad``).
    """
    e, dlog = eps_and_dlog(lam, p, eps)
    nn = plan.n_nodes
    f_smooth = 0.0
    acc = np.zeros(nn)  # A_n = Σ w_{s,n} over the accumulated steps
    g_w = np.zeros(nn)  # ∂F_smooth/∂λ via the weights
    g_e = np.zeros(nn)  # ∂F_smooth/∂ε
    jac = np.zeros(nn * nn) if want_grad else None
    for gr in plan.groups:
        X, xn = lam[gr.idx], lam[gr.nxt]
        W = closed_form_weights(X, xn)
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
        dW = local_weight_jacobian(X, xn, W, gr.others)
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


def objective_core(lam: np.ndarray, plan: ObjectivePlan, p: float, eps, want_grad: bool):
    """F and ∇F (the gradient uses sign(c_n) at the kinks of the accumulated term, sign(0) = 0)."""
    f_smooth, g_smooth, c, J = objective_terms(lam, plan, p, eps, want_grad)
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


def objective_and_grad(
    lambdas_full, p: float = 1.0, trunc: int | None = None, orders=None, eps=None, want_grad: bool = True
):
    """(F, ∂F/∂λ_0 … ∂F/∂λ_K): F of ``objective`` and its exact gradient (the interior entries 1 … K−1 are
    the optimizer's). Derivation: with g_{s,j} = ∂F/∂w_{s,j} (sign / normalised-vector / accumulated-sign
    factors of the three terms) and the Lagrange identity ∂ℓ_j/∂λ_i = −ℓ_j'(λ_i) ℓ_i,
      ∂w_{s,j}/∂λ_i = −ℓ_j'(λ_i) w_{s,i} − δ_{is} δ_{js} e^{λ_s}   (i a node of step s),
      ∂w_{s,j}/∂λ_{s+1} = e^{λ_{s+1}} ℓ_j(λ_{s+1}),
    plus ∂ε_n/∂λ_n = ε_n · d log ε/dλ. F is piecewise smooth; at a kink the one-sided sign 0 is used.
    """
    lam = check_lambdas(lambdas_full)
    nfe = lam.size - 1
    pf = check_p(p)
    plan = ObjectivePlan(nfe, check_orders(orders, nfe), check_trunc(trunc, nfe))
    if eps is not None and not callable(eps) and np.asarray(eps).size != lam.size:
        raise OptstepsError(
            f"eps has {np.asarray(eps).size} values for {lam.size} nodes; pass K + 1 per-node errors or a callable."
        )
    return objective_core(lam, plan, pf, eps, want_grad)
