import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from optsteps.core.baselines import BASELINES, baseline, karras_lambdas
from optsteps.core.noise_schedules import EDM, RectifiedFlow, VPDiscrete
from optsteps.errors import OptstepsError

FAMS = [
    VPDiscrete(),
    VPDiscrete("scaled_linear", 0.00085, 0.012),
    VPDiscrete("squaredcos_cap_v2"),
    EDM(),
    RectifiedFlow(),
]


@pytest.mark.parametrize("ns", FAMS, ids=lambda n: n.describe())
@pytest.mark.parametrize("kind", ["uniform-t", "uniform-lambda", "karras", "time-quadratic"])
@pytest.mark.parametrize("nfe", [1, 2, 5, 20])
def test_generic_baselines_have_exact_endpoints(ns, kind, nfe):
    s = baseline(kind, ns, nfe)
    assert s.nfe == nfe and s.t[0] == ns.default_t_start() and s.t[-1] == ns.default_t_end()


def test_uniform_lambda_is_uniform_and_karras_follows_its_formula():
    ns = VPDiscrete()
    s = baseline("uniform-lambda", ns, 6)
    d = s.lambdas[1:] - s.lambdas[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), atol=1e-9)
    k = baseline("karras", ns, 6)
    sig = k.sigmas  # σ/α = e^{−λ}
    r = sig ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(6), atol=1e-9)
    assert torch.allclose(karras_lambdas(ns, 6, 1.0, 0.001), k.lambdas, atol=1e-9)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("nfe", [4, 10, 25])
def test_spacings_match_diffusers(spacing, nfe):
    ns = VPDiscrete()
    sch = DPMSolverMultistepScheduler(beta_schedule="linear", timestep_spacing=spacing)
    sch.set_timesteps(nfe)
    ours = ns.timestep(torch.tensor(baseline(spacing, ns, nfe).t[:-1], dtype=torch.float64)).round().long()
    assert ours.tolist() == sch.timesteps.tolist()


def test_ays_reproduces_the_published_table_and_refuses_other_models():
    from diffusers.schedulers import AysSchedules

    ns = VPDiscrete("scaled_linear", 0.00085, 0.012, 1000)
    s = baseline("ays", ns, 10)
    assert torch.allclose(
        s.sigmas[:-1], torch.tensor(AysSchedules["StableDiffusionSigmas"][:-1], dtype=torch.float64), rtol=1e-4
    )  # 14.615 is σ_max = 14.6146 rounded; t is clamped to 1
    assert s.t[-1] == 0.0
    s7 = baseline("ays", ns, 7)
    assert s7.nfe == 7 and abs(s7.sigmas[0].item() - 14.615) < 1e-3
    with pytest.raises(OptstepsError, match="Align-Your-Steps tables exist only"):
        baseline("ays", VPDiscrete(), 10)


def test_flow_shift_formula_and_errors():
    s = baseline("flow-shift", RectifiedFlow(), 4, shift=3.0)
    assert [round(v, 6) for v in s.t] == [1.0, 0.9, 0.75, 0.5, 0.0]
    with pytest.raises(OptstepsError, match="flow model"):
        baseline("flow-shift", VPDiscrete(), 4)
    with pytest.raises(OptstepsError, match="unknown baseline"):
        baseline("cosine", VPDiscrete(), 4)
    with pytest.raises(OptstepsError, match="nfe must be"):
        baseline("karras", VPDiscrete(), 0)
    assert len(BASELINES) == 10


def test_start_variants_parse_in_one_place():
    from optsteps.core.baselines import parse_kind

    ns = RectifiedFlow()
    assert parse_kind("uniform-t") == ("uniform-t", None, None)
    assert parse_kind("uniform-t@start=0.99") == ("uniform-t", 0.99, None)
    assert parse_kind("karras@start=0.9,state=raw") == ("karras", 0.9, "raw")
    assert parse_kind("karras@state=scaled") == ("karras", None, "scaled")
    s = baseline("uniform-t@start=0.99", ns, 4, model="m")
    assert s.t[0] == 0.99 and s.t[-1] == 0.0 and s.method == "uniform-t@start=0.99" and s.start_state == "scaled"
    assert s.t == baseline("uniform-t", ns, 4, t_start=0.99).t and s.model == "m"
    r = baseline("uniform-t@start=0.99,state=raw", ns, 4)
    assert r.t == s.t and r.start_state == "raw" and r.extra == {"start_state": "raw"}
    v = baseline("uniform-lambda@start=0.9", VPDiscrete(), 5)
    assert v.t[0] == 0.9 and v.t[-1] == VPDiscrete().default_t_end()
    for bad, match in (
        ("uniform-t@", "nothing after"),
        ("uniform-t@start=x", "not a number"),
        ("uniform-t@state=half", "state="),
        ("uniform-t@shift=2", "bad option"),
        ("uniform-t@start=0.9,start=0.8", "bad option"),
        ("uniform-t@start=2", "domain"),
        ("uniform-t@start=0", "above the end"),
        ("nope@start=0.9", "unknown baseline"),
    ):
        with pytest.raises(OptstepsError, match=match):
            baseline(bad, ns, 4)
    with pytest.raises(OptstepsError, match="names its start"):
        baseline("uniform-t@start=0.9", ns, 4, t_start=0.8)
