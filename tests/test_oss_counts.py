"""``optimizers.oss.counts`` against the searches: the formulas, the ``model_evals`` the searches report and the
rows a counting wrapper around the model saw (divided by the samples) are equal, not approximately equal."""

import pytest
import torch

import optsteps.optimizers.oss as oss
from optsteps.core.denoisers import CountingDenoiser
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete
from optsteps.core.schedule import Schedule
from optsteps.core.solvers import sample
from optsteps.errors import OptstepsError
from optsteps.models.gmm import GaussianMixture, GMMDenoiser
from optsteps.optimizers.oss import counts

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def opts(**kw):
    """The search's options; refinement moves unbounded (a radius ≥ N) and the start at t_max (window 0) unless the
    test gives others."""
    return oss.OSSOptions(**{"refine_radius": 10**6, "start_window": 0, **kw})


def _teacher(family, n, s, dim=3, seed=0, t_start=None):
    ns = VPDiscrete() if family == "vp" else RectifiedFlow()
    den = GMMDenoiser(GaussianMixture.random(3, dim, seed=seed), ns)
    t = torch.linspace(t_start or ns.default_t_start(), ns.default_t_end(), n + 1, dtype=torch.float64)
    x = torch.randn(s, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * ns.sigma(t[0])
    states = []
    out = sample(den, x, Schedule(t, ns), "ddim", callback=lambda i, xi, x0: states.append(xi.clone()))
    return ns, den, t, torch.stack(states + [out])


CASES = [  # (family, solver, N, K, window, distance, mode, shards)
    ("vp", "unipc", 16, 1, 0, "state", "batch", 1),
    ("vp", "unipc", 16, 4, 0, "state", "batch", 1),
    ("vp", "dpmpp2m", 16, 5, 3, "state", "batch", 1),
    ("flow", "ddim", 12, 3, 20, "state", "batch", 1),
    ("flow", "unipc", 12, 4, 2, "state", "per_sample", 1),
    ("vp", "dpmpp2m", 12, 3, 0, "state", "per_sample", 3),
    ("vp", "ddim", 10, 3, 0, "x0", "batch", 1),
    ("vp", "unipc", 10, 4, 2, "x0", "batch", 1),
    ("flow", "dpmpp2m", 9, 3, 1, "x0", "per_sample", 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_dp_evaluations_are_exact(case):
    family, solver, n, k, w, distance, mode, shards = case
    ns, den, t, states = _teacher(family, n, 6)
    teacher = states if shards == 1 else list(states.tensor_split(shards, dim=1))
    counter = CountingDenoiser(den)
    res = oss.oss_search(
        t, teacher, counter, ns, k, solver, opts(refine=False, start_window=w, distance=distance, mode=mode)
    )
    want = counts.dp_evaluations(n, k, w, distance, shards, mode)
    assert res.model_evals == want
    # per-sample mode runs the median path once per start rule the samples chose (reported as refine_evals)
    assert res.refine_evals == (0 if mode == "batch" else res.refine_runs * k)
    assert counter.samples == (want + res.refine_evals) * states.shape[1]
    assert counts.dp_evaluations_max(n, k, w, distance, shards, mode) == want


@pytest.mark.parametrize("distance", ["state", "x0"])
def test_several_shards_in_batch_mode_stay_under_the_cap(distance):
    ns, den, t, states = _teacher("vp", 10, 6, seed=2)
    for k, w in ((3, 0), (4, 2)):
        counter = CountingDenoiser(den)
        res = oss.oss_search(
            t,
            [states[:, :2], states[:, 2:4], states[:, 4:]],
            counter,
            ns,
            k,
            "unipc",
            opts(refine=False, start_window=w, distance=distance),
        )
        assert counter.samples == res.model_evals * 6
        cap = counts.dp_evaluations_max(10, k, w, distance, 3, "batch")
        assert res.model_evals <= cap
        with pytest.raises(OptstepsError):
            counts.dp_evaluations(10, k, w, distance, 3, "batch")
    # the cap is reached when every node of a layer is an ancestor: K = 2 (layer 0 only is replayed)
    counter = CountingDenoiser(den)
    res = oss.oss_search(
        t, [states[:, :3], states[:, 3:]], counter, ns, 2, "ddim", opts(refine=False, start_window=1, distance=distance)
    )
    assert res.model_evals == counts.dp_evaluations_max(10, 2, 1, distance, 2, "batch")
    assert counter.samples == res.model_evals * 6


def test_a_grid_below_t_max_has_two_starts_at_index_0():
    ns, den, t, states = _teacher("vp", 12, 4, t_start=0.8)
    counter = CountingDenoiser(den)
    res = oss.oss_search(t, states, counter, ns, 3, "ddim", opts(refine=False, start_window=2))
    assert res.model_evals == counts.dp_evaluations(12, 3, 2, starts_at_t_max=False) == 2 + 4 + 2 * 10
    assert counter.samples == res.model_evals * 4


@pytest.mark.parametrize("w", [0, 3])
def test_gits_evaluations_are_exact(w):
    ns, den, t, states = _teacher("flow", 14, 5, seed=4)
    counter = CountingDenoiser(den)
    res = oss.gits_search(t, states, counter, ns, 4, "unipc", opts(start_window=w))
    want = counts.gits_evaluations(14, 4, w)
    assert res.model_evals == want
    measured = counts.student_run_evaluations(4)
    assert res.refine_evals == measured
    assert counter.samples == (want + measured) * 5


def test_formulas_at_the_pipeline_defaults():
    """N = 100, K ∈ {4, 5, 6, 8, 10}: 1 + (K − 1)(N − K + 1) each, 2625 for one solver."""
    per_k = [counts.dp_evaluations(100, k) for k in (4, 5, 6, 8, 10)]
    assert per_k == [292, 385, 476, 652, 820] and sum(per_k) == 2625
    assert counts.dp_evaluations(100, 5, 5) == 385 + 10
    assert counts.gits_evaluations(100, 5, 5) == 110
