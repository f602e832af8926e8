"""OSS with and without the start search, and the baselines with and without a shifted start (issue 20; a
measurement, docs/algorithms.md §3 "the start window").

For each model (default ``digits`` and ``digits-flow``) and NFE (default 4, 5, 6, 8, 10), with one student
(``--solver``, default UniPC-2 with its corrector, the student OSS searches with; DDIM = Euler for flow):

* ``OSS``: ``oss_search`` with start window 0 (the start t_0 = t_max, today's default) and
  ``OSS+start``: with start window w (the start may sit at teacher index 0 … w, from the noise scaled to that
  time's σ or unscaled); w = ``--window``, or by default every teacher index within ``--window-frac`` (5 %) of
  the time range below t_max (a uniform-λ teacher grid is dense near t_max for flow: 5 indices there are only
  0.15 % of the time range); both distilled on the first ``--distill`` teacher samples (params.yaml's teacher,
  recomputed in memory: the same samples as the teacher shards), refinement radius ``oss.refine_radius``;
* every baseline of ``evaluate.baselines`` and its start variant ``KIND@start=t_j,state=rule``, where (j, rule)
  is chosen among the same window's starts (index j ≤ w, both rules) by the L2 on the distillation samples —
  the same freedom OSS+start has, chosen on the same data.

Reported: the held-out L2 = mean over ``--n`` samples of seed ``--seed`` (not the teacher's) of ‖x_K − x_teacher‖₂,
the teacher re-run on them (the evaluation's ``l2_to_teacher``): OSS's value and ratios — OSS+start / OSS,
each baseline / OSS, and each baseline's start variant / the baseline. Ratios < 1: the start search helps.

    PYTHONPATH=. .venv/bin/python benchmarks/oss_vs_start.py [--models digits digits-flow] [--nfe 4 5 6 8 10]
        [--solver unipc] [--window-frac 0.05 | --window W] [--distill 32] [--n 500] [--seed 4321]
"""

import argparse
import time

import torch

from optsteps.core.baselines import baseline
from optsteps.evaluate.run import teacher_endpoints
from optsteps.models import load_model
from optsteps.models.sampling import generate
from optsteps.optimizers.oss import OSSOptions, oss_search, start_candidates, student_spec
from optsteps.pipeline.config import load_params
from optsteps.teacher.load import LabelledDenoiser
from optsteps.teacher.trajectories import run_teacher

ap = argparse.ArgumentParser()
ap.add_argument("--models", nargs="+", default=["digits", "digits-flow"])
ap.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
ap.add_argument("--solver", default="unipc", choices=["ddim", "dpmpp2m", "unipc"])
ap.add_argument("--window", type=int, default=None, help="start window in teacher indices (default: --window-frac)")
ap.add_argument(
    "--window-frac",
    type=float,
    default=0.05,
    help="default window: every teacher index with t_max − t_j ≤ frac·(t_max − t_min)",
)
ap.add_argument(
    "--distill", type=int, default=32, help="teacher samples OSS distils on (and baseline starts are chosen on)"
)
ap.add_argument("--n", type=int, default=500, help="held-out samples")
ap.add_argument("--seed", type=int, default=4321, help="held-out seed")
ap.add_argument("--objective", default="mse", choices=["mse", "l2"])
ap.add_argument("--params", default="params.yaml")
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

torch.set_num_threads(a.threads)
p = load_params(a.params)
spec = student_spec(a.solver)
t_all = time.perf_counter()


def l2(x, ref):
    return (x - ref).flatten(1).norm(dim=1).mean().item()


