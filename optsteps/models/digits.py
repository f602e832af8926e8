"""``digits`` and ``digits-flow``: a class-conditional diffusers ``UNet2DModel`` on 8×8 sklearn digits,
trained by the project (docs/offline.md §4).

- ``digits``: ε-prediction on the discrete linear-β VP schedule, N = 1000 (the CIFAR-10 DDPM setting);
  loss ‖ε_θ(√ᾱ_n x_0 + √(1−ᾱ_n) ε, n, c) − ε‖², n ~ U{0..N−1}; network timestep n = t·N − 1.
- ``digits-flow``: rectified flow, x_t = (1 − t) x_0 + t ε, velocity target u = ε − x_0,
  loss ‖u_θ(x_t, 1000 t, c) − u‖², t ~ U(0, 1).

Labels 0..9 plus a null label 10 (dropped with probability ``label_dropout``) for classifier-free guidance.
Saved with ``save_pretrained`` (EMA weights) plus ``optsteps_model.json`` (data hash, params, git commit,
train time, weights hash); the folder is written to a temp name and renamed, so a crash leaves nothing half-done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from optsteps.core.denoisers import network_grad_context
from optsteps.core.limits import MAX_SAMPLES
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete, noise_schedule_from_dict
from optsteps.errors import OptstepsError
from optsteps.models.base import DiffusionModel, ModelCard
from optsteps.models.digits_data import digits_images, digits_labels, digits_sha256
from optsteps.models.identity import MODEL_RECORD, read_model_meta, verify_weights


@dataclass
class TrainConfig:
    """Diffusion-model training (docs/offline.md §4 recipe: 1500 steps, AdamW 2e-3, EMA 0.999, label dropout)."""

    steps: int = field(default=1500, metadata={"range": (1, MAX_SAMPLES)})
    batch_size: int = field(default=128, metadata={"range": (1, MAX_SAMPLES)})
    lr: float = field(default=2e-3, metadata={"range": (0.0, math.inf), "open": "lo"})
    warmup_steps: int = field(default=100, metadata={"range": (0, MAX_SAMPLES)})
    decay_fraction: float = field(default=0.3, metadata={"range": (0.0, 1.0)})  # cosine decay over the last 30 %
    ema: float = field(default=0.999, metadata={"range": (0.0, 1.0), "open": "hi"})
    label_dropout: float = field(default=0.15, metadata={"range": (0.0, 1.0), "open": "hi"})  # null labels (CFG)
    grad_clip: float = field(default=1.0, metadata={"range": (0.0, math.inf), "open": "lo"})
    seed: int = 0
    threads: int = field(default=2, metadata={"range": (1, MAX_SAMPLES)})


KINDS = {"digits": "epsilon", "digits-flow": "flow"}
NULL_LABEL = 10


def build_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=NULL_LABEL + 1,
        add_attention=False,
    )


def noise_schedule_for(name: str):
    return VPDiscrete("linear", 1e-4, 0.02, 1000) if KINDS[name] == "epsilon" else RectifiedFlow(1000)


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, constant, cosine decay to 0 over the last ``decay_fraction`` of the steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    start = int(cfg.steps * (1 - cfg.decay_fraction))
    if step < start:
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - start) / max(1, cfg.steps - start)))


def ema_decay(step: int, ema: float) -> float:
    """EMA decay with warm-up, min(β, (1 + k)/(10 + k)): without it, β^steps of the random initialisation
    stays in the average (0.999^1500 ≈ 22 %)."""
    return min(ema, (1 + step) / (10 + step))


def train_digits(name: str, cfg: TrainConfig, out_dir, progress: bool = True) -> Path:
    """Train ``digits`` or ``digits-flow`` and save it to ``out_dir``; deterministic given ``cfg.seed``."""
    if name not in KINDS:
        raise OptstepsError(f"unknown digits model {name!r}; use one of {sorted(KINDS)}.")
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all = digits_images(), digits_labels()
    ns = noise_schedule_for(name)
    unet = build_unet()
    ema = build_unet()
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    sqrt_ac = ns.alphas_cumprod.sqrt().float() if KINDS[name] == "epsilon" else None
    sqrt_1mac = (1 - ns.alphas_cumprod).sqrt().float() if KINDS[name] == "epsilon" else None
    t0 = time.perf_counter()
    it = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"train {name}", mininterval=2.0)
    losses = []
    for step in it:
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
        x0, y = x_all[idx], y_all[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
        y[drop] = NULL_LABEL
        eps = torch.randn(x0.shape, generator=g)
        if KINDS[name] == "epsilon":
            n = torch.randint(0, ns.num_train_timesteps, (cfg.batch_size,), generator=g)
            xt = sqrt_ac[n].view(-1, 1, 1, 1) * x0 + sqrt_1mac[n].view(-1, 1, 1, 1) * eps
            target, tt = eps, n.float()
        else:
            t = torch.rand(cfg.batch_size, generator=g)
            xt = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * eps
            target, tt = eps - x0, t * ns.num_train_timesteps
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = torch.nn.functional.mse_loss(unet(xt, tt, class_labels=y).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        decay = ema_decay(step, cfg.ema)
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p, alpha=1 - decay)
        losses.append(loss.item())
        if progress and step % 50 == 0:
            it.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    seconds = time.perf_counter() - t0
    return save_digits(name, ema, cfg, out_dir, seconds, sum(losses[-100:]) / len(losses[-100:]))


def save_digits(name, unet, cfg: TrainConfig, out_dir, seconds: float, final_loss: float) -> Path:
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp / "unet")
    weights = tmp / "unet" / "diffusion_pytorch_model.safetensors"
    meta = {
        "name": name,
        "prediction_type": KINDS[name],
        "noise_schedule": noise_schedule_for(name).to_dict(),
        "sample_shape": [1, 8, 8],
        "num_classes": 10,
        "null_label": NULL_LABEL,
        "data": "sklearn.datasets.load_digits",
        "data_sha256": digits_sha256(),
        "params": dataclasses.asdict(cfg),
        "git_commit": git_commit(),
        "train_seconds": round(seconds, 2),
        "final_loss": final_loss,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    (tmp / MODEL_RECORD).write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def _meta(name: str, model_dir) -> dict:
    meta_path = Path(model_dir) / MODEL_RECORD
    if not meta_path.is_file():
        raise OptstepsError(
            f"model {name!r} is not trained yet ({meta_path} missing); "
            f"run `optsteps train --model {name}` (or `make run`)."
        )
    return read_model_meta(
        meta_path, name, ("noise_schedule", "prediction_type", "sample_shape", "weights_sha256", "data_sha256")
    )


def _identity(name: str, meta: dict) -> dict:
    return {"model": name, "sha256": meta["weights_sha256"], "data_sha256": meta["data_sha256"]}


def describe_digits_model(name: str, model_dir) -> ModelCard:
    """The trained model's ``ModelCard`` from its optsteps_model.json (no network is built)."""
    meta = _meta(name, model_dir)
    return ModelCard(
        name,
        noise_schedule_from_dict(meta["noise_schedule"]),
        meta["prediction_type"],
        tuple(meta["sample_shape"]),
        10,
        NULL_LABEL,
        _identity(name, meta),
    )


