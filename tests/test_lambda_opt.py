"""The λ-optimizer (docs/algorithms.md §2): weights, objective, gradient, optimizer, schedules, error models."""

import json
import math

import numpy as np
import pytest

from optsteps.core.noise_schedules import EDM, RectifiedFlow, VPDiscrete
from optsteps.errors import OptstepsError
from optsteps.optimizers.lambda_opt import (
    DEFAULT_LAMBDA_CEILING,
    DEFAULT_LAMBDA_FLOOR,
    LambdaOptOptions,
    analytic_eps,
    default_orders,
    default_trunc,
    empirical_eps,
    exp_moments,
    fit_p,
    lagrange_weights,
    lambda_opt_schedule,
    lambda_window,
    objective,
    objective_and_grad,
    optimize_lambdas,
    schedule_lambdas,
    start_lambdas,
    step_weights,
)

FAMILIES = {
    "vp-linear": VPDiscrete("linear", 1e-4, 0.02, 1000),
    "vp-scaled_linear": VPDiscrete("scaled_linear", 0.00085, 0.012, 1000),
    "vp-cosine": VPDiscrete("squaredcos_cap_v2"),
    "edm": EDM(0.002, 80.0),
    "flow": RectifiedFlow(),
}
GL_X, GL_W = np.polynomial.legendre.leggauss(80)


def quad_weights(nodes, lam_next):
    """∫_{λ_s}^{λ_next} e^λ ℓ_j(λ) dλ by Gauss–Legendre (80 points), ℓ_j from the product formula."""
    nodes = np.asarray(nodes, dtype=float)
    a, b = nodes[-1], lam_next
    lam = a + (GL_X + 1) / 2 * (b - a)
    wq = GL_W * (b - a) / 2
    out = []
    for j in range(nodes.size):
        ell = np.ones_like(lam)
        for m in range(nodes.size):
            if m != j:
                ell *= (lam - nodes[m]) / (nodes[j] - nodes[m])
        out.append(np.sum(wq * np.exp(lam) * ell))
    return np.array(out)


def random_nodes(rng, k, lam_s):
    gaps = rng.uniform(0.1, 1.5, size=k - 1)
    return np.concatenate([lam_s - np.cumsum(gaps[::-1])[::-1], [lam_s]])


# ---------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("m", [0, 1, 2])
@pytest.mark.parametrize("h", [1e-8, 1e-4, 0.01, 0.3, 0.999, 1.0, 1.001, 2.5, 8.0])
def test_exp_moments_match_quadrature(m, h):
    u = (GL_X + 1) / 2 * h
    ref = np.sum(GL_W * h / 2 * u**m * np.exp(u))
    got = exp_moments(np.array([h]), 2)[m, 0]
    assert got == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("h", [1e-7, 1e-4, 1e-2, 0.2, 0.9, 1.1, 3.0, 7.0])
def test_closed_form_weights_match_quadrature_and_general_path(k, h):
    rng = np.random.default_rng(int(1000 * k + 10 * h))
    for lam_s in (-4.0, 0.3, 5.0):
        nodes = random_nodes(rng, k, lam_s)
        lam_next = lam_s + h
        h_actual = lam_next - lam_s  # the h the float λ's really carry
        lam = np.concatenate([nodes, [lam_next]])
        w = step_weights(lam, orders=[1] * (k - 1) + [k] if k > 1 else [1])[-1]
        ref = quad_weights(nodes, lam_s + h_actual)
        np.testing.assert_allclose(w, ref, rtol=1e-10, atol=0)
        np.testing.assert_allclose(lagrange_weights(nodes, lam_next), ref, rtol=1e-10, atol=0)
        # Σ_j ℓ_j ≡ 1: the weights sum to e^{λ_{s+1}} − e^{λ_s} = e^{λ_s} expm1(h)
        assert w.sum() == pytest.approx(math.exp(lam_s) * math.expm1(h_actual), rel=1e-12)


def test_weights_sum_on_a_full_schedule():
    rng = np.random.default_rng(7)
    lam = np.sort(rng.uniform(-6, 6, size=13))
    for s, w in enumerate(step_weights(lam)):
        assert w.size == default_orders(12)[s]
        assert w.sum() == pytest.approx(math.exp(lam[s + 1]) - math.exp(lam[s]), rel=1e-12)


