"""Analytic Gaussian-mixture data model: exact denoiser E[x_0 | x_t] in any dimension, and for a single
Gaussian the closed-form probability-flow ODE solution. Ground truth for the solver and optimizer tests.

Data x_0 ~ Σ_k π_k N(μ_k, diag(s_k²)); forward x_t = α_t x_0 + σ_t ε, so per component
x_t ~ N(α_t μ_k, diag(v_k)), v_k = α_t² s_k² + σ_t², and

    E[x_0 | x_t] = Σ_k γ_k(x_t) [μ_k + α_t s_k² (x_t − α_t μ_k)/v_k],   γ_k ∝ π_k N(x_t; α_t μ_k, diag(v_k)).

Single Gaussian: z = (x_t − α_t μ)/sqrt(v_t) is constant along the PF-ODE, so
x_t = α_t μ + sqrt(v_t/v_s) (x_s − α_s μ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.errors import OptstepsError


@dataclass
class GaussianMixture:
    weights: torch.Tensor  # [K]
    means: torch.Tensor  # [K, D]
    variances: torch.Tensor  # [K, D]

    def __post_init__(self):
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.variances = torch.as_tensor(self.variances, dtype=torch.float64)
        if self.means.shape != self.variances.shape or self.means.shape[0] != self.weights.shape[0]:
            raise OptstepsError(
                "GaussianMixture: weights [K], means [K, D] and variances [K, D] must agree in K and D."
            )
        if (self.variances < 0).any() or (self.weights <= 0).any():
            raise OptstepsError("GaussianMixture: variances must be ≥ 0 and weights > 0.")
        self.weights = self.weights / self.weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def random(cls, n_components: int, dim: int, seed: int = 0, spread: float = 2.0, var=(0.05, 0.3)):
        g = torch.Generator().manual_seed(seed)
        w = torch.rand(n_components, generator=g, dtype=torch.float64) + 0.5
        mu = spread * (torch.rand(n_components, dim, generator=g, dtype=torch.float64) * 2 - 1)
        v = var[0] + (var[1] - var[0]) * torch.rand(n_components, dim, generator=g, dtype=torch.float64)
        return cls(w, mu, v)

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.variances[k].sqrt() * eps

    def denoise(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[x_0 | x_t = x] for x [B, D]; alpha/sigma scalars or [B]."""
        dtype = x.dtype
        x = x.to(torch.float64)
        a = (
            torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)
            if torch.as_tensor(alpha).dim()
            else torch.as_tensor(alpha, dtype=torch.float64)
        )
        s = (
            torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
            if torch.as_tensor(sigma).dim()
            else torch.as_tensor(sigma, dtype=torch.float64)
        )
        v = a**2 * self.variances + s**2  # [K, D] or [B, K, D]
        diff = x[:, None, :] - a * self.means  # [B, K, D]
        logp = torch.log(self.weights) - 0.5 * (diff**2 / v + torch.log(v)).sum(-1)  # [B, K]
        gamma = torch.softmax(logp, dim=-1)
        post = self.means + a * self.variances * diff / v  # [B, K, D]
        return (gamma[..., None] * post).sum(1).to(dtype)

    def exact_flow(self, x_s: torch.Tensor, noise_schedule: NoiseSchedule, s: float, t: float) -> torch.Tensor:
        """The exact PF-ODE map x_s ↦ x_t; only for a single Gaussian."""
        if self.weights.numel() != 1:
            raise OptstepsError("the closed-form ODE solution exists only for a single Gaussian (n_components = 1).")
        a_s, s_s = noise_schedule.alpha(s), noise_schedule.sigma(s)
        a_t, s_t = noise_schedule.alpha(t), noise_schedule.sigma(t)
        mu, var = self.means[0], self.variances[0]
        v_s, v_t = a_s**2 * var + s_s**2, a_t**2 * var + s_t**2
        return (a_t * mu + (v_t / v_s).sqrt() * (x_s.to(torch.float64) - a_s * mu)).to(x_s.dtype)


class GMMDenoiser:
    """The exact x̂_0 of a ``GaussianMixture`` under a noise schedule, as a solver denoiser."""

    def __init__(self, gmm: GaussianMixture, noise_schedule: NoiseSchedule):
        self.gmm, self.ns = gmm, noise_schedule

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.gmm.denoise(x, self.ns.alpha(t), self.ns.sigma(t))

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """ε̂ = (x − α x̂_0)/σ: the same model seen as an ε-predictor (for diffusers' schedulers)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a, s = self.ns.alpha(t).item(), self.ns.sigma(t).item()
        return (x - a * self(x, t)) / s
