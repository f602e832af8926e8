"""Noise schedules: x_t = α_t x_0 + σ_t ε, half log-SNR λ_t = log(α_t/σ_t), and the exact inverse t(λ).

Three families (docs/algorithms.md §0):
- ``VPDiscrete``: DDPM betas made continuous as in DPM-Solver (Lu et al. 2022, App. D): log α is
  piecewise linear in t over the nodes t_n = n/N (n = 1..N) with log α(t_n) = ½ log ᾱ_{n−1}, extended to
  t = 0 where α = 1 (σ = 0, the data). The network timestep is t·N − 1 (t = 1 ↔ 999).
- ``EDM`` (Karras et al. 2022, VE form): α_t = 1, σ_t = t.
- ``RectifiedFlow`` (Liu et al. 2023; SD3/FLUX): α_t = 1 − t, σ_t = t.

All functions take floats or tensors and return float64 tensors. λ is ±∞ where σ or α vanishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from optsteps.errors import OptstepsError
from optsteps.io.limits import check as check_limit

Tensorish = "float | torch.Tensor"


def as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation f(x) through (xp, fp), xp increasing; x must lie in [xp[0], xp[-1]]."""
    idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


class NoiseSchedule:
    """Base type. Subclasses define log α(t), log σ(t) and t(λ); everything else follows."""

    family: str = ""
    t_min: float = 0.0  # domain of t
    t_max: float = 1.0

    def log_alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def log_sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def t_of_lambda(self, lambdas) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t) -> torch.Tensor:
        """λ_t = log α_t − log σ_t (strictly decreasing in t)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def sigma_diffusers(self, t) -> torch.Tensor:
        """σ in diffusers' convention: σ_t/α_t = e^{−λ} for VP and EDM; t itself for rectified flow."""
        return torch.exp(-self.lambda_(t))

    def t_of_sigma_diffusers(self, sigmas) -> torch.Tensor:
        return self.t_of_lambda(-torch.log(as_tensor(sigmas)))

    def check_t(self, t, what: str = "t") -> None:
        t = as_tensor(t)
        if torch.isnan(t).any():
            raise OptstepsError(f"{what} contains NaN; pass finite times in [{self.t_min}, {self.t_max}].")
        if (t < self.t_min - 1e-12).any() or (t > self.t_max + 1e-12).any():
            raise OptstepsError(
                f"{what} = {t.min().item():.6g}..{t.max().item():.6g} leaves the {self.describe()} domain "
                f"[{self.t_min}, {self.t_max}]; clip the times into that range."
            )

    # default sampling interval of the family (what baselines and teachers integrate over)
    def default_t_start(self) -> float:
        return self.t_max

    def default_t_end(self) -> float:
        return self.t_min

    def to_dict(self) -> dict:
        raise NotImplementedError

    def describe(self) -> str:
        d = self.to_dict()
        return d["family"] + ("/" + d["beta_schedule"] if "beta_schedule" in d else "")

    def __eq__(self, other) -> bool:
        return isinstance(other, NoiseSchedule) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(str(sorted(self.to_dict().items())))


def _betas(beta_schedule: str, beta_start: float, beta_end: float, n: int) -> torch.Tensor:
    """The DDPM β_n of diffusers' named schedules (float64)."""
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":  # Stable Diffusion: linear in sqrt(β)
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021: ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise OptstepsError(
        f"unknown beta_schedule {beta_schedule!r}; use 'linear', 'scaled_linear' or 'squaredcos_cap_v2'."
    )


@dataclass(eq=False)
class VPDiscrete(NoiseSchedule):
    """Discrete-time DDPM (VP) schedule with N training steps, continuous in t ∈ [0, 1].

    Nodes: t_n = n/N, log α(t_n) = ½ Σ_{i<n} log(1 − β_i) for n = 1..N, and log α(0) = 0.
    σ_t = sqrt(1 − α_t²). The trained range is [1/N, 1]; sampling ends at t = 1/N by default (DPM-Solver).
    """

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    family: str = field(default="vp", init=False)

    def __post_init__(self):
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int):
            raise OptstepsError(f"num_train_timesteps = {n!r}; pass an integer (e.g. 1000).")
        if n < 2:
            raise OptstepsError(f"num_train_timesteps = {n}; a discrete VP schedule needs at least 2 steps.")
        check_limit("MAX_TRAIN_TIMESTEPS", n, "the noise schedule's num_train_timesteps")  # tables of n + 1 values
        self.betas = _betas(self.beta_schedule, self.beta_start, self.beta_end, n)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        self.t_nodes = torch.arange(0, n + 1, dtype=torch.float64) / n
        self.log_alpha_nodes = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(self.alphas_cumprod)])
        self.t_min, self.t_max = 0.0, 1.0

    def log_alpha(self, t):
        return interp(as_tensor(t), self.t_nodes, self.log_alpha_nodes)

    def log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def t_of_lambda(self, lambdas):
        # log α = −½ log(1 + e^{−2λ}); invert the piecewise-linear log α(t) (decreasing) exactly.
        log_alpha = -0.5 * torch.nn.functional.softplus(-2 * as_tensor(lambdas))
        return interp(log_alpha, self.log_alpha_nodes.flip(0), self.t_nodes.flip(0))

    def default_t_end(self) -> float:
        return 1.0 / self.num_train_timesteps

    def timestep(self, t) -> torch.Tensor:
        """The network's (diffusers') timestep: t·N − 1, so t = 1 ↔ N − 1 and t = 1/N ↔ 0."""
        return as_tensor(t) * self.num_train_timesteps - 1

    def t_of_timestep(self, timesteps) -> torch.Tensor:
        return (as_tensor(timesteps) + 1) / self.num_train_timesteps

    def to_dict(self) -> dict:
        return {
            "family": "vp",
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "num_train_timesteps": self.num_train_timesteps,
        }


