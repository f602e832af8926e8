"""Adapters from real diffusers pipelines (a local folder or a hub id already in the local cache) to ``DiffusionModel``.

Supported ``model_index.json`` classes:

- ``DDPMPipeline`` / ``DDIMPipeline`` (pixel UNet2DModel): delegated to ``unet2d.load_unet2d_pipeline``.
- ``StableDiffusionPipeline`` (UNet2DConditionModel + AutoencoderKL + CLIP text encoder) and
  ``StableDiffusionXLPipeline`` (two CLIP text encoders, pooled embeddings and size "time ids"): latent VP
  models; the noise schedule is the exact discrete-β schedule of the pipeline's scheduler config.
- ``StableDiffusion3Pipeline`` (SD3Transformer2DModel, FlowMatchEulerDiscreteScheduler): rectified flow; the
  scheduler's time ``shift`` is recorded (``flow_shift``) so the ``flow-shift`` baseline can use the
  pipeline's own value. A missing T5 encoder (``text_encoder_3: null``) is allowed, as in diffusers.
  SD3.5 (the same class, with QK norm / dual attention and T5) runs the same way; its skip-layer guidance is off
  unless the caller passes ``skip_guidance_layers`` to the pipeline.
- ``FluxPipeline`` (FLUX.1-dev/-schnell): ``flux.py``; ``WanPipeline`` (Wan 2.1 text-to-video): ``wan.py``.

How the model protocol maps onto a text-to-image pipeline:

- The state x lives in latent space: ``sample_shape`` = (C, H/f, W/f) for the pipeline's default (or the
  given) image size and VAE factor f. Teacher trajectories, OSS and evaluation of L2 all work on latents;
  ``decode(latents)`` turns them into images in [−1, 1] for image metrics only.
- Conditioning is a prompt *index*: ``labels(n, start)`` gives sample i the prompt (start + i) mod P and the
  null label is P. The network looks the index up in a cache of prompt embeddings, computed once per
  prompt with the pipeline's own ``encode_prompt`` (so the embeddings are exactly what the pipeline would
  use); the null embedding is the pipeline's own negative for ``negative_prompt=None`` (the empty prompt
  for SD 1.x/SD3; zeros for SDXL with ``force_zeros_for_empty_prompt``). Integer labels keep trajectory
  shards, ``LabelledDenoiser`` and CFG batching (cond and null concatenated) unchanged.
- The caller's guidance is applied by ``PredictionDenoiser`` on the raw output, exactly as the pipelines do
  (uncond + w·(cond − uncond) on ε or on the flow velocity).
- Device: ``cuda`` when available (fp16 for UNet pipelines, bf16 for flow transformers), else CPU in fp32.
  The network takes and returns float32 tensors on the caller's device; chunks of ``max_batch`` rows go
  through the pipeline's device.

Nothing is downloaded: hub ids resolve only from the local cache (``local_files_only=True``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from optsteps.errors import OptstepsError
from optsteps.core.noise_schedules import NoiseSchedule, noise_schedule_from_diffusers_config
from optsteps.models.base import DiffusionModel, ModelCard
from optsteps.models.diffusers.hub import (check_components, default_device, pick_dtype, pipeline_class_name,
                                           pipeline_digest, read_model_index, resolve_pipeline)
from optsteps.models.diffusers.prompts import resolve_prompts

log = logging.getLogger("optsteps.models")

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
    return _noise_schedule(json.loads(cfg_path.read_text()), root)


def _noise_schedule(cfg: dict, root) -> NoiseSchedule:
    if cfg.get("rescale_betas_zero_snr"):
        raise OptstepsError(f"{root}/scheduler uses rescale_betas_zero_snr (ᾱ_T = 0, infinite noise at t = 1), which "
                            "optsteps' discrete VP schedule does not model; use a pipeline without it.")
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
        raise OptstepsError(f"{root} is a {name}, which this diffusers ({diffusers.__version__}) does not know; "
                            "upgrade diffusers or re-save the pipeline.")
    device = device or default_device()
    kind = TEXT_PIPELINES.get(name, "unet2d")
    torch_dtype = pick_dtype(device, kind, dtype)
    check_components(root)  # weights present, readable, safetensors: one line naming the component otherwise
    index = read_model_index(root)
    missing = {k: None for k, v in index.items()
               if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is None}
    if kind == "wan":  # diffusers 0.42 cannot load WanTransformer3DModel without accelerate
        from optsteps.models.diffusers.wan import preload_components

        missing.update(preload_components(root, torch_dtype))
    _quiet_loading()
    try:
        # low_cpu_mem_usage=False: what diffusers falls back to without accelerate, said so that it does not warn
        pipe = cls.from_pretrained(root, dtype=torch_dtype, local_files_only=True, low_cpu_mem_usage=False, **missing)
    except ImportError as e:
        raise OptstepsError(f"loading {name} needs a package that is not installed ({e}); "
                            "`pip install transformers` for text encoders.") from None
    except (OSError, ValueError) as e:
        raise OptstepsError(f"cannot load the {name} pipeline from {root}: {e}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root, kind


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
            z = latents[i:i + batch_size].to(self.device, vdtype) / scale + shift
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

    def __init__(self, pipe, kind: str, prompts: list[str], device, height: int, width: int,
                 max_sequence_length: int = 256, encode_batch: int = 16):
        self.pipe, self.kind, self.prompts, self.device = pipe, kind, prompts, device
        self.height, self.width = height, width
        self.max_sequence_length, self.encode_batch = max_sequence_length, encode_batch
        self.cache: dict[int, tuple] = {}
        self.time_ids = None
        if kind == "sdxl":
            te2 = pipe.text_encoder_2
            proj = te2.config.projection_dim if te2 is not None else None
            self.time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=pipe.unet.dtype,
                                                   text_encoder_projection_dim=proj).to(device)

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
            pe, ne, pp, npp = p.encode_prompt(texts, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=cfg)
            return (pe, pp), ((ne, npp) if cfg else None)
        pe, ne, pp, npp = p.encode_prompt(texts, None, None, device=dev, num_images_per_prompt=1,
                                          do_classifier_free_guidance=cfg,
                                          max_sequence_length=self.max_sequence_length)
        return (pe, pp), ((ne, npp) if cfg else None)

    def _ensure(self, indices: list[int]) -> None:
        todo = sorted({i for i in indices if i not in self.cache and i != self.null_index})
        bad = [i for i in todo if not 0 <= i < len(self.prompts)]
        if bad:
            raise OptstepsError(f"prompt labels {bad[:5]} are outside 0..{len(self.prompts)} (the last is the null "
                                "condition); the trajectories were made with another prompt list — regenerate them.")
        if self.null_index in indices and self.null_index not in self.cache:
            _, null = self._encode([self.prompts[0] if self.prompts else ""], cfg=True)
            self.cache[self.null_index] = tuple(t[0] for t in null)
        for b in range(0, len(todo), self.encode_batch):
            chunk = todo[b:b + self.encode_batch]
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
            return {"encoder_hidden_states": parts[0],
                    "added_cond_kwargs": {"text_embeds": parts[1], "time_ids": self.time_ids.expand(len(idx), -1)}}
        return {"encoder_hidden_states": parts[0], "pooled_projections": parts[1]}


def _flow_shift(sched_cfg: dict, latent_hw: tuple, patch: int) -> float:
    """The pipeline's time shift s (t' = s t / (1 + (s − 1) t)); with dynamic shifting, e^μ for this size."""
    if sched_cfg.get("use_dynamic_shifting"):
        if sched_cfg.get("time_shift_type", "exponential") != "exponential":
            raise OptstepsError("only exponential dynamic time shifting is supported for flow pipelines.")
        seq = (latent_hw[0] // patch) * (latent_hw[1] // patch)
        b0, b1 = sched_cfg.get("base_image_seq_len", 256), sched_cfg.get("max_image_seq_len", 4096)
        s0, s1 = sched_cfg.get("base_shift", 0.5), sched_cfg.get("max_shift", 1.16)
        mu = s0 + (s1 - s0) / (b1 - b0) * (seq - b0)
        return float(math.exp(mu))
    return float(sched_cfg.get("shift", 1.0))


def batched_net(forward, null_index: int, max_batch: int, timestep=lambda t: t):
    """``net(x, t, labels)`` of a pipeline backbone: t (float64, [] or [B]) mapped by ``timestep`` and broadcast to
    the batch, missing labels = the null prompt ``null_index``, and ``forward(x_rows, t_rows, label_rows)`` called
    on at most ``max_batch`` rows at a time without gradients; outputs come back on x's device in x's dtype."""
    def net(x, t, labels):
        b = x.shape[0]
        tt = timestep(torch.as_tensor(t, dtype=torch.float64))
        tt = tt.expand(b) if tt.dim() == 0 else tt
        labels = torch.full((b,), null_index, dtype=torch.long) if labels is None else labels
        with torch.no_grad():
            return torch.cat([forward(x[i:i + max_batch], tt[i:i + max_batch], labels[i:i + max_batch])
                              .to(x.device, x.dtype) for i in range(0, b, max_batch)])
    return net


PIPELINE_OPTIONS = {"sd3": ("max_sequence_length",),
                    "flux": ("max_sequence_length", "negative_prompt", "true_cfg_scale"),
                    "wan": ("max_sequence_length", "num_frames", "negative_prompt")}  # a models: entry's options


def _config(root, component: str, file: str = "config.json") -> dict:
    path = root / component / file
    if not path.is_file():
        raise OptstepsError(f"{root} has no {component}/{file}; re-save the pipeline with `save_pretrained`.")
    return json.loads(path.read_text())


def describe_pipeline(path_or_id, prompts=None, height: int | None = None, width: int | None = None,
                      max_sequence_length: int | None = None, name: str | None = None, **options) -> ModelCard:
    """What ``load_pipeline_model`` would return, from the pipeline's config files alone (no weights are loaded):
    noise schedule, prediction type, state shape, prompts and the identity that trajectory shards record.

    The identity's ``sha256`` covers every config and weight file (``hub.pipeline_digest``), the prompt list, the
    image size and (SD3, FLUX, Wan) the text length and options; ``load_pipeline_model`` uses this function, so both
    always agree. FLUX and Wan: ``flux.describe_flux`` / ``wan.describe_wan``."""
    root = resolve_pipeline(path_or_id)
    cls_name = pipeline_class_name(root)
    if cls_name in UNET2D_PIPELINES:
        from optsteps.models.diffusers.unet2d import describe_unet2d

        return describe_unet2d(root, name=name or str(path_or_id))
    if cls_name not in TEXT_PIPELINES:
        raise OptstepsError(f"{path_or_id} is a {cls_name}; optsteps supports {', '.join(SUPPORTED)}. "
                            "Other pipelines need an adapter in optsteps/models/diffusers/pipelines.py.")
    kind = TEXT_PIPELINES[cls_name]
    if kind in ("flux", "wan"):
        from optsteps.models.diffusers import flux, wan

        describe = flux.describe_flux if kind == "flux" else wan.describe_wan
        return describe(root, prompts=prompts, height=height, width=width, max_sequence_length=max_sequence_length,
                        name=name or str(path_or_id), **options)
    if options:
        raise OptstepsError(f"options {sorted(options)} are for FLUX/Wan pipelines, not {cls_name}.")
    max_sequence_length = max_sequence_length or 256  # StableDiffusion3Pipeline's default
    prompt_list = resolve_prompts(prompts)
    sched_cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    ns = _noise_schedule(sched_cfg, root)
    bcfg = _config(root, "transformer" if kind == "sd3" else "unet")
    vsf = 2 ** (len(_config(root, "vae")["block_out_channels"]) - 1)  # as the diffusers pipelines compute it
    default_size = int(bcfg["sample_size"]) * vsf
    height, width = int(height or default_size), int(width or default_size)
    patch = int(bcfg.get("patch_size", 1) or 1)
    if height % (vsf * patch) or width % (vsf * patch):
        raise OptstepsError(f"image size {height}×{width} must be a multiple of {vsf * patch} for {cls_name}.")
    shape = (int(bcfg["in_channels"]), height // vsf, width // vsf)
    if kind == "sd3":
        if ns.family != "flow":
            raise OptstepsError(f"{root}: an SD3 transformer needs a flow-matching scheduler, found "
                                f"{sched_cfg.get('_class_name')}.")
        prediction = "flow"
        flow_shift = _flow_shift(sched_cfg, shape[1:], patch)
    else:
        prediction = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample"}.get(
            sched_cfg.get("prediction_type", "epsilon"))
        if prediction is None or ns.family != "vp":
            raise OptstepsError(f"unsupported scheduler for {cls_name} in {root}: prediction_type "
                                f"{sched_cfg.get('prediction_type')!r}, family {ns.family}.")
        flow_shift = None
    h = hashlib.sha256()
    h.update(pipeline_digest(root).encode())
    h.update(json.dumps({"prompts": prompt_list, "height": height, "width": width,
                         "max_sequence_length": max_sequence_length if kind == "sd3" else None}).encode())
    model_name = name or str(path_or_id)
    prompts_sha = hashlib.sha256("\n".join(prompt_list).encode()).hexdigest()
    identity = {"model": model_name, "sha256": h.hexdigest(), "pipeline": cls_name, "prompts": len(prompt_list),
                "prompts_sha256": prompts_sha, "height": height, "width": width}
    if flow_shift is not None:
        identity["flow_shift"] = flow_shift
    return ModelCard(model_name, ns, prediction, shape, num_classes=len(prompt_list), null_label=len(prompt_list),
                     identity=identity, extra={"root": root, "kind": kind, "prompts": prompt_list, "height": height,
                                               "width": width, "flow_shift": flow_shift, "vae_scale_factor": vsf})


def load_pipeline_model(path_or_id, prompts=None, guidance: float = 1.0, device=None, dtype=None,
                        height: int | None = None, width: int | None = None, max_batch: int = 16,
                        max_sequence_length: int | None = None, name: str | None = None,
                        **options) -> DiffusionModel:
    """A ``DiffusionModel`` for the diffusers pipeline at ``path_or_id`` (folder or locally cached hub id).

    ``prompts``: a list, a prompt file (see ``prompts.load_prompts``) or None (``prompts.DEFAULT_PROMPTS``); ``guidance``: the
    caller's default CFG scale, recorded as ``model.guidance`` (``model.denoiser(labels, guidance)`` applies
    the one it is given); ``height``/``width``: image size (default: the pipeline's); ``max_batch``: rows per
    network call; ``max_sequence_length``: the T5 text length (default the pipeline's: 256 for SD3, 512 for
    FLUX and Wan). ``options``: FLUX ``negative_prompt``/``true_cfg_scale``, Wan ``num_frames``/``negative_prompt``.
    """
    root = resolve_pipeline(path_or_id)
    cls_name = pipeline_class_name(root)
    if cls_name in UNET2D_PIPELINES:
        from optsteps.models.diffusers.unet2d import load_unet2d_pipeline

        return load_unet2d_pipeline(str(root), name=name or str(path_or_id), device=device, dtype=dtype)
    if TEXT_PIPELINES.get(cls_name) in ("flux", "wan"):
        from optsteps.models.diffusers import flux, wan

        loader = flux.load_flux_model if TEXT_PIPELINES[cls_name] == "flux" else wan.load_wan_model
        return loader(root, prompts=prompts, guidance=guidance, device=device, dtype=dtype, height=height,
                      width=width, max_batch=max_batch, max_sequence_length=max_sequence_length,
                      name=name or str(path_or_id), **options)
    card = describe_pipeline(root, prompts, height, width, max_sequence_length, name=name or str(path_or_id),
                             **options)
    max_sequence_length = max_sequence_length or 256
    kind, prompt_list, ns = card.extra["kind"], card.extra["prompts"], card.noise_schedule
    height, width, flow_shift = card.extra["height"], card.extra["width"], card.extra["flow_shift"]
    device = device or default_device()
    pipe, root, kind = load_diffusers_pipeline(root, device, dtype)
    torch_dtype = pick_dtype(device, kind, dtype)
    backbone = pipe.transformer if kind == "sd3" else pipe.unet
    if int(pipe.vae_scale_factor) != card.extra["vae_scale_factor"] or int(backbone.config.in_channels) != card.sample_shape[0]:
        raise OptstepsError(f"{root}: the loaded pipeline's VAE factor {pipe.vae_scale_factor} / channels "
                            f"{backbone.config.in_channels} differ from its config files; re-save the pipeline.")
    cond = PromptConditioner(pipe, kind, prompt_list, device, height, width, max_sequence_length)

    def forward(xb, tb, lb):
        xb, tb, kw = xb.to(device, torch_dtype), tb.to(device), cond.kwargs(lb)
        if kind == "sd3":
            return backbone(hidden_states=xb, timestep=tb, return_dict=False, **kw)[0]
        return backbone(xb, tb, return_dict=False, **kw)[0]

    net = batched_net(forward, cond.null_index, max_batch, lambda t: ns.timestep(t).float())

    return PipelineModel(card.name, ns, net, card.prediction_type, card.sample_shape, num_classes=card.num_classes,
                         null_label=card.null_label, identity=card.identity, pipeline=pipe, kind=kind,
                         prompts=prompt_list, guidance=float(guidance), flow_shift=flow_shift, height=height,
                         width=width, device=str(device), dtype=torch_dtype, max_batch=max_batch, conditioner=cond)


__all__ = ["PipelineModel", "load_pipeline_model", "describe_pipeline", "pipeline_noise_schedule", "load_diffusers_pipeline", "SUPPORTED"]
