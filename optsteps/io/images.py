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


def _cells(x: torch.Tensor, max_side: int) -> np.ndarray:
    """[−1, 1] images → uint8 RGB (N, H, W, 3), images larger than ``max_side`` downsampled (antialiased)."""
    if max(x.shape[-2:]) > max_side:
        f = max_side / max(x.shape[-2:])
        size = (max(1, round(x.shape[-2] * f)), max(1, round(x.shape[-1] * f)))
        x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    imgs = to_uint8(x)
    if imgs.ndim == 3:
        imgs = np.repeat(imgs[..., None], 3, axis=-1)
    return imgs[..., :3]


def labelled_grid(
    panels: list[tuple[str, torch.Tensor]],
    labels: list[str] | None = None,
    nrow: int = 8,
    min_width: int = 768,
    max_side: int = 128,
):
    """A PIL image of one or more panels side by side (e.g. the teacher's samples beside a schedule's, on the same
    seeds): each panel a grid of ``nrow`` columns under its title, every cell nearest-neighbour upsampled by one
    integer factor so the whole image is at least ``min_width`` px wide, captioned with ``labels[i]`` (the class or
    prompt sample i asked for; truncated to the cell)."""
    from PIL import Image, ImageDraw, ImageFont

    if not panels:
        raise ValueError("labelled_grid needs at least one panel")
    cells = [(title, _cells(x, max_side)) for title, x in panels]
    n = min(len(c) for _, c in cells)
    h, w = cells[0][1].shape[1:3]
    cols = max(1, min(nrow, n))
    rows = (n + cols - 1) // cols
    gap, cap, head, sep = 2, 14 if labels else 0, 20, 16
    fixed = len(cells) * (cols + 1) * gap + (len(cells) - 1) * sep  # width = fixed + scale · (panels · cols · w)
    scale = max(1, -(-(min_width - fixed) // (len(cells) * cols * w)))
    cw, ch = w * scale, h * scale
    pw = cols * (cw + gap) + gap
    width = len(cells) * pw + (len(cells) - 1) * sep
    height = head + rows * (ch + cap + gap) + gap
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, (title, arr) in enumerate(cells):
        x0 = k * (pw + sep)
        draw.text((x0 + gap, 4), title, fill="black", font=font)
        for i in range(n):
            r, c = divmod(i, cols)
            cx, cy = x0 + gap + c * (cw + gap), head + gap + r * (ch + cap + gap)
            img.paste(Image.fromarray(arr[i]).resize((cw, ch), Image.NEAREST), (cx, cy))
            if labels:
                text = str(labels[i % len(labels)])
                while text and draw.textlength(text, font=font) > cw:
                    text = text[:-2] + "…" if len(text) > 2 else ""
                draw.text((cx + 1, cy + ch + 1), text, fill="black", font=font)
    return img


def save_labelled_grid(panels, path, labels=None, nrow: int = 8, min_width: int = 768) -> None:
    """``labelled_grid`` written as a PNG, atomically."""
    import io

    from optsteps.io.atomic import write_bytes_atomic

    buf = io.BytesIO()
    labelled_grid(panels, labels, nrow, min_width).save(buf, format="PNG", optimize=True)
    write_bytes_atomic(path, buf.getvalue())
