"""Images in [−1, 1] to uint8 arrays and PNG grids."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[−1, 1] images → uint8 [0, 255] numpy (N, H, W) or (N, H, W, C)."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    x = x.permute(0, 2, 3, 1).numpy()
    return x[..., 0] if x.shape[-1] == 1 else x


def save_grid(x: torch.Tensor, path, nrow: int = 10, scale: int = 4, max_side: int = 128) -> None:
    """Write a PNG grid of [−1, 1] images, atomically: small images nearest-neighbour upscaled ×scale (at most to
    64 px), images larger than ``max_side`` downsampled to it (antialiased), so a grid of 512-px samples stays a
    few MB."""
    import io

    from PIL import Image

    from optsteps.io.atomic import write_bytes_atomic

    if max(x.shape[-2:]) > max_side:
        f = max_side / max(x.shape[-2:])
        size = (max(1, round(x.shape[-2] * f)), max(1, round(x.shape[-1] * f)))
        x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    imgs = to_uint8(x)
    n, h, w = imgs.shape[:3]
    scale = max(1, min(scale, 64 // max(h, w)))
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + 1) + 1, nrow * (w + 1) + 1) + imgs.shape[3:], 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = imgs[i]
    img = Image.fromarray(grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
