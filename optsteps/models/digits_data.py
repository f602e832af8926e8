"""The embedded default data: scikit-learn's ``load_digits`` (1797 grey 8×8 digits, 10 classes, values
0..16), shipped inside the scikit-learn wheel (UCI Optical Recognition of Handwritten Digits, Alpaydin &
Kaynak 1998). Scaled to [−1, 1] as x/8 − 1."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def digits_images() -> torch.Tensor:
    """[1797, 1, 8, 8] float32 in [−1, 1]."""
    images, _ = _digits()
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)


def digits_labels() -> torch.Tensor:
    return torch.from_numpy(_digits()[1])


def digits_sha256() -> str:
    images, labels = _digits()
    h = hashlib.sha256(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()
