"""``FluxPipeline`` (FLUX.1-dev and -schnell layouts) as a ``DiffusionModel``.

- State: the *unpacked* VAE latent [C, H/f, W/f] (C = transformer in_channels / 4, f the VAE factor), so shapes,
  noise and L2 costs are those of an image latent. The network packs it into FLUX's 2×2 patch sequence
  [(H/2f)(W/2f), 4C] (the pipeline's own ``_pack_latents``), runs the transformer with the pipeline's image
  and text position ids, and unpacks the velocity (``_unpack_latents``).
- Flow matching: x_t = (1 − t) x_0 + t ε, velocity prediction; the transformer gets timestep t (the pipeline
  passes σ·1000/1000, in the latents' dtype).
- Text: the pipeline's own ``encode_prompt`` (CLIP pooled + T5 sequence), each prompt once, cached.
- Guidance: the caller's ``guidance`` is the pipeline's ``guidance_scale``. FLUX.1-dev (``guidance_embeds``)
  feeds it to the transformer's guidance embedding; there is no CFG batch. FLUX.1-schnell has no guidance
  embedding and ignores it, as the pipeline does. True CFG (the pipeline's ``true_cfg_scale`` with a
  ``negative_prompt``) is the null condition P = the negative prompt and CFG at scale ``true_cfg_scale``.
- Time shift: FLUX's dynamic shift μ = base_shift + (max_shift − base_shift)(L − base_len)/(max_len − base_len)
  for the image sequence length L = (H/2f)(W/2f) (``use_dynamic_shifting``), i.e. t' = e^μ t/(1 + (e^μ − 1) t):
  recorded as ``flow_shift`` = e^μ, so ``flow-shift`` with the model's options is the pipeline's own default
  schedule (uniform over [1, 0], then shifted). Without dynamic shifting, the scheduler's ``shift``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import torch

from optsteps.core.denoisers import PredictionDenoiser
from optsteps.errors import OptstepsError
from optsteps.models.base import ModelCard
from optsteps.models.diffusers.base import (
    PipelineModel,
    PromptConditioner,
    batched_net,
    load_diffusers_pipeline,
    noise_schedule_from_config,
    read_config,
)
from optsteps.models.diffusers.hub import default_device, pick_dtype, pipeline_digest, resolve_pipeline
from optsteps.models.diffusers.prompts import resolve_prompts

FLUX_PIPELINES = ("FluxPipeline",)
DEFAULT_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline.__call__'s default


# ---- latent layout (also used by integrations.diffusers.apply) --------------------------------------------


def flux_latent_shape(vsf: int, in_channels: int, height: int, width: int) -> tuple:
    """The unpacked latent [C, H', W'] the pipeline makes for an image of height × width (VAE factor ``vsf``,
    transformer ``in_channels`` = 4C for the 2×2 packing)."""
    if height % (vsf * 2) or width % (vsf * 2):
        raise OptstepsError(
            f"FLUX image size {height}×{width} must be a multiple of {vsf * 2} (VAE factor {vsf} "
            "times the 2×2 packing)."
        )
    return int(in_channels) // 4, height // vsf, width // vsf


def pipe_latent_shape(pipe, height: int, width: int) -> tuple:
    """``flux_latent_shape`` of a loaded FluxPipeline."""
    return flux_latent_shape(int(pipe.vae_scale_factor), int(pipe.transformer.config.in_channels), height, width)


def pack(pipe, x: torch.Tensor) -> torch.Tensor:
    """[B, C, H', W'] → FLUX's patch sequence [B, (H'/2)(W'/2), 4C]."""
    b, c, h, w = x.shape
    return type(pipe)._pack_latents(x, b, c, h, w)


def unpack(pipe, seq: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """FLUX's patch sequence → [B, C, H', W'] for an image of height × width."""
    return type(pipe)._unpack_latents(seq, height, width, int(pipe.vae_scale_factor))


def flux_shift(sched_cfg: dict, image_seq_len: int) -> tuple[float | None, float | None]:
    """(the shift s the pipeline's default schedule uses for this sequence length, μ or None)."""
    if not sched_cfg.get("use_dynamic_shifting"):
        return float(sched_cfg.get("shift", 1.0)), None
    b0, b1 = sched_cfg.get("base_image_seq_len", 256), sched_cfg.get("max_image_seq_len", 4096)
    s0, s1 = sched_cfg.get("base_shift", 0.5), sched_cfg.get("max_shift", 1.15)  # FluxPipeline's defaults
    mu = (s1 - s0) / (b1 - b0) * image_seq_len + (s0 - (s1 - s0) / (b1 - b0) * b0)
    kind = sched_cfg.get("time_shift_type", "exponential")
    if kind == "exponential":
        return float(math.exp(mu)), float(mu)
    if kind == "linear":
        return float(mu), float(mu)
    raise OptstepsError(f"unknown time_shift_type {kind!r} in the FLUX scheduler config.")


# ---- text conditioning ----------------------------------------------------------------------------------------


class FluxConditioner(PromptConditioner):
    """Prompt index → (T5 sequence, CLIP pooled) from FluxPipeline.encode_prompt; index P = the negative prompt
    (or "" when none is configured)."""

    def __init__(self, pipe, prompts, device, height, width, max_sequence_length, negative_prompt=None):
        super().__init__(pipe, "flux", prompts, device, height, width, max_sequence_length)
        self.negative_prompt = negative_prompt
        self.txt_ids = None
        c, h, w = pipe_latent_shape(pipe, height, width)
        self.img_ids = type(pipe)._prepare_latent_image_ids(1, h // 2, w // 2, device, pipe.transformer.dtype)

    @torch.no_grad()
    def _encode(self, texts, cfg):
        def enc(batch):
            pe, pp, ids = self.pipe.encode_prompt(
                prompt=batch,
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length,
            )
            self.txt_ids = ids
            return pe, pp

        cond = enc(texts)
        null = enc([self.negative_prompt or ""] * len(texts)) if cfg else None
        return cond, null

    def kwargs(self, indices):
        idx = [int(v) for v in indices.tolist()]
        self._ensure(idx)
        pe, pp = (torch.stack([self.cache[i][k] for i in idx]) for k in range(2))
        return {"encoder_hidden_states": pe, "pooled_projections": pp, "txt_ids": self.txt_ids, "img_ids": self.img_ids}


# ---- the model --------------------------------------------------------------------------------------------------


@dataclass
class FluxPipelineModel(PipelineModel):
    """A FluxPipeline as a ``DiffusionModel``; ``denoiser(labels, guidance)`` feeds ``guidance`` to the guidance
    embedding (see the module docstring). ``net`` (the protocol's raw network) uses ``self.guidance``."""

    negative_prompt: str | None = None
    true_cfg_scale: float = 1.0
    guidance_embeds: bool = True
    make_net: object = None  # guidance → net(x, t, labels)
    flow_mu: float | None = None

    @property
    def true_cfg(self) -> bool:
        """The pipeline's ``do_true_cfg``: true_cfg_scale > 1 and a negative prompt."""
        return self.true_cfg_scale > 1 and self.negative_prompt is not None

    def prompt(self, label: int) -> str:
        return (self.negative_prompt or "") if int(label) == len(self.prompts) else self.prompts[int(label)]

    def baseline_options(self) -> dict:
        out = {"oss-published": {"table": "flux"}}
        if self.flow_shift is not None:
            out["flow-shift"] = {"shift": self.flow_shift}
        return out

    def denoiser(self, labels=None, guidance: float = 1.0) -> PredictionDenoiser:
        net = self.make_net(float(guidance))
        if self.true_cfg and labels is not None:
            return PredictionDenoiser(
                net,
                self.noise_schedule,
                "flow",
                cond=labels,
                null_cond=torch.full_like(labels, self.null_label),
                guidance=self.true_cfg_scale,
            )
        return PredictionDenoiser(net, self.noise_schedule, "flow", cond=labels)


FLUX_DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size (latent pixels before the VAE factor)


def describe_flux(
    root,
    prompts=None,
    height=None,
    width=None,
    max_sequence_length: int | None = None,
    name: str | None = None,
    negative_prompt: str | None = None,
    true_cfg_scale: float = 1.0,
) -> ModelCard:
    """What ``load_flux_model`` returns without its network, from the config files and weight digests alone
    (the Ray driver and the identify stage call this): noise schedule, latent shape, time shift, identity."""
    root = resolve_pipeline(root)
    sched_cfg = read_config(root, "scheduler", "scheduler_config.json")
    ns = noise_schedule_from_config(sched_cfg, root)
    if ns.family != "flow":
        raise OptstepsError(
            f"{root}: a FLUX transformer needs a flow-matching scheduler, found {sched_cfg.get('_class_name')}."
        )
    prompt_list = resolve_prompts(prompts)
    tcfg, vcfg = read_config(root, "transformer"), read_config(root, "vae")
    vsf = 2 ** (len(vcfg["block_out_channels"]) - 1)  # FluxPipeline.vae_scale_factor
    height = int(height or FLUX_DEFAULT_SAMPLE_SIZE * vsf)
    width = int(width or FLUX_DEFAULT_SAMPLE_SIZE * vsf)
    shape = flux_latent_shape(vsf, int(tcfg["in_channels"]), height, width)
    seq_len = (shape[1] // 2) * (shape[2] // 2)
    flow_shift, mu = flux_shift(sched_cfg, seq_len)
    if sched_cfg.get("shift_terminal") or any(
        sched_cfg.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")
    ):
        flow_shift = None  # the pipeline's default schedule is not a plain shift then
    msl = int(max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH)
    embeds = bool(tcfg.get("guidance_embeds", False))
    h = hashlib.sha256()
    h.update(pipeline_digest(root).encode())
    h.update(
        json.dumps(
            {
                "prompts": prompt_list,
                "height": height,
                "width": width,
                "max_sequence_length": msl,
                "negative_prompt": negative_prompt,
                "true_cfg_scale": float(true_cfg_scale),
            }
        ).encode()
    )
    model_name = name or str(root)
    identity = {
        "model": model_name,
        "sha256": h.hexdigest(),
        "pipeline": "FluxPipeline",
        "prompts": len(prompt_list),
        "prompts_sha256": hashlib.sha256("\n".join(prompt_list).encode()).hexdigest(),
        "height": height,
        "width": width,
        "guidance_embeds": embeds,
    }
    if flow_shift is not None:
        identity["flow_shift"] = flow_shift
    return ModelCard(
        model_name,
        ns,
        "flow",
        shape,
        num_classes=len(prompt_list),
        null_label=len(prompt_list),
        identity=identity,
        extra={
            "root": root,
            "kind": "flux",
            "prompts": prompt_list,
            "height": height,
            "width": width,
            "flow_shift": flow_shift,
            "flow_mu": mu,
            "vae_scale_factor": vsf,
            "max_sequence_length": msl,
            "guidance_embeds": embeds,
        },
    )


def load_flux_model(
    root,
    prompts=None,
    guidance: float = 3.5,
    device=None,
    dtype=None,
    height=None,
    width=None,
    max_batch: int = 16,
    max_sequence_length: int | None = None,
    name: str | None = None,
    negative_prompt: str | None = None,
    true_cfg_scale: float = 1.0,
) -> FluxPipelineModel:
    """A ``FluxPipelineModel`` for the FluxPipeline folder ``root`` (see ``pipelines.load_pipeline_model``).

    ``guidance``: the default ``guidance_scale`` (distilled guidance of FLUX.1-dev); ``negative_prompt`` and
    ``true_cfg_scale``: the pipeline's true CFG (off unless both are given and the scale is > 1);
    ``max_sequence_length``: T5 tokens (default the pipeline's 512). Shape and identity: ``describe_flux``."""
    card = describe_flux(root, prompts, height, width, max_sequence_length, name, negative_prompt, true_cfg_scale)
    x = card.extra
    root, ns, height, width, msl = x["root"], card.noise_schedule, x["height"], x["width"], x["max_sequence_length"]
    device = device or default_device()
    pipe, root, _ = load_diffusers_pipeline(root, device, dtype)
    torch_dtype = pick_dtype(device, "flux", dtype)
    tr = pipe.transformer
    if (int(pipe.vae_scale_factor), int(pipe.default_sample_size)) != (x["vae_scale_factor"], FLUX_DEFAULT_SAMPLE_SIZE):
        raise OptstepsError(
            f"{root}: the loaded FluxPipeline's VAE factor {pipe.vae_scale_factor} / default size "
            f"{pipe.default_sample_size} differ from what optsteps reads from its config files "
            f"({x['vae_scale_factor']}, {FLUX_DEFAULT_SAMPLE_SIZE}); re-save the pipeline."
        )
    cond = FluxConditioner(pipe, x["prompts"], device, height, width, msl, negative_prompt)
    embeds = bool(tr.config.guidance_embeds)

    def make_net(g: float):
        def forward(xb, tt, lb):
            xb = xb.to(device, torch_dtype)
            # as FluxPipeline: timestep = (σ·N in the latents' dtype) / N
            tb = ns.timestep(tt).to(device, torch_dtype) / ns.num_train_timesteps
            gb = torch.full((xb.shape[0],), g, device=device, dtype=torch.float32) if embeds else None
            out = tr(hidden_states=pack(pipe, xb), timestep=tb, guidance=gb, return_dict=False, **cond.kwargs(lb))[0]
            return unpack(pipe, out, height, width)

        return batched_net(forward, cond.null_index, max_batch)

    return FluxPipelineModel(
        card.name,
        ns,
        make_net(float(guidance)),
        "flow",
        card.sample_shape,
        num_classes=card.num_classes,
        null_label=card.null_label,
        identity=card.identity,
        pipeline=pipe,
        kind="flux",
        prompts=x["prompts"],
        guidance=float(guidance),
        flow_shift=x["flow_shift"],
        height=height,
        width=width,
        device=str(device),
        dtype=torch_dtype,
        max_batch=max_batch,
        conditioner=cond,
        negative_prompt=negative_prompt,
        true_cfg_scale=float(true_cfg_scale),
        guidance_embeds=embeds,
        make_net=make_net,
        flow_mu=x["flow_mu"],
    )


__all__ = [
    "FluxPipelineModel",
    "load_flux_model",
    "describe_flux",
    "flux_latent_shape",
    "pipe_latent_shape",
    "pack",
    "unpack",
    "flux_shift",
]
