"""Adapter from a diffusers UNet2D pipeline (a local folder or a hub id already on disk) to the model protocol.

The noise schedule is read from the pipeline's own scheduler config, so baselines and optimized
schedules are exact for that model. Nothing is downloaded: hub ids resolve only from the local cache
(``local_files_only=True``); anything else is a clear error.
"""

from __future__ import annotations

import hashlib
import json

import torch

from optsteps.core.denoisers import network_grad_context
from optsteps.core.noise_schedules import noise_schedule_from_diffusers_config
from optsteps.errors import OptstepsError
from optsteps.io.hashing import file_digest
from optsteps.models.base import DiffusionModel, ModelCard
from optsteps.models.diffusers.hub import check_components, default_device, pick_dtype, resolve_folder


def _folder(pipeline):
    root = resolve_folder(pipeline)
    if not (root / "unet").is_dir() or not (root / "scheduler" / "scheduler_config.json").is_file():
        raise OptstepsError(
            f"{root} is not a UNet2D diffusers pipeline (needs unet/ and scheduler/scheduler_config.json)."
        )
    return root


def describe_unet2d(pipeline, name: str | None = None) -> ModelCard:
    """The ``ModelCard`` of a UNet2D pipeline folder from its config files and weight bytes (no network built).
    The identity's ``sha256`` is the sha256 over the digests of the UNet's weight files."""
    root = _folder(pipeline)
    cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    ns = noise_schedule_from_diffusers_config(cfg)
    prediction = {
        "epsilon": "epsilon",
        "v_prediction": "v_prediction",
        "sample": "sample",
        "flow_prediction": "flow",
    }.get(cfg.get("prediction_type", "epsilon"))
    if prediction is None:
        raise OptstepsError(f"unsupported prediction_type {cfg.get('prediction_type')!r} in {root}/scheduler.")
    if ns.family == "flow":
        prediction = "flow"
    ucfg_path = root / "unet" / "config.json"
    if not ucfg_path.is_file():
        raise OptstepsError(f"{root}/unet has no config.json; re-save the pipeline with `save_pretrained`.")
    ucfg = json.loads(ucfg_path.read_text())
    size = ucfg["sample_size"]
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    h = hashlib.sha256()
    for f in sorted((root / "unet").glob("*.safetensors")) + sorted((root / "unet").glob("*.bin")):
        h.update(file_digest(f).encode())  # cached by path, size and mtime (io.hashing)
    num_classes = int(ucfg.get("num_class_embeds") or 0)
    return ModelCard(
        name or str(pipeline),
        ns,
        prediction,
        (int(ucfg["in_channels"]),) + hw,
        num_classes,
        None,
        {"model": name or str(pipeline), "sha256": h.hexdigest()},
        extra={"root": root},
    )


def load_unet2d_pipeline(pipeline: str, name: str | None = None, device=None, dtype=None) -> DiffusionModel:
    """A ``DDPMPipeline``-style folder: ``unet/`` (UNet2DModel) and ``scheduler/`` (its noise schedule).

    ``device``: default cuda when available, else cpu; ``dtype``: default fp16 on GPU, fp32 on CPU. The network
    takes and returns float32 tensors on the caller's device."""
    from diffusers import UNet2DModel

    card = describe_unet2d(pipeline, name)
    root, ns = card.extra["root"], card.noise_schedule
    device = device or default_device()
    torch_dtype = pick_dtype(device, "unet2d", dtype)
    check_components(root, ["unet"])
    unet = UNet2DModel.from_pretrained(root / "unet", low_cpu_mem_usage=False, dtype=torch_dtype)
    unet = unet.eval().requires_grad_(False).to(device)

    def net(x, t, cond):
        tt = ns.timestep(torch.as_tensor(t, dtype=torch.float64)).float()
        tt = tt.expand(x.shape[0]) if tt.dim() == 0 else tt
        cond = None if cond is None else cond.to(device)
        with network_grad_context():  # no graph unless inside core.denoisers.differentiable_networks()
            out = unet(x.to(device, torch_dtype), tt.to(device), class_labels=cond).sample
        return out.to(x.device, x.dtype)

    return DiffusionModel(
        card.name, ns, net, card.prediction_type, card.sample_shape, card.num_classes, None, card.identity
    )
