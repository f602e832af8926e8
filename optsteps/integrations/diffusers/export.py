"""Export a ``Schedule`` to diffusers schedulers and to a ComfyUI-style sigma list.

``to_diffusers(schedule, scheduler)`` returns ``(set_timesteps_kwargs, config_overrides)``: build the
scheduler with ``Cls.from_config(old.config, **config_overrides)`` and pass the kwargs to
``set_timesteps`` (or to a pipeline call, which forwards ``timesteps=``/``sigmas=``). Pitfalls handled
(``docs/dependencies.md`` §7):

- DDIMScheduler takes no custom timesteps (and silently mis-steps if they are overwritten): refused; DDIM is
  ``DPMSolverMultistepScheduler(solver_order=1)``, which does take them.
- DPMSolverMultistep/DDPM take integer ``timesteps=`` (floats are truncated): the K evaluation times are
  snapped to the nearest training timestep (``snap_to_training_timesteps``; the largest move is reported by
  ``diffusers_export`` and refused where snapping would merge steps); the final point picks
  ``final_sigmas_type`` ("sigma_min" for t = 1/N, "zero" for t = 0), and DPMSolverMultistep runs the
  schedule's own order (``solver_order`` from its solver spec; order 1 is DDIM).
- EulerDiscrete needs the terminal σ = 0 in ``sigmas=`` (else the output keeps the last σ's noise): the last
  σ is replaced by 0.
- FlowMatchEulerDiscrete passes custom sigmas through ``shift``: ``shift=1.0`` and no dynamic shifting are
  required; it appends the terminal 0 itself, so it gets the K evaluation sigmas.
- UniPCMultistep takes ``sigmas=`` only with ``use_flow_sigmas=True`` (flow models), as a numpy array
  (a list raises in diffusers 0.42); for VP models it takes no custom timesteps: refused with the fix.

The start. The first timestep/σ of every export is the schedule's t_0 (which OSS may have moved below t_max);
the state at t_0 is ``start_latents(schedule)``: x_{t_0} = c·ε with c = σ_{t_0} (``"start_state"`` absent or
``"scaled"``) or σ_{t_max} (``"raw"``: the noise unscaled), in the model's state units (``optsteps apply``
converts them to the scheduler's units for ``latents=``). ComfyUI scales its noise by the first sigma itself,
so a raw-start schedule has no ComfyUI sigma list (refused with the fix).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from optsteps.core.schedule import Schedule, start_sigma
from optsteps.errors import OptstepsError

log = logging.getLogger("optsteps.integrations.diffusers.export")

TIMESTEP_SCHEDULERS = ("DPMSolverMultistepScheduler", "DDPMScheduler")


def _name(scheduler) -> str:
    if isinstance(scheduler, str):
        return scheduler
    return type(scheduler).__name__ if not isinstance(scheduler, type) else scheduler.__name__


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
    return Schedule(
        t_new, ns, schedule.model, schedule.method, schedule.solver, dict(schedule.extra, snapped_from=list(schedule.t))
    ), shift


def integer_timesteps(schedule: Schedule) -> tuple[list[int], float]:
    """The K evaluation times as diffusers' integer training timesteps t·N − 1 (VP only), snapped to the nearest
    one where they fall between (diffusers truncates floats), and the largest move in timesteps."""
    ns = schedule.noise_schedule
    if ns.family != "vp":
        raise OptstepsError(f"integer timesteps exist for discrete VP models only, not {ns.family}.")
    snapped, shift = snap_to_training_timesteps(schedule)
    if snapped is None:
        raise OptstepsError(
            f"snapping this schedule's times to integer training timesteps would merge steps (largest move "
            f"{shift:.3g} timesteps), and this diffusers scheduler truncates floats; export to "
            "EulerDiscreteScheduler (exact sigmas=) instead."
        )
    if shift > 1e-6:
        log.info("timesteps snapped to integer training timesteps (largest move %.3g)", shift)
    return [int(v) for v in snapped.noise_schedule.timestep(snapped.timesteps_t[:-1]).round().tolist()], shift


def _final_sigmas_type(schedule: Schedule) -> str:
    ns, t_end = schedule.noise_schedule, schedule.t[-1]
    if abs(t_end - 1.0 / ns.num_train_timesteps) < 1e-9:
        return "sigma_min"
    if t_end == 0.0:
        return "zero"
    raise OptstepsError(
        f"the schedule ends at t = {t_end:.6g}, but diffusers' multistep schedulers end at σ of timestep 0 "
        f"(t = 1/N) or at σ = 0 (t = 0); end the schedule there."
    )


def to_diffusers(schedule: Schedule, scheduler) -> tuple[dict, dict]:
    """(set_timesteps kwargs, scheduler config overrides) for ``scheduler`` (instance, class or class name)."""
    name = _name(scheduler)
    fam = schedule.noise_schedule.family
    if name == "DDIMScheduler":
        raise OptstepsError(
            "DDIMScheduler.set_timesteps takes no custom timesteps (and overwriting .timesteps mis-steps silently); "
            "use DPMSolverMultistepScheduler.from_config(config, solver_order=1, algorithm_type='dpmsolver++'), "
            "which is DDIM and accepts timesteps=."
        )
    if name in TIMESTEP_SCHEDULERS:
        overrides = {"final_sigmas_type": _final_sigmas_type(schedule)} if name == "DPMSolverMultistepScheduler" else {}
        if name == "DPMSolverMultistepScheduler":
            overrides.update(
                use_karras_sigmas=False, use_lu_lambdas=False, use_exponential_sigmas=False, use_beta_sigmas=False
            )
        spec = schedule.solver_spec
        if name == "DPMSolverMultistepScheduler" and spec is not None:  # the schedule's own order (DDIM = order 1)
            overrides.update(
                solver_order=spec.order, lower_order_final=spec.lower_order_final, algorithm_type="dpmsolver++"
            )
        return {"timesteps": integer_timesteps(schedule)[0]}, overrides
    if name == "EulerDiscreteScheduler":
        if fam != "vp":
            raise OptstepsError(
                f"EulerDiscreteScheduler is for VP models; this schedule is {fam}. "
                "Use FlowMatchEulerDiscreteScheduler for flow models."
            )
        sigmas = schedule.sigmas.tolist()
        sigmas[-1] = 0.0
        return {"sigmas": sigmas}, {
            "use_karras_sigmas": False,
            "use_exponential_sigmas": False,
            "use_beta_sigmas": False,
        }
    if name == "FlowMatchEulerDiscreteScheduler":
        if fam != "flow":
            raise OptstepsError(
                f"FlowMatchEulerDiscreteScheduler is for rectified-flow models; this schedule is {fam}."
            )
        return {"sigmas": schedule.sigmas[:-1].tolist()}, {"shift": 1.0, "use_dynamic_shifting": False}
    if name == "UniPCMultistepScheduler":
        if fam != "flow":
            raise OptstepsError(
                "UniPCMultistepScheduler takes custom sigmas only for flow models (use_flow_sigmas=True) and no "
                "custom VP timesteps; use DPMSolverMultistepScheduler (timesteps=) or `optsteps sample --solver unipc`."
            )
        return (
            {"sigmas": np.array(schedule.sigmas[:-1].tolist())},
            {"use_flow_sigmas": True, "flow_shift": 1.0, "use_dynamic_shifting": False},
        )
    raise OptstepsError(
        f"no export for {name}; supported: DPMSolverMultistepScheduler, DDPMScheduler, EulerDiscreteScheduler, "
        "FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler (flow)."
    )


def configure(scheduler, schedule: Schedule):
    """A new scheduler of ``scheduler``'s class configured for ``schedule``, with ``set_timesteps`` done."""
    kwargs, overrides = to_diffusers(schedule, scheduler)
    new = type(scheduler).from_config(scheduler.config, **overrides)
    new.set_timesteps(**kwargs)
    return new, kwargs


