"""Run a user's own diffusers pipeline with an optsteps schedule: ``optsteps apply``.

``apply_schedule(pipeline, schedule, prompt, out_png, seed=0, guidance=None)`` loads the pipeline (folder or a
hub id in the local cache), refuses a schedule made for another noise schedule, puts a scheduler on it that
takes the schedule, runs the pipeline's own ``__call__`` and writes the image.

Scheduler choice (``scheduler="auto"``; pitfalls in shared/spec/dependencies.md §7):

- Rectified flow: ``FlowMatchEulerDiscreteScheduler`` with ``sigmas=`` and ``shift=1`` (the schedule's times
  verbatim; no dynamic shift) for DDIM/Euler schedules; for DPM-Solver++/UniPC schedules
  ``UniPCMultistepScheduler(use_flow_sigmas=True)`` with ``sigmas=`` (order 2 for dpmpp2m and OSS-UniPC, else
  3 or the schedule's recorded orders). diffusers' UniPC casts its flow timesteps σ·N to int64, so the
  network would be evaluated at ⌊N σ⌋ instead of N σ (up to one training timestep early, while the step
  coefficients use the exact σ); ``exact_flow_timesteps`` keeps them float (σ·N, as FlowMatchEuler does), so
  the pipeline runs the schedule exactly.
- VP (DDPM β): ``DPMSolverMultistepScheduler`` (DPM-Solver++; order 1 = DDIM, 2 = 2M, 3 = 3M) with integer
  ``timesteps=``. diffusers truncates float timesteps, so times that are not training timesteps are snapped
  to the nearest one (``snapped_max_shift`` in the result says by how much); if snapping would merge two
  steps and the pipeline takes ``sigmas=``, ``EulerDiscreteScheduler`` with exact ``sigmas=`` is used
  instead (first order; its last σ is 0, the diffusers convention). ``scheduler="euler"`` forces it.
- Pipelines whose ``__call__`` takes neither ``timesteps=`` nor ``sigmas=`` (``DDPMPipeline``) get a
  scheduler whose ``set_timesteps`` is pinned to the schedule.

The initial latents are optsteps' own seeded noise (``DiffusionModel.noise``: sample i of seed s), scaled to
the state x_{t_0} = σ_{t_0} ε that ``optsteps sample``/the teacher start from, in the scheduler's units. So
an image from ``apply`` is the same sample that optsteps evaluates for that seed (up to the solver).
"""
from __future__ import annotations

import functools
import inspect
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from optsteps.errors import OptstepsError
from optsteps.core.schedule import Schedule
from optsteps.io.atomic import save_png_atomic

log = logging.getLogger("optsteps.integrations.diffusers_apply")

SCHEDULER_CHOICES = ("auto", "dpmsolver", "euler", "flowmatch", "unipc", "native")
EULER_LIKE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
              "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")


# ---- resolving the schedule argument --------------------------------------------------------------------

def resolve_schedule(ref: str, tracking_uri: str | None = None) -> Schedule:
    """A schedule JSON file, or ``NAME@ALIAS`` / ``NAME/VERSION`` / ``models:/…`` from the schedule registry
    (``optsteps.integrations.mlflow_registry.Registry``; ``tracking_uri`` defaults to sqlite:///<cwd>/mlruns.db)."""
    p = Path(ref)
    if p.is_file() or ref.endswith(".json"):
        return Schedule.load(p)
    if "@" in ref or ref.startswith("models:/") or re.fullmatch(r"[^/\s]+/\d+", ref):
        from optsteps.integrations.mlflow_registry import Registry

        try:
            reg = Registry(tracking_uri)
        except ImportError as e:
            raise OptstepsError(f"{ref!r} names a registered schedule, but the registry needs MLflow ({e}); "
                                "`pip install mlflow`, or pass a schedule JSON file.") from None
        return reg.load_schedule(ref)
    raise OptstepsError(f"--schedule {ref!r} is neither a schedule JSON file nor a registry reference; pass a file "
                        "written by `optsteps schedule … --json` or NAME@ALIAS (e.g. digits-unipc-schedules@"
                        "champion-nfe5).")


# ---- scheduler plans ----------------------------------------------------------------------------------

def solver_order(schedule: Schedule) -> int:
    """The multistep order the schedule was made for: its recorded ``orders``, else by solver and method."""
    orders = schedule.extra.get("orders")
    if orders:
        return max(1, min(3, max(int(o) for o in orders)))
    if schedule.solver in ("", "ddim"):
        return 1
    if schedule.solver == "dpmpp2m" or (schedule.solver == "unipc" and schedule.method in ("oss", "gits")):
        return 2
    return 3


