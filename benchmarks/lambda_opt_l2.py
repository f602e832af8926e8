"""L2-to-truth of UniPC-3 on λ-optimized vs uniform-λ schedules (a measurement, not a test).

Data: a single Gaussian in dim 16 (``GaussianMixture.random(1, 16)``) under the linear VP schedule, exact
denoiser, so the PF-ODE has a closed-form solution (``exact_flow``): the "teacher" is exact. A 1000-step
UniPC run is printed once as a sanity check of that truth. The L2 is the mean over samples of
‖x_K − x_true‖₂. Note what this measures: with an exact denoiser there is no model error, only the
solver's discretization error, whereas the λ-optimizer's bound models the propagation of model errors
ε ∝ σ^p/α; the numbers say how the two relate on this toy, nothing more.

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/lambda_opt_l2.py [--samples 2000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from optsteps.core.noise_schedules import VPDiscrete
from optsteps.core.schedule import Schedule, from_lambdas
from optsteps.core.solvers import sample
from optsteps.models.gmm import GaussianMixture, GMMDenoiser
from optsteps.optimizers.lambda_opt import LambdaOptOptions, lambda_opt_schedule, lambda_window, start_lambdas


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    args = ap.parse_args()

    ns = VPDiscrete("linear", 1e-4, 0.02, 1000)
    ts, te = ns.default_t_start(), ns.default_t_end()
    gmm = GaussianMixture.random(1, 16, seed=args.seed)
    den = GMMDenoiser(gmm, ns)
    x_t = torch.randn(args.samples, 16, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    truth = gmm.exact_flow(x_t, ns, ts, te)

    def l2(schedule: Schedule) -> float:
        out = sample(den, x_t.clone(), schedule, "unipc", order=3)
        return float((out - truth).norm(dim=1).mean())

    lo, hi = lambda_window(ns, ts, te)
    teacher = from_lambdas(start_lambdas("uniform_lambda", lo, hi, 1000), ns, ts, te)
    print(f"single Gaussian, dim 16, VP linear, t {ts} → {te}, λ window [{lo:.3f}, {hi:.3f}], {args.samples} samples")
    print(f"sanity: 1000-step UniPC-3 (uniform λ) vs exact_flow: L2 = {l2(teacher):.3e}")
    head = (
        f"{'NFE':>4} {'p':>3} {'T_c':>4} | {'L2 uniform-λ':>13} {'L2 optimized':>13} {'opt/unif':>9} | "
        f"{'F opt':>9} {'F unif':>9} | λ gaps of the optimized schedule"
    )
    print(head)
    print("-" * len(head))
    for nfe in args.nfe:
        uniform = from_lambdas(start_lambdas("uniform_lambda", lo, hi, nfe), ns, ts, te)
        l2_u = l2(uniform)
        for p in (1, 2):
            for trunc in [None] if nfe <= 6 else [None, 0]:  # the default (3) and the paper's K ≥ 7 choice
                s = lambda_opt_schedule(ns, nfe, "unipc", LambdaOptOptions(p=p, trunc=trunc))
                l2_o = l2(s)
                gaps = np.diff(s.lambdas.numpy())
                print(
                    f"{nfe:>4} {p:>3} {s.extra['trunc']:>4} | {l2_u:>13.4e} {l2_o:>13.4e} {l2_o / l2_u:>9.3f} | "
                    f"{s.extra['objective']:>9.3f} {s.extra['objective_uniform_lambda']:>9.3f} | "
                    + " ".join(f"{g:.3f}" for g in gaps)
                )


if __name__ == "__main__":
    main()
