"""The start searched over the whole grid (``start_window: full``, the default since issue 26) and the choice between
candidate schedules on held-out teacher samples (``optimizers.select``), on the analytic Gaussian mixture, where
brute force over (start index, start rule, path) and the held-out MSE are exact; and the stage's record."""

import math
import random

import pytest
import torch
from test_oss_start import SOLVERS, brute_force, distance, final, make_teacher, opts

import optsteps.optimizers.oss as oss
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete
from optsteps.core.schedule import Schedule, initial_state
from optsteps.core.solvers import sample
from optsteps.errors import OptstepsError
from optsteps.models.gmm import GaussianMixture, GMMDenoiser
from optsteps.optimizers.oss import counts
from optsteps.optimizers.oss.starts import check_start_window
from optsteps.optimizers.polish import Split
from optsteps.optimizers.select import choose_by_heldout, heldout_mse

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_full_window_is_every_start_that_leaves_room_for_k_steps():
    assert check_start_window("full", 12, 3) == 9 and check_start_window(4, 12, 3) == 4
    assert check_start_window(20, 12, 3) == 9
    with pytest.raises(OptstepsError, match="'full'"):
        check_start_window("all", 12, 3)
    for n, nfes in ((12, [3]), (50, [4, 5, 6, 8, 10]), (100, [2, 7])):
        assert counts.dp_evaluations_all(n, nfes, "full") == counts.dp_evaluations_all(n, nfes, n - min(nfes))
        assert counts.gits_start_evaluations(n, nfes[0], "full") == 2 * (n - nfes[0])
    assert oss.OSSOptions().start_window == "full"


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_a_full_window_search_is_the_search_at_n_minus_k_and_spends_what_counts_says(family):
    ns = VPDiscrete() if family == "vp" else RectifiedFlow()
    den = GMMDenoiser(GaussianMixture.random(3, 2, seed=5), ns)
    t, states = make_teacher(den, ns, 12, 5, 2, seed=5)
    full = oss.oss_search_all(t, states, den, ns, [3, 4], "unipc", opts(start_window="full"))
    wide = oss.oss_search_all(t, states, den, ns, [3, 4], "unipc", opts(start_window=9))
    for k in (3, 4):
        assert (full[k].path, full[k].start_state, full[k].cost) == (wide[k].path, wide[k].start_state, wide[k].cost)
        assert full[k].model_evals == counts.dp_evaluations_all(12, [3, 4], "full")
        assert full[k].schedule.extra["start_window"] == 12 - k


