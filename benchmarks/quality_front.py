"""The quality front of issue 26 §4: held-out L2 to the teacher of the standard baselines, OSS from t_max (start
window 0, the default before issue 26), OSS with the start over the whole grid, the pipeline's default OSS (both
searches, the DP's and the refined path of each, chosen on the validation split as the stage chooses on its
held-out shard samples), OSS + polish, λ-opt + polish, and the per-sample oracle (each held-out sample's own best
DP path on the teacher grid, its start free), on trained digits models, per solver and NFE, with paired bootstrap
intervals against the best baseline, all measured in one run.

    PYTHONPATH=. python benchmarks/quality_front.py --models digits --nfe 5,8 --solvers unipc --samples 64

The teacher (params.yaml ``teacher``: UniPC on 100 uniform-λ steps) runs here on S + H fresh seeded samples: the
first S distil (OSS, polish), the next H are held out (every number printed), the last V (``--validation``) pick the
polish iterate and are never scored; the oracle runs on the first ``--oracle`` held-out samples. "polish gain":
held-out L2 after / before polish with its paired interval. Ratios: L2 / the best baseline's L2 at the same K
(paired intervals from ``optsteps.evaluate.bootstrap``); polish cost in forwards per sample of S + V and
backwards per distillation sample.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from optsteps.core.baselines import baseline
from optsteps.core.schedule import initial_state
from optsteps.core.solvers import sample
from optsteps.evaluate.bootstrap import paired_difference, resample_indices, resample_means
from optsteps.models import load_model
from optsteps.optimizers.lambda_opt import lambda_opt_schedule
from optsteps.optimizers.oss import oss_search, student_spec
from optsteps.optimizers.polish import PolishOptions, Split, polish_schedule
from optsteps.optimizers.select import choose_by_heldout
from optsteps.pipeline.config import load_params
from optsteps.teacher.load import LabelledDenoiser

BASELINES = ("uniform-t", "uniform-lambda", "karras", "time-quadratic")


def teacher_run(m, tcfg, n, seed):
    """(teacher grid t, states [N + 1, n, ...], unit noise ε, labels) from ``n`` seeded samples."""
    eps, labels = m.noise(n, seed), m.labels(n)
    sched = baseline(tcfg.schedule, m.noise_schedule, tcfg.steps)
    states = []
    den = LabelledDenoiser(m, labels, tcfg.guidance)
    with torch.no_grad():
        out = sample(den, initial_state(eps, sched), sched, tcfg.solver, callback=lambda i, x, x0: states.append(x))
    return torch.tensor(sched.t, dtype=torch.float64), torch.stack(states + [out]), eps, labels


def l2(m, sched, eps, target, labels, guidance):
    with torch.no_grad():
        out = sample(LabelledDenoiser(m, labels, guidance), initial_state(eps, sched), sched, sched.solver_spec)
    return (out - target).flatten(1).norm(dim=1).double().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,digits-flow")
    ap.add_argument("--nfe", default="4,5,6,8,10")
    ap.add_argument("--solvers", default="unipc,dpmpp2m")
    ap.add_argument("--samples", type=int, default=64, help="distillation samples S")
    ap.add_argument("--heldout", type=int, default=64, help="held-out samples H")
    ap.add_argument(
        "--validation", type=int, default=32, help="samples V that choose the polish iterate (neither S nor H)"
    )
    ap.add_argument("--oracle", type=int, default=8, help="held-out samples for the per-sample oracle (0 = off)")
    ap.add_argument("--iterations", type=int, default=None, help="polish steps (default params.yaml polish)")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--no-polish", action="store_true", help="skip the polish rows (the slow part)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = load_params()
    popt = p.polish if a.iterations is None else PolishOptions(**{**p.polish.__dict__, "iterations": a.iterations})
    s, h, nv = a.samples, a.heldout, a.validation
    oss_opt = replace(p.oss, start_window=0)  # OSS before issue 26: the student starts at t_max
    full_opt = replace(p.oss, start_window="full")  # the start over the whole grid
    print(f"S = {s} distillation, V = {nv} validation, H = {h} held-out samples, oracle on {a.oracle}; polish {popt}")
    picks = []
    for name in a.models.split(","):
        m = load_model(name, a.artifacts)
        g = p.teacher.guidance
        t, states, eps, labels = teacher_run(m, p.teacher, s + nv + h, p.teacher.seed)
        lab = lambda lo, hi: None if labels is None else labels[lo:hi]
        dist, held = (eps[:s], states[-1, :s], lab(0, s)), (eps[s : s + h], states[-1, s : s + h], lab(s, s + h))
        val = (eps[s + h :], states[-1, s + h :], lab(s + h, s + h + nv))  # picks the polish iterate; never scored
        idx = resample_indices(h, a.bootstrap, 0)
        den_d = LabelledDenoiser(m, lab(0, s), g)
        for solver in a.solvers.split(","):
            spec = student_spec(solver)
            print(
                f"\n{name}, {solver} (order {spec.order}): held-out mean L2 to the teacher; ratio to the best baseline "
                "[paired 95% interval of the difference / best]"
            )
            for k in [int(v) for v in a.nfe.split(",")]:
                rows = {}
                for kind in BASELINES:
                    rows[kind] = l2(m, baseline(kind, m.noise_schedule, k).with_solver(spec), *held, g)
                best = min(BASELINES, key=lambda r: rows[r].mean())
                t0 = time.perf_counter()
                res = oss_search(t, states[:, :s], den_d, m.noise_schedule, k, solver, oss_opt, eval_batch_size=s)
                rows["oss (t_max)"] = l2(m, res.schedule, *held, g)
                full = oss_search(t, states[:, :s], den_d, m.noise_schedule, k, solver, full_opt, eval_batch_size=s)
                rows["oss+start (full)"] = l2(m, full.schedule, *held, g)
                cands = [
                    ("searched start, refined", full.schedule),
                    ("searched start, dp", full.dp_schedule(t)),
                    ("t_max, refined", res.schedule),
                    ("t_max, dp", res.dp_schedule(t)),
                ]
                chosen = choose_by_heldout(cands, lambda lb: LabelledDenoiser(m, lb, g), Split(*val))
                rows["oss default"] = l2(m, chosen, *held, g)
                picks.append(
                    f"{name} {solver} K={k}: default chose '{chosen.extra['heldout']['chosen']}', t_0 = "
                    f"{chosen.t[0]:.4g} ({chosen.extra.get('start_state', 'scaled')}); +start t_0 = "
                    f"{full.schedule.t[0]:.4g} ({full.start_state}); distill MSE {chosen.extra['distill_mse']:.3g}, "
                    f"validation MSE {chosen.extra['heldout']['mse']:.3g} (gap {chosen.extra['heldout']['gap']:.2f})"
                )
                cost = {}
                for label, start in (
                    ()
                    if a.no_polish
                    else (
                        ("oss (t_max)", res.schedule),
                        ("lambda-opt", lambda_opt_schedule(m.noise_schedule, k, spec, p.lambda_opt)),
                    )
                ):
                    if label == "lambda-opt":
                        rows["lambda-opt"] = l2(m, start, *held, g)
                    pr = polish_schedule(
                        start, lambda lb: LabelledDenoiser(m, lb, g), m.noise_schedule, Split(*dist), Split(*val), popt
                    )
                    rows[f"{label}+polish"] = l2(m, pr.schedule, *held, g)
                    cost[label] = (
                        pr.iterations,
                        float(pr.forwards) / (s + nv),
                        float(pr.backwards) / s,
                        float(pr.heldout_before),
                        float(pr.heldout_after),
                    )
                if a.oracle:  # each sample's own best DP path (batch DP on that one sample, refined)
                    own = [
                        l2(
                            m,
                            oss_search(
                                t,
                                states[:, s + i : s + i + 1],
                                LabelledDenoiser(m, lab(s + i, s + i + 1), g),
                                m.noise_schedule,
                                k,
                                solver,
                                full_opt,
                            ).schedule,
                            eps[s + i : s + i + 1],
                            states[-1, s + i : s + i + 1],
                            lab(s + i, s + i + 1),
                            g,
                        )[0]
                        for i in range(min(a.oracle, h))
                    ]
                    rows["oracle(subset)"] = np.asarray(own)
                secs = time.perf_counter() - t0
                ref = rows[best]
                rb = resample_means(ref, idx)
                print(f"  K={k}  best baseline {best}: L2 {ref.mean():.4f}   ({secs:.0f} s for OSS, polish, oracle)")
                for key, v in rows.items():
                    if key == "oracle(subset)":
                        n = len(v)
                        print(f"    {key:<20} {v.mean():.4f}  ratio {v.mean() / ref[:n].mean():.3f} (same {n} samples)")
                        continue
                    d, (lo, hi) = paired_difference(v.mean(), resample_means(v, idx), ref.mean(), rb)
                    print(
                        f"    {key:<20} {v.mean():.4f}  ratio {v.mean() / ref.mean():.3f} "
                        f"[{1 + lo / ref.mean():.3f}, {1 + hi / ref.mean():.3f}]"
                    )
                for label, (it, f, b, hb, ha) in cost.items():
                    v0, v1 = rows[label], rows[f"{label}+polish"]  # polish gain: paired after / before, same samples
                    d, (lo, hi) = paired_difference(
                        v1.mean(), resample_means(v1, idx), v0.mean(), resample_means(v0, idx)
                    )
                    print(
                        f"    polish gain on {label}: held-out L2 {v0.mean():.4f} → {v1.mean():.4f}, ratio "
                        f"{v1.mean() / v0.mean():.3f} [{1 + lo / v0.mean():.3f}, {1 + hi / v0.mean():.3f}]"
                    )
                    print(
                        f"    polish of {label}: {it} steps, validation MSE {hb:.5f} → {ha:.5f} "
                        f"({ha / hb:.3f}×), {f:.0f} forwards per sample (S + V), "
                        f"{b:.0f} backwards per distillation sample"
                    )

    print("\nchoices of the default OSS (on the validation split):\n  " + "\n  ".join(picks))


if __name__ == "__main__":
    main()
