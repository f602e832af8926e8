"""Run a user's own diffusers pipeline with an optsteps schedule: ``optsteps apply``.

``apply_schedule(pipeline, schedule, prompt, out_png, seed=0, guidance=None)`` loads the pipeline (folder or a
hub id in the local cache), refuses a schedule made for another noise schedule, puts a scheduler on it that
takes the schedule, runs the pipeline's own ``__call__`` and writes the image.

The scheduler that takes the schedule is chosen by ``plan.plan_scheduler`` (its module
docstring lists the choices and the diffusers pitfalls).

The initial latents are optsteps' own seeded noise (``DiffusionModel.noise``: sample i of seed s), turned into
the state x_{t_0} that ``optsteps sample``/the teacher start from by the schedule's start-state rule
(``core.schedule.initial_state``: σ_{t_0} ε, or σ_{t_max} ε unscaled for ``"start_state": "raw"``), in the
scheduler's units; the first timestep/σ is the schedule's t_0. So an image from ``apply`` is the same sample
that optsteps evaluates for that seed (up to the solver). Unconditional pixel pipelines (DDPMPipeline) draw
their own noise ε, which is the raw state of a VP model up to σ_{t_max} ≈ 1.

FLUX: the noise is drawn in optsteps' unpacked latent layout [C, H/f, W/f] and packed for the pipeline
(``output_type="latent"`` results are unpacked back). Wan: 5-D video latents [C, F', H/f, W/f] (``num_frames=``
as a call keyword, default the pipeline's); ``apply_schedule`` writes the video as one PNG frame strip (frames
left to right).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from optsteps.core.schedule import Schedule, initial_state
from optsteps.errors import OptstepsError
from optsteps.integrations.diffusers.plan import (
    Plan,
    call_params,
    describe_change,
    passes_schedule,
    pin_timesteps,
    plan_scheduler,
)
from optsteps.io.atomic import save_png_atomic


def check_noise_schedule(pipe, schedule: Schedule, where: str = "") -> None:
    from optsteps.core.schedule import check_noise_schedule as check_schedule_noise
    from optsteps.models.diffusers.base import noise_schedule_from_config

    ns = noise_schedule_from_config(dict(pipe.scheduler.config), where or type(pipe).__name__)
    check_schedule_noise(
        schedule,
        ns,
        f"the pipeline {where or type(pipe).__name__}",
        f"compute a schedule for this pipeline (optsteps schedule … --model {where or 'PIPELINE'})",
    )


def _backbone(pipe):
    for name in ("transformer", "unet"):
        m = getattr(pipe, name, None)
        if m is not None:
            return m
    raise OptstepsError(f"{type(pipe).__name__} has neither a unet nor a transformer.")


def _image_size(pipe, height, width) -> tuple[int, int]:
    bb = _backbone(pipe)
    if not hasattr(pipe, "vae"):
        return int(bb.config.sample_size), int(bb.config.sample_size)
    default = int(getattr(pipe, "default_sample_size", None) or bb.config.sample_size) * int(pipe.vae_scale_factor)
    return int(height or default), int(width or default)


FLOW_PIPELINES = ("StableDiffusion3Pipeline", "FluxPipeline", "WanPipeline")  # no init_noise_sigma scaling


def _latent_shape(pipe, height: int, width: int) -> tuple:
    """The state optsteps keeps for an image pipeline (FLUX: the unpacked latent)."""
    from optsteps.models.diffusers.flux import FLUX_PIPELINES, pipe_latent_shape

    if type(pipe).__name__ in FLUX_PIPELINES:
        return pipe_latent_shape(pipe, height, width)
    bb = _backbone(pipe)
    vsf = int(pipe.vae_scale_factor)
    return (int(bb.config.in_channels), height // vsf, width // vsf)


def _initial_latents(pipe, plan: Plan, n: int, seed: int, start: int, shape: tuple) -> torch.Tensor:
    """optsteps' seeded state x_{t_0} = σ_{t_0} ε (state ``shape``) in the units the pipeline expects for
    ``latents=``."""
    from optsteps.models.base import DiffusionModel

    eps = DiffusionModel.noise(SimpleNamespace(sample_shape=shape), n, seed, start)
    ns, t0 = plan.schedule.noise_schedule, plan.schedule.t[0]
    x = initial_state(eps, plan.schedule)  # σ_{t_0} ε, or σ_{t_max} ε for a raw start
    if plan.units == "vp/alpha":  # Euler-type schedulers integrate x/α
        x = x / float(ns.alpha(t0))
    if type(pipe).__name__ not in FLOW_PIPELINES:  # SD/SDXL multiply latents by init_noise_sigma
        probe = type(plan.scheduler).from_config(plan.scheduler.config)
        probe.set_timesteps(**plan.kwargs)
        x = x / float(getattr(probe, "init_noise_sigma", 1.0))
    return x


def _scale_first_input(c: float):
    """A forward pre-hook that multiplies the network's first input by c: the state x_{t_0} = c·ε of the
    schedule's start rule for a pipeline that feeds its unit noise ε as is (its scheduler scales its first
    sample the same way, ``OptstepsScheduler(scale_first_sample=True)``)."""
    seen = [False]

    def hook(module, args):
        if seen[0]:
            return None
        seen[0] = True
        return (args[0] * c, *args[1:])

    return hook


def _default_guidance(pipe) -> float | None:
    p = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    return None if p is None else float(p.default)


def generate(
    pipe,
    schedule: Schedule,
    prompt: str = "",
    n: int = 1,
    seed: int = 0,
    start: int = 0,
    guidance: float | None = None,
    scheduler: str = "auto",
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    where: str = "",
    **call_kwargs,
):
    """(images or latents, info): ``n`` samples (noise of seed ``seed``, indices start…start+n−1) from the loaded
    pipeline ``pipe`` along ``schedule``. The pipeline's scheduler is restored afterwards. Latents come back in
    optsteps' state layout (FLUX unpacked); Wan returns videos (lists of frames for ``output_type="pil"``)."""
    from optsteps.models.diffusers.flux import FLUX_PIPELINES, pack, unpack
    from optsteps.models.diffusers.wan import WAN_PIPELINES, wan_latent_shape, wan_video_size

    check_noise_schedule(pipe, schedule, where)
    name = type(pipe).__name__
    plan = plan_scheduler(pipe, schedule, scheduler)
    params = call_params(pipe)
    own = pipe.scheduler
    bb = _backbone(pipe)
    calls = [0]
    hook = bb.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    scale_hook = None
    if plan.scheduler.config.get("scale_first_sample"):  # a pipeline drawing its own unit noise ε (DDPMPipeline)
        scale_hook = bb.register_forward_pre_hook(_scale_first_input(plan.scheduler.init_noise_sigma))
    kwargs: dict = {"output_type": output_type}
    frames = None
    try:
        if name in WAN_PIPELINES:  # text-to-video: float32 latents, as the pipeline keeps them
            height, width, frames = wan_video_size(pipe, height, width, call_kwargs.pop("num_frames", None))
            latents = _initial_latents(pipe, plan, n, seed, start, wan_latent_shape(pipe, height, width, frames))
            kwargs.update(
                prompt=prompt,
                num_videos_per_prompt=n,
                height=height,
                width=width,
                num_frames=frames,
                latents=latents.to(pipe.device, torch.float32),
                num_inference_steps=plan.schedule.nfe,
            )
            g = _default_guidance(pipe) if guidance is None else float(guidance)
            kwargs["guidance_scale"] = g
        elif "prompt" in params:  # text-to-image
            height, width = _image_size(pipe, height, width)
            latents = _initial_latents(pipe, plan, n, seed, start, _latent_shape(pipe, height, width))
            if name in FLUX_PIPELINES:
                latents = pack(pipe, latents)
            kwargs.update(
                prompt=prompt,
                num_images_per_prompt=n,
                height=height,
                width=width,
                latents=latents.to(pipe.device, bb.dtype),
                num_inference_steps=plan.schedule.nfe,
            )
            g = _default_guidance(pipe) if guidance is None else float(guidance)
            if g is not None:
                kwargs["guidance_scale"] = g
        else:  # unconditional pixel pipelines (DDPMPipeline): their own seeded noise
            height, width = _image_size(pipe, None, None)
            g = None
            kwargs.update(
                batch_size=n,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                num_inference_steps=plan.schedule.nfe,
            )
        if passes_schedule(pipe, plan):
            kwargs.update({k: (list(v) if isinstance(v, list) else v) for k, v in plan.kwargs.items()})
            pipe.scheduler = plan.scheduler
        else:
            pipe.scheduler = pin_timesteps(plan.scheduler, plan.kwargs)
        kwargs.update(call_kwargs)
        out = pipe(**kwargs)
        used = pipe.scheduler
    finally:
        hook.remove()
        if scale_hook is not None:
            scale_hook.remove()
        pipe.scheduler = own
    images = out.images if hasattr(out, "images") else out[0]
    if name in FLUX_PIPELINES and output_type == "latent":
        images = unpack(pipe, images, height, width)
    info = {
        "scheduler": type(used).__name__,
        "set_timesteps": {k: np.asarray(v).tolist() for k, v in plan.kwargs.items()},
        "timesteps": torch.as_tensor(used.timesteps).double().tolist(),
        "sigmas": torch.as_tensor(used.sigmas).double().tolist() if hasattr(used, "sigmas") else None,
        "nfe": plan.schedule.nfe,
        "model_calls": calls[0],
        "guidance": g,
        "height": height,
        "width": width,
        "seed": seed,
        "start": start,
        "start_state": plan.schedule.start_state,
        **plan.notes,
    }
    change = describe_change(plan, schedule)
    if change:
        info["changes"] = change
    if frames is not None:
        info["num_frames"] = frames
    return images, info