def test_full_window_dp_and_refinement_reach_the_brute_force_optimum_over_every_start():
    """Small random cases (N ≤ 9, K ≤ 3, VP and flow, three students): with the start free over the whole grid, DP +
    refinement reaches the brute-force optimum over start index × rule × path in ≥ 90 % of the cases, and its
    reported objective is the traced student's."""
    rng = random.Random(26)
    n_cases, hits = 40, 0
    for c in range(n_cases):
        family, solver = ("vp", "flow")[c % 2], SOLVERS[(c // 2) % 3]
        n = rng.randint(6, 9)
        k = rng.randint(2, 3)
        ns = VPDiscrete() if family == "vp" else RectifiedFlow()
        gmm = GaussianMixture.random(rng.randint(1, 3), rng.randint(1, 3), seed=600 + c)
        den = GMMDenoiser(gmm, ns)
        t, states = make_teacher(den, ns, n, 5, gmm.dim, seed=c)
        brute, _, _ = brute_force(den, t, states, ns, solver, k, n, "mse")
        res = oss.oss_search(t, states, den, ns, k, solver, opts(start_window="full"))
        got = distance(final(den, t, states, res.path, ns, solver, res.start_state), states[-1], "mse")
        assert res.cost == pytest.approx(got, rel=1e-10)
        hits += got <= brute * (1 + 1e-9) + 1e-300
    assert hits >= 0.9 * n_cases


# ---- the held-out choice ---------------------------------------------------------------------------------------
def _gmm_split(ns, den, n_samples, dim, seed):
    """Unit noise and a teacher's endpoints from it (UniPC on 200 uniform-t steps)."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n_samples, dim, generator=g, dtype=torch.float64)
    ref = Schedule(torch.linspace(ns.default_t_start(), ns.default_t_end(), 201, dtype=torch.float64), ns)
    return Split(eps, sample(den, initial_state(eps, ref), ref, "unipc"))


def _sched(ns, times, name, distill, **extra):
    return Schedule(times, ns, method="oss", solver="unipc", extra={"distill_mse": distill, "candidate": name, **extra})


def test_heldout_mse_is_the_students_error_on_the_split():
    ns = RectifiedFlow()
    den = GMMDenoiser(GaussianMixture.random(2, 3, seed=1), ns)
    split = _gmm_split(ns, den, 16, 3, seed=1)
    s = _sched(ns, [1.0, 0.6, 0.3, 0.0], "a", 0.1)
    want = ((sample(den, initial_state(split.noise, s), s, s.solver_spec) - split.target) ** 2).mean().item()
    assert heldout_mse(s, lambda lab: den, split) == pytest.approx(want, rel=1e-12)
    raw = _sched(ns, [0.7, 0.4, 0.1, 0.0], "raw", 0.1, start_state="raw")  # the start state is honoured
    want_raw = ((sample(den, initial_state(split.noise, raw), raw, raw.solver_spec) - split.target) ** 2).mean().item()
    assert heldout_mse(raw, lambda lab: den, split) == pytest.approx(want_raw, rel=1e-12)
    assert initial_state(split.noise, raw).std() > 0.9  # σ_{t_max} ε, not σ(0.7) ε


def test_the_choice_is_the_lowest_heldout_mse_ties_go_first_and_the_record_says_so():
    ns = VPDiscrete()
    den = GMMDenoiser(GaussianMixture.random(3, 2, seed=2), ns)
    split = _gmm_split(ns, den, 32, 2, seed=2)
    t0, t1 = ns.default_t_start(), ns.default_t_end()
    a = _sched(ns, [t0, 0.5, 0.2, t1], "a", 1e-3)  # fits the distillation samples best, by its record
    b = _sched(ns, [t0, 0.3, 0.08, t1], "b", 2e-3)
    c = _sched(ns, [t0, 0.9, 0.85, t1], "c", 5e-3)
    calls = []

    def denoiser_for(labels):
        calls.append(labels)
        return den

    scores = {n: heldout_mse(s, denoiser_for, split) for n, s in (("a", a), ("b", b), ("c", c))}
    calls.clear()
    chosen = choose_by_heldout([("a", a), ("b", b), ("c", c)], denoiser_for, split)
    best = min(scores, key=scores.get)
    assert chosen.extra["candidate"] == best and len(calls) == 3  # every candidate runs once
    rec = chosen.extra["heldout"]
    assert rec["chosen"] == best and rec["samples"] == 32 and rec["evaluations"] == 9
    assert rec["mse"] == scores[best] == min(v["heldout_mse"] for v in rec["candidates"])
    assert rec["gap"] == pytest.approx(scores[best] / chosen.extra["distill_mse"])
    assert [v["name"] for v in rec["candidates"]] == ["a", "b", "c"]
    # a tie goes to the first: the same schedule twice under two names
    twice = choose_by_heldout([("first", b), ("second", b)], denoiser_for, split)
    assert twice.extra["heldout"]["chosen"] == "first"
    # never worse than any candidate on the split (the guarantee the stage relies on)
    assert all(rec["mse"] <= v["heldout_mse"] for v in rec["candidates"])
    with pytest.raises(OptstepsError, match="no candidate"):
        choose_by_heldout([], denoiser_for, split)


def test_a_nan_candidate_never_wins():
    ns = RectifiedFlow()
    den = GMMDenoiser(GaussianMixture.random(2, 2, seed=3), ns)
    split = _gmm_split(ns, den, 8, 2, seed=3)
    good = _sched(ns, [1.0, 0.5, 0.0], "good", 0.1)

    def broken(labels):
        return lambda x, t: torch.full_like(x, math.nan)

    def den_for(labels):
        return den

    bad = _sched(ns, [1.0, 0.4, 0.0], "bad", 0.1)
    calls = iter([broken, den_for])
    chosen = choose_by_heldout([("bad", bad), ("good", good)], lambda lab: next(calls)(lab), split)
    assert chosen.extra["heldout"]["chosen"] == "good"


# ---- the refinement's cap and the shared GITS start costs (issue 25: exact or bounded plans) --------------------
@pytest.mark.parametrize("mode", ["batch", "per_sample"])
def test_the_refinement_cap_bounds_what_it_spends_and_a_loose_cap_changes_nothing(mode):
    from optsteps.core.denoisers import CountingDenoiser

    ns = VPDiscrete()
    den = GMMDenoiser(GaussianMixture.random(3, 2, seed=7), ns)
    t, states = make_teacher(den, ns, 14, 5, 2, seed=7)
    free = oss.oss_search_all(t, states, den, ns, [3, 5], "unipc", opts(start_window="full", mode=mode))
    loose = oss.oss_search_all(
        t, states, den, ns, [3, 5], "unipc", opts(start_window="full", mode=mode, refine_max_evals=10**6)
    )
    for k in (3, 5):
        assert (loose[k].path, loose[k].start_state, loose[k].refine_evals) == (
            free[k].path,
            free[k].start_state,
            free[k].refine_evals,
        )
    assert max(free[k].refine_evals for k in (3, 5)) > 12  # the cap below binds
    counter = CountingDenoiser(den)
    capped = oss.oss_search_all(
        t, states, counter, ns, [3, 5], "unipc", opts(start_window="full", mode=mode, refine_max_evals=12)
    )
    for k in (3, 5):
        assert capped[k].refine_evals <= counts.refine_evaluations_max(k, 12, mode)
        got = distance(final(den, t, states, capped[k].path, ns, "unipc", capped[k].start_state), states[-1], "mse")
        assert capped[k].cost == pytest.approx(got, rel=1e-10) and capped[k].cost <= capped[k].dp_cost + 1e-15
    spent = capped[3].model_evals + sum(capped[k].refine_evals for k in (3, 5))
    assert counter.samples == spent * states.shape[1]
    assert counts.refine_evaluations_max(5, 0) is None


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_shared_gits_start_costs_give_the_same_schedules_as_per_search_ones(family):
    from optsteps.optimizers.oss import gits_costs, gits_start_costs, start_candidates

    ns = VPDiscrete() if family == "vp" else RectifiedFlow()
    den = GMMDenoiser(GaussianMixture.random(3, 2, seed=8), ns)
    t, states = make_teacher(den, ns, 12, 5, 2, seed=8)
    costs = gits_costs(t, states, den, ns)
    widest = check_start_window("full", 12, 3)
    starts = start_candidates(ns, t, widest)
    first, evals = gits_start_costs(t, states, den, ns, starts, costs[0])
    assert evals == counts.gits_start_evaluations(12, 3, "full")
    for k in (3, 4, 6):
        own = oss.gits_search(t, states, den, ns, k, "unipc", opts(start_window="full"), costs=costs)
        shared = oss.gits_search(
            t, states, den, ns, k, "unipc", opts(start_window="full"), costs=costs, start_costs=(starts, first, evals)
        )
        assert (shared.path, shared.start_state) == (own.path, own.start_state)
        assert shared.cost == pytest.approx(own.cost, rel=1e-12)
    narrow = start_candidates(ns, t, 2)
    part = gits_start_costs(t, states, den, ns, narrow, costs[0])
    with pytest.raises(OptstepsError, match="widest window"):
        oss.gits_search(
            t, states, den, ns, 3, "unipc", opts(start_window="full"), costs=costs, start_costs=(narrow, *part)
        )
