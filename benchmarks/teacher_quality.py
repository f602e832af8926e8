"""The quality bar of the embedded models: class accuracy of a 200-step teacher (UniPC, uniform-λ grid),
judged by the project's classifier (argmax = requested class), on class-balanced seeded samples.

    .venv/bin/python benchmarks/teacher_quality.py [--n 1000] [--steps 200]
"""

import argparse
import time

import torch

from optsteps.core.baselines import baseline
from optsteps.io.images import save_grid
from optsteps.models import load_model, model_dir
from optsteps.models.classifier import load_classifier
from optsteps.models.sampling import generate

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=1000)
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--artifacts", default="artifacts")
ap.add_argument("--seed", type=int, default=1234)
ap.add_argument("--models", nargs="+", default=["digits", "digits-flow"])
a = ap.parse_args()


def class_accuracy(classifier, x, labels) -> float:
    with torch.no_grad():
        return (classifier(x.clamp(-1, 1)).argmax(1) == labels).float().mean().item()


torch.set_num_threads(1)
clf = load_classifier(model_dir(a.artifacts, "classifier"))
for name in a.models:
    m = load_model(name, a.artifacts)
    t0 = time.perf_counter()
    x = generate(m, baseline("uniform-lambda", m.noise_schedule, a.steps), "unipc", a.n, a.seed)
    acc = class_accuracy(clf, x, m.labels(a.n))
    save_grid(x[:100], f"results/teacher_{name}.png")
    print(
        f"{name}: {a.steps}-step UniPC teacher, {a.n} samples: class accuracy {acc:.4f} "
        f"({time.perf_counter() - t0:.0f} s); grid results/teacher_{name}.png"
    )
