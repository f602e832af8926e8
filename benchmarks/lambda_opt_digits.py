"""L2 to the teacher endpoint of λ-optimized schedules vs uniform-λ on a trained model (a measurement).

For each NFE: uniform-λ, the λ-optimizer with the analytic error model at p = 1 and p = 2 (default truncNum), at
p = 1 with truncNum T_c = 0 and 3 forced, and with the empirical error model measured on the model's teacher shards
(run the trajectories stage first), all with
the same solver (default UniPC, orders 1-2-3…3-2-1) on the same held-out seeds; the teacher is params.yaml's.
L2 = mean over samples of ‖x_K − x_teacher‖₂ (as ``l2_to_teacher`` in evaluation). Ratios < 1: λ-opt wins.

    PYTHONPATH=. .venv/bin/python benchmarks/lambda_opt_digits.py [--model digits] [--nfe 5 10] [--n 500]
"""

import argparse

import torch

import optsteps.pipeline.stages as stages
from optsteps.core.baselines import baseline
from optsteps.evaluate.run import teacher_endpoints
from optsteps.models import load_model
from optsteps.models.sampling import generate
from optsteps.optimizers.lambda_opt import LambdaOptOptions, lambda_opt_schedule
from optsteps.pipeline.config import load_params

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="digits")
ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
ap.add_argument("--solver", default="unipc")
ap.add_argument("--n", type=int, default=500)
ap.add_argument("--seed", type=int, default=4321)
ap.add_argument("--params", default="params.yaml")
a = ap.parse_args()

torch.set_num_threads(2)
p = load_params(a.params)
m = load_model(a.model, p.artifacts)
ns = m.noise_schedule
_, x_teacher = teacher_endpoints(m, p.teacher, a.n, a.seed)
eps_fn = stages.empirical_eps_for(p, a.model)


def l2(schedule):
    x = generate(m, schedule, a.solver, a.n, a.seed, guidance=p.teacher.guidance)
    return (x - x_teacher).flatten(1).norm(dim=1).mean().item()


print(f"{a.model}, {a.solver}, teacher {p.teacher.solver}-{p.teacher.steps}, {a.n} held-out samples (seed {a.seed})")
print(
    f"{'NFE':>4s} {'uniform-λ':>10s} {'p=1':>16s} {'p=2':>16s} {'empirical':>16s} "
    f"{'p=1, T_c=0':>16s} {'p=1, T_c=3':>16s}"
)
for nfe in a.nfe:
    base = l2(baseline("uniform-lambda", ns, nfe, model=a.model))
    cells = []
    for kw in ({"p": 1.0}, {"p": 2.0}, {"error_model": "empirical"}, {"p": 1.0, "trunc": 0}, {"p": 1.0, "trunc": 3}):
        s = lambda_opt_schedule(
            ns,
            nfe,
            a.solver,
            LambdaOptOptions(**kw),
            model=a.model,
            eps_fn=eps_fn if kw.get("error_model") == "empirical" else None,
        )
        v = l2(s)
        cells.append(f"{v:.4f} ({v / base:.2f}×)")
    print(f"{nfe:4d} {base:10.4f} " + " ".join(f"{c:>16s}" for c in cells))