def test_general_path_handles_higher_orders():
    nodes = np.array([-2.0, -1.3, -0.9, -0.2, 0.0])
    np.testing.assert_allclose(lagrange_weights(nodes, 0.8), quad_weights(nodes, 0.8), rtol=1e-10)


def test_order2_weights_reduce_to_dpmsolverpp_2m_form():
    """With equal steps the order-2 weights are the exponential-integrator Adams coefficients:
    w_s − w_{s−1} = G_0 + 2 G_1/h and the sum is G_0 (independent closed check)."""
    h = 0.7
    lam = np.array([0.0, h, 2 * h])
    w = step_weights(lam, orders=[1, 2])[1]
    g0 = math.exp(h) * math.expm1(h)
    g1 = math.exp(h) * (h * math.exp(h) - math.expm1(h))
    assert w[0] == pytest.approx(-g1 / h, rel=1e-13)
    assert w[1] == pytest.approx(g0 + g1 / h, rel=1e-13)


# ------------------------------------------------------------------------------------- order pattern
def test_default_orders_and_trunc():
    assert default_orders(2) == [1, 1]
    assert default_orders(3) == [1, 2, 1]
    assert default_orders(4) == [1, 2, 2, 1]
    assert default_orders(7) == [1, 2, 3, 3, 3, 2, 1]
    assert [default_trunc(k) for k in (2, 5, 6, 7, 20)] == [3, 3, 3, 3, 3]


# ------------------------------------------------------------------------------------------ objective
def test_error_model_values():
    lam = np.linspace(-8, 8, 33)
    np.testing.assert_allclose(analytic_eps(lam, 1), np.exp(-lam), rtol=1e-13)
    alpha, sigma = (1 + np.exp(-2 * lam)) ** -0.5, (1 + np.exp(2 * lam)) ** -0.5
    np.testing.assert_allclose(analytic_eps(lam, 2), sigma**2 / alpha, rtol=1e-12)


def test_objective_k2_closed_form():
    lam = np.array([-3.0, 0.5, 2.0])
    # orders 1,1 and ε = e^{−λ}: F = Σ_s (e^{λ_{s+1}} − e^{λ_s}) e^{−λ_s} = Σ_s expm1(h_s)
    assert objective(lam, p=1) == pytest.approx(math.expm1(3.5) + math.expm1(1.5), rel=1e-13)


def test_objective_terms_by_hand():
    lam = np.array([-3.0, -1.0, 0.2, 1.0, 2.5])
    eps = analytic_eps(lam, 2)
    w1 = lagrange_weights(lam[0:2], lam[2])  # step 1, order 2: nodes 0, 1
    w2 = lagrange_weights(lam[1:3], lam[3])  # step 2, order 2: nodes 1, 2
    first = math.expm1(lam[1] - lam[0]) * math.exp(lam[0]) * eps[0]
    last = math.expm1(lam[4] - lam[3]) * math.exp(lam[3]) * eps[3]
    # T_c = 3: steps 1 and 2 are norms
    f3 = first + last + math.hypot(w1[0] * eps[0], w1[1] * eps[1]) + math.hypot(w2[0] * eps[1], w2[1] * eps[2])
    assert objective(lam, p=2, trunc=3) == pytest.approx(f3, rel=1e-12)
    # T_c = 0: per-node signed accumulation before the absolute value
    f0 = first + last + abs(w1[0]) * eps[0] + abs(w1[1] + w2[0]) * eps[1] + abs(w2[1]) * eps[2]
    assert objective(lam, p=2, trunc=0) == pytest.approx(f0, rel=1e-12)
    # T_c = 2: step 1 a norm, step 2 accumulated
    f2 = first + last + math.hypot(w1[0] * eps[0], w1[1] * eps[1]) + abs(w2[0]) * eps[1] + abs(w2[1]) * eps[2]
    assert objective(lam, p=2, trunc=2) == pytest.approx(f2, rel=1e-12)
    # an explicit per-node error array is the same as the model
    assert objective(lam, p=2, trunc=0, eps=eps) == pytest.approx(f0, rel=1e-12)


