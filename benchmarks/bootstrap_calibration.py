"""Calibration of the bootstrap intervals: the spread a resampling scheme reports on one seed against the spread of
the statistic over fresh seeds (docs/algorithms.md §7.2).

Samples two UniPC NFE-5 schedules of the digits model (``oss`` from results/schedules and ``time-quadratic``) on
``--seeds`` disjoint evaluation seeds of ``--n`` samples each, plus ``oss`` on one more seed as a second reference
set, and prints for FID and KID (digitsnet features) against the real digits and against that reference, per row
and for the paired difference oss − time-quadratic: the standard deviation over the seeds and the mean over seeds of
(hi − lo)/3.92 of the centred 95 % interval, for the unstratified and the label-stratified bootstrap (B resamples).

    PYTHONPATH=. .venv/bin/python benchmarks/bootstrap_calibration.py            # 12 seeds × 1,000, B = 200

``--synthetic S``: no trained model needed. Paired Gaussian features (teacher y_i ~ N(0, Σ), student
x_i = y_i + δ + ε_i on the same "seed" i, D = 16) on S seeds: for the teacher-referenced paired FID and KID
(``paired_frechet``/``paired_kid``, pairs resampled jointly) and their ``metric_interval``, prints the share of seeds
whose interval covers the estimator's mean over the seeds (what the interval claims: where the number lands when
the noises are redrawn), the share with a bound below 0, and sd over seeds against the mean (hi − lo)/3.92.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--first-seed", type=int, default=3000)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--synthetic", type=int, default=0, help="seeds of the synthetic paired check (no model needed)")
    args = ap.parse_args(argv)
    if args.synthetic:
        return synthetic(args.synthetic, args.n, args.resamples)

    from optsteps.evaluate import bootstrap as bs
    from optsteps.evaluate.fid import clean_features, fid_from_features, kid_from_features
    from optsteps.evaluate.run import run_spec
    from optsteps.models import load_model
    from optsteps.models.sampling import generate
    from optsteps.pipeline import stages
    from optsteps.pipeline.config import load_params

    torch.set_num_threads(args.threads)
    p = load_params(args.params)
    m = load_model("digits", p.artifacts)
    sch = {
        s.method: s
        for s in stages.evaluation_schedules(p, "digits")
        if s.solver == "unipc" and s.nfe == 5 and s.method in ("oss", "time-quadratic")
    }
    if set(sch) != {"oss", "time-quadratic"}:
        raise SystemExit("needs results/schedules/digits/oss/unipc-nfe5.json (run `optsteps stage oss --model digits`)")
    ev = stages.evaluator_for(p, "digits")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    feats = {}
    t0 = time.perf_counter()
    for seed in seeds + [args.first_seed + 100]:
        for name, s in sch.items():
            if seed == args.first_seed + 100 and name != "oss":
                continue
            x = generate(m, s, run_spec(s, "unipc"), args.n, seed, 0, p.evaluate.guidance, 500)
            feats[(name, seed)] = clean_features(x, ev.digits)
    print(f"features of {len(feats)} sets × {args.n}: {time.perf_counter() - t0:.0f} s")
    labels = m.labels(args.n, 0).numpy()
    schemes = {
        "unstratified": bs.resample_indices(args.n, args.resamples, 0),
        "stratified": bs.resample_indices(args.n, args.resamples, 0, labels),
    }
    refs = {"real digits": ev._reference(ev.digits), "oss on another seed": feats[("oss", args.first_seed + 100)]}
    print(f"sd over {len(seeds)} seeds | bootstrap (hi − lo)/3.92, mean over seeds: " + " | ".join(schemes))
    for refname, ref in refs.items():
        fr, kr = bs.frechet_reference(ref), bs.kernel_reference(ref)
        for stat in ("fid", "kid"):
            pts, wid = {}, {}
            for seed in seeds:
                got = {}
                for name in sch:
                    f = feats[(name, seed)]
                    pt = (
                        fid_from_features(f, ref)
                        if stat == "fid"
                        else kid_from_features(f, ref, 0, p.evaluate.kid_subsets)
                    )
                    pts.setdefault(name, []).append(pt)
                    for sname, idx in schemes.items():
                        res = bs.frechet_resamples(f, fr, idx) if stat == "fid" else bs.kid_resamples(f, kr, idx)
                        lo, hi = bs.centred_interval(pt, res)
                        wid.setdefault((name, sname), []).append((hi - lo) / 3.92)
                        got[(name, sname)] = (pt, res)
                pts.setdefault("diff", []).append(pts["oss"][-1] - pts["time-quadratic"][-1])
                for sname in schemes:
                    _, (lo, hi) = bs.paired_difference(*got[("oss", sname)], *got[("time-quadratic", sname)])
                    wid.setdefault(("diff", sname), []).append((hi - lo) / 3.92)
            for name in ("oss", "time-quadratic", "diff"):
                label = "oss − time-quadratic (paired)" if name == "diff" else name
                print(
                    f"{stat} vs {refname}, {label}: mean {np.mean(pts[name]):.4g}, "
                    f"sd {np.std(pts[name], ddof=1):.3g} | "
                    + " | ".join(f"{np.mean(wid[(name, s)]):.3g}" for s in schemes)
                )


def synthetic(seeds: int, n: int, resamples: int, dim: int = 16):
    from optsteps.evaluate import bootstrap as bs

    g = np.random.default_rng(0)
    a = g.normal(size=(dim, dim)) / np.sqrt(dim)
    idx = bs.resample_indices(n, resamples, 0)
    for label, shift, noise in (
        ("equal to the teacher", 0.0, 0.0),
        ("close (δ = 0.05, ε = 0.1)", 0.05, 0.1),
        ("far (δ = 0.3, ε = 0.5)", 0.3, 0.5),
    ):
        pts, ivs = {"fid": [], "kid": []}, {"fid": [], "kid": []}
        for s in range(seeds):
            r = np.random.default_rng(1000 + s)
            y = r.normal(size=(n, dim)) @ a
            x = y + shift + noise * r.normal(size=(n, dim))
            for stat, point, res in (
                ("fid", bs.paired_frechet, bs.paired_frechet_resamples),
                ("kid", bs.paired_kid, bs.paired_kid_resamples),
            ):
                pt = point(x, y)
                pts[stat].append(pt)
                ivs[stat].append(bs.metric_interval(f"{stat}_teacher_synthetic", pt, res(x, y, idx)))
        for stat in ("fid", "kid"):
            mean = float(np.mean(pts[stat]))
            lo, hi = np.array(ivs[stat]).T
            cover = np.mean((lo <= mean + 1e-12) & (mean - 1e-12 <= hi))
            print(
                f"paired {stat} to the teacher, student {label}: mean {mean:.4g}, sd over {seeds} seeds "
                f"{np.std(pts[stat], ddof=1):.3g} | interval (hi − lo)/3.92 {np.mean((hi - lo) / 3.92):.3g} | "
                f"covers the mean in {cover:.1%} | bound < 0 in {np.mean(lo < 0):.0%}"
            )


if __name__ == "__main__":
    main()
