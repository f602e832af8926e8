"""``WanPipeline`` (Wan 2.1 text-to-video) as a ``DiffusionModel``.

- State: the 5-D video latent [C, F', H/f, W/f] (C = transformer in_channels, F' = (frames − 1)/f_t + 1 with
  the VAE's temporal factor f_t, f its spatial factor), exactly what the pipeline denoises.
- Flow matching: x_t = (1 − t) x_0 + t ε, velocity prediction; the transformer gets timestep t·N.
- Text: the pipeline's own ``encode_prompt`` (UMT5, padded with zeros to ``max_sequence_length``), each prompt
  once, cached. The null condition P is the pipeline's negative prompt (``negative_prompt``, default "" as in
  the pipeline); CFG is uncond + w (cond − uncond) on the velocity, as the pipeline does it (it runs the two
  halves as two transformer calls, optsteps as one batch).
- Time shift: the scheduler's flow shift (UniPC ``flow_shift``, FlowMatchEuler ``shift``) and where its default
  uniform grid ends (UniPC: K + 1 points down to 1/N, the last replaced by 0; FlowMatchEuler: K points down to
  σ_min) are the model's ``flow-shift`` options, so that baseline is the pipeline's own default schedule.
- ``decode`` returns videos [B, 3, F, H, W] in [−1, 1]; ``images`` returns one frame strip (frames side by side)
  per sample.

Wan 2.2 layouts (``transformer_2``/``boundary_ratio``, ``expand_timesteps``) are refused. diffusers 0.42 cannot
load ``WanTransformer3DModel`` without ``accelerate`` (its fp32-kept modules need ``low_cpu_mem_usage``);
``base.preload_components`` then loads it from its safetensors itself, keeping those modules in float32 as diffusers
does.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from optsteps.errors import OptstepsError
from optsteps.models.base import ModelCard
from optsteps.models.diffusers.base import (
    PipelineModel,
    PromptConditioner,
    batched_net,
    load_diffusers_pipeline,  # noqa: F401
    noise_schedule_from_config,
    preload_components,
    read_config,
)
from optsteps.models.diffusers.hub import default_device, pick_dtype, pipeline_digest, resolve_pipeline
from optsteps.models.diffusers.prompts import resolve_prompts

WAN_PIPELINES = ("WanPipeline",)
DEFAULT_MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__'s default


# ---- video layout (also used by integrations.diffusers.apply) ---------------------------------------------------


def wan_geometry(pipe_or_root) -> tuple:
    """(temporal VAE factor, spatial VAE factor, patch size (t, h, w), transformer in_channels) of a loaded
    WanPipeline, or of a WanPipeline folder from its config files (as WanPipeline.__init__ reads them)."""
    if isinstance(pipe_or_root, (str, Path)):
        root = Path(pipe_or_root)
        vcfg, tcfg = read_config(root, "vae"), read_config(root, "transformer")
        return (
            int(vcfg.get("scale_factor_temporal", 4)),
            int(vcfg.get("scale_factor_spatial", 8)),
            tuple(int(v) for v in tcfg.get("patch_size", (1, 2, 2))),
            int(tcfg["in_channels"]),
        )
    pipe = pipe_or_root
    return (
        int(pipe.vae_scale_factor_temporal),
        int(pipe.vae_scale_factor_spatial),
        tuple(int(v) for v in pipe.transformer.config.patch_size),
        int(pipe.transformer.config.in_channels),
    )


def _call_default(name: str):
    from diffusers import WanPipeline

    return inspect.signature(WanPipeline.__call__).parameters[name].default


def wan_video_size(pipe_or_geometry, height=None, width=None, num_frames=None) -> tuple[int, int, int]:
    """(height, width, frames): the given ones or the pipeline's defaults, checked the way the pipeline rounds
    them (a size it would silently change is refused here instead). ``pipe_or_geometry``: a WanPipeline or
    ``wan_geometry``'s tuple."""
    ft, fs, p, _ = pipe_or_geometry if isinstance(pipe_or_geometry, tuple) else wan_geometry(pipe_or_geometry)
    height = int(height or _call_default("height"))
    width = int(width or _call_default("width"))
    frames = int(num_frames or _call_default("num_frames"))
    if height % (fs * p[1]) or width % (fs * p[2]):
        raise OptstepsError(
            f"Wan video size {height}×{width} must be a multiple of {fs * p[1]}×{fs * p[2]} (VAE factor × patch size)."
        )
    if frames < 1 or frames % ft != 1:
        raise OptstepsError(
            f"Wan num_frames = {frames}: frames − 1 must be a multiple of the VAE's temporal "
            f"factor {ft} (e.g. {ft * ((frames - 1) // ft) + 1})."
        )
    return height, width, frames


