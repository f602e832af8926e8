"""Our solvers against diffusers' schedulers (a library no one here wrote), sample for sample.

Same ε-model (the exact Gaussian-mixture denoiser seen as an ε-predictor), same noise, same timesteps,
both sides configured alike (final sigma = σ at timestep 0, i.e. our t_end = 1/N; same lower-order-final rule).
"""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from optsteps.core.noise_schedules import VPDiscrete
from optsteps.core.schedule import Schedule
from optsteps.core.solvers import sample
from optsteps.models.gmm import GaussianMixture, GMMDenoiser

NS = VPDiscrete("linear", 1e-4, 0.02, 1000)
GMM = GaussianMixture.random(3, 16, seed=3, spread=1.0)
DEN = GMMDenoiser(GMM, NS)


def eps_model(x, timestep):
    t = NS.t_of_timestep(float(timestep))
    return DEN.eps(x.double(), t).to(x.dtype)


def float64_coefficients(scheduler):
    """diffusers keeps ᾱ and σ in float32; at σ_min = σ(timestep 0) = 0.01, 1 − ᾱ_0 = 1e-4 is then off by
    ~6e-4 relative, which an order-3 final step over h ≈ 3.5 amplifies to ~2e-4. Both sides get float64."""
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    scheduler.alphas_cumprod = ac
    sig = ((1 - ac) / ac) ** 0.5
    ts = scheduler.timesteps.long()
    scheduler.sigmas = torch.cat([sig[ts], sig[:1]])  # final_sigmas_type="sigma_min"
    return scheduler


def run_diffusers(scheduler, x):
    for ts in scheduler.timesteps:
        x = scheduler.step(eps_model(x, ts), ts, x).prev_sample
    return x


def schedule_from_timesteps(timesteps):
    t = NS.t_of_timestep(torch.as_tensor([int(v) for v in timesteps] + [0]))
    t[-1] = 1.0 / NS.num_train_timesteps  # diffusers' final_sigmas_type="sigma_min": σ of timestep 0
    return Schedule(t, NS)


def noise(k=32):
    return torch.randn(k, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float32)


CUSTOM = [999, 874, 700, 512, 333, 190, 81, 17]


@pytest.mark.parametrize("order,solver", [(1, "ddim"), (2, "dpmpp2m")])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpmsolver_custom_timesteps(order, solver, lower_order_final):
    sch = DPMSolverMultistepScheduler(
        beta_schedule="linear",
        solver_order=order,
        algorithm_type="dpmsolver++",
        final_sigmas_type="sigma_min",
        lower_order_final=lower_order_final,
    )
    sch.set_timesteps(timesteps=CUSTOM)
    float64_coefficients(sch)
    x = noise()
    ref = run_diffusers(sch, x.clone().double())
    ours = sample(DEN, x.double(), schedule_from_timesteps(CUSTOM), solver, lower_order_final=lower_order_final)
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("nfe", [5, 10])
def test_unipc_on_its_own_timesteps(order, lower_order_final, nfe):
    sch = UniPCMultistepScheduler(
        beta_schedule="linear",
        solver_order=order,
        predict_x0=True,
        solver_type="bh2",
        final_sigmas_type="sigma_min",
        lower_order_final=lower_order_final,
    )
    sch.set_timesteps(nfe)
    float64_coefficients(sch)
    timesteps = [int(v) for v in sch.timesteps]  # diffusers chooses; we read them back
    x = noise()
    ref = run_diffusers(sch, x.clone().double())
    ours = sample(
        DEN, x.double(), schedule_from_timesteps(timesteps), "unipc", order=order, lower_order_final=lower_order_final
    )
    assert (ours - ref).abs().max().item() <= 1e-4
