"""Model evaluations per second of the embedded digits UNet (batch 256, CPU, 1 thread) and the sampler's
overhead over bare model calls, as a ratio measured in one run (goal ≤ 1.05).

    .venv/bin/python benchmarks/bench_sampler.py [--artifacts artifacts] [--repeats 9]

Uses the trained model if present (the ratio does not depend on the weights), else a freshly built one.
"""

import argparse
import time

import torch

from optsteps.core.baselines import baseline
from optsteps.core.solvers import sample
from optsteps.models.base import DiffusionModel
from optsteps.models.digits import NULL_LABEL, build_unet, noise_schedule_for


def model_from(artifacts):
    try:
        from optsteps.models import load_model

        return load_model("digits", artifacts), "trained"
    except Exception:  # noqa: BLE001 - benchmark falls back to an untrained net
        unet = build_unet().eval()
        ns = noise_schedule_for("digits")

        def net(x, t, cond):
            tt = ns.timestep(torch.as_tensor(t, dtype=torch.float64)).float().expand(x.shape[0])
            with torch.no_grad():
                return unet(x, tt, class_labels=cond).sample

        return DiffusionModel("digits", ns, net, "epsilon", (1, 8, 8), 10, NULL_LABEL), "untrained"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--nfe", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(1)
    m, which = model_from(a.artifacts)
    labels = torch.arange(a.batch) % 10
    x = torch.randn(a.batch, 1, 8, 8)
    s = baseline("uniform-lambda", m.noise_schedule, a.nfe)
    ts = s.timesteps_t
    den = m.denoiser(labels)
    for _ in range(3):
        m.net(x, ts[0], labels)
    print(f"digits UNet ({which}), batch {a.batch}, NFE {a.nfe}, {a.repeats} repeats, 1 thread")
    print(f"{'solver':10s} {'bare calls s':>12s} {'sampler s':>10s} {'ratio':>7s} {'evals/s':>9s}   (min over repeats)")
    for solver in ("ddim", "dpmpp2m", "unipc"):
        bare, full = [], []
        for _ in range(a.repeats):  # interleave so that machine noise hits both sides alike
            t0 = time.perf_counter()
            for i in range(a.nfe):
                m.net(x, ts[i], labels)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sample(den, x, s, solver)
            full.append(time.perf_counter() - t0)
        b, f = min(bare), min(full)  # the least-disturbed repeat of each side (machine noise only adds time)
        med = sorted(full)[len(full) // 2] / sorted(bare)[len(bare) // 2]
        print(f"{solver:10s} {b:12.3f} {f:10.3f} {f / b:7.3f} {a.nfe * a.batch / f:9.0f}   (median ratio {med:.3f})")


if __name__ == "__main__":
    main()