@pytest.mark.parametrize(
    "nfe,p,trunc,orders",
    [
        (3, 1, None, None),
        (5, 1, None, None),
        (6, 2, None, None),
        (8, 1, None, None),
        (8, 2, 3, None),
        (12, 2, None, None),
        (20, 1, None, None),
        (20, 2, 5, None),
        (7, 1.5, 0, [1, 1, 2, 3, 1, 2, 1]),
    ],
)
def test_gradient_matches_central_differences(nfe, p, trunc, orders):
    rng = np.random.default_rng(nfe * 31 + int(10 * p))
    for _ in range(3):
        lam = np.cumsum(np.concatenate([[rng.uniform(-6, -3)], rng.uniform(0.1, 1.6, size=nfe)]))
        f, g = objective_and_grad(lam, p=p, trunc=trunc, orders=orders)
        assert f == pytest.approx(objective(lam, p=p, trunc=trunc, orders=orders), rel=1e-14)
        fd = np.empty_like(lam)
        for i in range(lam.size):
            d = 1e-6 * max(1.0, abs(lam[i]))
            e = np.zeros_like(lam)
            e[i] = d
            fd[i] = (
                objective(lam + e, p=p, trunc=trunc, orders=orders)
                - objective(lam - e, p=p, trunc=trunc, orders=orders)
            ) / (2 * d)
        assert np.max(np.abs(g - fd)) <= 1e-5 * np.max(np.abs(fd))


def test_gradient_with_a_callable_error_model():
    lam = np.array([-4.0, -2.5, -1.0, 0.3, 1.2, 2.0, 3.1])
    eps = lambda x: np.exp(-0.7 * x) * (1 + 0.1 * np.sin(x))  # noqa: E731 (no .dlog: numerical d log ε)
    f, g = objective_and_grad(lam, eps=eps)
    fd = np.array(
        [(objective(lam + 1e-6 * e, eps=eps) - objective(lam - 1e-6 * e, eps=eps)) / 2e-6 for e in np.eye(lam.size)]
    )
    assert np.max(np.abs(g - fd)) <= 1e-5 * np.max(np.abs(fd))


# ------------------------------------------------------------------------------------------ optimizer
def test_k2_optimum_is_the_midpoint():
    # F = expm1(λ1 − λ0) + expm1(λ2 − λ1) is convex with its minimum at the midpoint
    res = optimize_lambdas(-4.0, 3.0, 2, LambdaOptOptions(p=1))
    assert res.lambdas[1] == pytest.approx(-0.5, abs=1e-5)
    assert res.objective == pytest.approx(2 * math.expm1(3.5), rel=1e-9)


def test_all_starts_reach_the_same_optimum_for_small_nfe():
    ns = FAMILIES["vp-linear"]
    lo, hi = lambda_window(ns, ns.default_t_start(), ns.default_t_end())
    res = optimize_lambdas(lo, hi, 5, LambdaOptOptions(p=1, probe_iter=200), noise_schedule=ns)
    finals = [r["final"] for r in res.starts.values()]
    assert len(finals) == 3
    assert max(finals) == pytest.approx(min(finals), rel=1e-6)
    assert res.objective < 0.5 * res.objective_uniform_lambda
    assert np.all(np.diff(res.lambdas) > 0)