def load_digits_model(name: str, model_dir) -> DiffusionModel:
    from diffusers import UNet2DModel

    model_dir = Path(model_dir)
    meta = _meta(name, model_dir)
    verify_weights(model_dir / "unet" / "diffusion_pytorch_model.safetensors", meta["weights_sha256"], name)
    try:
        unet = UNet2DModel.from_pretrained(model_dir / "unet", low_cpu_mem_usage=False).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise OptstepsError(
            f"cannot load the UNet of {name!r} from {model_dir / 'unet'} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); retrain it with `optsteps train --model {name} --force`."
        ) from None
    # channels-last weights and activations: the forward runs 1.06-1.3× faster on this project's CPU
    # (benchmarks/bench_unet_layout.py); outputs agree to float rounding (~6e-6).
    unet = unet.to(memory_format=torch.channels_last)
    ns = noise_schedule_from_dict(meta["noise_schedule"])

    def net(x, t, cond):
        t = torch.as_tensor(t, dtype=torch.float64)
        tt = ns.timestep(t).float()
        tt = tt.expand(x.shape[0]) if tt.dim() == 0 else tt
        labels = cond if cond is not None else torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long)
        with network_grad_context():  # no graph unless inside core.denoisers.differentiable_networks()
            out = unet(x.contiguous(memory_format=torch.channels_last), tt, class_labels=labels).sample
        return out.contiguous()

    return DiffusionModel(
        name, ns, net, meta["prediction_type"], tuple(meta["sample_shape"]), 10, NULL_LABEL, _identity(name, meta)
    )
