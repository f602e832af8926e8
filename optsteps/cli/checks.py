"""Checks of command-line values, shared by ``sample``, ``apply`` and ``evaluate`` (one rule, one place): each
returns the value or raises one ``OptstepsError`` line naming the option and the fix, before any model loads."""

from __future__ import annotations

import math
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.limits import check as check_limit
from optsteps.io.limits import check_seed  # noqa: F401 - the seed range lives with the other limits


def check_int(option: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise OptstepsError(f"{option} {value} is out of range; pass an integer in {lo} … {hi}.")
    return value


def check_count(option: str, value: int, limit: str = "MAX_EVAL_SAMPLES") -> int:
    """A count of samples: ≥ 1, and within the named limit (``optsteps.io.limits``)."""
    if value < 1:
        raise OptstepsError(f"{option} {value}: pass a count of at least 1.")
    return check_limit(limit, value, option)


def check_float(option: str, value: float) -> float:
    if not math.isfinite(value):
        raise OptstepsError(f"{option} {value} is not a finite number; pass a finite value (e.g. {option} 1.0).")
    return value


def check_png(option: str, out: str) -> str:
    if Path(out).suffix.lower() != ".png":
        raise OptstepsError(f"{option} {out!r}: the image is written as PNG; pass a file name ending in .png.")
    return out


def check_device(device: str | None) -> str | None:
    """A torch device that exists here: ``cpu``, ``cuda``/``cuda:N`` with a GPU N present, ``mps`` where available."""
    if device is None:
        return None
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise OptstepsError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N.") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise OptstepsError(f"--device {device}: this machine has no CUDA GPU; use --device cpu (or leave it out).")
        if d.index is not None and d.index >= n:
            raise OptstepsError(
                f"--device {device}: there are {n} CUDA GPU(s) (cuda:0 … cuda:{n - 1}); pick one of them."
            )
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise OptstepsError(f"--device {device}: MPS is not available here; use --device cpu.")
    elif d.type != "cpu":
        raise OptstepsError(f"--device {device}: optsteps runs on cpu, cuda or mps; use one of them.")
    return device


def _json(path) -> dict:
    from optsteps.io.readers import read_json

    return read_json(path, "component config", fix="re-save the pipeline with `pipe.save_pretrained(folder)`")


def check_pipeline_call(root, height: int | None, width: int | None, num_frames: int | None) -> None:
    """``--height``/``--width``/``--num-frames`` fit the pipeline folder ``root`` (read from its config files, nothing
    loaded): sizes positive and multiples of the VAE factor (× the transformer's patch), frames only for video
    pipelines, no size for pipelines that generate at their UNet's own size."""
    from optsteps.models.diffusers.hub import read_model_index

    root = Path(root)
    name = read_model_index(root)["_class_name"]
    video = name.startswith("Wan")
    if num_frames is not None and not video:
        raise OptstepsError(f"--num-frames is for video pipelines (Wan); {root} is a {name}: drop --num-frames.")
    if num_frames is not None and num_frames < 1:
        raise OptstepsError(f"--num-frames {num_frames}: pass a positive frame count.")
    for option, v in (("--height", height), ("--width", width)):
        if v is not None and v < 1:
            raise OptstepsError(
                f"{option} {v}: pass a positive size in pixels (or leave it out for the pipeline's own)."
            )
    if video:  # Wan: a VAE without block_out_channels and a (t, h, w) patch; the pipeline's own size rule
        from optsteps.models.diffusers.wan import wan_geometry, wan_video_size

        wan_video_size(wan_geometry(root), height, width, num_frames)
        return
    if height is None and width is None:
        return
    vae = root / "vae" / "config.json"
    if not vae.is_file():
        raise OptstepsError(f"{root} is a {name}, which generates at its UNet's own size; drop --height/--width.")
    factor = 2 ** (len(_json(vae).get("block_out_channels", [0])) - 1)
    for comp in ("transformer", "unet"):
        cfg = root / comp / "config.json"
        if cfg.is_file():
            factor *= int(_json(cfg).get("patch_size", 1) or 1)
            break
    for option, v in (("--height", height), ("--width", width)):
        if v is not None and v % factor:
            raise OptstepsError(
                f"{option} {v} is not a multiple of {factor} (the {name}'s VAE factor × patch); "
                f"use e.g. {option} {max(factor, v // factor * factor)}."
            )
