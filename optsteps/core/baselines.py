"""Baseline step schedules (docs/algorithms.md §4). Each returns a ``Schedule`` of NFE K from t_start to t_end.

- ``uniform-t``:        t_i = t_start + i/K (t_end − t_start)
- ``uniform-lambda``:   λ_i uniform between λ(t_start) and λ(t_end)      (DPM-Solver's "logSNR")
- ``karras``:           σ_i = (σ_max^{1/ρ} + i/K (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7, σ = e^{−λ} = σ_t/α_t
                        (Karras et al. 2022, eq. 5)
- ``time-quadratic``:   √t uniform (DPM-Solver's "time_quadratic")
- ``linspace``/``leading``/``trailing``: diffusers' multistep-scheduler timestep spacings (VP only)
- ``ays``:              Align Your Steps tables (Sabour et al. 2024) log-linearly interpolated in σ to K
- ``flow-shift``:       t' = s t / (1 + (s − 1) t) applied to uniform t (SD3; Esser et al. 2024, eq. 23)
- ``oss-published``:    the OSS authors' FLUX / Wan tables (Pei et al. 2025), interpolated as AYS does
                        (``core/published_schedules.py``)

Where λ is infinite at an endpoint (flow at t = 1 or 0), λ-based kinds place their interior points in the
window [LAMBDA_FLOOR, LAMBDA_CEIL] and keep the endpoint times exact.

Start variants (``parse_kind``, the one parser): ``KIND@start=T`` runs KIND from t_start = T instead of the
family's t_max, ``KIND@state=raw`` (or ``scaled``) sets the schedule's start-state rule (``core.schedule``:
raw = the noise unscaled, σ_{t_max} ε at t_0), both together as ``uniform-t@start=0.99,state=raw``. The
schedule's method is the whole name, so a variant is its own row in an evaluation.
"""

from __future__ import annotations

import math

import torch

from optsteps.core.noise_schedules import EDM, NoiseSchedule, VPDiscrete, as_tensor
from optsteps.core.published_schedules import AYS_TABLES  # noqa: F401 - re-exported
from optsteps.core.schedule import START_STATES, Schedule, from_lambdas
from optsteps.errors import OptstepsError

LAMBDA_FLOOR, LAMBDA_CEIL = -7.0, 7.0
MAX_NFE = 100_000  # more steps than any sampler takes; keeps a typo from allocating terabytes
BASELINES = (
    "uniform-t",
    "uniform-lambda",
    "karras",
    "time-quadratic",
    "linspace",
    "leading",
    "trailing",
    "ays",
    "flow-shift",
    "oss-published",
)


def lambda_window(noise_schedule: NoiseSchedule, t_start: float, t_end: float) -> tuple[float, float]:
    """λ(t_start), λ(t_end), each clipped into [LAMBDA_FLOOR, LAMBDA_CEIL] when infinite."""
    lo, hi = noise_schedule.lambda_(as_tensor([t_start, t_end])).tolist()
    lo = lo if math.isfinite(lo) else LAMBDA_FLOOR
    hi = hi if math.isfinite(hi) else LAMBDA_CEIL
    return lo, hi


def uniform_t(ns, nfe, t_start, t_end):
    return torch.linspace(t_start, t_end, nfe + 1, dtype=torch.float64)


def uniform_lambda(ns, nfe, t_start, t_end):
    lo, hi = lambda_window(ns, t_start, t_end)
    return torch.linspace(lo, hi, nfe + 1, dtype=torch.float64)


def karras_lambdas(ns, nfe, t_start, t_end, rho: float = 7.0):
    lo, hi = lambda_window(ns, t_start, t_end)
    s_max, s_min = math.exp(-lo), math.exp(-hi)
    ramp = torch.linspace(0, 1, nfe + 1, dtype=torch.float64)
    sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return -torch.log(sigmas)


def time_quadratic(ns, nfe, t_start, t_end):
    return torch.linspace(math.sqrt(t_start), math.sqrt(t_end), nfe + 1, dtype=torch.float64) ** 2


def flow_shift(
    ns, nfe, t_start, t_end, shift: float = 3.0, grid_end: float | None = None, eval_end: float | None = None
):
    """Shifted uniform t; the last point is t_end in any case. Where diffusers' flow schedulers put their K
    evaluation times before the shift: ``grid_end``, the K + 1 uniform points end there (UniPC: 1/N) and the
    last is replaced by t_end; ``eval_end``, the K evaluation times themselves are uniform down to it
    (FlowMatchEuler: σ_min)."""
    if grid_end is not None and eval_end is not None:
        raise OptstepsError("flow-shift takes grid_end or eval_end, not both.")
    if eval_end is not None:
        t = torch.cat([torch.linspace(t_start, float(eval_end), nfe, dtype=torch.float64), as_tensor([t_end])])
    else:
        t = uniform_t(ns, nfe, t_start, t_end if grid_end is None else float(grid_end))
    return shift * t / (1 + (shift - 1) * t)


