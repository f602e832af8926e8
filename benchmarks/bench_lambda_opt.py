"""Wall time of one λ-optimization (docs/algorithms.md §2.7): analytic gradient vs finite differences.

Both columns solve the same problem (epigraph form of F, trust-constr, one LinearConstraint, the same
three starts and iteration budget) in this process; only the derivatives differ: analytic
(``objective_and_grad``) vs scipy's ``jac="2-point"`` for the objective and the constraint.

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/bench_lambda_opt.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

from optsteps.core.noise_schedules import VPDiscrete
from optsteps.optimizers.lambda_opt import LambdaOptOptions, default_trunc, lambda_window, optimize_lambdas


def one(ns, nfe: int, gradient: str, trunc=None):
    lo, hi = lambda_window(ns, ns.default_t_start(), ns.default_t_end())
    t0 = time.perf_counter()
    res = optimize_lambdas(lo, hi, nfe, LambdaOptOptions(p=1, trunc=trunc, gradient=gradient), noise_schedule=ns)
    return time.perf_counter() - t0, res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--repeat", type=int, default=3, help="best-of-N wall time")
    ap.add_argument("--trunc", type=int, default=None, help="T_c (default: 3 if K <= 6 else 0)")
    args = ap.parse_args()
    ns = VPDiscrete("linear", 1e-4, 0.02, 1000)
    one(ns, 3, "analytic")  # warm-up: imports, scipy first-call costs
    print(
        f"VP linear, λ window {lambda_window(ns, 1.0, 1e-3)}, p = 1, starts uniform-λ/uniform-t/Karras, "
        f"{os.cpu_count()} CPUs, best of {args.repeat}"
    )
    head = (
        f"{'NFE':>4} {'T_c':>4} | {'analytic s':>10} {'F':>10} {'iters':>6} | "
        f"{'2-point s':>10} {'F':>10} {'iters':>6} | {'FD/analytic':>11}"
    )
    print(head)
    print("-" * len(head))
    for nfe in args.nfe:
        row = {}
        for grad in ("analytic", "2-point"):
            best_t, res = min((one(ns, nfe, grad, args.trunc) for _ in range(args.repeat)), key=lambda r: r[0])
            row[grad] = (best_t, res.objective, sum(r["nit"] for r in res.starts.values()))
        tc = default_trunc(nfe) if args.trunc is None else args.trunc
        a, f = row["analytic"], row["2-point"]
        print(
            f"{nfe:>4} {tc:>4} | {a[0]:>10.3f} {a[1]:>10.4f} {a[2]:>6} | "
            f"{f[0]:>10.3f} {f[1]:>10.4f} {f[2]:>6} | {f[0] / a[0]:>11.2f}"
        )


if __name__ == "__main__":
    main()
