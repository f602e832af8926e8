import pytest
import torch

from optsteps.core.denoisers import PredictionDenoiser
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete
from optsteps.errors import OptstepsError
from optsteps.models.gmm import GaussianMixture, GMMDenoiser


@pytest.mark.parametrize(
    "ns,ptype",
    [(VPDiscrete(), "epsilon"), (VPDiscrete(), "v_prediction"), (RectifiedFlow(), "flow"), (VPDiscrete(), "sample")],
)
def test_conversions_recover_the_exact_x0(ns, ptype):
    gmm = GaussianMixture.random(3, 5, seed=1)
    exact = GMMDenoiser(gmm, ns)

    def net(x, t, cond):  # express the exact denoiser in the prediction type
        a, s = ns.alpha(t).item(), ns.sigma(t).item()
        x0 = exact(x, t)
        eps = (x - a * x0) / s
        return {"epsilon": eps, "v_prediction": a * eps - s * x0, "flow": eps - x0, "sample": x0}[ptype]

    den = PredictionDenoiser(net, ns, ptype)
    x = torch.randn(7, 5, dtype=torch.float64)
    for t in (0.9, 0.5, 0.1):
        assert torch.allclose(den(x, torch.tensor(t, dtype=torch.float64)), exact(x, t), atol=1e-9)


def test_cfg_combines_outputs_and_guidance_1_is_conditional():
    ns = VPDiscrete()

    def net(x, t, cond):
        return x * 0 + cond.view(-1, 1).to(x.dtype)

    labels = torch.tensor([3, 4])
    x = torch.zeros(2, 3)
    plain = PredictionDenoiser(net, ns, "sample", cond=labels)
    guided = PredictionDenoiser(net, ns, "sample", cond=labels, null_cond=torch.tensor([10, 10]), guidance=2.0)
    t = torch.tensor(0.5, dtype=torch.float64)
    assert plain(x, t)[:, 0].tolist() == [3.0, 4.0]
    assert guided(x, t)[:, 0].tolist() == [10 + 2 * (3 - 10), 10 + 2 * (4 - 10)]


def test_bad_wrappers():
    with pytest.raises(OptstepsError, match="prediction_type"):
        PredictionDenoiser(lambda *a: None, VPDiscrete(), "score")
    with pytest.raises(OptstepsError, match="rectified-flow"):
        PredictionDenoiser(lambda *a: None, VPDiscrete(), "flow")
    with pytest.raises(OptstepsError, match="null condition"):
        PredictionDenoiser(lambda *a: None, VPDiscrete(), "epsilon", cond=torch.tensor([1]), guidance=3.0)