def snap_to_training_timesteps(schedule: Schedule) -> tuple[Schedule | None, float]:
    """(the schedule with its K evaluation times moved to the nearest integer training timestep, the largest
    move in timesteps); (None, move) when that would merge steps or reach the end point. VP only."""
    ns = schedule.noise_schedule
    ts = ns.timestep(schedule.timesteps_t[:-1])
    snapped = ts.round().clamp(0, ns.num_train_timesteps - 1)
    shift = float((ts - snapped).abs().max())
    if shift < 1e-6:
        return schedule, 0.0
    t_new = torch.cat([ns.t_of_timestep(snapped), schedule.timesteps_t[-1:]])
    if not bool((t_new[:-1] > t_new[1:]).all()):
        return None, shift
    return Schedule(t_new, ns, schedule.model, schedule.method, schedule.solver,
                    dict(schedule.extra, snapped_from=list(schedule.t))), shift


class Plan:
    """A configured scheduler for a schedule: ``scheduler`` (not yet ``set_timesteps``), ``kwargs`` for
    ``set_timesteps`` (and the pipeline call), the ``schedule`` actually run (snapped or not) and notes."""

    def __init__(self, scheduler, kwargs: dict, schedule: Schedule, units: str, notes: dict):
        self.scheduler, self.kwargs, self.schedule, self.units, self.notes = scheduler, kwargs, schedule, units, notes

    @property
    def name(self) -> str:
        return type(self.scheduler).__name__


def _call_params(pipe) -> set:
    return set(inspect.signature(type(pipe).__call__).parameters)


def _config_for(cls, config) -> dict:
    """The entries of a scheduler config that ``cls`` takes (no "unexpected config attributes" warnings when a
    FlowMatchEuler config seeds a UniPC scheduler)."""
    accepted = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in dict(config).items() if k in accepted or k.startswith("_")}


def exact_flow_timesteps(scheduler):
    """Make a flow ``UniPCMultistepScheduler`` hand the network float timesteps σ·N instead of its int64 ⌊σ·N⌋.

    diffusers 0.42 computes ``timesteps = sigmas * num_train_timesteps`` and then casts to int64, so a
    schedule time t = 0.36604 would be evaluated at timestep 366 (t = 0.366) while the update uses σ = 0.36604.
    The step itself only uses ``timesteps`` to find its index (exact float equality with what the pipeline
    passes back), so float timesteps are safe. The wrapper keeps ``set_timesteps``' signature (pipelines inspect
    it for ``sigmas=``)."""
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        out = original(*args, **kwargs)
        n = scheduler.config.num_train_timesteps
        scheduler.timesteps = (scheduler.sigmas[:-1].double() * n).float().to(scheduler.timesteps.device)
        return out

    scheduler.set_timesteps = set_timesteps
    return scheduler