def start_latents(schedule: Schedule) -> dict:
    """{"start_state", "sigma"}: the sampler starts at t_0 from x_{t_0} = sigma·ε (ε unit noise, model state units)."""
    rule = schedule.start_state
    return {"start_state": rule, "sigma": start_sigma(schedule.noise_schedule, schedule.t[0], rule)}


def to_comfyui(schedule: Schedule) -> list[float]:
    """ComfyUI SIGMAS: the K+1 sigmas (k-diffusion convention, σ/α; t for flow) ending in 0."""
    if schedule.start_state == "raw" and start_sigma(schedule.noise_schedule, schedule.t[0], "raw") != start_sigma(
        schedule.noise_schedule, schedule.t[0]
    ):
        raise OptstepsError(
            f"this schedule starts at t = {schedule.t[0]:.6g} from the unscaled noise (start_state raw), but ComfyUI "
            "scales the noise by the first sigma; run it with `optsteps apply` or export it for diffusers "
            "(latents = σ_max·ε, see start_latents), or use a schedule with the scaled start."
        )
    sigmas = schedule.sigmas.tolist()
    sigmas[-1] = 0.0
    return sigmas


def to_comfyui_text(schedule: Schedule) -> str:
    """The ComfyUI sigmas as the comma-separated text its manual-sigmas nodes take."""
    return ", ".join(f"{v:.6g}" for v in to_comfyui(schedule))