def diffusers_spacing(ns: VPDiscrete, nfe: int, spacing: str, steps_offset: int = 0) -> torch.Tensor:
    """Integer timesteps of diffusers' multistep schedulers (DPMSolverMultistep/UniPC) for K steps."""
    n = ns.num_train_timesteps
    if spacing == "linspace":
        ts = torch.linspace(0, n - 1, nfe + 1, dtype=torch.float64).round().flip(0)[:-1]
    elif spacing == "leading":
        ratio = n // (nfe + 1)
        ts = (torch.arange(0, nfe + 1, dtype=torch.float64) * ratio).round().flip(0)[:-1] + steps_offset
    else:  # trailing
        ts = torch.arange(n, 0, -n / nfe, dtype=torch.float64).round() - 1
    return ts


def ays_table_for(ns: NoiseSchedule) -> str:
    if isinstance(ns, VPDiscrete) and ns.to_dict() == VPDiscrete("scaled_linear", 0.00085, 0.012, 1000).to_dict():
        return "sd"
    if isinstance(ns, EDM) and ns.sigma_max == 700.0:
        return "svd"
    raise OptstepsError(
        f"Align-Your-Steps tables exist only for Stable Diffusion 1.5/XL (VP scaled_linear β 0.00085–0.012, "
        f"1000 steps) and Stable Video Diffusion (EDM σ_max = 700), not for {ns.describe()} {ns.to_dict()}; "
        "pick another baseline (uniform-lambda, karras, ...)."
    )


def ays_sigmas(ns: NoiseSchedule, nfe: int, table: str | None = None) -> torch.Tensor:
    """The K evaluation sigmas: the published 11 noise levels (10 steps, ending at σ_min) interpolated in log σ
    to K + 1 levels, the last (the final step to σ = 0) left off — the AYS recipe (``published_schedules``)."""
    from optsteps.core.published_schedules import ays_evaluation_sigmas

    family = ays_table_for(ns)  # refuses noise schedules no AYS table was made for
    table = table or family
    if ("svd" if table == "svd" else "sd") != family:
        raise OptstepsError(
            f"the AYS {table!r} table was made for another noise schedule than {ns.to_dict()}; "
            f"this one takes the {family!r} table{' (or sdxl for SDXL)' if family == 'sd' else ''}."
        )
    return ays_evaluation_sigmas(table, nfe)


def parse_kind(kind: str) -> tuple[str, float | None, str | None]:
    """(base kind, start time or None, start-state rule or None) of ``KIND[@start=T][,state=raw|scaled]``."""
    if not isinstance(kind, str):
        raise OptstepsError(f"a baseline kind must be a string, got {kind!r}.")
    base, sep, rest = kind.partition("@")
    start = state = None
    if sep:
        if not rest:
            raise OptstepsError(
                f"baseline {kind!r}: nothing after '@'; write e.g. {base}@start=0.99 or {base}@start=0.99,state=raw."
            )
        for item in rest.split(","):
            key, eq, value = (v.strip() for v in item.partition("="))
            if not eq or key not in ("start", "state") or (start if key == "start" else state) is not None:
                raise OptstepsError(
                    f"baseline {kind!r}: bad option {item!r}; options are start=T (a time) and "
                    f"state={'|'.join(START_STATES)}, each at most once, comma-separated."
                )
            if key == "start":
                try:
                    start = float(value)
                except ValueError:
                    raise OptstepsError(
                        f"baseline {kind!r}: start={value!r} is not a number (a model time t)."
                    ) from None
                if not math.isfinite(start):
                    raise OptstepsError(f"baseline {kind!r}: start={value} must be a finite time.")
            else:
                if value not in START_STATES:
                    raise OptstepsError(f"baseline {kind!r}: state={value!r}; use one of {', '.join(START_STATES)}.")
                state = value
    return base, start, state