print(
    f"student {a.solver}{'-2' if a.solver == 'unipc' else ''}; teacher {p.teacher.solver}-{p.teacher.steps} "
    f"({p.teacher.schedule}); OSS distils on {a.distill} teacher samples (objective {a.objective}, refine radius "
    f"{p.oss.refine_radius}); start window "
    f"{a.window if a.window is not None else f'the teacher indices within {a.window_frac:g} of the time range'}; "
    f"held-out L2 on {a.n} samples of seed "
    f"{a.seed}\n"
)
for name in a.models:
    t0 = time.perf_counter()
    m = load_model(name, p.artifacts)
    ns = m.noise_schedule
    teacher = run_teacher(m, p.teacher, 0, a.distill)
    t, states = teacher["t"], teacher["states"]
    den = LabelledDenoiser(m, teacher["labels"] if m.num_classes else None, p.teacher.guidance)
    _, x_teacher = teacher_endpoints(m, p.teacher, a.n, a.seed)
    if a.window is None:
        span = float(t[0] - t[-1])
        window = int((t[0] - t <= a.window_frac * span + 1e-12).sum()) - 1
    else:
        window = a.window
    starts = start_candidates(ns, t, window)

    def heldout(s):
        return l2(generate(m, s, spec, a.n, a.seed, guidance=p.teacher.guidance), x_teacher)

    def distill(s):
        return l2(generate(m, s, spec, a.distill, p.teacher.seed, guidance=p.teacher.guidance), states[-1])

    kinds = list(p.evaluate.baselines)
    header = (
        ["NFE", "OSS", "OSS+start / OSS", "OSS+start: t_0, state", "OSS distill L2 → +start"]
        + [f"{k} / OSS" for k in kinds]
        + [f"{k}@start / {k}" for k in kinds]
    )
    print(
        f"### {name} ({ns.describe()}): start window {window} teacher indices, t_0 … t_{window} = "
        f"{float(t[0]):.5g} … {float(t[window]):.5g}\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    notes = []
    for nfe in a.nfe:
        res = {}
        for w in (0, window):
            options = OSSOptions(refine_radius=p.oss.refine_radius, start_window=w, objective=a.objective)
            r = oss_search(t, states, den, ns, nfe, a.solver, options, eval_batch_size=a.distill, model=name)
            res[w] = r
        oss0, ossw = (res[w].schedule for w in (0, window))
        h0, hw = heldout(oss0), heldout(ossw)
        d0, dw = distill(oss0), distill(ossw)
        base_cells, var_cells = [], []
        for kind in kinds:
            plain = baseline(kind, ns, nfe, model=name)
            best = None
            for st in starts:
                if st.index == 0:
                    continue
                v = baseline(f"{kind}@start={float(t[st.index])!r},state={st.rule}", ns, nfe, model=name)
                e = distill(v)
                if best is None or e < best[0]:
                    best = (e, v, st)
            hb = heldout(plain)
            hv = heldout(best[1]) if best is not None else float("nan")
            base_cells.append(f"{hb / h0:.3f}")
            var_cells.append(f"{hv / hb:.3f}")
            if best is not None:
                notes.append(
                    f"{name} NFE {nfe} {kind}@start: t_0 = {float(t[best[2].index]):.5g} (index "
                    f"{best[2].index}), {best[2].rule}"
                )
        cells = [
            str(nfe),
            f"{h0:.4f}",
            f"{hw / h0:.3f}",
            f"{ossw.t[0]:.5g} (i = {res[window].path[0]}), {ossw.start_state}",
            f"{d0:.4f} → {dw:.4f}",
        ]
        print("| " + " | ".join(cells + base_cells + var_cells) + " |", flush=True)
        notes.append(
            f"{name} NFE {nfe} OSS path {res[0].path} → +start {res[window].path} "
            f"({res[window].start_state}); DP evals {res[0].model_evals} → {res[window].model_evals}, "
            f"refinement evals {res[0].refine_evals} → {res[window].refine_evals} per sample"
        )
    print()
    for line in notes:
        print(f"- {line}")
    print(f"\n({name}: {time.perf_counter() - t0:.0f} s)\n", flush=True)
print(f"(total {time.perf_counter() - t_all:.0f} s)")
