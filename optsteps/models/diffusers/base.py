"""What every diffusers pipeline adapter shares (``pipelines``, ``flux``, ``wan`` build on it; it imports none of
them): the supported pipeline classes, the noise schedule from a scheduler config, loading a pipeline offline
(``load_diffusers_pipeline``), the ``PipelineModel`` and ``PromptConditioner`` that the adapters subclass, the
batched backbone call (``batched_net``) and a component's config (``read_config``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optsteps.core.denoisers import network_grad_context
from optsteps.core.noise_schedules import NoiseSchedule, noise_schedule_from_diffusers_config
from optsteps.errors import OptstepsError
from optsteps.models.base import DiffusionModel
from optsteps.models.diffusers.hub import (
    check_components,
    default_device,
    pick_dtype,
    pipeline_class_name,
    read_model_index,
    resolve_pipeline,
)

UNET2D_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
TEXT_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "WanPipeline": "wan",
}
SUPPORTED = UNET2D_PIPELINES + tuple(TEXT_PIPELINES)


# ---- the pipeline's noise schedule --------------------------------------------------------------------


def pipeline_noise_schedule(path_or_id) -> NoiseSchedule:
    """The exact noise schedule of a pipeline from its scheduler config alone (nothing else is loaded)."""
    root = resolve_pipeline(path_or_id)
    cfg_path = root / "scheduler" / "scheduler_config.json"
    if not cfg_path.is_file():
        raise OptstepsError(f"{root} has no scheduler/scheduler_config.json; the noise schedule comes from it.")
    return noise_schedule_from_config(json.loads(cfg_path.read_text()), root)


def noise_schedule_from_config(cfg: dict, root) -> NoiseSchedule:
    """The noise schedule of a pipeline's scheduler config ``cfg`` (``root`` names the pipeline in errors)."""
    if cfg.get("rescale_betas_zero_snr"):
        raise OptstepsError(
            f"{root}/scheduler uses rescale_betas_zero_snr (ᾱ_T = 0, infinite noise at t = 1), which "
            "optsteps' discrete VP schedule does not model; use a pipeline without it."
        )
    return noise_schedule_from_diffusers_config(cfg)


def _quiet_loading() -> None:
    """No per-component progress bars while loading (they fill the logs of every stage and actor)."""
    import diffusers.utils.logging as dlog

    dlog.disable_progress_bar()
    try:
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
    except ImportError:  # no text encoders: nothing to quiet
        pass


def load_diffusers_pipeline(path_or_id, device=None, dtype=None):
    """(pipeline, root, kind) loaded offline on ``device`` in ``dtype`` (defaults: see ``pick_dtype``).

    Components stored as ``null`` in model_index.json (e.g. SD3 without its T5 encoder) are passed as None,
    as diffusers requires."""
    import diffusers

    root = resolve_pipeline(path_or_id)
    name = pipeline_class_name(root)
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise OptstepsError(
            f"{root} is a {name}, which this diffusers ({diffusers.__version__}) does not know; "
            "upgrade diffusers or re-save the pipeline."
        )
    device = device or default_device()
    kind = TEXT_PIPELINES.get(name, "unet2d")
    torch_dtype = pick_dtype(device, kind, dtype)
    check_components(root)  # weights present, readable, safetensors: one line naming the component otherwise
    index = read_model_index(root)
    missing = {
        k: None
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is None
    }
    if kind == "wan":  # diffusers 0.42 cannot load WanTransformer3DModel without accelerate
        missing.update(preload_components(root, torch_dtype))
    _quiet_loading()
    try:
        # low_cpu_mem_usage=False: what diffusers falls back to without accelerate, said so that it does not warn
        pipe = cls.from_pretrained(root, dtype=torch_dtype, local_files_only=True, low_cpu_mem_usage=False, **missing)
    except ImportError as e:
        raise OptstepsError(
            f"loading {name} needs a package that is not installed ({e}); `pip install transformers` for text encoders."
        ) from None
    except (OSError, ValueError) as e:
        raise OptstepsError(f"cannot load the {name} pipeline from {root}: {e}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root, kind


# ---- loading without accelerate ------------------------------------------------------------------------------


def _load_keep_fp32(cls, folder: Path, torch_dtype):
    """``cls.from_pretrained(folder)`` for a model with ``_keep_in_fp32_modules`` when accelerate is missing:
    built from its config and loaded from its (possibly sharded) safetensors; the parameters and buffers whose
    dotted name contains a kept module stay float32, the rest become ``torch_dtype``."""
    import safetensors.torch

    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "diffusion_pytorch_model.safetensors").is_file():
        files = ["diffusion_pytorch_model.safetensors"]
    else:
        raise OptstepsError(
            f"{folder} has no safetensors weights; loading it needs accelerate (`pip install accelerate`)."
        )
    try:
        from diffusers.models.modeling_utils import no_init_weights
    except ImportError:  # pragma: no cover - older/newer diffusers
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        model = cls.from_config(cls.load_config(folder))
    state = {}
    for f in files:
        state.update(safetensors.torch.load_file(str(folder / f)))
    model.load_state_dict(state, strict=True)
    keep = list(cls._keep_in_fp32_modules or [])
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if torch.is_floating_point(tensor):
            tensor.data = tensor.data.to(torch.float32 if any(k in name.split(".") for k in keep) else torch_dtype)
    return model.eval()


