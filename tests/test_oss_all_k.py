"""One DP per solver for every K (``oss_search_all``) against golden schedules of the per-K search.

``tests/data/oss_all_k.json`` was written by ``python tests/test_oss_all_k.py --write`` on the commit before the
shared DP (one ``oss_search`` per K; see ``git log -- tests/data/oss_all_k.json``). Every K of every case must
reproduce the per-K index paths (DP and refined), start rules, costs and schedule times bit for bit; the DP's
evaluations are those of ``counts.dp_evaluations_all`` and of a counting wrapper.

Cases: the analytic Gaussian mixture (VP-ε and rectified flow), the three students, several K, start window 0
and 3, batch and per-sample modes, one shard and three, a model call per layer and per node (``eval_batch_size``)."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT.parent) not in sys.path:
    sys.path.insert(0, str(ROOT.parent))

import optsteps.optimizers.oss as oss  # noqa: E402
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete  # noqa: E402
from optsteps.core.schedule import Schedule  # noqa: E402
from optsteps.core.solvers import sample  # noqa: E402
from optsteps.models.gmm import GaussianMixture, GMMDenoiser  # noqa: E402

FIXTURE = ROOT / "data" / "oss_all_k.json"

# name: ((family, N, S, dim, seed), solver, nfes, options, shards, eval_batch_size per node)
CASES = {
    "vp-unipc": (("vp", 16, 5, 3, 0), "unipc", [2, 3, 5, 6], {}, 1, False),
    "vp-dpmpp2m": (("vp", 16, 5, 3, 1), "dpmpp2m", [3, 4, 6], {}, 1, True),
    "vp-ddim-window": (("vp", 14, 5, 3, 2), "ddim", [2, 4, 5], {"start_window": 3}, 1, False),
    "flow-unipc-window": (("flow", 14, 5, 2, 3), "unipc", [3, 4, 6], {"start_window": 3}, 1, True),
    "flow-dpmpp2m-per-sample": (("flow", 12, 5, 2, 4), "dpmpp2m", [2, 3, 5], {"mode": "per_sample"}, 1, False),
    "vp-unipc-per-sample-window-shards": (("vp", 12, 6, 3, 5), "unipc", [3, 4],
                                          {"mode": "per_sample", "start_window": 2}, 3, False),
    "vp-unipc-shards": (("vp", 12, 6, 3, 6), "unipc", [2, 3, 5], {}, 3, False),
    "flow-dpmpp2m-shards-window": (("flow", 12, 6, 2, 7), "dpmpp2m", [3, 4, 5], {"start_window": 2}, 3, True),
    "vp-unipc-l2-calibrated": (("vp", 12, 5, 4, 8), "unipc", [3, 5], {"objective": "l2", "calibration": True}, 1,
                               False),
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
    options = oss.OSSOptions(**{"refine_radius": 3, **options})
    ebs = states.shape[1] // shards if per_node else None
    return ns, den, t, states, teacher, solver, nfes, options, ebs


def as_json(res):
    return {"path": res.path, "dp_path": res.dp_path, "cost": res.cost, "dp_cost": res.dp_cost,
            "start_state": res.start_state, "objective_value": res.objective_value,
            "t": [float(v) for v in res.schedule.t]}


def per_k(name):
    """The golden's way: one ``oss_search`` per K."""
    ns, den, t, states, teacher, solver, nfes, options, ebs = problem(name)
    return {str(k): as_json(oss.oss_search(t, teacher, den, ns, k, solver, options, eval_batch_size=ebs))
            for k in nfes}


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)
    out = {name: per_k(name) for name in CASES}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()) + "\n}\n")
    print(f"wrote {FIXTURE} ({len(out)} cases)")