def interpolate_sigmas(schedule: Schedule, steps: int) -> list[float]:
    """``steps`` + 1 sigmas ending in 0 by the Align-Your-Steps log-linear recipe: log σ interpolated linearly over
    the normalised step index (i/(M−1) ↦ log σ_i of the M positive sigmas) at ``steps`` (+1 where σ_K > 0) points.
    INTERPOLATED, not measured: only the schedule's own NFE was evaluated."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10000:
        raise OptstepsError(f"--steps {steps!r}: use a whole number of steps from 1 to 10000.")
    to_comfyui(schedule)  # the same refusal of a raw start
    sig = np.asarray(schedule.sigmas.tolist(), dtype=np.float64)
    pos = sig[sig > 0]
    m = steps if sig[-1] == 0 else steps + 1
    log_new = np.interp(np.linspace(0, 1, m), np.linspace(0, 1, len(pos)), np.log(pos))
    out = np.exp(log_new).tolist()
    return (out + [0.0]) if sig[-1] == 0 else out[:-1] + [0.0]


def interpolated_label(schedule: Schedule, steps: int) -> str:
    return (
        f"interpolated to {steps} steps from the measured NFE-{schedule.nfe} schedule by the AYS log-linear "
        "recipe: not measured"
    )


def to_a1111(schedule: Schedule, steps: int | None = None) -> str:
    """The A1111/Forge webUI_ExtraSchedulers "custom" scheduler's sigma list, ``[σ_0, …, 0]`` (as ``to_comfyui``)."""
    sig = to_comfyui(schedule) if steps is None else interpolate_sigmas(schedule, steps)
    return "[" + ", ".join(f"{v:.6g}" for v in sig) + "]"


def tool_export(schedule: Schedule, fmt: str, steps: int | None = None):
    """ComfyUI (``comfyui``: the SamplerCustom SIGMAS list; ``comfyui-text``: KJNodes CustomSigmas text) and A1111
    (``a1111``) exports; ``steps``: any step count by ``interpolate_sigmas``, labelled as interpolated (JSON: an
    object with "interpolated": true and a note; text: a first ``#`` line)."""
    if steps is None:
        return {"comfyui": to_comfyui, "comfyui-text": to_comfyui_text, "a1111": to_a1111}[fmt](schedule)
    label = interpolated_label(schedule, steps)
    sig = interpolate_sigmas(schedule, steps)
    if fmt == "comfyui":
        return {"sigmas": sig, "steps": steps, "interpolated": True, "measured_nfe": schedule.nfe, "note": label}
    text = to_a1111(schedule, steps) if fmt == "a1111" else ", ".join(f"{v:.6g}" for v in sig)
    return f"# {label}\n{text}"


def to_ays_pair(schedule: Schedule) -> dict:
    """The Align-Your-Steps style pair: ``timesteps`` (the K network timesteps: integers for VP, σ·N for flow)
    and ``sigmas`` (K + 1 values ending in 0, as ``to_comfyui``)."""
    ns = schedule.noise_schedule
    if ns.family == "vp":
        timesteps = integer_timesteps(schedule)[0]
    else:
        timesteps = [float(v) for v in ns.timestep(schedule.timesteps_t[:-1]).tolist()]
    return {"timesteps": timesteps, "sigmas": to_comfyui(schedule)}


def scheduler_config(schedule: Schedule, prediction_type: str | None = None, scale_first_sample: bool = False) -> dict:
    """``OptstepsScheduler``'s config for ``schedule``: its exact times, noise schedule, solver spec (first order
    where it names none) and start rule; ``prediction_type`` None: "flow" for flow schedules, else left to the
    pipeline (``OptstepsScheduler.from_config(config, prediction_type=pipe.scheduler.config.prediction_type)``)."""
    from optsteps.core.solver_spec import SolverSpec

    spec, ns = schedule.solver_spec or SolverSpec("ddim"), schedule.noise_schedule
    cfg = {
        "t": [float(v) for v in schedule.t],
        "noise_schedule": ns.to_dict(),
        "solver": spec.name,
        "order": spec.order,
        "lower_order_final": spec.lower_order_final,
        "corrector": spec.corrector,
        "start_state": schedule.start_state,
        "scale_first_sample": scale_first_sample,
        "num_train_timesteps": int(ns.num_train_timesteps),
    }
    prediction_type = prediction_type or ("flow" if ns.family == "flow" else None)
    if prediction_type:
        cfg["prediction_type"] = prediction_type
    return cfg