def preload_components(root, torch_dtype) -> dict:
    """Components ``from_pretrained`` cannot load here (diffusers 0.42 without accelerate), loaded by hand."""
    from diffusers.utils import is_accelerate_available

    if is_accelerate_available():
        return {}
    import diffusers

    index = read_model_index(root)
    out = {}
    for key in ("transformer", "transformer_2"):
        entry = index.get(key)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers"):
            continue
        cls = getattr(diffusers, entry[1], None)
        if cls is not None and getattr(cls, "_keep_in_fp32_modules", None):
            out[key] = _load_keep_fp32(cls, Path(root) / key, torch_dtype)
    return out


# ---- the model ----------------------------------------------------------------------------------------


@dataclass
class PipelineModel(DiffusionModel):
    """A ``DiffusionModel`` backed by a diffusers text-to-image pipeline (see the module docstring)."""

    pipeline: Any = None
    kind: str = ""  # sd | sdxl | sd3
    prompts: list = field(default_factory=list)
    guidance: float = 1.0  # the caller's default; denoiser(labels, guidance) takes the one to use
    flow_shift: float | None = None  # rectified flow: the pipeline's own time shift
    height: int = 0
    width: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    max_batch: int = 16
    conditioner: Any = None

    def prompt(self, label: int) -> str:
        return "" if int(label) == len(self.prompts) else self.prompts[int(label)]

    def baseline_options(self) -> dict:
        """Per-baseline keyword options that reproduce the pipeline's own choices (``flow-shift``: its shift)."""
        out = {"flow-shift": {"shift": self.flow_shift}} if self.flow_shift is not None else {}
        if self.kind == "sdxl":
            out["ays"] = {"table": "sdxl"}
        return out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Latents (the model's state space) → images [B, 3, H, W] in [−1, 1], float32 on the CPU."""
        vae = self.pipeline.vae
        cfg = vae.config
        scale = float(cfg.scaling_factor)
        shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        vdtype = next(vae.parameters()).dtype
        if vdtype == torch.float16 and getattr(cfg, "force_upcast", False):
            vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (the pipeline upcasts it the same way)
            vdtype = torch.float32
        outs = []
        for i in range(0, latents.shape[0], batch_size):
            z = latents[i : i + batch_size].to(self.device, vdtype) / scale + shift
            outs.append(vae.decode(z, return_dict=False)[0].float().clamp(-1, 1).cpu())
        return torch.cat(outs)

    def images(self, latents: torch.Tensor):
        """PIL images of decoded latents."""
        from PIL import Image

        from optsteps.io.images import to_uint8

        return [Image.fromarray(a) for a in to_uint8(self.decode(latents))]


class PromptConditioner:
    """Prompt index → the pipeline's own embeddings, each prompt encoded once (lazily) and cached on the device.

    Index P (= number of prompts) is the null condition: the pipeline's negative for ``negative_prompt=None``.
    ``kwargs(indices)`` returns the backbone's conditioning keyword arguments for a batch.
    """

    def __init__(
        self,
        pipe,
        kind: str,
        prompts: list[str],
        device,
        height: int,
        width: int,
        max_sequence_length: int = 256,
        encode_batch: int = 16,
    ):
        self.pipe, self.kind, self.prompts, self.device = pipe, kind, prompts, device
        self.height, self.width = height, width
        self.max_sequence_length, self.encode_batch = max_sequence_length, encode_batch
        self.cache: dict[int, tuple] = {}
        self.time_ids = None
        if kind == "sdxl":
            te2 = pipe.text_encoder_2
            proj = te2.config.projection_dim if te2 is not None else None
            self.time_ids = pipe._get_add_time_ids(
                (height, width), (0, 0), (height, width), dtype=pipe.unet.dtype, text_encoder_projection_dim=proj
            ).to(device)

    @property
    def null_index(self) -> int:
        return len(self.prompts)

    @torch.no_grad()
    def _encode(self, texts: list[str], cfg: bool):
        """(cond parts, null parts) for ``texts``; parts are per-kind tuples of [n, ...] tensors."""
        p, dev = self.pipe, self.device
        if self.kind == "sd":
            pe, ne = p.encode_prompt(texts, dev, 1, cfg)
            return (pe,), ((ne,) if cfg else None)
        if self.kind == "sdxl":
            pe, ne, pp, npp = p.encode_prompt(
                texts, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=cfg
            )
            return (pe, pp), ((ne, npp) if cfg else None)
        pe, ne, pp, npp = p.encode_prompt(
            texts,
            None,
            None,
            device=dev,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            max_sequence_length=self.max_sequence_length,
        )
        return (pe, pp), ((ne, npp) if cfg else None)

    def _ensure(self, indices: list[int]) -> None:
        todo = sorted({i for i in indices if i not in self.cache and i != self.null_index})
        bad = [i for i in todo if not 0 <= i < len(self.prompts)]
        if bad:
            raise OptstepsError(
                f"prompt labels {bad[:5]} are outside 0..{len(self.prompts)} (the last is the null "
                "condition); the trajectories were made with another prompt list — regenerate them."
            )
        if self.null_index in indices and self.null_index not in self.cache:
            _, null = self._encode([self.prompts[0] if self.prompts else ""], cfg=True)
            self.cache[self.null_index] = tuple(t[0] for t in null)
        for b in range(0, len(todo), self.encode_batch):
            chunk = todo[b : b + self.encode_batch]
            cond, _ = self._encode([self.prompts[i] for i in chunk], cfg=False)
            for j, i in enumerate(chunk):
                self.cache[i] = tuple(t[j] for t in cond)

    def kwargs(self, indices: torch.Tensor) -> dict:
        idx = [int(v) for v in indices.tolist()]
        self._ensure(idx)
        parts = [torch.stack([self.cache[i][k] for i in idx]) for k in range(len(self.cache[idx[0]]))]
        if self.kind == "sd":
            return {"encoder_hidden_states": parts[0]}
        if self.kind == "sdxl":
            return {
                "encoder_hidden_states": parts[0],
                "added_cond_kwargs": {"text_embeds": parts[1], "time_ids": self.time_ids.expand(len(idx), -1)},
            }
        return {"encoder_hidden_states": parts[0], "pooled_projections": parts[1]}


def batched_net(forward, null_index: int, max_batch: int, timestep=lambda t: t):
    """``net(x, t, labels)`` of a pipeline backbone: t (float64, [] or [B]) mapped by ``timestep`` and broadcast to
    the batch, missing labels = the null prompt ``null_index``, and ``forward(x_rows, t_rows, label_rows)`` called
    on at most ``max_batch`` rows at a time without gradients (with them inside
    ``core.denoisers.differentiable_networks()``); outputs come back on x's device in x's dtype."""

    def net(x, t, labels):
        b = x.shape[0]
        tt = timestep(torch.as_tensor(t, dtype=torch.float64))
        tt = tt.expand(b) if tt.dim() == 0 else tt
        labels = torch.full((b,), null_index, dtype=torch.long) if labels is None else labels
        with network_grad_context():  # no gradients unless inside core.denoisers.differentiable_networks()
            return torch.cat(
                [
                    forward(x[i : i + max_batch], tt[i : i + max_batch], labels[i : i + max_batch]).to(
                        x.device, x.dtype
                    )
                    for i in range(0, b, max_batch)
                ]
            )

    return net


def read_config(root, component: str, file: str = "config.json") -> dict:
    """``<root>/<component>/<file>`` (a component's config JSON), or one error naming the fix."""
    path = root / component / file
    if not path.is_file():
        raise OptstepsError(f"{root} has no {component}/{file}; re-save the pipeline with `save_pretrained`.")
    return json.loads(path.read_text())
