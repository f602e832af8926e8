import math

import pytest
import torch

from optsteps.core.noise_schedules import (
    EDM,
    RectifiedFlow,
    VPDiscrete,
    noise_schedule_from_dict,
    noise_schedule_from_diffusers_config,
)
from optsteps.errors import OptstepsError

FAMILIES = [
    VPDiscrete("linear", 1e-4, 0.02, 1000),
    VPDiscrete("scaled_linear", 0.00085, 0.012, 1000),
    VPDiscrete("squaredcos_cap_v2", num_train_timesteps=1000),
    EDM(),
    RectifiedFlow(),
]


@pytest.mark.parametrize("ns", FAMILIES, ids=lambda n: n.describe())
def test_t_lambda_round_trip(ns):
    lo, hi = ns.default_t_end(), ns.default_t_start()
    lo, hi = max(lo, 1e-3 if ns.family == "flow" else lo), min(hi, 1 - 1e-3 if ns.family == "flow" else hi)
    t = torch.linspace(lo, hi, 2001, dtype=torch.float64)
    lam = ns.lambda_(t)
    assert (lam[1:] < lam[:-1]).all(), "λ must decrease strictly in t"
    assert (ns.t_of_lambda(lam) - t).abs().max() < 1e-6


@pytest.mark.parametrize("ns", FAMILIES, ids=lambda n: n.describe())
def test_lambda_is_log_alpha_over_sigma_and_sigma_conversion(ns):
    t = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64) * (ns.t_max if ns.family == "edm" else 1)
    a, s = ns.alpha(t), ns.sigma(t)
    assert torch.allclose(ns.lambda_(t), torch.log(a / s))
    if ns.family == "vp":
        assert torch.allclose(a**2 + s**2, torch.ones_like(a))
    assert torch.allclose(ns.t_of_sigma_diffusers(ns.sigma_diffusers(t)), t, atol=1e-9)


def test_vp_matches_ddpm_alphas_cumprod_at_integer_timesteps():
    from diffusers import DDPMScheduler

    for kind, b0, b1 in [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02)]:
        ns = VPDiscrete(kind, b0, b1, 1000)
        ref = DDPMScheduler(beta_schedule=kind, beta_start=b0, beta_end=b1)
        assert torch.allclose(ns.betas, ref.betas.double(), rtol=1e-6)  # diffusers keeps them in float32
        ac = ref.alphas_cumprod.double()
        n = torch.tensor([0, 1, 17, 500, 998, 999])
        t = ns.t_of_timestep(n)
        assert torch.allclose(ns.alpha(t) ** 2, ac[n], rtol=1e-5)
        ours = ns.alphas_cumprod[n]
        assert torch.allclose(ns.sigma_diffusers(t), ((1 - ours) / ours).sqrt(), rtol=1e-9)
        assert torch.allclose(ns.timestep(t), n.double())


def test_vp_clean_end_and_flow_endpoints_are_infinite_lambda():
    assert VPDiscrete().lambda_(0.0).item() == math.inf
    f = RectifiedFlow()
    assert f.lambda_(1.0).item() == -math.inf and f.lambda_(0.0).item() == math.inf
    assert f.t_of_lambda(torch.tensor([-math.inf, math.inf])).tolist() == [1.0, 0.0]


def test_dict_and_diffusers_config_round_trip():
    for ns in FAMILIES:
        assert noise_schedule_from_dict(ns.to_dict()) == ns
    cfg = {
        "_class_name": "DDPMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
    }
    assert noise_schedule_from_diffusers_config(cfg) == FAMILIES[1]
    assert noise_schedule_from_diffusers_config({"_class_name": "FlowMatchEulerDiscreteScheduler"}).family == "flow"


def test_bad_noise_schedules_name_the_fix():
    with pytest.raises(OptstepsError, match="beta_schedule"):
        VPDiscrete("quadratic")
    with pytest.raises(OptstepsError, match="family"):
        noise_schedule_from_dict({"family": "ve-sde"})
    with pytest.raises(OptstepsError, match="sigma_min < sigma_max"):
        EDM(1.0, 0.5)
    with pytest.raises(OptstepsError, match="clip the times"):
        VPDiscrete().check_t([1.5])
