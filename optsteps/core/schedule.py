"""The ``Schedule`` value: K+1 strictly descending model times t_0 = t_start > … > t_K = t_end.

NFE K means K intervals and exactly K model evaluations (at t_0 … t_{K−1}).

JSON format (``Schedule.to_json``)::

    {"model": str, "noise_schedule": {"family": "vp"|"edm"|"flow", ...}, "method": str, "solver": str,
     "nfe": K, "t": [K+1 floats], "sigma": [K+1 floats, diffusers convention],
     "lambda": [K+1 floats, null where λ = ±∞], ...extra fields}

``t`` is authoritative; ``sigma`` and ``lambda`` are derived views written for readers.

The start state. A sampler starts at t_0 from unit noise ε (``DiffusionModel.noise``) by the schedule's
``"start_state"`` rule (``START_STATES``; absent = ``"scaled"``, so JSONs written before the field mean what
they meant):

- ``"scaled"``: x_{t_0} = σ_{t_0} ε, the marginal's noise level at t_0;
- ``"raw"``: x_{t_0} = σ_{t_max} ε, t_max = the family's sampling start (``default_t_start``): the state a
  full-length sampler starts from, fed unchanged at a t_0 below t_max (σ_{t_max} = 1 for flow, ≈ 1 for VP,
  σ_max for EDM). OSS may choose it (docs/algorithms.md §3, the start window).

``initial_state(noise, schedule)`` is the one function that applies the rule; every sampler entry point
(``models.sampling.generate``, the teacher, ``optsteps sample``, the evaluation, ``apply``) calls it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from optsteps.core.noise_schedules import NoiseSchedule, as_tensor, noise_schedule_from_dict
from optsteps.core.solver_spec import SPEC_FIELDS, SolverSpec
from optsteps.errors import OptstepsError
from optsteps.io.atomic import write_text_atomic
from optsteps.io.limits import check as check_limit
from optsteps.io.readers import parse_json, read_json

START_STATES = ("scaled", "raw")
TIME_RESOLUTION = 2.0**-20  # relative gap two times need: 8 float32 ulps, the precision the network sees t in


def start_sigma(noise_schedule: NoiseSchedule, t0: float, rule: str = "scaled") -> float:
    """The factor c of x_{t_0} = c·ε under a start-state rule: σ_{t_0} ("scaled") or σ_{t_max} ("raw")."""
    if rule not in START_STATES:
        raise OptstepsError(f"unknown start_state {rule!r}; use one of {', '.join(START_STATES)} (absent = scaled).")
    t = noise_schedule.default_t_start() if rule == "raw" else t0
    return float(noise_schedule.sigma(float(t)))


def _subnormal(v: float) -> bool:
    """v is a subnormal float, read from its bits (comparisons see 0 where the CPU flushes denormals)."""
    h = v.hex().lstrip("-")
    return h.startswith("0x0.") and h != "0x0.0p+0"


@dataclass(frozen=True)
class Schedule:
    t: tuple
    noise_schedule: NoiseSchedule
    model: str = ""
    method: str = ""
    solver: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if isinstance(self.t, (str, bytes, dict)):
            raise OptstepsError(f"schedule times must be a list of numbers, got {self.t!r}; pass nfe + 1 times.")
        try:
            t = tuple(float(v) for v in (self.t.tolist() if isinstance(self.t, torch.Tensor) else self.t))
        except (TypeError, ValueError):
            raise OptstepsError(f"schedule times must be a list of numbers, got {self.t!r}.") from None
        object.__setattr__(self, "t", t)
        if len(t) < 2:
            raise OptstepsError(
                f"a schedule needs at least 2 times (t_start and t_end, NFE ≥ 1), got {len(t)}; pass nfe + 1 times."
            )
        check_limit("MAX_SCHEDULE_POINTS", len(t), "the number of schedule times")
        if any(math.isnan(v) or math.isinf(v) for v in t):
            raise OptstepsError(f"schedule times contain NaN or inf: {list(t)[:8]}; pass finite times.")
        tiny = [v for v in t if _subnormal(v)]
        if tiny:  # subnormal floats: no model resolves them, and steps between them divide by ~0
            raise OptstepsError(
                f"schedule times contain subnormal numbers ({tiny[0]:.3g}, below {sys.float_info.min:.3g}); "
                "pass normal floats within the noise schedule's range."
            )
        bad = [i for i in range(len(t) - 1) if not t[i] > t[i + 1]]
        if bad:
            i = bad[0]
            raise OptstepsError(
                f"schedule times must be strictly descending (noise → data), but t[{i}] = {t[i]:.6g} ≤ "
                f"t[{i + 1}] = {t[i + 1]:.6g}; sort them descending and remove duplicates."
            )
        self.noise_schedule.check_t(t, "schedule times")
        close = [i for i in range(len(t) - 1) if t[i] - t[i + 1] < TIME_RESOLUTION * max(abs(t[i]), abs(t[i + 1]))]
        if close:  # the network sees its time in float32: closer times are one time, and the step divides by ~0
            i = close[0]
            raise OptstepsError(
                f"schedule times t[{i}] = {t[i]!r} and t[{i + 1}] = {t[i + 1]!r} are closer than the "
                f"model's time resolution (relative {TIME_RESOLUTION:.2g}, float32 network time); "
                "merge them or space the times further apart."
            )
        if self.solver:
            SolverSpec.from_fields(self.solver, self.extra)  # a known solver with valid options, or an error
        if self.extra.get("start_state", "scaled") not in START_STATES:
            raise OptstepsError(
                f"start_state = {self.extra['start_state']!r}; use one of {', '.join(START_STATES)} (absent = scaled)."
            )

    @property
    def nfe(self) -> int:
        return len(self.t) - 1

    @property
    def timesteps_t(self) -> torch.Tensor:
        return torch.tensor(self.t, dtype=torch.float64)

    @property
    def sigmas(self) -> torch.Tensor:
        """σ in diffusers' convention (σ/α for VP and EDM; t for rectified flow)."""
        return self.noise_schedule.sigma_diffusers(self.timesteps_t)

    @property
    def lambdas(self) -> torch.Tensor:
        return self.noise_schedule.lambda_(self.timesteps_t)

    @property
    def start_state(self) -> str:
        """How a sampler turns unit noise into x_{t_0}: "scaled" (σ_{t_0} ε, the default) or "raw" (σ_{t_max} ε)."""
        return self.extra.get("start_state", "scaled")

    @property
    def solver_spec(self) -> SolverSpec | None:
        """The solver this schedule was made for (``solver`` plus the optional order fields), None if none."""
        return SolverSpec.from_fields(self.solver, self.extra) if self.solver else None

    def with_solver(self, spec: SolverSpec) -> Schedule:
        """This schedule made for ``spec``: its solver name and the spec's non-default fields."""
        extra = {k: v for k, v in self.extra.items() if k not in SPEC_FIELDS}
        extra.update(spec.json_fields())
        return Schedule(self.t, self.noise_schedule, self.model, self.method, spec.name, extra)

    def with_meta(self, **kw) -> Schedule:
        extra = dict(self.extra)
        extra.update(kw.pop("extra", {}))
        fields = {"model": self.model, "method": self.method, "solver": self.solver}
        fields.update(kw)
        return Schedule(self.t, self.noise_schedule, extra=extra, **fields)

    # ---- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        lam = [v if math.isfinite(v) else None for v in self.lambdas.tolist()]
        d = {
            "model": self.model,
            "noise_schedule": self.noise_schedule.to_dict(),
            "method": self.method,
            "solver": self.solver,
            "nfe": self.nfe,
            "t": list(self.t),
            "sigma": self.sigmas.tolist(),
            "lambda": lam,
        }
        d.update(self.extra)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        if not isinstance(d, dict):
            raise OptstepsError(
                f"a schedule JSON must be an object with 'noise_schedule' and 't', got {type(d).__name__}; "
                "write it with `optsteps schedule ... --json`."
            )
        missing = [k for k in ("noise_schedule", "t") if k not in d]
        if missing:
            raise OptstepsError(f"schedule JSON lacks {missing}; it needs at least 'noise_schedule' and 't'.")
        ns = noise_schedule_from_dict(d["noise_schedule"])
        known = {"model", "noise_schedule", "method", "solver", "nfe", "t", "sigma", "lambda"}
        s = cls(
            d["t"],
            ns,
            d.get("model", ""),
            d.get("method", ""),
            d.get("solver", ""),
            {k: v for k, v in d.items() if k not in known},
        )
        if "nfe" in d and d["nfe"] != s.nfe:
            raise OptstepsError(
                f"schedule JSON says nfe = {d['nfe']} but has {len(s.t)} times; nfe must be len(t) − 1."
            )
        return s

    @classmethod
    def from_json(cls, text: str, where: str = "schedule JSON") -> Schedule:
        return cls.from_dict(parse_json(text, where, "schedule", top=dict, fix=SCHEDULE_FIX))

    def save(self, path) -> Path:
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> Schedule:
        p = Path(path)
        if not p.is_file():
            raise OptstepsError(
                f"schedule file {p} does not exist; write one with `optsteps schedule ... --json > {p}`."
            )
        data = read_json(p, "schedule", top=dict, fix=SCHEDULE_FIX)
        try:
            return cls.from_dict(data)
        except OptstepsError as e:  # name the file in every message about its content
            raise type(e)(f"{p}: {e}") from None


