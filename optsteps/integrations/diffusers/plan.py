"""The diffusers scheduler that runs an optsteps schedule on a pipeline: ``plan_scheduler(pipe, schedule)``.

Scheduler choice (``scheduler="auto"``; pitfalls in docs/dependencies.md §7):

- Rectified flow: ``FlowMatchEulerDiscreteScheduler`` with ``sigmas=`` and ``shift=1`` (the schedule's times
  verbatim; no dynamic shift) for DDIM/Euler schedules; for DPM-Solver++/UniPC schedules
  ``UniPCMultistepScheduler(use_flow_sigmas=True)`` with ``sigmas=`` (the order of the
  schedule's solver spec: 2 for dpmpp2m and OSS-UniPC, 3 for UniPC). diffusers' UniPC casts its flow timesteps σ·N to int64, so the
  network would be evaluated at ⌊N σ⌋ instead of N σ (up to one training timestep early, while the step
  coefficients use the exact σ); ``exact_flow_timesteps`` keeps them float (σ·N, as FlowMatchEuler does), so
  the pipeline runs the schedule exactly.
- VP (DDPM β): ``DPMSolverMultistepScheduler`` (DPM-Solver++; order 1 = DDIM, 2 = 2M, 3 = 3M) with integer
  ``timesteps=``. diffusers truncates float timesteps, so times that are not training timesteps are snapped
  to the nearest one (``snapped_max_shift`` in the result says by how much); if snapping would merge two
  steps and the pipeline takes ``sigmas=``, ``EulerDiscreteScheduler`` with exact ``sigmas=`` is used
  instead (first order; its last σ is 0, the diffusers convention). ``scheduler="euler"`` forces it.
- Pipelines whose ``__call__`` takes neither ``timesteps=`` nor ``sigmas=`` (``DDPMPipeline``, ``WanPipeline``)
  get a scheduler whose ``set_timesteps`` is pinned to the schedule. So does ``FluxPipeline`` with UniPC: it
  drops ``sigmas=`` for a scheduler with ``use_flow_sigmas`` (and passes its dynamic-shift ``mu``, which the
  pinned scheduler ignores, as FlowMatchEuler with ``use_dynamic_shifting=False`` does).
"""
from __future__ import annotations

import functools
import inspect
import logging


from optsteps.errors import OptstepsError
from optsteps.core.schedule import Schedule
from optsteps.integrations.diffusers.export import snap_to_training_timesteps

log = logging.getLogger("optsteps.integrations.diffusers.apply")  # warnings of `optsteps apply`: its logger

SCHEDULER_CHOICES = ("auto", "dpmsolver", "euler", "flowmatch", "unipc", "native")
EULER_LIKE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
              "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")


def solver_order(schedule: Schedule) -> int:
    """The multistep order the schedule was made for (its ``solver_spec``; first order if it names none)."""
    spec = schedule.solver_spec
    return 1 if spec is None else spec.order


class Plan:
    """A configured scheduler for a schedule: ``scheduler`` (not yet ``set_timesteps``), ``kwargs`` for
    ``set_timesteps`` (and the pipeline call), the ``schedule`` actually run (snapped or not) and notes."""

    def __init__(self, scheduler, kwargs: dict, schedule: Schedule, units: str, notes: dict):
        self.scheduler, self.kwargs, self.schedule, self.units, self.notes = scheduler, kwargs, schedule, units, notes

    @property
    def name(self) -> str:
        return type(self.scheduler).__name__


def call_params(pipe) -> set:
    """The parameter names of the pipeline's ``__call__``."""
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

    from optsteps.integrations.diffusers.export import to_diffusers

    if scheduler not in SCHEDULER_CHOICES:
        raise OptstepsError(f"unknown scheduler choice {scheduler!r}; use one of {', '.join(SCHEDULER_CHOICES)}.")
    fam = schedule.noise_schedule.family
    own = pipe.scheduler
    params = call_params(pipe)
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


def passes_schedule(pipe, plan: Plan) -> bool:
    """Whether the pipeline's ``__call__`` forwards the plan's ``set_timesteps`` kwargs to the scheduler (else the
    scheduler is pinned with ``pin_timesteps``)."""
    if not set(plan.kwargs) <= call_params(pipe):
        return False
    # FluxPipeline sets sigmas = None when the scheduler has use_flow_sigmas (UniPC then makes its own)
    return not (type(pipe).__name__ == "FluxPipeline" and plan.scheduler.config.get("use_flow_sigmas"))


def pin_timesteps(scheduler, kwargs: dict):
    """Make ``scheduler.set_timesteps(...)`` always set the schedule (for pipelines with no timesteps=)."""
    original = scheduler.set_timesteps

    def pinned(num_inference_steps=None, device=None, **_ignored):
        return original(device=device, **kwargs)

    scheduler.set_timesteps = pinned
    return scheduler
