"""The diffusers scheduler that runs an optsteps schedule on a pipeline: ``plan_scheduler(pipe, schedule)``.

Scheduler choice (pitfalls in docs/dependencies.md §7):

- ``"auto"`` (= ``"optsteps"``): ``OptstepsScheduler`` (``scheduler.py``) for every pipeline class and solver: the
  solver the schedule was measured with (its spec: DDIM, DPM-Solver++(2M), UniPC at its order), at the schedule's
  exact times, from its start state; pinned, so whatever the pipeline passes to ``set_timesteps`` is ignored.
- The stock diffusers schedulers, on request (each prints what changes, ``describe_change``):
  ``"flowmatch"`` (FlowMatchEuler, ``sigmas=``, ``shift=1``: first order, exact times), ``"unipc"`` (flow
  UniPCMultistep, ``sigmas=``, network timesteps kept as float σ·N by ``exact_flow_timesteps``), ``"dpmsolver"``
  (VP DPMSolverMultistep with integer ``timesteps=``: DPM-Solver++ at the schedule's order, times snapped to the
  nearest training timestep), ``"euler"`` (VP EulerDiscrete with exact ``sigmas=``: first order) and
  ``"native"`` (the pipeline's own scheduler class).
- Pipelines whose ``__call__`` takes neither ``timesteps=`` nor ``sigmas=`` (``DDPMPipeline``, ``WanPipeline``)
  get a stock scheduler whose ``set_timesteps`` is pinned to the schedule (``pin_timesteps``); so does
  ``FluxPipeline`` with UniPC (it drops ``sigmas=`` for a scheduler with ``use_flow_sigmas``).
"""

from __future__ import annotations

import functools
import inspect

from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.integrations.diffusers.export import describe_change as _describe_change
from optsteps.integrations.diffusers.export import snap_to_training_timesteps

SCHEDULER_CHOICES = ("auto", "optsteps", "dpmsolver", "euler", "flowmatch", "unipc", "native")
EULER_LIKE = (
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
)


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

    if scheduler in ("auto", "optsteps"):
        from optsteps.integrations.diffusers.scheduler import OptstepsScheduler

        s = OptstepsScheduler.from_schedule(
            schedule, pipeline_prediction(pipe, fam), scale_first_sample="latents" not in params
        )
        return Plan(s, {}, schedule, "state", dict(notes, exact=True, solver=s.spec.name))
    if scheduler == "native":
        kwargs, overrides = to_diffusers(schedule, own)
        return Plan(
            type(own).from_config(own.config, **overrides),
            kwargs,
            schedule,
            "vp/alpha" if type(own).__name__ in EULER_LIKE else "state",
            notes,
        )
    if fam == "flow":
        if schedule.t[-1] != 0.0:
            raise OptstepsError(
                f"the flow schedule ends at t = {schedule.t[-1]:.6g}, but diffusers' flow schedulers "
                "always end at σ = 0; compute the schedule with t_end = 0."
            )
        if scheduler in ("dpmsolver", "euler"):
            raise OptstepsError(
                f"scheduler {scheduler!r} is for VP pipelines; this is a flow pipeline: use flowmatch or unipc."
            )
        if scheduler == "flowmatch":
            s, kw = build("FlowMatchEulerDiscreteScheduler", schedule)
            return Plan(s, kw, schedule, "state", notes)
        s, kw = build(
            "UniPCMultistepScheduler",
            schedule,
            {
                "solver_order": order,
                "predict_x0": True,
                "solver_type": "bh2",
                "prediction_type": "flow_prediction",
                "lower_order_final": True,
                "final_sigmas_type": "zero",
                "disable_corrector": [],
            },
        )
        return Plan(exact_flow_timesteps(s), kw, schedule, "state", notes)
    if fam != "vp":
        raise OptstepsError(
            f"{fam} schedules cannot be applied to diffusers pipelines here; use a VP or flow pipeline."
        )
    if scheduler in ("flowmatch", "unipc"):
        raise OptstepsError(
            f"scheduler {scheduler!r} is for flow pipelines here; for VP pipelines use dpmsolver or euler "
            "(diffusers' UniPC takes no custom VP timesteps)."
        )
    euler_ok = "sigmas" in params
    if scheduler == "euler":
        if not euler_ok:
            raise OptstepsError(
                f"{type(pipe).__name__} takes no sigmas= and does not scale model inputs; use scheduler dpmsolver."
            )
        s, kw = build("EulerDiscreteScheduler", schedule)
        return Plan(s, kw, schedule, "vp/alpha", notes)
    snapped, shift = snap_to_training_timesteps(schedule)
    if snapped is None:
        raise OptstepsError(
            "the schedule's times round to the same integer training timestep, and diffusers' "
            "DPMSolverMultistepScheduler takes integer timesteps only; use scheduler euler (sigmas=) "
            "with a pipeline that takes sigmas=, or a schedule with fewer steps near t = 0."
        )
    notes["snapped_max_shift"] = shift
    extra = {
        "algorithm_type": "dpmsolver++",
        "solver_order": order,
        "lower_order_final": True,
        "euler_at_final": False,
        "thresholding": False,
        "use_flow_sigmas": False,
        "solver_type": "midpoint",
    }
    s, kw = build("DPMSolverMultistepScheduler", snapped, extra)
    if not takes_custom:
        notes["pinned"] = True
    return Plan(s, kw, snapped, "state", notes)


def pipeline_prediction(pipe, family: str) -> str:
    """What the pipeline's network predicts: ``flow`` for flow pipelines, else its scheduler's ``prediction_type``."""
    if family == "flow":
        return "flow"
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise OptstepsError(
            f"{type(pipe).__name__}'s scheduler predicts {pred!r}; optsteps runs epsilon, "
            "v_prediction or sample networks on VP pipelines."
        )
    return pred


def describe_change(plan: Plan, schedule: Schedule) -> str | None:
    """One line on what the plan's stock scheduler changes against the measured run (``export.describe_change``)."""
    return _describe_change(plan.name, plan.scheduler.config, schedule, plan.notes.get("snapped_max_shift"))


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
