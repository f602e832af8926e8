"""The start as a searched variable in OSS and GITS (issue 20) and the objective choice, on the analytic
Gaussian mixture, where brute force over (start index, start-state rule, index path) is exact.

The teacher's first state is x̄_0 = σ_{t_0} ε (as the teacher stage writes it); a start candidate (j, rule)
holds f·x̄_0 with f = σ_{t_j}/σ_{t_0} (scaled) or σ_{t_max}/σ_{t_0} (raw), i.e. the state that
``core.schedule.initial_state`` gives the schedule's sampler."""

import random

import pytest
import torch

import optsteps.optimizers.oss as oss
from optsteps.core.denoisers import CountingDenoiser
from optsteps.core.noise_schedules import EDM, RectifiedFlow, VPDiscrete
from optsteps.core.schedule import Schedule, initial_state
from optsteps.core.solvers import sample
from optsteps.errors import OptstepsError
from optsteps.models.gmm import GaussianMixture, GMMDenoiser
from optsteps.optimizers.oss.dp import layer_costs, layer_nodes
from optsteps.optimizers.oss.engine import Engine
from optsteps.optimizers.oss.starts import start_factor

SOLVERS = ("ddim", "dpmpp2m", "unipc")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def opts(**kw):
    """The search's options; refinement moves unbounded (a radius ≥ N) unless the test gives one."""
    return oss.OSSOptions(**{"refine_radius": 10**6, **kw})


def make_teacher(den, ns, n, s, dim, seed=0):
    t = torch.linspace(ns.default_t_start(), ns.default_t_end(), n + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s, dim, generator=g, dtype=torch.float64) * ns.sigma(t[0])
    states = []
    out = sample(den, x, Schedule(t, ns), "ddim", callback=lambda i, xi, x0: states.append(xi.clone()))
    return t, torch.stack(states + [out])


def setup(family="flow", n=12, s=6, dim=3, comps=3, seed=0):
    ns = VPDiscrete() if family == "vp" else RectifiedFlow()
    gmm = GaussianMixture.random(comps, dim, seed=seed)
    den = GMMDenoiser(gmm, ns)
    t, states = make_teacher(den, ns, n, s, dim, seed)
    return ns, den, t, states


def final(den, t, states, path, ns, solver, rule):
    return oss.run_student(den, states[0], t, path, ns, solver, start_state=rule)


def distance(out, end, objective):
    d = out - end
    return (d**2).mean().item() if objective == "mse" else d.flatten(1).norm(dim=1).mean().item()


def brute_force(den, t, states, ns, solver, nfe, window, objective):
    """min over start index j ≤ window, both rules, and every path j < i_1 < … < N of the final distance."""
    n = len(t) - 1
    best = (float("inf"), None, None)
    for j in range(min(window, n - nfe) + 1):
        for rule in ("scaled", "raw"):
            if j == 0 and rule == "raw":  # the same state as scaled at t_max
                continue
            for p in oss.all_paths(n - j, nfe):
                path = [v + j for v in p]
                e = distance(final(den, t, states, path, ns, solver, rule), states[-1], objective)
                if e < best[0]:
                    best = (e, path, rule)
    return best


