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

from optsteps.errors import OptstepsError
from optsteps.models.base import DiffusionModel, ModelCard
from optsteps.models.diffusers.base import (
    SUPPORTED,
    TEXT_PIPELINES,
    UNET2D_PIPELINES,
    PipelineModel,  # noqa: F401
    PromptConditioner,
    batched_net,
    load_diffusers_pipeline,
    noise_schedule_from_config,
    pipeline_noise_schedule,
    read_config,
)
from optsteps.models.diffusers.hub import (
    default_device,
    pick_dtype,
    pipeline_class_name,
    pipeline_digest,
    resolve_pipeline,
)
from optsteps.models.diffusers.prompts import resolve_prompts

log = logging.getLogger("optsteps.models")


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


PIPELINE_OPTIONS = {
    "sd3": ("max_sequence_length",),
    "flux": ("max_sequence_length", "negative_prompt", "true_cfg_scale"),
    "wan": ("max_sequence_length", "num_frames", "negative_prompt"),
}  # a models: entry's options


def describe_pipeline(
    path_or_id,
    prompts=None,
    height: int | None = None,
    width: int | None = None,
    max_sequence_length: int | None = None,
    name: str | None = None,
    **options,
) -> ModelCard:
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
        raise OptstepsError(
            f"{path_or_id} is a {cls_name}; optsteps supports {', '.join(SUPPORTED)}. "
            "Other pipelines need an adapter in optsteps/models/diffusers/pipelines.py."
        )
    kind = TEXT_PIPELINES[cls_name]
    if kind in ("flux", "wan"):
        from optsteps.models.diffusers import flux, wan

        describe = flux.describe_flux if kind == "flux" else wan.describe_wan
        return describe(
            root,
            prompts=prompts,
            height=height,
            width=width,
            max_sequence_length=max_sequence_length,
            name=name or str(path_or_id),
            **options,
        )
    if options:
        raise OptstepsError(f"options {sorted(options)} are for FLUX/Wan pipelines, not {cls_name}.")
    max_sequence_length = max_sequence_length or 256  # StableDiffusion3Pipeline's default
    prompt_list = resolve_prompts(prompts)
    sched_cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    ns = noise_schedule_from_config(sched_cfg, root)
    bcfg = read_config(root, "transformer" if kind == "sd3" else "unet")
    vsf = 2 ** (len(read_config(root, "vae")["block_out_channels"]) - 1)  # as the diffusers pipelines compute it
    default_size = int(bcfg["sample_size"]) * vsf
    height, width = int(height or default_size), int(width or default_size)
    patch = int(bcfg.get("patch_size", 1) or 1)
    if height % (vsf * patch) or width % (vsf * patch):
        raise OptstepsError(f"image size {height}×{width} must be a multiple of {vsf * patch} for {cls_name}.")
    shape = (int(bcfg["in_channels"]), height // vsf, width // vsf)
    if kind == "sd3":
        if ns.family != "flow":
            raise OptstepsError(
                f"{root}: an SD3 transformer needs a flow-matching scheduler, found {sched_cfg.get('_class_name')}."
            )
        prediction = "flow"
        flow_shift = _flow_shift(sched_cfg, shape[1:], patch)
    else:
        prediction = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample"}.get(
            sched_cfg.get("prediction_type", "epsilon")
        )
        if prediction is None or ns.family != "vp":
            raise OptstepsError(
                f"unsupported scheduler for {cls_name} in {root}: prediction_type "
                f"{sched_cfg.get('prediction_type')!r}, family {ns.family}."
            )
        flow_shift = None
    h = hashlib.sha256()
    h.update(pipeline_digest(root).encode())
    h.update(
        json.dumps(
            {
                "prompts": prompt_list,
                "height": height,
                "width": width,
                "max_sequence_length": max_sequence_length if kind == "sd3" else None,
            }
        ).encode()
    )
    model_name = name or str(path_or_id)
    prompts_sha = hashlib.sha256("\n".join(prompt_list).encode()).hexdigest()
    identity = {
        "model": model_name,
        "sha256": h.hexdigest(),
        "pipeline": cls_name,
        "prompts": len(prompt_list),
        "prompts_sha256": prompts_sha,
        "height": height,
        "width": width,
    }
    if flow_shift is not None:
        identity["flow_shift"] = flow_shift
    return ModelCard(
        model_name,
        ns,
        prediction,
        shape,
        num_classes=len(prompt_list),
        null_label=len(prompt_list),
        identity=identity,
        extra={
            "root": root,
            "kind": kind,
            "prompts": prompt_list,
            "height": height,
            "width": width,
            "flow_shift": flow_shift,
            "vae_scale_factor": vsf,
        },
    )


