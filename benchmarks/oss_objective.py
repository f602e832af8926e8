"""Does the OSS objective matter? ``oss.objective`` mse (batch-mean squared error per element, the default) against
l2 (mean per-sample L2 norm, what the evaluation reports) on a trained model (issue 20; a measurement).

For each solver and NFE: the OSS schedule of each objective from the pipeline's teacher shards (the first
``oss.samples`` samples, as the oss stage reads them; start window ``oss.start_window``), whether the two index
paths differ, and both schedules' held-out L2 (mean over ``--n`` samples of seed ``--seed`` of ‖x_K − x_teacher‖₂,
the teacher re-run on them) with the student OSS searched with. Ratio l2 / mse < 1: the l2 objective wins.

    PYTHONPATH=. .venv/bin/python benchmarks/oss_objective.py [--model digits] [--nfe 4 5 6 8 10]
        [--solvers unipc dpmpp2m] [--n 500]
"""

import argparse
import time

import torch

from optsteps.evaluate.run import teacher_endpoints
from optsteps.models import load_model
from optsteps.models.sampling import generate
from optsteps.optimizers.oss import OSSOptions, oss_search, student_spec
from optsteps.pipeline import layout
from optsteps.pipeline.config import load_params
from optsteps.teacher.load import LabelledDenoiser, load_teacher

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="digits")
ap.add_argument("--nfe", type=int, nargs="+", default=None, help="default: params oss.nfe")
ap.add_argument("--solvers", nargs="+", default=None, help="default: params oss.solvers")
ap.add_argument("--n", type=int, default=500)
ap.add_argument("--seed", type=int, default=4321)
ap.add_argument("--params", default="params.yaml")
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

torch.set_num_threads(a.threads)
p = load_params(a.params)
m = load_model(a.model, p.artifacts)
t_all = time.perf_counter()
t, states, labels = load_teacher(p.teacher, m, layout.trajectories_dir(p, a.model), p.oss.samples)
den = LabelledDenoiser(m, labels, p.teacher.guidance)
_, x_teacher = teacher_endpoints(m, p.teacher, a.n, a.seed)
S = states.shape[1]
print(
    f"{a.model}: teacher {p.teacher.solver}-{p.teacher.steps} ({p.teacher.schedule}), OSS on {S} teacher samples, "
    f"refine radius {p.oss.refine_radius}, start window {p.oss.start_window}; held-out L2 on {a.n} samples of "
    f"seed {a.seed}\n"
)
print(
    "| solver | NFE | same path | mse: distill MSE / L2 | l2: distill MSE / L2 | held-out L2 mse | held-out L2 l2 | "
    "l2 / mse | seconds mse / l2 |"
)
print("|---|---|---|---|---|---|---|---|---|")
for solver in a.solvers or p.oss.solvers:
    for nfe in a.nfe or p.oss.nfe:
        out = {}
        for objective in ("mse", "l2"):
            t0 = time.perf_counter()
            options = OSSOptions(
                refine_radius=p.oss.refine_radius, start_window=p.oss.start_window, objective=objective
            )
            r = oss_search(t, states, den, m.noise_schedule, nfe, solver, options, eval_batch_size=S, model=a.model)
            secs = time.perf_counter() - t0
            x = generate(m, r.schedule, student_spec(solver), a.n, a.seed, guidance=p.teacher.guidance)
            dist_l2 = r.objective_value if objective == "l2" else None
            if dist_l2 is None:  # the mse schedule's distillation L2, for the table
                xd = generate(m, r.schedule, student_spec(solver), S, p.teacher.seed, guidance=p.teacher.guidance)
                dist_l2 = (xd - states[-1]).flatten(1).norm(dim=1).mean().item()
            out[objective] = (r, (x - x_teacher).flatten(1).norm(dim=1).mean().item(), dist_l2, secs)
        (rm, hm, dm, sm), (rl, hl, dl, sl) = out["mse"], out["l2"]
        same = "yes" if (rm.path, rm.start_state) == (rl.path, rl.start_state) else f"no: {rm.path} / {rl.path}"
        print(
            f"| {solver} | {nfe} | {same} | {rm.cost:.3e} / {dm:.4f} | {rl.cost:.3e} / {dl:.4f} | {hm:.4f} | "
            f"{hl:.4f} | {hl / hm:.3f} | {sm:.0f} / {sl:.0f} |",
            flush=True,
        )
print(f"\n({time.perf_counter() - t_all:.0f} s)")