def wan_latent_shape(pipe_or_geometry, height: int, width: int, num_frames: int) -> tuple:
    """The video latent [C, F', H', W'] the pipeline makes."""
    ft, fs, _, c = pipe_or_geometry if isinstance(pipe_or_geometry, tuple) else wan_geometry(pipe_or_geometry)
    return (c, (num_frames - 1) // ft + 1, height // fs, width // fs)


def frame_strip(frames):
    """PIL frames → one PIL image with the frames side by side (left to right in time)."""
    from PIL import Image

    w, h = frames[0].size
    strip = Image.new("RGB", (w * len(frames), h))
    for i, f in enumerate(frames):
        strip.paste(f.convert("RGB"), (i * w, 0))
    return strip


def wan_flow_shift(sched_cfg: dict, root) -> tuple[float, dict | None]:
    """(the scheduler's flow shift s, the ``flow-shift`` grid options that give its default schedule): UniPC
    spaces K + 1 points uniformly over [1, 1/N] and drops the last (``grid_end`` = 1/N), FlowMatchEuler its K
    evaluation times over [1, σ_min], σ_min = s(1/N) (``eval_end``); None for a scheduler whose default grid
    optsteps does not reproduce."""
    cls, n = sched_cfg.get("_class_name", ""), int(sched_cfg.get("num_train_timesteps", 1000))
    if sched_cfg.get("use_dynamic_shifting"):
        raise OptstepsError(
            f"{root}/scheduler uses dynamic shifting, but WanPipeline passes no mu to it (the run "
            "would fail); set use_dynamic_shifting false and a flow_shift."
        )
    other = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal", "invert_sigmas")
    plain = not any(sched_cfg.get(k) for k in other)
    if cls == "UniPCMultistepScheduler":
        return float(sched_cfg.get("flow_shift", 1.0)), ({"grid_end": 1.0 / n} if plain else None)
    if cls == "FlowMatchEulerDiscreteScheduler":
        s = float(sched_cfg.get("shift", 1.0))
        return s, ({"eval_end": s * (1.0 / n) / (1 + (s - 1) * (1.0 / n))} if plain else None)
    return float(sched_cfg.get("flow_shift", sched_cfg.get("shift", 1.0))), None


# ---- text conditioning ----------------------------------------------------------------------------------------


class WanConditioner(PromptConditioner):
    """Prompt index → the UMT5 sequence of WanPipeline.encode_prompt; index P = the negative prompt."""

    def __init__(self, pipe, prompts, device, max_sequence_length, negative_prompt=None):
        super().__init__(pipe, "wan", prompts, device, 0, 0, max_sequence_length)
        self.negative_prompt = negative_prompt

    @torch.no_grad()
    def _encode(self, texts, cfg):
        pe, ne = self.pipe.encode_prompt(
            prompt=list(texts),
            negative_prompt=self.negative_prompt,
            do_classifier_free_guidance=cfg,
            num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        return (pe,), ((ne,) if cfg else None)

    def kwargs(self, indices):
        idx = [int(v) for v in indices.tolist()]
        self._ensure(idx)
        return {"encoder_hidden_states": torch.stack([self.cache[i][0] for i in idx])}


# ---- the model --------------------------------------------------------------------------------------------------


@dataclass
class WanPipelineModel(PipelineModel):
    """A WanPipeline as a ``DiffusionModel`` on 5-D video latents (see the module docstring)."""

    num_frames: int = 0
    negative_prompt: str | None = None
    flow_grid: dict | None = None  # flow-shift's grid options for the scheduler's default schedule

    def prompt(self, label: int) -> str:
        return (self.negative_prompt or "") if int(label) == len(self.prompts) else self.prompts[int(label)]

    def baseline_options(self) -> dict:
        out = {"oss-published": {"table": "wan"}}
        if self.flow_shift is not None:
            out["flow-shift"] = {"shift": self.flow_shift, **(self.flow_grid or {})}
        return out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 2) -> torch.Tensor:
        """Video latents [B, C, F', H', W'] → videos [B, 3, F, H, W] in [−1, 1], float32 on the CPU (as the
        pipeline: z / (1/std) + mean, then the VAE)."""
        vae = self.pipeline.vae
        cfg = vae.config
        vdtype = next(vae.parameters()).dtype
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
        outs = []
        for i in range(0, latents.shape[0], batch_size):
            z = latents[i : i + batch_size].to(self.device, vdtype)
            z = z / inv_std.to(z.device, z.dtype) + mean.to(z.device, z.dtype)
            outs.append(vae.decode(z, return_dict=False)[0].float().clamp(-1, 1).cpu())
        return torch.cat(outs)

    def images(self, latents: torch.Tensor):
        """One PIL frame strip (frames left to right) per sample."""
        from PIL import Image

        from optsteps.io.images import to_uint8

        out = []
        for video in self.decode(latents):  # [3, F, H, W]
            frames = [Image.fromarray(a) for a in to_uint8(video.permute(1, 0, 2, 3))]
            out.append(frame_strip(frames))
        return out


def describe_wan(
    root,
    prompts=None,
    height=None,
    width=None,
    max_sequence_length: int | None = None,
    name: str | None = None,
    num_frames: int | None = None,
    negative_prompt: str | None = None,
) -> ModelCard:
    """What ``load_wan_model`` returns without its network, from the config files and weight digests alone
    (the Ray driver and the identify stage call this): noise schedule, video latent shape, flow shift, identity."""
    root = resolve_pipeline(root)
    index = json.loads((root / "model_index.json").read_text())
    if index.get("boundary_ratio") is not None or (
        isinstance(index.get("transformer_2"), list) and index["transformer_2"][0] is not None
    ):
        raise OptstepsError(
            f"{root} is a two-expert Wan 2.2 pipeline (transformer_2, boundary_ratio); optsteps "
            "supports the single-transformer Wan 2.1 layout."
        )
    if index.get("expand_timesteps"):
        raise OptstepsError(
            f"{root} is a Wan 2.2 TI2V pipeline (expand_timesteps, per-token timesteps); optsteps "
            "supports the Wan 2.1 text-to-video layout."
        )
    sched_cfg = read_config(root, "scheduler", "scheduler_config.json")
    ns = noise_schedule_from_config(sched_cfg, root)
    if ns.family != "flow":
        raise OptstepsError(
            f"{root}: a Wan transformer needs a flow-matching scheduler, found "
            f"{sched_cfg.get('_class_name')} without flow sigmas."
        )
    flow_shift, grid = wan_flow_shift(sched_cfg, root)
    prompt_list = resolve_prompts(prompts)
    geometry = wan_geometry(root)
    height, width, num_frames = wan_video_size(geometry, height, width, num_frames)
    shape = wan_latent_shape(geometry, height, width, num_frames)
    msl = int(max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH)
    h = hashlib.sha256()
    h.update(pipeline_digest(root).encode())
    h.update(
        json.dumps(
            {
                "prompts": prompt_list,
                "height": height,
                "width": width,
                "num_frames": num_frames,
                "max_sequence_length": msl,
                "negative_prompt": negative_prompt,
            }
        ).encode()
    )
    model_name = name or str(root)
    identity = {
        "model": model_name,
        "sha256": h.hexdigest(),
        "pipeline": "WanPipeline",
        "prompts": len(prompt_list),
        "prompts_sha256": hashlib.sha256("\n".join(prompt_list).encode()).hexdigest(),
        "height": height,
        "width": width,
        "num_frames": num_frames,
        "flow_shift": flow_shift,
    }
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
            "kind": "wan",
            "prompts": prompt_list,
            "height": height,
            "width": width,
            "num_frames": num_frames,
            "flow_shift": flow_shift,
            "flow_grid": grid,
            "geometry": geometry,
            "max_sequence_length": msl,
        },
    )


