"""Model wrappers: raw network outputs → data prediction x̂_0(x_t, t), classifier-free guidance, counting.

- ε-prediction:        x̂_0 = (x − σ_t ε̂)/α_t
- v-prediction:        x̂_0 = α_t x − σ_t v̂                      (Salimans & Ho 2022, VP only)
- flow velocity u ≈ ε − x_0 (x_t = (1 − t) x_0 + t ε):  x̂_0 = x − t û
- CFG (Ho & Salimans 2022): ŷ = ŷ_uncond + w (ŷ_cond − ŷ_uncond), applied to the raw output.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.errors import OptstepsError

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow", "sample")

_NETWORK_GRAD = threading.local()  # per thread, like torch's own grad mode


@contextlib.contextmanager
def differentiable_networks():
    """Inside this block the model networks (digits UNet, pipeline backbones) build autograd graphs, so that a
    sampler's output can be differentiated with respect to its inputs and times (the polish,
    docs/algorithms.md §8). Outside it they run under ``torch.no_grad()`` whatever the caller's grad mode."""
    old = getattr(_NETWORK_GRAD, "on", False)
    _NETWORK_GRAD.on = True
    try:
        yield
    finally:
        _NETWORK_GRAD.on = old


def network_grad_context():
    """The context a network's forward runs in: ``torch.no_grad()``, or the caller's own grad mode inside
    ``differentiable_networks()``."""
    return contextlib.nullcontext() if getattr(_NETWORK_GRAD, "on", False) else torch.no_grad()


def x0_from_eps(eps, x, alpha, sigma):
    return (x - sigma * eps) / alpha


def x0_from_v(v, x, alpha, sigma):
    return alpha * x - sigma * v


def x0_from_flow_velocity(u, x, t):
    return x - t * u


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample [B] coefficient shaped to broadcast against x [B, ...], in x's dtype."""
    v = v.to(x.dtype)
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v


class PredictionDenoiser:
    """x̂_0 from a network ``net(x, t, cond) -> output`` predicting ``prediction_type``.

    ``t`` handed to ``net`` is the continuous model time (float64, scalar or [B]); ``cond`` is the
    per-sample conditioning (class labels) or None. With ``guidance`` ≠ 1 and ``null_cond`` given, the
    conditional and unconditional halves run in one batch.
    """

    def __init__(
        self,
        net: Callable,
        noise_schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        cond=None,
        null_cond=None,
        guidance: float = 1.0,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise OptstepsError(f"unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}.")
        if prediction_type == "flow" and noise_schedule.family != "flow":
            raise OptstepsError("flow-velocity prediction needs the rectified-flow noise schedule (family 'flow').")
        if guidance != 1.0 and null_cond is None:
            raise OptstepsError("classifier-free guidance needs a null condition (the model's unconditional label).")
        self.net, self.ns, self.prediction_type = net, noise_schedule, prediction_type
        self.cond, self.null_cond, self.guidance = cond, null_cond, float(guidance)

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.guidance == 1.0:
            return self.net(x, t, self.cond)
        tt = torch.cat([t, t]) if t.dim() == 1 else t
        out = self.net(torch.cat([x, x]), tt, torch.cat([self.cond, self.null_cond]))
        cond, uncond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        out = self.raw(x, t)
        if self.prediction_type == "sample":  # the network predicts x̂_0 itself
            return out
        if self.prediction_type == "flow":
            return x0_from_flow_velocity(out, x, _bcast(t, x))
        alpha, sigma = _bcast(self.ns.alpha(t), x), _bcast(self.ns.sigma(t), x)
        if self.prediction_type == "epsilon":
            return x0_from_eps(out, x, alpha, sigma)
        return x0_from_v(out, x, alpha, sigma)


class CountingDenoiser:
    """Counts model evaluations (calls) and evaluated samples; wraps any denoiser."""

    def __init__(self, denoiser):
        self.denoiser, self.calls, self.samples = denoiser, 0, 0

    def __call__(self, x, t):
        self.calls += 1
        self.samples += x.shape[0]
        return self.denoiser(x, t)