# ---- the start candidates and the sampler's own start ---------------------------------------------------
def test_start_candidates_and_factors():
    ns = RectifiedFlow()
    t = torch.linspace(1, 0, 11, dtype=torch.float64)
    c = oss.start_candidates(ns, t, 3)
    assert [(s.index, s.rule) for s in c] == [
        (0, "scaled"),
        (1, "scaled"),
        (1, "raw"),
        (2, "scaled"),
        (2, "raw"),
        (3, "scaled"),
        (3, "raw"),
    ]
    assert c[0].factor == 1.0 and c[2].factor == 1.0  # flow: σ_{t_max} = 1, the raw noise is x̄_0 itself
    assert c[1].factor == pytest.approx(0.9) and c[5].factor == pytest.approx(0.7)
    assert oss.start_candidates(ns, t, 0) == [oss.Start(0, "scaled", 1.0)]
    edm = EDM()
    te = torch.tensor([80.0, 60.0, 40.0, 1.0], dtype=torch.float64)
    ce = oss.start_candidates(edm, te, 1)
    assert [(s.index, s.rule) for s in ce] == [(0, "scaled"), (1, "scaled"), (1, "raw")]
    assert [s.factor for s in ce] == pytest.approx([1.0, 0.75, 1.0], rel=1e-12)  # EDM raw: σ_max ε at σ = 60


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_search_start_is_the_samplers_start(family):
    """The state a start candidate holds is what core.schedule.initial_state gives the schedule's sampler."""
    ns, den, t, states = setup(family, n=10, s=4)
    eps = states[0] / float(ns.sigma(t[0]))
    for j, rule in ((0, "scaled"), (2, "scaled"), (2, "raw"), (4, "raw")):
        path = [j, 6, 8, 10]
        sched = Schedule(t[path], ns, extra={"start_state": rule} if rule == "raw" else {})
        x0 = initial_state(eps, sched)
        assert torch.allclose(x0, states[0] * start_factor(ns, t, j, rule), rtol=1e-12, atol=0)
        for solver in SOLVERS:
            ours = final(den, t, states, path, ns, solver, rule)
            theirs = sample(den, x0, sched, oss.student_spec(solver))
            assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


# ---- the extended DP -------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_dp_evaluations_with_a_start_window(solver):
    """Layer 0 holds 1 + 2w start candidates (VP: raw ≠ scaled below t_max): 1 + 2w + (K − 1)(N − K + 1)
    evaluations per sample, one batched call per layer."""
    ns, den, t, states = setup("vp", n=20, s=5)
    S = states.shape[1]
    for k, w in ((1, 3), (3, 2), (5, 4), (4, 30)):
        counter = CountingDenoiser(den)
        res = oss.oss_search(t, states, counter, ns, k, solver, opts(refine=False, start_window=w))
        wk = min(w, 20 - k)
        nodes = 1 + 2 * wk + (k - 1) * (20 - k + 1)
        assert res.model_evals == nodes and counter.samples == nodes * S and counter.calls == k
        assert res.schedule.extra["start_window"] == wk
        assert res.path[0] <= wk


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_reported_cost_equals_the_traced_start_and_path(family, solver):
    ns, den, t, states = setup(family, n=12, s=5, seed=2)
    for k in (1, 2, 4):
        for objective in ("mse", "l2"):
            res = oss.oss_search(t, states, den, ns, k, solver, opts(refine=False, start_window=4, objective=objective))
            p, rule = res.path, res.start_state
            out = final(den, t, states, p, ns, solver, rule)
            assert res.cost == pytest.approx(distance(out, states[-1], "mse"), rel=1e-10)
            assert res.objective_value == pytest.approx(distance(out, states[-1], objective), rel=1e-10)
            sched = res.schedule
            assert sched.t[0] == t[p[0]].item() and sched.start_state == rule
            assert ("start_state" in sched.extra) == (rule == "raw")
            assert sched.extra["objective"] == objective
            Schedule.from_json(sched.to_json())  # a valid schedule JSON


def test_layer_costs_with_repeated_start_indices():
    """Layer-0 costs from start candidates that share an index (two rules) equal the direct candidate errors,
    with and without the carried inner products."""
    ns, den, t, states = setup("vp", n=9, s=4)
    starts = oss.start_candidates(ns, t, 2)
    for tracked in (False, True):
        for solver in SOLVERS:
            eng = Engine(den, ns, t, 4, solver, True, None, None)
            if tracked:
                eng.xall = states.reshape(10, -1)
                eng.xall_sq = eng.xall.pow(2).sum(1)
            ev = eng.process(eng.root(states[0], starts))
            targets = layer_nodes(1, 9, 4)
            sums = layer_costs(eng, ev, 0, targets, states, "state", False, {})
            for a, st in enumerate(starts):
                y0 = states[0] * st.factor
                for jj, j in enumerate(targets.tolist()):
                    if j <= st.index:
                        assert torch.isinf(sums[a, jj]).all()
                        continue
                    y = sample(den, y0, Schedule(t[[st.index, j]], ns), "ddim")
                    direct = ((y - states[j]) ** 2).sum()
                    assert sums[a, jj, 0].item() == pytest.approx(direct.item(), rel=1e-8, abs=1e-12), (tracked, a, j)


