"""The digits UNet's forward time in the default (NCHW) and channels-last memory layouts (a measurement).

Loads the trained ``digits`` UNet twice, times one batch through each layout (minimum of ``--repeats``
interleaved calls, torch threads ``--threads``) and prints the ratio and the largest output difference.
``optsteps.models.digits.load_digits_model`` uses channels-last.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_unet_layout.py [--batch 500] [--threads 2]
"""

import argparse
import time

import torch
from diffusers import UNet2DModel

ap = argparse.ArgumentParser()
ap.add_argument("--model-dir", default="artifacts/models/digits")
ap.add_argument("--batch", type=int, default=500)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=7)
a = ap.parse_args()

torch.set_num_threads(a.threads)
nchw = UNet2DModel.from_pretrained(f"{a.model_dir}/unet").eval().requires_grad_(False)
nhwc = (
    UNet2DModel.from_pretrained(f"{a.model_dir}/unet")
    .eval()
    .requires_grad_(False)
    .to(memory_format=torch.channels_last)
)
g = torch.Generator().manual_seed(0)
x = torch.randn(a.batch, nchw.config.in_channels, nchw.config.sample_size, nchw.config.sample_size, generator=g)
t = torch.rand(a.batch, generator=g) * 999
y = torch.randint(0, 10, (a.batch,), generator=g)
runs = {
    "nchw": lambda: nchw(x, t, class_labels=y).sample,
    "channels_last": lambda: nhwc(x.contiguous(memory_format=torch.channels_last), t, class_labels=y).sample,
}
best = {k: float("inf") for k in runs}
with torch.inference_mode():
    outs = {k: f() for k, f in runs.items()}  # warm-up
    for _ in range(a.repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
diff = (outs["nchw"] - outs["channels_last"]).abs().max().item()
for k, v in best.items():
    print(f"{k:14s} {v * 1e3:8.1f} ms / batch of {a.batch}  ({a.batch / v:,.0f} evaluations/s, {a.threads} threads)")
print(f"speed-up channels_last vs nchw: {best['nchw'] / best['channels_last']:.2f}×; max |Δ output| = {diff:.2e}")