def baseline_lambdas(ns, nfe):
    """uniform-λ, uniform-t and Karras (ρ = 7 on σ = e^{−λ}) in the schedule's clipped λ window."""
    ts, te = ns.default_t_start(), ns.default_t_end()
    lo, hi = lambda_window(ns, ts, te)
    i = np.arange(nfe + 1) / nfe
    uni_t = np.clip(ns.lambda_(np.linspace(ts, te, nfe + 1)).numpy(), lo, hi)
    uni_t[0], uni_t[-1] = lo, hi
    smax, smin = math.exp(-lo / 7), math.exp(-hi / 7)
    karras = -7 * np.log(smax + i * (smin - smax))
    karras[0], karras[-1] = lo, hi
    return {"uniform_lambda": lo + i * (hi - lo), "uniform_t": uni_t, "karras": karras}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bound_not_above_baselines(family):
    """Every NFE in {3, …, 20}: F(optimized) ≤ F(uniform-λ), F(uniform-t), F(Karras), and a strict gain
    over uniform-λ, for p = 1 (and p = 2 at three of the NFEs). A reduced iteration budget keeps this
    fast; ≤ holds at any budget by construction, the strict gain needs a working optimizer."""
    ns = FAMILIES[family]
    for nfe in (3, 4, 5, 6, 8, 10, 15, 20):
        for p in (1, 2) if nfe in (4, 8, 15) else (1,):
            sched = lambda_opt_schedule(ns, nfe, "unipc", LambdaOptOptions(p=p, maxiter=40, probe_iter=10))
            f_opt = objective(schedule_lambdas(sched), p=p)
            assert f_opt == pytest.approx(sched.extra["objective"], rel=1e-8)
            for name, lam in baseline_lambdas(ns, nfe).items():
                f_base = objective(lam, p=p)
                assert f_opt <= f_base * (1 + 1e-9), (family, nfe, p, name, f_opt, f_base)
            assert f_opt < 0.99 * sched.extra["objective_uniform_lambda"]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("nfe", [2, 50])
def test_schedule_endpoints_exact_and_descending(family, nfe):
    ns = FAMILIES[family]
    sched = lambda_opt_schedule(ns, nfe, "unipc", LambdaOptOptions(maxiter=8, probe_iter=4))
    t = np.array(sched.t)
    assert t[0] == ns.default_t_start() and t[-1] == ns.default_t_end()
    assert t.size == nfe + 1 and np.all(np.diff(t) < 0)
    assert sched.method == "lambda-opt" and sched.nfe == nfe
    for key in ("objective", "objective_uniform_lambda", "p", "trunc", "wall_time_s"):
        assert key in sched.extra
    json.loads(sched.to_json())  # JSON-serialisable extras


def test_custom_endpoints_and_window():
    ns = FAMILIES["flow"]
    sched = lambda_opt_schedule(ns, 6, "unipc", LambdaOptOptions(t_start=0.98, t_end=0.01, maxiter=30))
    assert sched.t[0] == 0.98 and sched.t[-1] == 0.01
    lo, hi = sched.extra["lambda_window"]
    assert lo == pytest.approx(math.log(0.02 / 0.98)) and hi == pytest.approx(math.log(0.99 / 0.01))
    # flow at t = 1 / t = 0 and cosine VP at t = 1 are clipped to the default floor / ceiling
    assert lambda_window(ns, 1.0, 0.0) == (DEFAULT_LAMBDA_FLOOR, DEFAULT_LAMBDA_CEILING)
    cos = FAMILIES["vp-cosine"]
    assert float(cos.lambda_(1.0)) < DEFAULT_LAMBDA_FLOOR
    assert lambda_window(cos, 1.0, 1e-3)[0] == DEFAULT_LAMBDA_FLOOR
    assert lambda_window(cos, 1.0, 1e-3, lambda_floor=-12)[0] == pytest.approx(float(cos.lambda_(1.0)))


def test_min_gap_is_respected():
    res = optimize_lambdas(-5.0, 4.6, 10, LambdaOptOptions(min_gap=0.3, maxiter=60))
    assert np.min(np.diff(res.lambdas)) >= 0.3 * (1 - 1e-9)


def test_max_gap_guard():
    """max_gap bounds every λ gap; at T_c = 0 (whose minimum takes one huge step, docs/algorithms.md §2.5) it
    binds, F rises above the unguarded minimum, and the schedule stays feasible; at T_c = 3, K = 10 the optimum's
    largest gap (1.70 uniform steps) is below a bound of 2 uniform steps: the same optimum."""
    lo, hi, k = -5.059, 4.605, 10
    uni = (hi - lo) / k
    free = optimize_lambdas(lo, hi, k, LambdaOptOptions(trunc=0, maxiter=80))
    assert np.diff(free.lambdas).max() > 3 * uni  # the degenerate minimum's huge step
    guarded = optimize_lambdas(lo, hi, k, LambdaOptOptions(trunc=0, max_gap=2 * uni, maxiter=80))
    h = np.diff(guarded.lambdas)
    assert h.max() <= 2 * uni * (1 + 1e-9) and h.min() > 0 and guarded.lambdas[0] == lo and guarded.lambdas[-1] == hi
    assert guarded.objective > free.objective
    assert guarded.objective <= guarded.objective_uniform_lambda  # uniform-λ is feasible: never worse than it
    t3 = optimize_lambdas(lo, hi, k, LambdaOptOptions(trunc=3, maxiter=80))
    t3g = optimize_lambdas(lo, hi, k, LambdaOptOptions(trunc=3, max_gap=2 * uni, maxiter=80))
    assert t3g.objective == pytest.approx(t3.objective, rel=2e-4)  # both within the iteration budget of 19.232
    with pytest.raises(OptstepsError, match="max_gap .* no room"):
        optimize_lambdas(lo, hi, k, LambdaOptOptions(max_gap=0.9 * uni))