def apply_schedule(
    pipeline_dir_or_id,
    schedule: Schedule,
    prompt: str = "",
    out_png=None,
    seed: int = 0,
    guidance: float | None = None,
    scheduler: str = "auto",
    device=None,
    dtype=None,
    height: int | None = None,
    width: int | None = None,
    **call_kwargs,
) -> dict:
    """Run the user's diffusers pipeline (folder, locally cached hub id, or an already loaded pipeline) with
    ``schedule`` on ``prompt`` and write the image to ``out_png`` (a video: one PNG strip of its frames, left to
    right). ``guidance`` None: the pipeline's default; ``call_kwargs`` go to the pipeline call (``num_frames``
    for Wan). Returns what ran: scheduler, timesteps/sigmas, NFE, model calls, image size, out path."""
    from optsteps.models.diffusers.pipelines import load_diffusers_pipeline

    if isinstance(pipeline_dir_or_id, (str, Path)):
        pipe, root, _ = load_diffusers_pipeline(pipeline_dir_or_id, device, dtype)
        where = str(pipeline_dir_or_id)
    else:
        pipe, where = pipeline_dir_or_id, type(pipeline_dir_or_id).__name__
    images, info = generate(
        pipe, schedule, prompt, 1, seed, 0, guidance, scheduler, height, width, "pil", where, **call_kwargs
    )
    img = images[0]
    if isinstance(img, (list, tuple)):  # a video's frames
        from optsteps.models.diffusers.wan import frame_strip

        img = frame_strip(img)
    info["size"] = list(img.size)
    if out_png is not None:
        info["out"] = str(save_png_atomic(img, out_png))
    return info


def pipeline_prompt_sampler(
    pipe, guidance: float | None = None, scheduler: str = "auto", where: str = "", **call_kwargs
):
    """``sampler(prompt, n, seed, schedule)`` → n PIL images from the loaded pipeline ``pipe`` on ``schedule``
    (optsteps noise of ``seed``, samples 0…n−1): the prompt sampler ``evaluate.adherence.geneval_metrics`` takes."""

    def sampler(prompt: str, n: int, seed: int, schedule: Schedule):
        images, _ = generate(pipe, schedule, prompt, n, seed, 0, guidance, scheduler, where=where, **call_kwargs)
        return images

    return sampler
