"""Published step schedules, interpolated to any NFE the way Align Your Steps prescribes.

- ``oss-published``: the OSS authors' (Pei et al. 2025) tables for FLUX.1 (10 steps) and Wan 2.1 (20 steps),
  in flow time t (= σ of a rectified-flow model), ending at 0.001.
- ``ays``: the Align Your Steps tables (Sabour et al. 2024) for SD 1.5, SDXL and SVD: the 10 evaluation sigmas
  of ``diffusers.schedulers.AysSchedules`` (diffusers stores the final level as 0) and the level the AYS tables
  end at, the model's σ_min (``AYS_SIGMA_MIN``), in diffusers' σ = σ_t/α_t.

The recipe (AYS; the same in the OSS authors' ComfyUI node): a table of L noise levels (L − 1 steps) is
interpolated linearly in log σ over evenly spaced positions to K + 1 levels, and the last level is replaced by
0 (the data). For K = L − 1 that is the table itself. ``loglinear_levels`` does the interpolation.
"""

from __future__ import annotations

import torch

from optsteps.core.noise_schedules import as_tensor, interp
from optsteps.errors import OptstepsError

# OSS (Pei et al. 2025) tables as shipped in ComfyUI's comfy_extras/nodes_optimalsteps.py
# (comfyanonymous/ComfyUI, "from https://github.com/bebebe666/OptimalSteps")
OSS_TABLES = {
    "flux": (0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001),
    "wan": (
        1.0,
        0.997,
        0.995,
        0.993,
        0.991,
        0.989,
        0.987,
        0.985,
        0.98,
        0.975,
        0.973,
        0.968,
        0.96,
        0.946,
        0.927,
        0.902,
        0.864,
        0.776,
        0.539,
        0.208,
        0.001,
    ),
}
OSS_FAMILIES = {"flux": "FLUX.1 (FluxPipeline)", "wan": "Wan 2.1 text-to-video (WanPipeline)"}

AYS_TABLES = {  # diffusers.schedulers.AysSchedules: 10 evaluation sigmas, then 0
    "sd": "StableDiffusionSigmas",
    "sdxl": "StableDiffusionXLSigmas",
    "svd": "StableDiffusionVideoSigmas",
}
# the last AYS level, which diffusers stores as 0: ComfyUI's comfy_extras/nodes_align_your_steps.py
# (comfyanonymous/ComfyUI, "from https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html")
AYS_SIGMA_MIN = {"sd": 0.0291671582, "sdxl": 0.0291671582, "svd": 0.002}


def loglinear_levels(levels, n: int) -> torch.Tensor:
    """``n`` levels from a decreasing table of positive noise levels: log level linearly interpolated over
    evenly spaced positions in [0, 1] (the first and last levels are kept)."""
    lv = as_tensor(levels)
    if lv.dim() != 1 or len(lv) < 2 or not bool((lv > 0).all()) or not bool((lv[:-1] > lv[1:]).all()):
        raise OptstepsError(f"a noise-level table must be ≥ 2 positive, strictly decreasing values, got {levels!r}.")
    if n < 2:
        raise OptstepsError(f"need at least 2 interpolated levels (NFE ≥ 1), got {n}.")
    xs = torch.linspace(0, 1, len(lv), dtype=torch.float64)
    return torch.exp(interp(torch.linspace(0, 1, n, dtype=torch.float64), xs, torch.log(lv)))


def oss_published_times(table: str | None, nfe: int) -> torch.Tensor:
    """The K + 1 flow times of the OSS table ``table`` ("flux" or "wan") for NFE K, ending at t = 0."""
    if table is None:
        raise OptstepsError(
            "oss-published needs the model family: the OSS authors published tables for "
            f"{' and '.join(OSS_FAMILIES.values())} only. Use it with a FLUX or Wan pipeline model (its table is "
            "picked from the pipeline) or pass table='flux' / table='wan'; for other models compute an OSS schedule "
            "(optsteps schedule oss …)."
        )
    if table not in OSS_TABLES:
        raise OptstepsError(
            f"no published OSS table {table!r}; there are {', '.join(sorted(OSS_TABLES))} "
            f"({', '.join(OSS_FAMILIES.values())})."
        )
    t = loglinear_levels(OSS_TABLES[table], nfe + 1)
    t[-1] = 0.0
    return t


def ays_evaluation_sigmas(table: str, nfe: int) -> torch.Tensor:
    """The K evaluation sigmas (diffusers' σ = σ_t/α_t) of the AYS table ``table`` for NFE K (the final 0 left off)."""
    from diffusers.schedulers import AysSchedules

    if table not in AYS_TABLES:
        raise OptstepsError(f"unknown AYS table {table!r}; use one of {sorted(AYS_TABLES)}.")
    published = list(AysSchedules[AYS_TABLES[table]])
    levels = published[:-1] + [AYS_SIGMA_MIN[table]]
    return loglinear_levels(levels, nfe + 1)[:-1]


__all__ = [
    "OSS_TABLES",
    "OSS_FAMILIES",
    "AYS_TABLES",
    "AYS_SIGMA_MIN",
    "loglinear_levels",
    "oss_published_times",
    "ays_evaluation_sigmas",
]
