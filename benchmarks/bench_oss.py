"""OSS DP wall time against the time of K·N batched model evaluations on the same batch (goal ≤ 1.2).

The default model is the exact Gaussian-mixture denoiser (a cheap model, so this is the hard case for the
ratio: the DP's O(K·N²) cheap updates are not hidden behind expensive evaluations). ``--model digits`` (or
``digits-flow``) uses the trained embedded UNet instead (run ``optsteps train --model digits`` first), its
teacher the UniPC teacher on a uniform-λ grid of ``--teacher-steps`` steps. The reference time is K·N calls
of the denoiser on the [S, ...] batch at teacher times (scalar t, as a sampler calls it).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_oss.py            # 64-dim, S=256, N=200, K=5,10
    PYTHONPATH=. .venv/bin/python benchmarks/bench_oss.py --model digits --samples 64 --teacher-steps 100
    PYTHONPATH=. .venv/bin/python benchmarks/bench_oss.py --nfe 5 --solvers ddim --eval-batch-sizes layer
"""

from __future__ import annotations

import argparse
import time

import torch

import optsteps.optimizers.oss as oss
from optsteps.core.noise_schedules import VPDiscrete
from optsteps.core.schedule import Schedule
from optsteps.core.solvers import sample
from optsteps.models.gmm import GaussianMixture, GMMDenoiser


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gmm", choices=["gmm", "digits", "digits-flow"])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--teacher-steps", type=int, default=200)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--solvers", nargs="+", default=["ddim", "dpmpp2m", "unipc"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--eval-batch-sizes",
        nargs="+",
        default=["samples"],
        choices=["layer", "samples"],
        help="'samples': one model call per DP node (S rows, scalar t); 'layer': one call per DP "
        "layer (all nodes, per-sample t; the GMM's per-sample-t path is slow on CPU)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    n, s = args.teacher_steps, args.samples
    if args.model == "gmm":
        ns = VPDiscrete()
        gmm = GaussianMixture.random(args.components, args.dim, seed=0)
        den = GMMDenoiser(gmm, ns)
        t = torch.linspace(ns.default_t_start(), ns.default_t_end(), n + 1, dtype=torch.float64)
        x = torch.randn(s, args.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        states = []
        out = sample(den, x, Schedule(t, ns), "ddim", callback=lambda i, xi, x0: states.append(xi))
        states = torch.stack(states + [out])
        print(f"gmm: {args.components} components, dim {args.dim}, S = {s}, N = {n}, threads = {args.threads}")
    else:
        from optsteps.models import load_model
        from optsteps.pipeline.config import TeacherConfig
        from optsteps.teacher.load import LabelledDenoiser
        from optsteps.teacher.trajectories import run_teacher

        m = load_model(args.model, args.artifacts)
        ns = m.noise_schedule
        teacher = run_teacher(m, TeacherConfig(steps=n, seed=0), 0, s)
        t, states = teacher["t"], teacher["states"]
        den = LabelledDenoiser(m, teacher["labels"])
        print(f"{args.model} (trained UNet), S = {s}, N = {n} (UniPC teacher, uniform-λ), threads = {args.threads}")

    def time_evals(k):
        t0 = time.perf_counter()
        for r in range(k * n):
            den(states[r % n], t[r % n])
        return time.perf_counter() - t0

    # The machine is shared: every DP run is bracketed by its own reference measurement, repeated, and
    # the ratio of the fastest DP run to the fastest reference run is reported (plus the median pairwise).
    for k in args.nfe:
        for solver in args.solvers:
            for ebs_name in args.eval_batch_sizes:
                ebs = None if ebs_name == "layer" else s
                t_ref, t_dp, pair = [], [], []
                for _ in range(args.repeats):
                    t_ref.append(time_evals(k))
                    t0 = time.perf_counter()
                    res = oss.oss_search(
                        t, states, den, ns, k, solver, oss.OSSOptions(refine=False), eval_batch_size=ebs
                    )
                    t_dp.append(time.perf_counter() - t0)
                    pair.append(t_dp[-1] / t_ref[-1])
                pair.sort()
                print(
                    f"K = {k:2d} {solver:8s} eval batch {ebs_name:7s}: DP {min(t_dp):.3f} s, {k * n} evaluations "
                    f"{min(t_ref):.3f} s, ratio {min(t_dp) / min(t_ref):.3f} "
                    f"(median pairwise {pair[len(pair) // 2]:.3f}); "
                    f"evaluations/sample {res.model_evals} ≤ K·N = {k * n}; path {res.path}; MSE {res.cost:.3e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
