"""One DP per solver for every K (``oss_search_all``) against golden schedules of the per-K search.

``tests/data/oss_all_k.json`` was written by ``python tests/test_oss_all_k.py --write`` on the commit before the
shared DP (one ``oss_search`` per K; see ``git log -- tests/data/oss_all_k.json``). Every K of every case must
reproduce the per-K index paths (DP and refined), start rules, costs and schedule times bit for bit; the DP's
evaluations are those of ``counts.dp_evaluations_all`` and of a counting wrapper.

Cases: the analytic Gaussian mixture (VP-ε and rectified flow), the three students, several K, start window 0
and 3, batch and per-sample modes, one shard and three, a model call per layer and per node (``eval_batch_size``)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT.parent) not in sys.path:
    sys.path.insert(0, str(ROOT.parent))

import optsteps.optimizers.oss as oss  # noqa: E402
from optsteps.core.denoisers import CountingDenoiser  # noqa: E402
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete  # noqa: E402
from optsteps.core.schedule import Schedule  # noqa: E402
from optsteps.core.solvers import sample  # noqa: E402
from optsteps.models.gmm import GaussianMixture, GMMDenoiser  # noqa: E402
from optsteps.optimizers.oss import counts  # noqa: E402

FIXTURE = ROOT / "data" / "oss_all_k.json"

# name: ((family, N, S, dim, seed), solver, nfes, options, shards, eval_batch_size per node)
CASES = {
    "vp-unipc": (("vp", 16, 5, 3, 0), "unipc", [2, 3, 5, 6], {}, 1, False),
    "vp-dpmpp2m": (("vp", 16, 5, 3, 1), "dpmpp2m", [3, 4, 6], {}, 1, True),
    "vp-ddim-window": (("vp", 14, 5, 3, 2), "ddim", [2, 4, 5], {"start_window": 3}, 1, False),
    "flow-unipc-window": (("flow", 14, 5, 2, 3), "unipc", [3, 4, 6], {"start_window": 3}, 1, True),
    "flow-dpmpp2m-per-sample": (("flow", 12, 5, 2, 4), "dpmpp2m", [2, 3, 5], {"mode": "per_sample"}, 1, False),
    "vp-unipc-per-sample-window-shards": (
        ("vp", 12, 6, 3, 5),
        "unipc",
        [3, 4],
        {"mode": "per_sample", "start_window": 2},
        3,
        False,
    ),
    "vp-unipc-shards": (("vp", 12, 6, 3, 6), "unipc", [2, 3, 5], {}, 3, False),
    "flow-dpmpp2m-shards-window": (("flow", 12, 6, 2, 7), "dpmpp2m", [3, 4, 5], {"start_window": 2}, 3, True),
    "vp-unipc-l2-calibrated": (
        ("vp", 12, 5, 4, 8),
        "unipc",
        [3, 5],
        {"objective": "l2", "calibration": True},
        1,
        False,
    ),
    "vp-dpmpp2m-x0": (("vp", 9, 4, 3, 9), "dpmpp2m", [2, 3, 4], {"distance": "x0"}, 1, False),
}


def gmm_teacher(family, n, s, dim, seed):
    ns = VPDiscrete() if family == "vp" else RectifiedFlow()
    den = GMMDenoiser(GaussianMixture.random(3, dim, seed=seed), ns)
    t = torch.linspace(ns.default_t_start(), ns.default_t_end(), n + 1, dtype=torch.float64)
    x = torch.randn(s, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * ns.sigma(t[0])
    states = []
    out = sample(den, x, Schedule(t, ns), "ddim", callback=lambda i, xi, x0: states.append(xi.clone()))
    return ns, den, t, torch.stack(states + [out])


def problem(name):
    setup, solver, nfes, options, shards, per_node = CASES[name]
    ns, den, t, states = gmm_teacher(*setup)
    teacher = states if shards == 1 else list(states.tensor_split(shards, dim=1))
    options = oss.OSSOptions(**{"refine_radius": 3, "start_window": 0, **options})  # window 0 unless the case says
    ebs = states.shape[1] // shards if per_node else None
    return ns, den, t, states, teacher, solver, nfes, options, ebs


def as_json(res):
    return {
        "path": res.path,
        "dp_path": res.dp_path,
        "cost": res.cost,
        "dp_cost": res.dp_cost,
        "start_state": res.start_state,
        "objective_value": res.objective_value,
        "t": [float(v) for v in res.schedule.t],
    }


def same_as_golden(got: dict, want: dict, k) -> None:
    """Paths, rules and times bit for bit; costs to a relative 1e-12 (float64 on the Gaussian mixture: the last bit
    differs between Intel and AMD CPUs' kernels, not between the two ways of searching)."""
    assert set(got) == set(want), k
    for key, v in got.items():
        if key in ("cost", "dp_cost", "objective_value"):
            assert math.isclose(v, want[key], rel_tol=1e-12), (k, key)
        else:
            assert v == want[key], (k, key)


def per_k(name):
    """The golden's way: one ``oss_search`` per K."""
    ns, den, t, states, teacher, solver, nfes, options, ebs = problem(name)
    return {str(k): as_json(oss.oss_search(t, teacher, den, ns, k, solver, options, eval_batch_size=ebs)) for k in nfes}


@pytest.fixture(scope="module")
def golden():
    return json.loads(FIXTURE.read_text())


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", list(CASES))
def test_one_dp_for_every_k_reproduces_the_per_k_schedules(name, golden):
    ns, den, t, states, teacher, solver, nfes, options, ebs = problem(name)
    counter = CountingDenoiser(den)
    got = oss.oss_search_all(t, teacher, counter, ns, nfes, solver, options, eval_batch_size=ebs)
    assert sorted(got) == sorted(nfes)
    for k in nfes:
        same_as_golden(as_json(got[k]), golden[name][str(k)], k)
    # evaluations: one DP (state distance) or one per K (x0), exact where counts says so, and all the model saw
    res = got[nfes[0]]
    shards = CASES[name][4]
    if options.mode == "per_sample" or shards == 1:
        want = counts.dp_evaluations_all(len(t) - 1, nfes, options.start_window, options.distance, shards, options.mode)
        assert (res.model_evals if options.distance == "state" else sum(got[k].model_evals for k in nfes)) == want
    spent = res.model_evals if options.distance == "state" else sum(got[k].model_evals for k in nfes)
    assert counter.samples == (spent + sum(got[k].refine_evals for k in nfes)) * states.shape[1]
    assert all(got[k].model_evals == res.model_evals for k in nfes) or options.distance == "x0"


def test_the_shared_dp_spends_fewer_evaluations_than_one_per_k():
    """N = 100, K ∈ {4, 5, 6, 8, 10}: 851 per sample instead of 2625 (3.08× fewer)."""
    ks = [4, 5, 6, 8, 10]
    assert counts.dp_evaluations_all(100, ks) == 851
    assert sum(counts.dp_evaluations(100, k) for k in ks) == 2625
    assert counts.dp_evaluations_all(100, [7]) == counts.dp_evaluations(100, 7)
    assert counts.dp_evaluations_all(100, ks, 5) == 851 + 10


def test_the_refinement_reuses_prefixes_across_k(golden):
    """The refinement memory is shared by all K: runs of a later K take the model outputs of prefixes an
    earlier K already ran; fewer evaluations than separate searches, the same schedules."""
    ns, den, t, states, teacher, solver, nfes, options, ebs = problem("vp-unipc")
    together = oss.oss_search_all(t, teacher, den, ns, nfes, solver, options)
    apart = {k: oss.oss_search(t, teacher, den, ns, k, solver, options) for k in nfes}
    assert [as_json(together[k]) for k in nfes] == [as_json(apart[k]) for k in nfes]
    spent = sum(r.refine_evals for r in together.values())
    assert spent < sum(r.refine_evals for r in apart.values())
    assert sum(r.prefix_reuse for r in together.values()) > sum(r.prefix_reuse for r in apart.values())
    assert together[nfes[-1]].schedule.extra["dp_nfe"] == nfes


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)
    out = {name: per_k(name) for name in CASES}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()) + "\n}\n")
    print(f"wrote {FIXTURE} ({len(out)} cases)")