def test_extended_dp_and_refinement_reach_the_brute_force_optimum():
    """Small random cases (N ≤ 11, K ≤ 4, window 1-3, VP and flow, three students, both objectives):
    DP + refinement reaches the brute-force optimum over start index × rule × path in ≥ 95 %."""
    rng = random.Random(20)
    n_cases, hits_dp, hits = 100, 0, 0
    misses = []
    for c in range(n_cases):
        family = ("vp", "flow")[c % 2]
        solver = SOLVERS[(c // 2) % 3]
        objective = ("mse", "l2")[(c // 6) % 2]
        n = rng.randint(6, 11)
        k = rng.randint(2, min(4, n - 2))
        w = rng.randint(1, 3)
        ns = VPDiscrete() if family == "vp" else RectifiedFlow()
        gmm = GaussianMixture.random(rng.randint(1, 4), rng.randint(1, 3), seed=300 + c)
        den = GMMDenoiser(gmm, ns)
        t, states = make_teacher(den, ns, n, 5, gmm.dim, seed=c)
        brute, _, _ = brute_force(den, t, states, ns, solver, k, w, objective)
        res = oss.oss_search(t, states, den, ns, k, solver, opts(start_window=w, objective=objective))
        got = distance(final(den, t, states, res.path, ns, solver, res.start_state), states[-1], objective)
        assert res.objective_value == pytest.approx(got, rel=1e-10)
        dp = res.dp_cost if objective == "mse" else res.schedule.extra["dp_distill_l2"]
        tol = brute * (1 + 1e-9) + 1e-300
        hits_dp += dp <= tol
        hits += got <= tol
        if got > tol:
            misses.append((c, family, solver, objective, n, k, w, got / brute))
    print(
        f"\nextended OSS brute-force hit rate over {n_cases} cases (start window × rule × paths): DP alone "
        f"{hits_dp}%, DP + refinement {hits}%; misses {misses}"
    )
    assert hits >= 95


def test_per_sample_and_shards_with_a_start_window():
    ns, den, t, states = setup("flow", n=14, s=6, seed=4)
    whole = oss.oss_search(t, states, den, ns, 4, "unipc", opts(refine=False, start_window=3))
    shards = [states[:, :2], states[:, 2:3], states[:, 3:]]
    listed = oss.oss_search(t, shards, den, ns, 4, "unipc", opts(refine=False, start_window=3))
    assert listed.path == whole.path and listed.start_state == whole.start_state
    assert listed.cost == pytest.approx(whole.cost, rel=1e-9)
    for objective in ("mse", "l2"):
        a = oss.oss_search(t, states, den, ns, 4, "dpmpp2m", opts(refine=False, start_window=3, objective=objective))
        b = oss.oss_search(t, shards, den, ns, 4, "dpmpp2m", opts(refine=False, start_window=3, objective=objective))
        assert a.path == b.path and a.objective_value == pytest.approx(b.objective_value, rel=1e-9)
    per = oss.oss_search(t, shards, den, ns, 3, "ddim", opts(mode="per_sample", refine=False, start_window=3))
    paths = [
        oss.oss_search(
            t, states[:, s : s + 1], den, ns, 3, "ddim", opts(mode="per_sample", refine=False, start_window=3)
        ).path
        for s in range(6)
    ]
    assert per.dp_path == oss.median_path(paths)
    out = final(den, t, states, per.path, ns, "ddim", per.start_state)
    assert per.cost == pytest.approx(distance(out, states[-1], "mse"), rel=1e-10)


def test_calibrated_search_with_a_start_window():
    ns, den, t, states = setup("vp", n=12, s=6, dim=8)
    cal = oss.AmplitudeCalibration.from_teacher(states)
    res = oss.oss_search(t, states, den, ns, 3, "unipc", opts(calibration=True, refine=False, start_window=3))
    out = oss.run_student(den, states[0], t, res.path, ns, "unipc", calibration=cal, start_state=res.start_state)
    assert res.cost == pytest.approx(((out - states[-1]) ** 2).mean().item(), rel=1e-10)


def test_l2_objective_minimises_the_mean_l2_norm():
    """With objective l2 and window 0 the refined schedule's mean L2 is ≤ the mse-refined schedule's, and vice
    versa for the MSE (each is a local optimum of its own distance at least as good as its DP start)."""
    ns, den, t, states = setup("vp", n=25, s=8, dim=4, comps=4, seed=6)
    for solver in SOLVERS:
        for k in (3, 4):
            a = oss.oss_search(t, states, den, ns, k, solver, opts(objective="mse"))
            b = oss.oss_search(t, states, den, ns, k, solver, opts(objective="l2"))
            l2 = lambda r: distance(final(den, t, states, r.path, ns, solver, r.start_state), states[-1], "l2")  # noqa: E731
            assert b.objective_value == pytest.approx(l2(b), rel=1e-10)
            assert b.schedule.extra["distill_l2"] == b.objective_value
            assert b.objective_value <= b.schedule.extra["dp_distill_l2"] * (1 + 1e-12)
            assert a.objective_value == a.cost


# ---- GITS ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vp", "flow"])
def test_gits_with_starts_equals_brute_force(family):
    ns, den, t, states = setup(family, n=10, s=5, seed=7)
    cost, evals = oss.gits_costs(t, states, den, ns)
    starts = oss.start_candidates(ns, t, 3)
    first, more = oss.gits_start_costs(t, states, den, ns, starts, cost)
    assert more == len(starts) - 1 and torch.equal(first[0], cost[0])
    for r, st in enumerate(starts):  # a start row is the one-jump error from the candidate's own state
        j = 8
        y = sample(den, states[0] * st.factor, Schedule(t[[st.index, j]], ns), "ddim")
        assert first[r, j].item() == pytest.approx(((y - states[j]) ** 2).mean().item(), rel=1e-10)
    gamma = oss.GITS_GAMMA
    for k in (1, 2, 3):
        value, path, row = oss.gits_dp_starts(cost, first, [s.index for s in starts], k)
        brute = min(
            (float(first[r, p[1]]) + sum(gamma**m * float(cost[p[m], p[m + 1]]) for m in range(1, k)), r, tuple(p))
            for r, st in enumerate(starts)
            for p in ([st.index] + [v + st.index for v in q[1:]] for q in oss.all_paths(10 - st.index, k))
        )
        assert value == pytest.approx(brute[0], rel=1e-12) and (row, tuple(path)) == brute[1:]
        res = oss.gits_search(t, states, den, ns, k, "unipc", opts(start_window=3), costs=(cost, evals))
        assert res.path == path and res.start_state == starts[row].rule
        assert res.model_evals == evals + more
        out = final(den, t, states, path, ns, "unipc", res.start_state)
        assert res.schedule.extra["distill_mse"] == pytest.approx(distance(out, states[-1], "mse"), rel=1e-10)


def test_bad_start_window_and_objective():
    ns, den, t, states = setup("vp", n=8, s=3)
    with pytest.raises(OptstepsError, match="start_window"):
        oss.oss_search(t, states, den, ns, 3, "ddim", opts(start_window=-1))
    with pytest.raises(OptstepsError, match="start_window"):
        oss.gits_search(t, states, den, ns, 3, "ddim", opts(start_window=1.5))
    with pytest.raises(OptstepsError, match="objective"):
        oss.oss_search(t, states, den, ns, 3, "ddim", opts(objective="lpips"))