def describe_change(name: str, config, schedule: Schedule, shift: float | None) -> str | None:
    """One line saying what the stock scheduler ``name`` (configured by ``config``) changes against the measured
    run (solver and order, snapping and its largest move); None for ``OptstepsScheduler`` (nothing changes)."""
    if name == "OptstepsScheduler":
        return None
    spec = schedule.solver_spec
    measured = "no solver (first order)" if spec is None else f"{spec.name} order {spec.order}"
    exact = name in ("FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler")
    if name in ("FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler"):
        runs = "ddim order 1 (Euler)"
    elif name == "DPMSolverMultistepScheduler":
        o = int(config.get("solver_order", 2))
        runs = "ddim order 1" if o == 1 else f"DPM-Solver++ ({config.get('algorithm_type')}) order {o}"
    elif name == "UniPCMultistepScheduler":
        runs = f"unipc order {int(config.get('solver_order', 2))} (diffusers' step-order rules)"
    else:
        runs = f"{name}'s own solver"
    times = (
        f"times snapped to integer training timesteps (largest move {shift:.3g} timesteps)"
        if shift
        else "exact times"
        if exact or shift == 0
        else "times as that scheduler rounds them"
    )
    same = spec is not None and runs.startswith(f"{spec.name} order {spec.order}") and not shift
    verdict = "the measured run" if same else "not the measured run"
    return (
        f"scheduler {name} runs {runs} on {times}; the schedule was measured with {measured} at exact times: "
        f"{verdict} (the default, OptstepsScheduler, runs it exactly)."
    )


def default_scheduler(schedule: Schedule) -> str:
    """The diffusers scheduler that runs the schedule's own solver: VP → DPMSolverMultistep (its order; order 1 is
    DDIM), flow → FlowMatchEuler for DDIM/Euler schedules, else UniPCMultistep with flow sigmas."""
    fam, spec = schedule.noise_schedule.family, schedule.solver_spec
    if fam == "vp":
        return "DPMSolverMultistepScheduler"
    if fam == "flow":
        return "FlowMatchEulerDiscreteScheduler" if spec is None or spec.name == "ddim" else "UniPCMultistepScheduler"
    raise OptstepsError(f"no default diffusers scheduler for {fam} schedules; pass a scheduler name.")


def diffusers_export(schedule: Schedule, scheduler: str | None = None) -> dict:
    """What a diffusers pipeline needs to run the schedule.

    Default (``scheduler`` None or "OptstepsScheduler"): ``OptstepsScheduler`` — the measured solver at the exact
    times from the schedule's start state — as {"scheduler", "module", "config", "set_timesteps": {}, "usage",
    "snapped_max_shift": 0, "latents"}. A stock scheduler name (``to_diffusers``): its ``set_timesteps`` kwargs as
    JSON lists, config overrides, how far the times moved to integer training timesteps, and "changes", one line
    saying what differs from the measured run. "latents": the start state x_{t_0} = sigma·ε (``start_latents``)."""
    if scheduler in (None, "OptstepsScheduler"):
        cfg = scheduler_config(schedule)
        pred = "" if "prediction_type" in cfg else ", prediction_type=pipe.scheduler.config.prediction_type"
        return {
            "scheduler": "OptstepsScheduler",
            "module": "optsteps.integrations.diffusers",
            "config": cfg,
            "set_timesteps": {},
            "snapped_max_shift": 0.0,
            "latents": start_latents(schedule),
            "usage": (
                "from optsteps.integrations.diffusers import OptstepsScheduler; "
                f"pipe.scheduler = OptstepsScheduler.from_config(config{pred}); "
                f"pipe(prompt, num_inference_steps={schedule.nfe})"
            ),
        }
    name = scheduler
    kwargs, overrides = to_diffusers(schedule, name)
    shift = integer_timesteps(schedule)[1] if name in TIMESTEP_SCHEDULERS else 0.0
    kwargs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    cfg = dict(overrides)
    if name == "UniPCMultistepScheduler" and schedule.solver_spec is not None:
        cfg.setdefault("solver_order", schedule.solver_spec.order)
    return {
        "scheduler": name,
        "set_timesteps": kwargs,
        "config": overrides,
        "snapped_max_shift": shift,
        "latents": start_latents(schedule),
        "changes": describe_change(name, cfg, schedule, shift),
    }


def first_step(scheduler) -> float:
    """The first sigma a configured diffusers scheduler will use (for checks)."""
    return float(torch.as_tensor(scheduler.sigmas)[0])