def load_wan_model(
    root,
    prompts=None,
    guidance: float = 5.0,
    device=None,
    dtype=None,
    height=None,
    width=None,
    max_batch: int = 16,
    max_sequence_length: int | None = None,
    name: str | None = None,
    num_frames: int | None = None,
    negative_prompt: str | None = None,
) -> WanPipelineModel:
    """A ``WanPipelineModel`` for the WanPipeline folder ``root`` (see ``pipelines.load_pipeline_model``).

    ``height``/``width``/``num_frames``: the video size (default the pipeline's 480×832, 81 frames);
    ``negative_prompt``: the null condition (default "" as the pipeline); ``max_sequence_length``: UMT5 tokens
    (default the pipeline's 512). Shape and identity: ``describe_wan``."""
    card = describe_wan(root, prompts, height, width, max_sequence_length, name, num_frames, negative_prompt)
    x = card.extra
    root, ns = x["root"], card.noise_schedule
    device = device or default_device()
    pipe, root, _ = load_diffusers_pipeline(root, device, dtype)
    torch_dtype = pick_dtype(device, "wan", dtype)
    if wan_geometry(pipe) != x["geometry"]:
        raise OptstepsError(
            f"{root}: the loaded WanPipeline's VAE factors / patch size / channels "
            f"{wan_geometry(pipe)} differ from its config files {x['geometry']}; re-save the pipeline."
        )
    cond = WanConditioner(pipe, x["prompts"], device, x["max_sequence_length"], negative_prompt)
    tr = pipe.transformer

    def forward(xb, tb, lb):
        kw = cond.kwargs(lb)
        kw["encoder_hidden_states"] = kw["encoder_hidden_states"].to(torch_dtype)
        return tr(hidden_states=xb.to(device, torch_dtype), timestep=tb.to(device), return_dict=False, **kw)[0]

    net = batched_net(forward, cond.null_index, max_batch, lambda t: ns.timestep(t).float())

    return WanPipelineModel(
        card.name,
        ns,
        net,
        "flow",
        card.sample_shape,
        num_classes=card.num_classes,
        null_label=card.null_label,
        identity=card.identity,
        pipeline=pipe,
        kind="wan",
        prompts=x["prompts"],
        guidance=float(guidance),
        flow_shift=x["flow_shift"],
        height=x["height"],
        width=x["width"],
        device=str(device),
        dtype=torch_dtype,
        max_batch=max_batch,
        conditioner=cond,
        num_frames=x["num_frames"],
        negative_prompt=negative_prompt,
        flow_grid=x["flow_grid"],
    )


__all__ = [
    "WanPipelineModel",
    "load_wan_model",
    "describe_wan",
    "wan_geometry",
    "wan_video_size",
    "wan_latent_shape",
    "frame_strip",
    "preload_components",
    "wan_flow_shift",
]
