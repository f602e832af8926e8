"""The digits classifier: a small CNN (3 conv + fc128, ~160k params) trained by the project.

It is the judge of class adherence and its 128-d penultimate layer is the FID feature network on the
default. Trained on a stratified (1 − holdout) split; the held-out accuracy is recorded with the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from optsteps.core.limits import MAX_SAMPLES
from optsteps.errors import OptstepsError
from optsteps.models.digits_data import digits_images, digits_labels, digits_sha256
from optsteps.models.identity import MODEL_RECORD, read_model_meta, verify_weights


@dataclass
class ClassifierConfig:
    epochs: int = field(default=60, metadata={"range": (1, MAX_SAMPLES)})
    batch_size: int = field(default=128, metadata={"range": (1, MAX_SAMPLES)})
    lr: float = field(default=3e-3, metadata={"range": (0.0, 10.0), "open": "both"})
    holdout_fraction: float = field(default=0.2, metadata={"range": (0.0, 1.0), "open": "both"})
    seed: int = 0
    threads: int = field(default=1, metadata={"range": (1, MAX_SAMPLES)})


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x):
        """The 128-d penultimate features (FID feature space)."""
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def stratified_split(labels: torch.Tensor, holdout: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(len(idx) * holdout))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(test)


def accuracy(model: nn.Module, x, y, batch: int = 512) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return (pred == y).float().mean().item()


def train_classifier(cfg: ClassifierConfig, out_dir, progress: bool = True) -> Path:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x, y = digits_images(), digits_labels()
    tr, te = stratified_split(y, cfg.holdout_fraction, cfg.seed)
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = (len(tr) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    t0 = time.perf_counter()
    epochs = range(cfg.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="train classifier", mininterval=2.0)
    for _ in epochs:
        model.train()
        perm = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            xb = x[b]
            # ±1-pixel random shifts: cheap augmentation that the small CNN benefits from
            sh = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=sh, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    acc = accuracy(model, x[te], y[te])
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp / "classifier.safetensors")
    meta = {
        "name": "classifier",
        "holdout_accuracy": acc,
        "holdout_size": len(te),
        "train_size": len(tr),
        "params": dataclasses.asdict(cfg),
        "train_seconds": round(seconds, 2),
        "data_sha256": digits_sha256(),
        "weights_sha256": hashlib.sha256((tmp / "classifier.safetensors").read_bytes()).hexdigest(),
    }
    (tmp / MODEL_RECORD).write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_classifier(model_dir) -> DigitsCNN:
    from safetensors.torch import load_file

    p = Path(model_dir) / "classifier.safetensors"
    if not p.is_file():
        raise OptstepsError(
            f"the digits classifier is not trained yet ({p} missing); run `optsteps train --model classifier`."
        )
    meta_path = Path(model_dir) / MODEL_RECORD
    if meta_path.is_file():
        verify_weights(p, read_model_meta(meta_path, "classifier", ("weights_sha256",))["weights_sha256"], "classifier")
    m = DigitsCNN()
    try:
        m.load_state_dict(load_file(p))
    except Exception as e:  # a truncated file or another network's weights
        raise OptstepsError(
            f"cannot load the digits classifier from {p} ({type(e).__name__}); retrain it with "
            "`optsteps train --model classifier --force`."
        ) from None
    return m.eval().requires_grad_(False)
