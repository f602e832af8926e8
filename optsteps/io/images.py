"""Images in [−1, 1] to uint8 arrays and PNG grids."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[−1, 1] images → uint8 [0, 255] numpy (N, H, W) or (N, H, W, C)."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    x = x.permute(0, 2, 3, 1).numpy()
    return x[..., 0] if x.shape[-1] == 1 else x


def save_grid(x: torch.Tensor, path, nrow: int = 10, scale: int = 4) -> None:
    """Write a PNG grid of [−1, 1] images (nearest-neighbour upscaled ×scale)."""
    from PIL import Image

    imgs = to_uint8(x)
    n, h, w = imgs.shape[:3]
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + 1) + 1, nrow * (w + 1) + 1) + imgs.shape[3:], 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = imgs[i]
    img = Image.fromarray(grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
