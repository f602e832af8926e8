"""The baseline comparison ``make run`` writes: for each model, a seeded teacher (N fine steps), then every
baseline × solver × NFE on the same seeds: L2 to the teacher endpoint and class accuracy (classifier argmax =
requested class). Writes ``results/baselines.md``, ``results/baselines.json`` and sample grids."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .baselines import baseline
from .config import Params
from .data import save_grid
from .models import load_model, model_dir
from .models.classifier import load_classifier
from .sampling import generate, l2_to_teacher
from .schedule import write_text_atomic

TEACHER_SCHEDULE = "uniform-lambda"


def class_accuracy(classifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (classifier(x.clamp(-1, 1)).argmax(1) == labels).float().mean().item()


def baseline_report(p: Params) -> list[Path]:
    r = p.report
    torch.set_num_threads(1)
    out = Path(p.results)
    clf = load_classifier(model_dir(p.artifacts, "classifier"))
    rows, written = [], []
    for name in r.models:
        model = load_model(name, p.artifacts)
        labels = model.labels(r.samples)
        t0 = time.perf_counter()
        teacher_s = baseline(TEACHER_SCHEDULE, model.noise_schedule, r.teacher_steps, model=name)
        teacher = generate(model, teacher_s, r.teacher_solver, r.samples, r.seed)
        teacher_time = time.perf_counter() - t0
        rows.append({"model": name, "method": f"teacher ({TEACHER_SCHEDULE})", "solver": r.teacher_solver,
                     "nfe": r.teacher_steps, "l2_to_teacher": 0.0,
                     "class_accuracy": class_accuracy(clf, teacher, labels), "seconds": round(teacher_time, 2)})
        save_grid(teacher[:100], out / f"grid_{name}_teacher.png")
        written.append(out / f"grid_{name}_teacher.png")
        for solver in r.solvers:
            for kind in r.baselines:
                for nfe in r.nfe:
                    s = baseline(kind, model.noise_schedule, nfe, model=name)
                    x = generate(model, s, solver, r.samples, r.seed)
                    rows.append({"model": name, "method": kind, "solver": solver, "nfe": nfe,
                                 "l2_to_teacher": l2_to_teacher(x, teacher),
                                 "class_accuracy": class_accuracy(clf, x, labels)})
                    if solver == "unipc" and nfe == r.grid_nfe and kind == "uniform-lambda":
                        save_grid(x[:100], out / f"grid_{name}_{solver}_{kind}_nfe{nfe}.png")
                        written.append(out / f"grid_{name}_{solver}_{kind}_nfe{nfe}.png")
    written.append(write_text_atomic(out / "baselines.json", json.dumps(rows, indent=2) + "\n"))
    written.append(write_text_atomic(out / "baselines.md", to_markdown(rows, r.nfe)))
    return written


def to_markdown(rows: list[dict], nfes: list[int]) -> str:
    lines = ["# Baselines: L2 to the teacher endpoint (class accuracy)", "",
             "Same seeds and labels for every row; the teacher row is the reference (its accuracy is the quality bar).", ""]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for m in models:
        lines += [f"## {m}", ""]
        for r in rows:
            if r["model"] == m and r["method"].startswith("teacher"):
                lines += [f"Teacher: {r['method']}, {r['solver']}, {r['nfe']} steps, class accuracy "
                          f"{r['class_accuracy']:.3f}, {r['seconds']} s.", ""]
        lines += ["| solver | schedule | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                  "|---|---|" + "---|" * len(nfes)]
        cells = {}
        for r in rows:
            if r["model"] == m and not r["method"].startswith("teacher"):
                cells[(r["solver"], r["method"], r["nfe"])] = f"{r['l2_to_teacher']:.3f} ({r['class_accuracy']:.2f})"
        for solver, method in dict.fromkeys((s, mt) for (s, mt, _) in cells):
            lines.append(f"| {solver} | {method} | " + " | ".join(cells.get((solver, method, k), "") for k in nfes) + " |")
        lines.append("")
    return "\n".join(lines)