def test_starts():
    ns = FAMILIES["edm"]
    lo, hi = lambda_window(ns, 80.0, 0.002)
    k = start_lambdas("karras", lo, hi, 4)
    sig = (80 ** (1 / 7) + np.arange(5) / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(k, -np.log(sig), rtol=1e-12)
    ut = start_lambdas("uniform_t", lo, hi, 4, ns, 80.0, 0.002)
    np.testing.assert_allclose(ut[1:-1], -np.log(np.linspace(80, 0.002, 5)[1:-1]), rtol=1e-12)


# ---------------------------------------------------------------------------------- empirical errors
def test_empirical_eps_interpolates_log_linearly():
    lam = np.array([-3.0, -1.0, 2.0, 4.0])
    err = np.array([5.0, 2.0, 0.4, 0.1])
    fn = empirical_eps(lam[::-1], err[::-1])  # order of the teacher grid does not matter
    np.testing.assert_allclose(fn(lam), err, rtol=1e-13)
    assert fn(0.5) == pytest.approx(math.exp(0.5 * (math.log(2.0) + math.log(0.4))), rel=1e-13)
    assert fn(-10.0) == pytest.approx(5.0) and fn(10.0) == pytest.approx(0.1)
    x = np.array([-2.0, 0.0, 3.0])
    d = 1e-6
    np.testing.assert_allclose(fn.dlog(x), (np.log(fn(x + d)) - np.log(fn(x - d))) / (2 * d), rtol=1e-6)
    # non-finite λ (flow endpoints) are dropped
    fn2 = empirical_eps([-np.inf, -1.0, 2.0, np.inf], [9.0, 2.0, 0.4, 9.0])
    assert fn2(0.5) == pytest.approx(fn(0.5), rel=1e-13)


def test_fit_p_recovers_exponent():
    lam = np.linspace(-5, 5, 40)
    err = 3.0 * analytic_eps(lam, 1.7)
    fit = fit_p(lam, err)
    assert fit.p == pytest.approx(1.7, abs=1e-10) and fit.scale == pytest.approx(3.0, rel=1e-10)
    assert fit.rms < 1e-10 and float(fit) == fit.p


def test_optimizer_with_empirical_errors_matches_analytic_model():
    lam_teacher = np.linspace(-6, 6, 400)
    fn = empirical_eps(lam_teacher, 0.5 * analytic_eps(lam_teacher, 2))
    a = optimize_lambdas(-4.0, 3.0, 5, LambdaOptOptions(p=2, probe_iter=200))
    b = optimize_lambdas(-4.0, 3.0, 5, LambdaOptOptions(probe_iter=200), eps_fn=fn)
    np.testing.assert_allclose(a.lambdas, b.lambdas, atol=2e-3)
    assert b.objective == pytest.approx(0.5 * a.objective, rel=1e-3)
    ns = FAMILIES["vp-linear"]
    s = lambda_opt_schedule(ns, 4, "unipc", LambdaOptOptions(error_model="empirical", maxiter=40), eps_fn=fn)
    assert s.extra["error_model"] == "empirical"


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("nfe", [1, 0, -3, 2.5, True])
def test_bad_nfe(nfe):
    with pytest.raises(OptstepsError, match="NFE K ≥ 2"):
        lambda_opt_schedule(FAMILIES["vp-linear"], nfe, "unipc")
    with pytest.raises(OptstepsError, match="NFE K ≥ 2"):
        optimize_lambdas(-1.0, 1.0, nfe)


@pytest.mark.parametrize("p", [-1, -1e-9, float("nan"), float("inf"), "two"])
def test_bad_p(p):
    with pytest.raises(OptstepsError, match="p = 1 .*p = 2"):
        optimize_lambdas(-1.0, 1.0, 4, LambdaOptOptions(p=p))
    with pytest.raises(OptstepsError, match="p = 1"):
        objective(np.linspace(-1, 1, 5), p=p)


@pytest.mark.parametrize(
    "orders,match",
    [
        ([2, 1, 1, 1], r"orders\[0\] = 2 > s \+ 1 = 1.*lower it to at most 1"),
        ([1, 3, 1, 1], r"orders\[1\] = 3 > s \+ 1 = 2"),
        ([1, 2, 4, 1], r"orders\[2\] = 4 is not in 1..3"),
        ([1, 0, 1, 1], r"orders\[1\] = 0 is not in 1..3"),
        ([1, 2, 1], r"3 entries but NFE = 4"),
        ([1, 1.5, 1, 1], r"integers"),
        ("abc", r"not a list of integers"),
    ],
)
def test_bad_orders(orders, match):
    with pytest.raises(OptstepsError, match=match):
        optimize_lambdas(-1.0, 1.0, 4, LambdaOptOptions(orders=orders))
    with pytest.raises(OptstepsError, match=match):
        objective(np.linspace(-1, 1, 5), orders=orders)


def test_bad_error_model_and_window():
    ns = FAMILIES["vp-linear"]
    with pytest.raises(OptstepsError, match="unknown error_model 'magic'.*'analytic'"):
        lambda_opt_schedule(ns, 4, "unipc", LambdaOptOptions(error_model="magic"))
    with pytest.raises(OptstepsError, match="needs eps_fn.*empirical_eps"):
        lambda_opt_schedule(ns, 4, "unipc", LambdaOptOptions(error_model="empirical"))
    with pytest.raises(OptstepsError, match="error_model='empirical'"):
        lambda_opt_schedule(ns, 4, "unipc", eps_fn=lambda x: np.exp(-x))
    with pytest.raises(OptstepsError, match="not finite after clipping.*lambda_floor"):
        lambda_opt_schedule(FAMILIES["flow"], 4, "unipc", LambdaOptOptions(lambda_floor=-np.inf))
    with pytest.raises(OptstepsError, match="not finite after clipping"):
        lambda_opt_schedule(FAMILIES["flow"], 4, "unipc", LambdaOptOptions(lambda_ceiling=np.inf))
    with pytest.raises(OptstepsError, match="window .* is empty"):
        lambda_opt_schedule(ns, 4, "unipc", LambdaOptOptions(lambda_floor=6.0))
    with pytest.raises(OptstepsError, match="must be greater than t_end.*swap"):
        lambda_opt_schedule(ns, 4, "unipc", LambdaOptOptions(t_start=0.1, t_end=0.5))
    with pytest.raises(OptstepsError, match="not finite.*clip"):
        optimize_lambdas(-np.inf, 1.0, 4)
    with pytest.raises(OptstepsError, match="must be below lambda_end.*swap"):
        optimize_lambdas(2.0, 1.0, 4)
    with pytest.raises(OptstepsError, match="min_gap .* no room"):
        optimize_lambdas(0.0, 1.0, 4, LambdaOptOptions(min_gap=0.5))


def test_bad_lambdas_and_measurements():
    with pytest.raises(OptstepsError, match="strictly increasing.*without duplicates"):
        objective([0.0, 1.0, 1.0, 2.0])
    with pytest.raises(OptstepsError, match="finite.*clip"):
        objective([-np.inf, 0.0, 1.0])
    with pytest.raises(OptstepsError, match="errors must be finite and > 0"):
        empirical_eps([0.0, 1.0, 2.0], [1.0, 0.0, 2.0])
    with pytest.raises(OptstepsError, match="at least 2 teacher times"):
        empirical_eps([np.inf, 1.0], [1.0, 2.0])
    with pytest.raises(OptstepsError, match="one mean error per teacher time"):
        fit_p([0.0, 1.0], [1.0])
    with pytest.raises(OptstepsError, match="duplicate λ"):
        empirical_eps([0.0, 1.0, 1.0], [1.0, 2.0, 3.0])
