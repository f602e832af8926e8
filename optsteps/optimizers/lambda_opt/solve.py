"""Starts (uniform-λ, uniform-t, Karras) and the constrained trust-region solve of the λ-optimizer in its
smooth epigraph form, multi-start, lowest F kept (docs/algorithms.md §2.6, §2.7)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from optsteps.errors import OptstepsError
from optsteps.optimizers.lambda_opt.objective import ObjectivePlan, objective_core, objective_terms
from optsteps.optimizers.lambda_opt.options import DEFAULT_STARTS, LambdaOptOptions
from optsteps.optimizers.lambda_opt.orders import check_nfe, check_orders, check_p, check_trunc


def _bound_gaps(h: np.ndarray, lo_g: float, hi_g: float, total: float) -> np.ndarray:
    """Gaps clipped into [lo_g, hi_g] and then shifted, within those bounds, until they sum to ``total``."""
    h = np.clip(h, lo_g, hi_g)
    for _ in range(100):
        r = total - h.sum()
        if abs(r) <= 1e-13 * abs(total):
            break
        room = (hi_g - h) if r > 0 else (h - lo_g)
        h = h + np.sign(r) * room * min(1.0, abs(r) / max(room.sum(), 1e-300))
    return h


def _make_feasible(lam: np.ndarray, gap: float, max_gap: float | None = None) -> np.ndarray:
    """Endpoints kept; interior clamped into the window and pushed apart to gaps ≥ ``gap`` (and, with
    ``max_gap``, gaps ≤ max_gap)."""
    lam = np.array(lam, dtype=np.float64)
    K = lam.size - 1
    lo, hi = lam[0], lam[-1]
    i = np.arange(K + 1)
    inner = slice(1, K)
    lam[inner] = np.clip(
        np.nan_to_num(lam[inner], nan=lo, posinf=hi, neginf=lo), lo + i[inner] * gap, hi - (K - i[inner]) * gap
    )
    for j in range(1, K):
        lam[j] = max(lam[j], lam[j - 1] + gap)
    for j in range(K - 1, 0, -1):
        lam[j] = min(lam[j], lam[j + 1] - gap)
    if max_gap is not None and np.diff(lam).max() > max_gap:
        h = _bound_gaps(np.diff(lam), gap, max_gap, hi - lo)
        lam[1:K] = lo + np.cumsum(h)[:-1]
    return lam


def start_lambdas(
    kind: str,
    lambda_start: float,
    lambda_end: float,
    nfe: int,
    noise_schedule=None,
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
) -> np.ndarray:
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
            raise OptstepsError(
                "the uniform_t start needs the noise schedule; pass noise_schedule= (and t_start/t_end)."
            )
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

    def __init__(
        self, plan: ObjectivePlan, lo: float, hi: float, p: float, eps, gap: float, max_gap: float | None = None
    ):
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
        ub = np.full(K, np.inf)
        if max_gap is not None:  # the guard λ_{i+1} − λ_i ≤ max_gap
            ub = np.full(K, float(max_gap))
            ub[0] += lo
            ub[-1] -= hi
        self.constraints = [LinearConstraint(A, lb, ub)]
        if m:
            self.constraints.append(NonlinearConstraint(self._cons, 0.0, np.inf, jac=self._cons_jac))
        self._key = None

    def full(self, z: np.ndarray) -> np.ndarray:
        return np.concatenate([[self.lo], z[: self.n], [self.hi]])

    def _eval(self, z: np.ndarray, want_grad: bool = True):
        key = (z.tobytes(), want_grad)
        if key != self._key:
            self._val = objective_terms(self.full(z), self.plan, self.p, self.eps, want_grad)
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

    def solve(self, lam0: np.ndarray, gtol: float, xtol: float, maxiter: int, gradient: str = "analytic", on_iter=None):
        """One trust-constr run from λ0; ``gradient="2-point"`` replaces every analytic derivative by
        scipy's forward differences (the benchmark's comparison; same problem otherwise). ``on_iter()``: called
        after each iteration."""
        import warnings

        from scipy.optimize import NonlinearConstraint, minimize

        c0 = objective_terms(lam0, self.plan, self.p, self.eps, False)[2][self.nodes]
        tau0 = np.abs(c0) * 1.05 + 1e-3 * (np.max(np.abs(c0)) if c0.size else 0.0) + 1e-12
        z0 = np.concatenate([lam0[1:-1], tau0])
        if gradient == "analytic":
            fun, jac, constraints = self.fun, True, self.constraints
        elif gradient == "2-point":
            fun, jac = self.fun_value, "2-point"
            constraints = self.constraints[:1]
            if self.m:
                constraints = constraints + [
                    NonlinearConstraint(lambda z: self._cons(z, False), 0.0, np.inf, jac="2-point")
                ]
        else:
            raise OptstepsError(f"unknown gradient {gradient!r}; use 'analytic' or '2-point'.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # BFGS "delta_grad == 0" notes on the linear τ part
            res = minimize(
                fun,
                z0,
                jac=jac,
                method="trust-constr",
                constraints=constraints,
                options={"gtol": gtol, "xtol": xtol, "maxiter": maxiter},
                callback=None if on_iter is None else lambda intermediate_result: on_iter(),
            )
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


def optimize_lambdas(
    lambda_start: float,
    lambda_end: float,
    nfe: int,
    options: LambdaOptOptions | None = None,
    *,
    eps_fn: Callable | None = None,
    noise_schedule=None,
    progress: Callable[[int, int], None] | None = None,
) -> LambdaOptResult:
    """Minimise F(λ_1 … λ_{K−1}) (docs/algorithms.md §2.5) with λ_0 = ``lambda_start`` and λ_K = ``lambda_end`` fixed.

    ``scipy.optimize.minimize(method="trust-constr")`` with the analytic gradient (``objective_and_grad``)
    on the smooth epigraph form of F (``_EpigraphProblem``) and one ``LinearConstraint``
    λ_{i+1} − λ_i ≥ δ (i = 0 … K−1), δ = ``options.min_gap`` (default 10⁻³ of the uniform spacing), so the
    order-2/3 weights never divide by zero (§2.6, §2.7). ``options.max_gap`` (default None: no bound) adds
    λ_{i+1} − λ_i ≤ max_gap to the same constraint (a guard against the T_c = 0 minimum's huge step, §2.5).
    ``options`` (``LambdaOptOptions``) also holds p, trunc, orders, the starts and the budget; its t_start /
    t_end place the "uniform_t" start.

    Multi-start from each entry of ``starts``: "uniform_lambda", "uniform_t" (skipped without
    ``noise_schedule``), "karras" (``start_lambdas``), or arrays of K + 1 λ. Budget: every start runs
    ``probe_iter`` iterations; the start with the lowest F then continues to ``maxiter`` iterations in all.
    The lowest F over all starts *and* all optimised points is kept, so the result's F is never above any
    start's. ``eps_fn`` replaces σ^p/α by a measured error model (``empirical_eps``). ``gradient="2-point"``
    swaps the analytic derivatives for finite differences (for benchmarks only). ``progress(done, budget)``: called
    after each trust-constr iteration with the iterations so far and the budget (an upper bound: starts stop when
    they converge), and once at the end with ``done`` = ``budget`` = the iterations run.

    Caveat (measured, see the module notes): with T_c = 0 (``trunc=0``, the paper's choice for K ≥ 7) the signed
    per-node accumulation lets F cancel the huge weights of nearly coincident nodes, and the lowest F lies in a
    degenerate region (a collapsed first gap, then one huge step) that this optimiser reaches and a weaker one
    misses; the schedule there is bad (docs/algorithms.md §2.5). ``max_gap`` keeps the solution out of it.
    """
    o = LambdaOptOptions() if options is None else options
    p, trunc, orders, starts, t_start, t_end = o.p, o.trunc, o.orders, o.starts, o.t_start, o.t_end
    min_gap, maxiter, probe_iter, gtol, xtol, gradient, max_gap = (
        o.min_gap,
        o.maxiter,
        o.probe_iter,
        o.gtol,
        o.xtol,
        o.gradient,
        o.max_gap,
    )
    if gradient not in ("analytic", "2-point"):
        raise OptstepsError(f"unknown gradient {gradient!r}; use 'analytic' or '2-point'.")
    t0 = time.perf_counter()
    nfe = check_nfe(nfe)
    pf = check_p(p)
    ks = check_orders(orders, nfe)
    tc = check_trunc(trunc, nfe)
    if eps_fn is not None and not callable(eps_fn):
        raise OptstepsError("eps_fn must be a callable λ ↦ ε, e.g. empirical_eps(lambdas, errors).")
    try:
        lo, hi = float(lambda_start), float(lambda_end)
    except (TypeError, ValueError):
        raise OptstepsError(
            f"lambda_start / lambda_end must be numbers, got {lambda_start!r}, {lambda_end!r}."
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptstepsError(
            f"λ window [{lo}, {hi}] is not finite; clip it (lambda_opt_schedule clips to [−7, 7] by default)."
        )
    if not hi > lo:
        raise OptstepsError(
            f"lambda_start = {lo:.6g} must be below lambda_end = {hi:.6g} (λ grows from noise to data); swap them."
        )
    gap = 1e-3 * (hi - lo) / nfe if min_gap is None else float(min_gap)
    if not (gap > 0 and gap * nfe < hi - lo):
        raise OptstepsError(
            f"min_gap = {gap:.3g} leaves no room for {nfe} steps in [{lo:.4g}, {hi:.4g}]; pass a smaller min_gap."
        )
    if max_gap is not None and not (float(max_gap) * nfe >= hi - lo and float(max_gap) > gap):
        raise OptstepsError(
            f"max_gap = {max_gap} leaves no room: {nfe} steps of at most max_gap must cover the window "
            f"[{lo:.4g}, {hi:.4g}]; pass max_gap ≥ (λ_end − λ_start)/K = {(hi - lo) / nfe:.4g}."
        )
    max_gap = None if max_gap is None else float(max_gap)
    if int(maxiter) < 1 or int(probe_iter) < 1:
        raise OptstepsError(f"maxiter = {maxiter}, probe_iter = {probe_iter}: both must be ≥ 1.")
    plan = ObjectivePlan(nfe, ks, tc)
    problem = _EpigraphProblem(plan, lo, hi, pf, eps_fn, gap, max_gap)

    def F(lam):
        return objective_core(lam, plan, pf, eps_fn, False)[0]

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
                raise OptstepsError(
                    f"start {j} has {lam0.size} λ values; pass K + 1 = {nfe + 1} "
                    "(endpoints are replaced by the window)."
                )
            lam0[0], lam0[-1] = lo, hi
        lam0 = _make_feasible(lam0, gap, max_gap)
        f0 = F(lam0)
        candidates.append((f0, lam0, name))
        runs.append({"name": name, "lam": lam0, "initial": f0, "final": f0, "nit": 0, "message": "not run"})
    if not runs:
        raise OptstepsError(
            "no start was usable; pass starts=('uniform_lambda', 'karras') or a noise_schedule for 'uniform_t'."
        )

    probe = min(int(probe_iter), int(maxiter)) if len(runs) > 1 else int(maxiter)
    budget = probe * len(runs) + int(maxiter) - probe
    iters_done = [0]

    def on_iter():
        iters_done[0] += 1
        progress(iters_done[0], max(budget, iters_done[0]))

    hook = None if progress is None else on_iter

    def run(r, iters):
        lam1, nit, message = problem.solve(
            r["lam"], gtol=gtol, xtol=xtol, maxiter=iters, gradient=gradient, on_iter=hook
        )
        lam1 = _make_feasible(lam1, gap, max_gap)  # interior-point iterates can violate the ordering by rounding
        f1 = F(lam1)
        if f1 <= r["final"]:
            r["lam"], r["final"] = lam1, f1
        r["nit"] += nit
        r["message"] = message
        candidates.append((f1, lam1, r["name"]))
        return message

    with _single_thread_blas():
        for r in runs:
            run(r, probe)
        lead = min(runs, key=lambda r: r["final"])
        rest = int(maxiter) - lead["nit"]
        if rest > 0 and "maximum number" in lead["message"]:
            run(lead, rest)
    if progress is not None:
        progress(iters_done[0], iters_done[0])
    best = min(candidates, key=lambda c: c[0])
    report = {
        r["name"]: {
            "initial": float(r["initial"]),
            "final": float(r["final"]),
            "nit": int(r["nit"]),
            "message": r["message"],
        }
        for r in runs
    }
    f_uniform = F(start_lambdas("uniform_lambda", lo, hi, nfe))
    return LambdaOptResult(
        lambdas=best[1],
        objective=float(best[0]),
        objective_uniform_lambda=float(f_uniform),
        wall_time_s=time.perf_counter() - t0,
        p=pf,
        trunc=tc,
        orders=ks,
        best_start=best[2],
        starts=report,
    )
