"""truncNum T_c = 0 against T_c = 3 in the λ-optimizer, with a weaker (local) optimizer and with a λ-gap guard
(issue 20; a measurement, docs/algorithms.md §2.5).

For each NFE (default 8 and 10) with UniPC-3 (the pattern 1-2-3…3-2-1) and the analytic error model (p = 1):

* ``uniform-λ`` (the reference of the ratios);
* ``T_c=3`` and ``T_c=0``: ``lambda_opt_schedule`` as the pipeline runs it (multi-start trust-constr with exact
  gradients, lowest F kept);
* ``T_c=0, local``: one local descent of the same F from uniform-λ with finite-difference gradients
  (``scipy.optimize.minimize(method="BFGS")``, default tolerances, on the gaps h = (λ_K − λ_0)·softmax(u)): a
  weaker optimizer, a stand-in for the authors' single-start finite-difference one;
* ``T_c=c, h ≥ f×``: the pipeline's optimizer with the guard min_gap = f × the uniform λ spacing
  (λ_K − λ_0)/K (default f = 10⁻³), f ∈ ``--gaps``;
* ``T_c=c, h ≤ g×``: the guard max_gap = g × the uniform spacing (every λ gap at most g uniform steps),
  g ∈ ``--max-gaps``.

Columns: F (at that row's T_c), the first λ gap h_0, the largest gap max h (both in units of the uniform
spacing), and the held-out L2 = mean over ``--n`` samples of seed ``--seed`` of ‖x_K − x_teacher‖₂ (params.yaml's
teacher re-run on them), also as a ratio to uniform-λ's.

    PYTHONPATH=. .venv/bin/python benchmarks/lambda_opt_trunc.py [--model digits] [--nfe 8 10] [--n 500]
        [--gaps 0.1 0.25 0.5] [--max-gaps 2 3]
"""

import argparse
import time

import numpy as np
import torch
from scipy.optimize import minimize

from optsteps.core.baselines import baseline
from optsteps.core.schedule import from_lambdas
from optsteps.core.solver_spec import SolverSpec
from optsteps.evaluate.run import teacher_endpoints
from optsteps.models import load_model
from optsteps.models.sampling import generate
from optsteps.optimizers.lambda_opt import LambdaOptOptions, lambda_opt_schedule, objective
from optsteps.optimizers.lambda_opt.schedule import lambda_window
from optsteps.pipeline.config import load_params

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="digits")
ap.add_argument("--nfe", type=int, nargs="+", default=[8, 10])
ap.add_argument("--n", type=int, default=500)
ap.add_argument("--seed", type=int, default=4321)
ap.add_argument("--gaps", type=float, nargs="+", default=[0.1, 0.25, 0.5])
ap.add_argument("--max-gaps", type=float, nargs="+", default=[2.0, 3.0])
ap.add_argument("--params", default="params.yaml")
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

torch.set_num_threads(a.threads)
t_all = time.perf_counter()
p = load_params(a.params)
m = load_model(a.model, p.artifacts)
ns = m.noise_schedule
spec = SolverSpec("unipc")
_, x_teacher = teacher_endpoints(m, p.teacher, a.n, a.seed)
ts, te = ns.default_t_start(), ns.default_t_end()
lo, hi = lambda_window(ns, ts, te)


def heldout(s):
    x = generate(m, s, spec, a.n, a.seed, guidance=p.teacher.guidance)
    return (x - x_teacher).flatten(1).norm(dim=1).mean().item()


def local_descent(nfe, trunc, orders):
    """One local minimisation of F from uniform-λ: BFGS with finite differences (scipy's defaults) on the gaps
    h = (λ_K − λ_0)·softmax(u), which keeps every iterate ordered; u = 0 is uniform-λ."""

    def full(u):
        w = np.exp(u - u.max())
        return lo + np.concatenate([[0.0], np.cumsum(w / w.sum())]) * (hi - lo)

    def f(u):
        lam = full(u)
        lam[-1] = hi
        return objective(lam, 1.0, trunc, orders) if np.all(np.diff(lam) > 0) else np.inf

    r = minimize(f, np.zeros(nfe), method="BFGS")
    lam = full(r.x)
    lam[-1] = hi
    return lam, r.nit, r.message


print(
    f"{a.model} ({ns.describe()}), UniPC-3, analytic ε (p = 1), λ window [{lo:.3f}, {hi:.3f}]; held-out L2 on "
    f"{a.n} samples of seed {a.seed} (teacher {p.teacher.solver}-{p.teacher.steps})\n"
)
print("| NFE | schedule | F | h_0 / uniform | max h / uniform | held-out L2 | / uniform-λ |")
print("|---|---|---|---|---|---|---|")
for nfe in a.nfe:
    uni = (hi - lo) / nfe
    orders = spec.step_orders(nfe)
    rows = [("uniform-λ", baseline("uniform-lambda", ns, nfe, model=a.model), None)]
    for trunc in (3, 0):
        rows.append(
            (f"T_c={trunc}", lambda_opt_schedule(ns, nfe, spec, LambdaOptOptions(trunc=trunc), model=a.model), trunc)
        )
    lam, nit, msg = local_descent(nfe, 0, orders)
    rows.append((f"T_c=0, local ({nit} BFGS it.)", from_lambdas(lam, ns, ts, te, model=a.model), 0))
    for trunc in (0, 3):
        for f in a.gaps:
            rows.append(
                (
                    f"T_c={trunc}, h ≥ {f:g}×",
                    lambda_opt_schedule(ns, nfe, spec, LambdaOptOptions(trunc=trunc, min_gap=f * uni), model=a.model),
                    trunc,
                )
            )
        for g in a.max_gaps:
            rows.append(
                (
                    f"T_c={trunc}, h ≤ {g:g}×",
                    lambda_opt_schedule(ns, nfe, spec, LambdaOptOptions(trunc=trunc, max_gap=g * uni), model=a.model),
                    trunc,
                )
            )
    base = None
    for name, s, trunc in rows:
        lam_s = s.lambdas.numpy().copy()
        lam_s[0], lam_s[-1] = lo, hi  # the optimised window (the endpoint times are exact)
        h = np.diff(lam_s)
        F = objective(lam_s, 1.0, trunc if trunc is not None else 3, orders)
        v = heldout(s)
        base = v if base is None else base
        tc = f" (T_c={trunc if trunc is not None else 3})" if trunc is None else ""
        print(
            f"| {nfe} | {name} | {F:.3f}{tc} | {h[0] / uni:.3f} | {h.max() / uni:.2f} | {v:.4f} | {v / base:.3f} |",
            flush=True,
        )
print(f"\n({time.perf_counter() - t_all:.0f} s)")