def plan_scheduler(pipe, schedule: Schedule, scheduler: str = "auto") -> Plan:
    """Pick and build the scheduler that runs ``schedule`` on ``pipe`` (see the module docstring)."""
    import diffusers

    from optsteps.integrations.diffusers_export import to_diffusers

    if scheduler not in SCHEDULER_CHOICES:
        raise OptstepsError(f"unknown scheduler choice {scheduler!r}; use one of {', '.join(SCHEDULER_CHOICES)}.")
    fam = schedule.noise_schedule.family
    own = pipe.scheduler
    params = _call_params(pipe)
    takes_custom = bool({"timesteps", "sigmas"} & params)
    order = solver_order(schedule)
    notes: dict = {"solver_order": order}

    def build(cls_name: str, sched: Schedule, extra: dict | None = None):
        cls = getattr(diffusers, cls_name)
        kwargs, overrides = to_diffusers(sched, cls_name)
        overrides.update(extra or {})
        return cls.from_config(_config_for(cls, own.config), **overrides), kwargs

    if scheduler == "native":
        kwargs, overrides = to_diffusers(schedule, own)
        return Plan(type(own).from_config(own.config, **overrides), kwargs, schedule,
                    "vp/alpha" if type(own).__name__ in EULER_LIKE else "state", notes)
    if fam == "flow":
        if schedule.t[-1] != 0.0:
            raise OptstepsError(f"the flow schedule ends at t = {schedule.t[-1]:.6g}, but diffusers' flow schedulers "
                                "always end at σ = 0; compute the schedule with t_end = 0.")
        if scheduler in ("dpmsolver", "euler"):
            raise OptstepsError(f"scheduler {scheduler!r} is for VP pipelines; this is a flow pipeline: use "
                                "flowmatch or unipc.")
        if scheduler == "flowmatch" or (scheduler == "auto" and order == 1):
            s, kw = build("FlowMatchEulerDiscreteScheduler", schedule)
            return Plan(s, kw, schedule, "state", notes)
        s, kw = build("UniPCMultistepScheduler", schedule,
                      {"solver_order": order, "predict_x0": True, "solver_type": "bh2", "prediction_type": "flow_prediction",
                       "lower_order_final": True, "final_sigmas_type": "zero", "disable_corrector": []})
        return Plan(exact_flow_timesteps(s), kw, schedule, "state", notes)
    if fam != "vp":
        raise OptstepsError(f"{fam} schedules cannot be applied to diffusers pipelines here; use a VP or flow pipeline.")
    if scheduler in ("flowmatch", "unipc"):
        raise OptstepsError(f"scheduler {scheduler!r} is for flow pipelines here; for VP pipelines use dpmsolver or euler "
                            "(diffusers' UniPC takes no custom VP timesteps).")
    euler_ok = "sigmas" in params
    if scheduler == "euler":
        if not euler_ok:
            raise OptstepsError(f"{type(pipe).__name__} takes no sigmas= and does not scale model inputs; use "
                                "scheduler dpmsolver.")
        s, kw = build("EulerDiscreteScheduler", schedule)
        return Plan(s, kw, schedule, "vp/alpha", notes)
    snapped, shift = snap_to_training_timesteps(schedule)
    if snapped is None:
        if scheduler == "auto" and euler_ok:
            log.warning("schedule times round to the same training timestep; running it exactly with "
                        "EulerDiscreteScheduler(sigmas=) (first order) instead of DPM-Solver++.")
            s, kw = build("EulerDiscreteScheduler", schedule)
            return Plan(s, kw, schedule, "vp/alpha", dict(notes, fallback="euler"))
        raise OptstepsError("the schedule's times round to the same integer training timestep, and diffusers' "
                            "DPMSolverMultistepScheduler takes integer timesteps only; use scheduler euler (sigmas=) "
                            "with a pipeline that takes sigmas=, or a schedule with fewer steps near t = 0.")
    if shift:
        log.warning("snapped the schedule to integer training timesteps for DPMSolverMultistepScheduler "
                    "(largest move %.3g timesteps).", shift)
    notes["snapped_max_shift"] = shift
    extra = {"algorithm_type": "dpmsolver++", "solver_order": order, "lower_order_final": True,
             "euler_at_final": False, "thresholding": False, "use_flow_sigmas": False, "solver_type": "midpoint"}
    s, kw = build("DPMSolverMultistepScheduler", snapped, extra)
    if not takes_custom:
        notes["pinned"] = True
    return Plan(s, kw, snapped, "state", notes)


def _pin(scheduler, kwargs: dict):
    """Make ``scheduler.set_timesteps(...)`` always set the schedule (for pipelines with no timesteps=)."""
    original = scheduler.set_timesteps

    def pinned(num_inference_steps=None, device=None, **_ignored):
        return original(device=device, **kwargs)

    scheduler.set_timesteps = pinned
    return scheduler


# ---- running the pipeline -----------------------------------------------------------------------------

def check_noise_schedule(pipe, schedule: Schedule, where: str = "") -> None:
    from optsteps.models.diffusers.pipelines import _noise_schedule

    ns = _noise_schedule(dict(pipe.scheduler.config), where or type(pipe).__name__)
    if schedule.noise_schedule != ns:
        raise OptstepsError(
            f"the schedule ({schedule.model or 'unnamed'}, {schedule.method or 'schedule'}) was made for the noise "
            f"schedule {schedule.noise_schedule.to_dict()}, but the pipeline {where or type(pipe).__name__} uses "
            f"{ns.to_dict()}; compute a schedule for this pipeline (optsteps schedule … --model {where or 'PIPELINE'}).")


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