@dataclass(eq=False)
class EDM(NoiseSchedule):
    """EDM / VE: α_t = 1, σ_t = t, λ = −log t, t(λ) = e^{−λ}; t ∈ [σ_min, σ_max]."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    family: str = field(default="edm", init=False)

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise OptstepsError(f"EDM needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}.")
        self.t_min, self.t_max = self.sigma_min, self.sigma_max

    def log_alpha(self, t):
        return torch.zeros_like(as_tensor(t))

    def log_sigma(self, t):
        return torch.log(as_tensor(t))

    def t_of_lambda(self, lambdas):
        return torch.exp(-as_tensor(lambdas))

    def sigma_diffusers(self, t):
        return as_tensor(t).clone()

    def to_dict(self) -> dict:
        return {"family": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


@dataclass(eq=False)
class RectifiedFlow(NoiseSchedule):
    """Rectified flow: α_t = 1 − t, σ_t = t, λ = log((1 − t)/t), t(λ) = 1/(1 + e^λ); t ∈ [0, 1].

    The network time is t·num_train_timesteps (diffusers' FlowMatchEulerDiscreteScheduler convention).
    """

    num_train_timesteps: int = 1000
    family: str = field(default="flow", init=False)

    def log_alpha(self, t):
        return torch.log1p(-as_tensor(t))

    def log_sigma(self, t):
        return torch.log(as_tensor(t))

    def t_of_lambda(self, lambdas):
        return torch.sigmoid(-as_tensor(lambdas))

    def sigma_diffusers(self, t):
        return as_tensor(t).clone()

    def t_of_sigma_diffusers(self, sigmas):
        return as_tensor(sigmas).clone()

    def timestep(self, t) -> torch.Tensor:
        return as_tensor(t) * self.num_train_timesteps

    def to_dict(self) -> dict:
        return {"family": "flow", "num_train_timesteps": self.num_train_timesteps}


def noise_schedule_from_dict(d: dict) -> NoiseSchedule:
    """Inverse of ``NoiseSchedule.to_dict``."""
    if not isinstance(d, dict):
        raise OptstepsError(
            f'a noise_schedule must be a mapping like {{"family": "vp", ...}}, got {d!r}; '
            "write it with NoiseSchedule.to_dict (or `optsteps schedule ... --json`)."
        )
    d = dict(d)
    family = d.pop("family", None)
    kinds = {"vp": VPDiscrete, "edm": EDM, "flow": RectifiedFlow}
    if family not in kinds:
        raise OptstepsError(f"unknown noise schedule family {family!r}; use one of {sorted(kinds)}.")
    try:
        return kinds[family](**d)
    except OptstepsError:
        raise
    except (TypeError, ValueError) as e:
        raise OptstepsError(f"bad {family} noise schedule fields {sorted(d)}: {e}") from None


def noise_schedule_from_diffusers_config(config) -> NoiseSchedule:
    """Read the exact noise schedule of a diffusers scheduler config (DDPM/DDIM/DPM/UniPC/Euler/FlowMatch)."""
    cfg = dict(config)
    cls = str(cfg.get("_class_name", ""))
    if "FlowMatch" in cls or cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
        return RectifiedFlow(num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)))
    if cfg.get("trained_betas") is not None:
        raise OptstepsError("schedulers with explicit trained_betas are not supported; use a named beta_schedule.")
    return VPDiscrete(
        beta_schedule=cfg.get("beta_schedule", "linear"),
        beta_start=float(cfg.get("beta_start", 1e-4)),
        beta_end=float(cfg.get("beta_end", 0.02)),
        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
    )