SCHEDULE_FIX = "regenerate it with `optsteps schedule ... --json`"


def initial_state(noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """x_{t_0} from unit noise ε by the schedule's start-state rule (module docstring): c·ε, c = ``start_sigma``."""
    return noise * start_sigma(schedule.noise_schedule, schedule.t[0], schedule.start_state)


def from_lambdas(lambdas, noise_schedule: NoiseSchedule, t_start: float, t_end: float, **meta) -> Schedule:
    """A schedule whose interior times are t(λ_i); endpoints are set exactly to t_start and t_end."""
    t = noise_schedule.t_of_lambda(as_tensor(lambdas))
    t[0], t[-1] = t_start, t_end
    return Schedule(t, noise_schedule, **meta)


def check_noise_schedule(schedule: Schedule, noise_schedule: NoiseSchedule, user: str, fix: str) -> None:
    """Refuse ``schedule`` for ``user`` (a model or pipeline) whose noise schedule is another one: the schedule's
    times t_i would mean other noise levels σ(t_i) there."""
    if schedule.noise_schedule != noise_schedule:
        raise OptstepsError(
            f"the schedule ({schedule.model or 'unnamed'}, {schedule.method or 'schedule'}, NFE "
            f"{schedule.nfe}) was made for the noise schedule {schedule.noise_schedule.to_dict()}, "
            f"but {user} uses {noise_schedule.to_dict()}; {fix}."
        )
