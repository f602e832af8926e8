"""The model protocol every optimizer and evaluator uses: a noise schedule, a raw network
``net(x, t, cond)`` in continuous model time t, its prediction type, and seeded noise/conditioning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from optsteps.core.denoisers import PredictionDenoiser
from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule, initial_state, start_sigma


@dataclass
class DiffusionModel:
    name: str
    noise_schedule: NoiseSchedule
    net: Callable  # (x, t float64 [] or [B], cond or None) -> raw output
    prediction_type: str  # epsilon | v_prediction | flow | sample
    sample_shape: tuple
    num_classes: int = 0  # 0: unconditional
    null_label: int | None = None
    identity: dict = field(default_factory=dict)  # {"model": name, "sha256": weights hash, ...}

    def denoiser(self, labels: torch.Tensor | None = None, guidance: float = 1.0) -> PredictionDenoiser:
        null = None
        if self.null_label is not None and labels is not None:
            null = torch.full_like(labels, self.null_label)
        return PredictionDenoiser(
            self.net, self.noise_schedule, self.prediction_type, cond=labels, null_cond=null, guidance=guidance
        )

    def noise(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """Seeded initial noise x_{t_start} ~ N(0, σ²_max-ish I): sample i depends only on (seed, start + i)."""
        out = torch.empty((n,) + tuple(self.sample_shape))
        for i in range(n):
            g = torch.Generator().manual_seed(seed * 1_000_003 + start + i)
            out[i] = torch.randn(self.sample_shape, generator=g)
        return out

    def labels(self, n: int, start: int = 0) -> torch.Tensor | None:
        """Class-balanced labels (sample i asks for class (start + i) mod C); None if unconditional."""
        if not self.num_classes:
            return None
        return torch.arange(start, start + n) % self.num_classes

    def initial_state(self, noise: torch.Tensor, start: float | Schedule) -> torch.Tensor:
        """x at the start from unit noise. ``start`` a ``Schedule``: by its start-state rule
        (``core.schedule.initial_state``: σ_{t_0} ε, or σ_{t_max} ε for ``"start_state": "raw"``); a time t:
        σ_t ε (plus α x_0 ≈ 0 at the start; for EDM σ_max ε)."""
        if isinstance(start, Schedule):
            return initial_state(noise, start)
        return noise * start_sigma(self.noise_schedule, start)


@dataclass
class ModelCard:
    """What a model is without its network: name, noise schedule, prediction type, state shape, conditioning and
    the identity that trajectory shards record (``identity["sha256"]``). ``optsteps.models.describe_model`` reads
    it from config files only, so nothing heavy is loaded (e.g. on a Ray driver whose actors hold the weights)."""

    name: str
    noise_schedule: NoiseSchedule
    prediction_type: str
    sample_shape: tuple
    num_classes: int = 0
    null_label: int | None = None
    identity: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # adapter-specific facts (image size, prompts, flow shift, …)
