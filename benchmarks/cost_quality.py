"""Cost against quality of OSS: held-out L2 to the teacher against total per-sample forwards, over the distillation
samples S, the teacher steps N, refinement (off / budgeted = radius 1 without pair moves / full = params.yaml's),
K and the student solver; plus the evaluation's paired-interval half-width against n (docs/costs.md).

Held-out: fresh seeds (``--seed``, not the teacher's), the reference is the default teacher (params.yaml teacher:
its solver, steps and grid) on those seeds; each point's interval is the paired bootstrap interval of
L2(point) − L2(full-budget schedule) over the held-out samples. Forwards of a point: teacher N × S + the OSS DP
(``optimizers.oss.counts``) + the refinement the search reports, per (K, solver).

    python benchmarks/cost_quality.py --model digits --solvers unipc --nfe 5 10 --samples 8 16 32 64 \\
        --steps 50 100 --refine off full --heldout 200

The full grid of issue 25 is the defaults of every flag (far more than a 2-core machine does in minutes); the run
prints exactly the grid it ran. ``--pick 0.03`` marks the cheapest (S, N, refine) within 3 % of the best held-out L2
at every K measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optsteps.evaluate.run import run_spec  # noqa: E402
from optsteps.models import load_model  # noqa: E402
from optsteps.models.sampling import generate  # noqa: E402
from optsteps.optimizers.oss import counts, oss_search  # noqa: E402
from optsteps.pipeline.config import load_params  # noqa: E402
from optsteps.teacher.trajectories import run_teacher, teacher_schedule  # noqa: E402

REFINE = {
    "off": dict(refine=False),
    "budgeted": dict(refine=True, refine_radius=1, pair_moves=False),
    "full": None,
}  # full: params.yaml oss.refine_radius with pair moves


def per_sample_l2(x, ref):
    return (x - ref).flatten(1).norm(dim=1).double().numpy()


def paired_interval(a, b, resamples=1000, seed=0):
    """95 % percentile bootstrap interval of mean(a − b) over paired samples."""
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), (resamples, len(d)))
    means = d[idx].mean(1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", nargs="+", default=["digits", "digits-flow"])
    ap.add_argument("--solvers", nargs="+", default=["unipc", "dpmpp2m"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4, 5, 6, 8, 10])
    ap.add_argument("--samples", nargs="+", type=int, default=[2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--steps", nargs="+", type=int, default=[25, 50, 100, 200])
    ap.add_argument("--refine", nargs="+", default=["off", "budgeted", "full"], choices=list(REFINE))
    ap.add_argument("--heldout", type=int, default=500)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument(
        "--eval-n",
        nargs="+",
        type=int,
        default=[50, 100, 200, 500, 1000],
        help="n for the evaluation half-width (paired L2 interval of the full-budget schedule vs the "
        "time-quadratic baseline; FID needs the classifier: see bench_evaluate.py)",
    )
    ap.add_argument("--pick", type=float, default=0.03)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    p = load_params(a.params)
    out = {"grid": vars(a), "points": [], "eval_halfwidth": []}
    print(
        f"grid: models {a.model}, solvers {a.solvers}, K {a.nfe}, S {a.samples}, N {a.steps}, refine {a.refine}, "
        f"held-out {a.heldout} seeds (seed {a.seed})"
    )
    for name in a.model:
        q = p.for_model(name)
        m = load_model(q.entry(name), q.artifacts)
        t0 = time.perf_counter()
        ref = generate(
            m, teacher_schedule(m, q.teacher), q.teacher.solver, a.heldout, a.seed, guidance=q.teacher.guidance
        )  # the default teacher on held-out seeds
        teachers = {n: run_teacher(m, replace(q.teacher, steps=n), 0, max(a.samples)) for n in a.steps}
        print(f"{name}: teachers ready in {time.perf_counter() - t0:.0f} s")
        pts = []
        for solver in a.solvers:
            for k in a.nfe:
                for n in a.steps:
                    tr = teachers[n]
                    for s in a.samples:
                        states, labels = tr["states"][:, :s], tr["labels"][:s]
                        den = m.denoiser(labels if m.num_classes else None, q.teacher.guidance)
                        for mode in a.refine:
                            opts = dict(REFINE[mode] or dict(refine=q.oss.refine, refine_radius=q.oss.refine_radius))
                            pair_moves = opts.pop("pair_moves", True)
                            res = oss_search(
                                tr["t"],
                                states,
                                den,
                                m.noise_schedule,
                                k,
                                solver,
                                replace(q.oss, **opts),
                                eval_batch_size=s,
                                pair_moves=pair_moves,
                            )
                            x = generate(
                                m,
                                res.schedule,
                                run_spec(res.schedule, solver),
                                a.heldout,
                                a.seed,
                                guidance=q.teacher.guidance,
                            )
                            l2 = per_sample_l2(x, ref)
                            fw = n * s + counts.dp_evaluations(n, k) * s + res.refine_evals * s
                            pts.append(
                                {
                                    "model": name,
                                    "solver": solver,
                                    "K": k,
                                    "N": n,
                                    "S": s,
                                    "refine": mode,
                                    "forwards": fw,
                                    "l2": float(l2.mean()),
                                    "_l2": l2,
                                }
                            )
        for solver in a.solvers:  # paired intervals against the full-budget schedule of each (solver, K)
            for k in a.nfe:
                group = [r for r in pts if r["solver"] == solver and r["K"] == k]
                full = max(group, key=lambda r: (r["N"], r["S"], a.refine.index(r["refine"])))
                best = min(r["l2"] for r in group)
                for r in group:
                    r["diff"], r["lo"], r["hi"] = paired_interval(r["_l2"], full["_l2"])
                    r["vs_best"] = r["l2"] / best - 1
        for r in pts:
            r.pop("_l2")
        out["points"] += pts
    # the chosen point: the cheapest (S, N, refine) whose schedules are within --pick of the best at every K measured
    settings = sorted({(r["S"], r["N"], r["refine"]) for r in out["points"]})
    ok = [
        st
        for st in settings
        if all(r["vs_best"] <= a.pick for r in out["points"] if (r["S"], r["N"], r["refine"]) == st)
    ]
    cost = {st: sum(r["forwards"] for r in out["points"] if (r["S"], r["N"], r["refine"]) == st) for st in settings}
    chosen = min(ok, key=lambda st: cost[st]) if ok else None
    out["chosen"] = chosen
    print(
        f"\n{'model':<12} {'solver':<8} {'K':>3} {'N':>4} {'S':>4} {'refine':<9} {'forwards':>9} {'L2':>8} "
        f"{'vs best':>8}  paired Δ vs full [95 %]"
    )
    for r in out["points"]:
        mark = " **" if chosen and (r["S"], r["N"], r["refine"]) == chosen else ""
        print(
            f"{r['model']:<12} {r['solver']:<8} {r['K']:>3} {r['N']:>4} {r['S']:>4} {r['refine']:<9} "
            f"{r['forwards']:>9,} {r['l2']:>8.4f} {100 * r['vs_best']:>7.1f}%  {r['diff']:+.4f} "
            f"[{r['lo']:+.4f}, {r['hi']:+.4f}]{mark}"
        )
    print(
        f"\nchosen (cheapest within {100 * a.pick:.0f} % of the best held-out L2 at every K): "
        + (f"S={chosen[0]}, N={chosen[1]}, refine={chosen[2]}" if chosen else "none")
    )
    # evaluation: paired L2 half-width vs n (first model, first solver, the largest K; against time-quadratic)
    from optsteps.core.baselines import baseline_for

    name = a.model[0]
    q = p.for_model(name)
    m = load_model(q.entry(name), q.artifacts)
    k = max(a.nfe)
    base = baseline_for("time-quadratic", m, k)
    nmax = max(a.eval_n)
    ref = generate(m, teacher_schedule(m, q.teacher), q.teacher.solver, nmax, a.seed + 1, guidance=q.teacher.guidance)
    xb = per_sample_l2(generate(m, base, a.solvers[0], nmax, a.seed + 1), ref)
    print(f"\nevaluation half-width of the paired L2 interval (time-quadratic − uniform-λ, {a.solvers[0]}, K={k}):")
    ul = per_sample_l2(generate(m, baseline_for("uniform-lambda", m, k), a.solvers[0], nmax, a.seed + 1), ref)
    for n in a.eval_n:
        d, lo, hi = paired_interval(xb[:n], ul[:n])
        out["eval_halfwidth"].append({"n": n, "diff": d, "halfwidth": (hi - lo) / 2})
        print(f"  n={n:>5}: Δ {d:+.4f}, half-width {(hi - lo) / 2:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
