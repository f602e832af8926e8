"""OSS against the baselines and the λ-optimizer, by L2 to the teacher endpoint, with the student OSS was
distilled for (a measurement; issue "OSS distiller").

For each NFE and solver: the schedules of params.yaml's baselines, the λ-optimizer's and GITS's (from
results/schedules/<model>/, written by the lambda-opt and oss stages) and OSS's, all sampled with the *same*
student — DPM-Solver++(2M), or UniPC at order 2 with its corrector (the student the DP searched with) — on
  * ``distill``: the teacher samples OSS was distilled on (the first ``oss.samples`` of the shards), and
  * ``held-out``: ``--n`` fresh seeds (``--seed``, not the teacher's), the teacher re-run on them.
L2 = mean over samples of ‖x_K − x_teacher‖₂ (the evaluation's ``l2_to_teacher``). A row's best value is
bold; the last column says whether OSS is ≤ every other schedule on that row.

    PYTHONPATH=. .venv/bin/python benchmarks/oss_l2_table.py --model digits [--n 500] [--nfe 4 5 6 8 10]
"""

import argparse
import time

import torch

from optsteps.core.baselines import baseline
from optsteps.core.schedule import Schedule, initial_state
from optsteps.core.solvers import sample
from optsteps.evaluate.run import teacher_endpoints
from optsteps.models import load_model
from optsteps.models.sampling import generate
from optsteps.optimizers.oss import student_spec
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
ns = m.noise_schedule
t_start = time.perf_counter()
_, x_teacher = teacher_endpoints(m, p.teacher, a.n, a.seed)
t_grid, states, labels = load_teacher(p.teacher, m, layout.trajectories_dir(p, a.model), p.oss.samples)
den = LabelledDenoiser(m, labels, p.teacher.guidance)


def l2_heldout(schedule, solver):
    x = generate(m, schedule, student_spec(solver), a.n, a.seed, guidance=p.teacher.guidance)
    return (x - x_teacher).flatten(1).norm(dim=1).mean().item()


def l2_distill(schedule, solver):
    eps = states[0] / float(ns.sigma(float(t_grid[0])))  # the teacher's unit noise (x̄_0 = σ_{t_0} ε)
    with torch.no_grad():
        x = sample(den, initial_state(eps, schedule), schedule, student_spec(solver))  # the schedule's start rule
    return (x - states[-1]).flatten(1).norm(dim=1).mean().item()


nfes = a.nfe or p.oss.nfe
solvers = a.solvers or p.oss.solvers
methods = list(p.evaluate.baselines) + ["lambda-opt", "gits", "oss"]
print(
    f"{a.model}: teacher {p.teacher.solver}-{p.teacher.steps} ({p.teacher.schedule}); distill = the first "
    f"{states.shape[1]} teacher samples, held-out = {a.n} samples of seed {a.seed}; student UniPC order 2 / "
    "DPM-Solver++(2M); L2 = mean ‖x_K − x_teacher‖₂\n"
)
for solver in solvers:
    for split, fn in (("distill", l2_distill), ("held-out", l2_heldout)):
        print(f"{solver}{'-2' if solver == 'unipc' else ''}, {split}\n")
        print("| NFE | " + " | ".join(methods) + " | OSS ≤ all |")
        print("|---" * (len(methods) + 2) + "|")
        for nfe in nfes:
            vals = {}
            for meth in methods:
                if meth in ("lambda-opt", "gits", "oss"):
                    path = layout.schedule_path(p, a.model, meth, solver, nfe)
                    if not path.is_file():
                        continue
                    sched = Schedule.load(path)
                else:
                    sched = baseline(meth, ns, nfe, model=a.model)
                vals[meth] = fn(sched, solver)
            best = min(vals.values())
            cells = [("**%.4f**" if vals[mt] == best else "%.4f") % vals[mt] if mt in vals else "–" for mt in methods]
            ok = "oss" in vals and all(vals["oss"] <= v for v in vals.values())
            print(f"| {nfe} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
        print()
print(f"({time.perf_counter() - t_start:.0f} s)")