def load_pipeline_model(
    path_or_id,
    prompts=None,
    guidance: float = 1.0,
    device=None,
    dtype=None,
    height: int | None = None,
    width: int | None = None,
    max_batch: int = 16,
    max_sequence_length: int | None = None,
    name: str | None = None,
    **options,
) -> DiffusionModel:
    """A ``DiffusionModel`` for the diffusers pipeline at ``path_or_id`` (folder or locally cached hub id).

    ``prompts``: a list, a prompt file (see ``prompts.load_prompts``) or None (``prompts.DEFAULT_PROMPTS``);
    ``guidance``: the caller's default CFG scale, recorded as ``model.guidance`` (``model.denoiser(labels, guidance)``
    applies
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
        return loader(
            root,
            prompts=prompts,
            guidance=guidance,
            device=device,
            dtype=dtype,
            height=height,
            width=width,
            max_batch=max_batch,
            max_sequence_length=max_sequence_length,
            name=name or str(path_or_id),
            **options,
        )
    card = describe_pipeline(root, prompts, height, width, max_sequence_length, name=name or str(path_or_id), **options)
    max_sequence_length = max_sequence_length or 256
    kind, prompt_list, ns = card.extra["kind"], card.extra["prompts"], card.noise_schedule
    height, width, flow_shift = card.extra["height"], card.extra["width"], card.extra["flow_shift"]
    device = device or default_device()
    pipe, root, kind = load_diffusers_pipeline(root, device, dtype)
    torch_dtype = pick_dtype(device, kind, dtype)
    backbone = pipe.transformer if kind == "sd3" else pipe.unet
    if (
        int(pipe.vae_scale_factor) != card.extra["vae_scale_factor"]
        or int(backbone.config.in_channels) != card.sample_shape[0]
    ):
        raise OptstepsError(
            f"{root}: the loaded pipeline's VAE factor {pipe.vae_scale_factor} / channels "
            f"{backbone.config.in_channels} differ from its config files; re-save the pipeline."
        )
    cond = PromptConditioner(pipe, kind, prompt_list, device, height, width, max_sequence_length)

    def forward(xb, tb, lb):
        xb, tb, kw = xb.to(device, torch_dtype), tb.to(device), cond.kwargs(lb)
        if kind == "sd3":
            return backbone(hidden_states=xb, timestep=tb, return_dict=False, **kw)[0]
        return backbone(xb, tb, return_dict=False, **kw)[0]

    net = batched_net(forward, cond.null_index, max_batch, lambda t: ns.timestep(t).float())

    return PipelineModel(
        card.name,
        ns,
        net,
        card.prediction_type,
        card.sample_shape,
        num_classes=card.num_classes,
        null_label=card.null_label,
        identity=card.identity,
        pipeline=pipe,
        kind=kind,
        prompts=prompt_list,
        guidance=float(guidance),
        flow_shift=flow_shift,
        height=height,
        width=width,
        device=str(device),
        dtype=torch_dtype,
        max_batch=max_batch,
        conditioner=cond,
    )


__all__ = [
    "PipelineModel",
    "load_pipeline_model",
    "describe_pipeline",
    "pipeline_noise_schedule",
    "load_diffusers_pipeline",
    "SUPPORTED",
]