def _initial_latents(pipe, plan: Plan, n: int, seed: int, start: int, height: int, width: int) -> torch.Tensor:
    """optsteps' seeded state x_{t_0} = σ_{t_0} ε in the units the pipeline expects for ``latents=``."""
    from optsteps.models.base import DiffusionModel

    bb = _backbone(pipe)
    vsf = int(pipe.vae_scale_factor)
    shape = (int(bb.config.in_channels), height // vsf, width // vsf)
    eps = DiffusionModel.noise(SimpleNamespace(sample_shape=shape), n, seed, start)
    ns, t0 = plan.schedule.noise_schedule, plan.schedule.t[0]
    x = eps * float(ns.sigma(t0))
    if plan.units == "vp/alpha":  # Euler-type schedulers integrate x/α
        x = x / float(ns.alpha(t0))
    if type(pipe).__name__ != "StableDiffusion3Pipeline":  # SD/SDXL multiply latents by init_noise_sigma
        probe = type(plan.scheduler).from_config(plan.scheduler.config)
        probe.set_timesteps(**plan.kwargs)
        x = x / float(getattr(probe, "init_noise_sigma", 1.0))
    return x


def _default_guidance(pipe) -> float | None:
    p = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    return None if p is None else float(p.default)


def generate(pipe, schedule: Schedule, prompt: str = "", n: int = 1, seed: int = 0, start: int = 0,
             guidance: float | None = None, scheduler: str = "auto", height: int | None = None,
             width: int | None = None, output_type: str = "pil", where: str = "", **call_kwargs):
    """(images or latents, info): ``n`` samples (noise of seed ``seed``, indices start…start+n−1) from the loaded
    pipeline ``pipe`` along ``schedule``. The pipeline's scheduler is restored afterwards."""
    check_noise_schedule(pipe, schedule, where)
    plan = plan_scheduler(pipe, schedule, scheduler)
    params = _call_params(pipe)
    own = pipe.scheduler
    bb = _backbone(pipe)
    calls = [0]
    hook = bb.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    kwargs: dict = {"output_type": output_type}
    try:
        if "prompt" in params:  # text-to-image
            height, width = _image_size(pipe, height, width)
            latents = _initial_latents(pipe, plan, n, seed, start, height, width)
            kwargs.update(prompt=prompt, num_images_per_prompt=n, height=height, width=width,
                          latents=latents.to(pipe.device, bb.dtype), num_inference_steps=plan.schedule.nfe)
            g = _default_guidance(pipe) if guidance is None else float(guidance)
            if g is not None:
                kwargs["guidance_scale"] = g
        else:  # unconditional pixel pipelines (DDPMPipeline): their own seeded noise
            height, width = _image_size(pipe, None, None)
            g = None
            kwargs.update(batch_size=n, generator=torch.Generator(device="cpu").manual_seed(seed),
                          num_inference_steps=plan.schedule.nfe)
        if set(plan.kwargs) <= params:
            kwargs.update({k: (list(v) if isinstance(v, list) else v) for k, v in plan.kwargs.items()})
            pipe.scheduler = plan.scheduler
        else:
            pipe.scheduler = _pin(plan.scheduler, plan.kwargs)
        kwargs.update(call_kwargs)
        out = pipe(**kwargs)
        used = pipe.scheduler
    finally:
        hook.remove()
        pipe.scheduler = own
    images = out.images if hasattr(out, "images") else out[0]
    info = {
        "scheduler": type(used).__name__, "set_timesteps": {k: np.asarray(v).tolist() for k, v in plan.kwargs.items()},
        "timesteps": torch.as_tensor(used.timesteps).double().tolist(),
        "sigmas": torch.as_tensor(used.sigmas).double().tolist() if hasattr(used, "sigmas") else None,
        "nfe": plan.schedule.nfe, "model_calls": calls[0], "guidance": g, "height": height, "width": width,
        "seed": seed, "start": start, **plan.notes,
    }
    return images, info


def apply_schedule(pipeline_dir_or_id, schedule: Schedule, prompt: str = "", out_png=None, seed: int = 0,
                   guidance: float | None = None, scheduler: str = "auto", device=None, dtype=None,
                   height: int | None = None, width: int | None = None) -> dict:
    """Run the user's diffusers pipeline (folder, locally cached hub id, or an already loaded pipeline) with
    ``schedule`` on ``prompt`` and write the image to ``out_png``. ``guidance`` None: the pipeline's default.
    Returns what ran: scheduler, timesteps/sigmas, NFE, model calls, image size, out path."""
    from optsteps.models.diffusers.pipelines import load_diffusers_pipeline

    if isinstance(pipeline_dir_or_id, (str, Path)):
        pipe, root, _ = load_diffusers_pipeline(pipeline_dir_or_id, device, dtype)
        where = str(pipeline_dir_or_id)
    else:
        pipe, where = pipeline_dir_or_id, type(pipeline_dir_or_id).__name__
    images, info = generate(pipe, schedule, prompt, 1, seed, 0, guidance, scheduler, height, width, "pil", where)
    img = images[0]
    info["size"] = list(img.size)
    if out_png is not None:
        info["out"] = str(save_png_atomic(img, out_png))
    return info


def pipeline_prompt_sampler(pipe, guidance: float | None = None, scheduler: str = "auto", where: str = "",
                            **call_kwargs):
    """``sampler(prompt, n, seed, schedule)`` → n PIL images from the loaded pipeline ``pipe`` on ``schedule``
    (optsteps noise of ``seed``, samples 0…n−1): the prompt sampler ``evaluate.adherence.geneval_metrics`` takes."""
    def sampler(prompt: str, n: int, seed: int, schedule: Schedule):
        images, _ = generate(pipe, schedule, prompt, n, seed, 0, guidance, scheduler, where=where, **call_kwargs)
        return images

    return sampler