def baseline(
    kind: str,
    noise_schedule: NoiseSchedule,
    nfe: int,
    t_start: float | None = None,
    t_end: float | None = None,
    model: str = "",
    **opts,
) -> Schedule:
    """The baseline schedule ``kind`` for ``nfe`` steps (NFE K ≥ 1) on ``noise_schedule``; ``kind`` may carry
    a start variant (``KIND@start=T,state=raw``, see ``parse_kind``)."""
    base, v_start, v_state = parse_kind(kind)
    if v_start is not None or v_state is not None:
        if v_start is not None and t_start is not None:
            raise OptstepsError(f"baseline {kind!r} names its start; do not pass t_start = {t_start} as well.")
        end = noise_schedule.default_t_end() if t_end is None else float(t_end)
        if v_start is not None and not v_start > end:
            raise OptstepsError(f"baseline {kind!r}: start {v_start} must lie above the end t = {end:.6g}.")
        s = baseline(base, noise_schedule, nfe, v_start if v_start is not None else t_start, t_end, model, **opts)
        extra = {"start_state": "raw"} if v_state == "raw" else {}
        return Schedule(s.t, s.noise_schedule, s.model, kind, s.solver, dict(s.extra, **extra))
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= MAX_NFE:
        raise OptstepsError(f"nfe must be an integer in 1 … {MAX_NFE}, got {nfe!r}.")
    ns = noise_schedule
    t_start = ns.default_t_start() if t_start is None else float(t_start)
    t_end = ns.default_t_end() if t_end is None else float(t_end)
    meta = {"model": model, "method": kind}
    if kind in ("uniform-t", "time-quadratic", "flow-shift"):
        if kind == "flow-shift" and ns.family != "flow":
            raise OptstepsError("flow-shift is a rectified-flow schedule; use it with a flow model (family 'flow').")
        fn = {"uniform-t": uniform_t, "time-quadratic": time_quadratic, "flow-shift": flow_shift}[kind]
        t = fn(ns, nfe, t_start, t_end, **opts)
        t[0], t[-1] = t_start, t_end
        return Schedule(t, ns, **meta)
    if kind == "uniform-lambda":
        return from_lambdas(uniform_lambda(ns, nfe, t_start, t_end), ns, t_start, t_end, **meta)
    if kind == "karras":
        return from_lambdas(karras_lambdas(ns, nfe, t_start, t_end, **opts), ns, t_start, t_end, **meta)
    if kind in ("linspace", "leading", "trailing"):
        if not isinstance(ns, VPDiscrete):
            raise OptstepsError(f"'{kind}' spacing is defined for discrete VP (DDPM) schedules only; use uniform-t.")
        if nfe >= ns.num_train_timesteps:
            raise OptstepsError(f"nfe = {nfe} needs fewer steps than the {ns.num_train_timesteps} training timesteps.")
        ts = diffusers_spacing(ns, nfe, kind, **opts)
        t = torch.cat([ns.t_of_timestep(ts), as_tensor([ns.default_t_end()])])
        return Schedule(t, ns, **meta)
    if kind == "ays":
        sig = ays_sigmas(ns, nfe, **opts)
        t = torch.cat([ns.t_of_sigma_diffusers(sig), as_tensor([0.0 if ns.family == "vp" else ns.t_min])])
        t[0] = min(float(t[0]), ns.t_max)
        return Schedule(t, ns, **meta)
    if kind == "oss-published":
        if ns.family != "flow":
            raise OptstepsError(
                f"oss-published tables are for the rectified-flow models FLUX.1 and Wan 2.1, not "
                f"{ns.describe()}; pick another baseline (ays for SD 1.5/SDXL/SVD, uniform-lambda, …)."
            )
        if set(opts) - {"table"}:
            raise OptstepsError(f"oss-published takes only table= (flux or wan), got {sorted(opts)}.")
        from optsteps.core.published_schedules import oss_published_times

        # a published table fixes its own end points (t_start/t_end do not apply)
        return Schedule(oss_published_times(opts.get("table"), nfe), ns, **meta)
    raise OptstepsError(f"unknown baseline {kind!r}; use one of: {', '.join(BASELINES)}.")


def baseline_for(
    kind: str, model, nfe: int, t_start: float | None = None, t_end: float | None = None, **opts
) -> Schedule:
    """``baseline`` on a loaded model, with the model's own options for that kind (``model.baseline_options()``:
    a pipeline's flow shift for ``flow-shift``, its family's table for ``ays`` and ``oss-published``), which
    explicit ``opts`` override."""
    own = getattr(model, "baseline_options", None)
    merged = dict((own() if callable(own) else {}).get(kind, {}), **opts)
    return baseline(kind, model.noise_schedule, nfe, t_start, t_end, model=model.name, **merged)
