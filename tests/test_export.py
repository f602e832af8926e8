import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from optsteps.core.baselines import baseline
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete
from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import SolverSpec
from optsteps.errors import OptstepsError
from optsteps.integrations.diffusers.export import (
    configure,
    diffusers_export,
    to_ays_pair,
    to_comfyui,
    to_comfyui_text,
    to_diffusers,
)

VP = VPDiscrete()


def test_dpmsolver_takes_integer_timesteps_and_the_right_final_sigma():
    s = baseline("trailing", VP, 6)
    sch, kwargs = configure(DPMSolverMultistepScheduler(beta_schedule="linear"), s)
    assert kwargs["timesteps"] == sch.timesteps.tolist()
    assert sch.config.final_sigmas_type == "sigma_min"
    assert abs(float(sch.sigmas[0]) - s.sigmas[0].item()) < 1e-3 * s.sigmas[0].item()
    assert abs(float(sch.sigmas[-1]) - s.sigmas[-1].item()) < 1e-3 * s.sigmas[-1].item()


def test_non_integer_timesteps_are_snapped_and_the_move_reported():
    s = baseline("uniform-lambda", VP, 5)
    out = diffusers_export(s.with_solver(SolverSpec("dpmpp2m")), "DPMSolverMultistepScheduler")
    assert out["scheduler"] == "DPMSolverMultistepScheduler" and out["config"]["solver_order"] == 2
    assert 0 < out["snapped_max_shift"] <= 0.5
    assert f"largest move {out['snapped_max_shift']:.3g}" in out["changes"] and "not the measured run" in out["changes"]
    exact = VP.timestep(s.timesteps_t[:-1])
    assert np.allclose(out["set_timesteps"]["timesteps"], exact.numpy(), atol=0.5)
    crowded = Schedule([1.0, 0.5, 0.5 - 0.2 / 1000, 0.001], VP)  # two times within one training timestep
    with pytest.raises(OptstepsError, match="merge steps.*EulerDiscreteScheduler"):
        to_diffusers(crowded, "DPMSolverMultistepScheduler")


def _grid(ns):
    """Every baseline kind × solver × NFE of a small grid, plus optimized-looking schedules (λ-optimizer)."""
    from optsteps.optimizers.lambda_opt import lambda_opt_schedule

    kinds = ["uniform-t", "uniform-lambda", "karras", "time-quadratic"] + (["trailing"] if ns.family == "vp" else [])
    out = [
        baseline(k, ns, nfe).with_solver(SolverSpec(sv))
        for k in kinds
        for nfe in (4, 6, 10)
        for sv in ("ddim", "dpmpp2m", "unipc")
    ]
    out += [lambda_opt_schedule(ns, nfe, sv) for nfe in (4, 6) for sv in ("dpmpp2m", "unipc")]
    return out


README_SCHEDULERS = {
    "vp": ["DPMSolverMultistepScheduler", "DDPMScheduler", "EulerDiscreteScheduler"],
    "flow": ["FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler"],
}


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_every_schedule_of_a_grid_exports_and_runs_in_each_scheduler(family):
    import diffusers

    from optsteps.integrations.diffusers import OptstepsScheduler

    ns = VP if family == "vp" else RectifiedFlow()
    base = (
        diffusers.DDPMScheduler(beta_schedule="linear")
        if family == "vp"
        else diffusers.FlowMatchEulerDiscreteScheduler()
    ).config
    for s in _grid(ns):
        for name in README_SCHEDULERS[family]:
            out = diffusers_export(s, name)
            json.dumps(out)  # JSON-ready
            cls = getattr(diffusers, out["scheduler"])
            sch = cls.from_config({k: v for k, v in base.items() if not k.startswith("_")}, **out["config"])
            kwargs = {
                k: (np.array(v) if k == "sigmas" and out["scheduler"] == "UniPCMultistepScheduler" else v)
                for k, v in out["set_timesteps"].items()
            }
            sch.set_timesteps(**kwargs)
            assert len(sch.timesteps) == s.nfe, (s.method, s.nfe, out["scheduler"])
            if "timesteps" in out["set_timesteps"]:
                assert sch.timesteps.tolist() == out["set_timesteps"]["timesteps"]
                assert out["snapped_max_shift"] <= 0.5
            else:
                want = s.sigmas[:-1].numpy()
                assert np.allclose(sch.sigmas.numpy()[: s.nfe], want, rtol=1e-4, atol=1e-5), (
                    s.method,
                    out["scheduler"],
                )
        default = diffusers_export(s)  # the measured solver at the exact times
        json.dumps(default)
        sch = OptstepsScheduler.from_config(default["config"], prediction_type="epsilon")
        assert default["scheduler"] == "OptstepsScheduler" and sch.spec == s.solver_spec
        assert sch.timesteps.tolist() == pytest.approx(ns.timestep(s.timesteps_t[:-1]).float().tolist())


def test_comfyui_text_and_ays_pair():
    s = baseline("karras", VP, 4)
    assert [float(v) for v in to_comfyui_text(s).split(",")] == pytest.approx(to_comfyui(s), rel=1e-5)
    pair = to_ays_pair(baseline("trailing", VP, 4))
    assert len(pair["timesteps"]) == 4 and all(isinstance(v, int) for v in pair["timesteps"])
    assert len(pair["sigmas"]) == 5 and pair["sigmas"][-1] == 0.0


def test_ddim_is_refused_and_points_to_dpmsolver_order_1():
    with pytest.raises(OptstepsError, match="solver_order=1"):
        to_diffusers(baseline("trailing", VP, 5), DDIMScheduler())


def test_euler_gets_a_final_zero_and_exact_sigmas():
    s = baseline("karras", VP, 5)
    sch, kwargs = configure(EulerDiscreteScheduler(beta_schedule="linear"), s)
    assert kwargs["sigmas"][-1] == 0.0 and len(kwargs["sigmas"]) == 6
    assert np.allclose(sch.sigmas.numpy()[:-1], s.sigmas.numpy()[:-1], rtol=1e-5)
    assert len(sch.timesteps) == 5


def test_flowmatch_sigmas_are_kept_verbatim_with_shift_1():
    s = baseline("uniform-lambda", RectifiedFlow(), 5)
    sch, kwargs = configure(FlowMatchEulerDiscreteScheduler(shift=3.0), s)
    assert sch.config.shift == 1.0
    assert np.allclose(sch.sigmas.numpy(), s.sigmas.numpy(), atol=1e-6)  # terminal 0 appended by diffusers


def test_unipc_flow_sigmas_and_vp_refusal():
    s = baseline("uniform-t", RectifiedFlow(), 5)
    sch, kwargs = configure(UniPCMultistepScheduler(), s)
    assert np.allclose(sch.sigmas.numpy()[:5], s.sigmas.numpy()[:5], atol=1e-5)  # diffusers holds float32
    with pytest.raises(OptstepsError, match="no\ncustom VP timesteps|no custom VP timesteps"):
        to_diffusers(baseline("trailing", VP, 5), "UniPCMultistepScheduler")


def test_wrong_family_and_unknown_scheduler():
    with pytest.raises(OptstepsError, match="rectified-flow"):
        to_diffusers(baseline("trailing", VP, 5), "FlowMatchEulerDiscreteScheduler")
    with pytest.raises(OptstepsError, match="no export"):
        to_diffusers(baseline("trailing", VP, 5), "LMSDiscreteScheduler")
    with pytest.raises(OptstepsError, match="end the schedule there"):
        to_diffusers(Schedule([1.0, 0.5, 0.01], VP), "DPMSolverMultistepScheduler")


def test_comfyui_sigmas_end_in_zero():
    s = baseline("karras", VP, 4)
    out = to_comfyui(s)
    assert len(out) == 5 and out[-1] == 0.0 and out[:-1] == s.sigmas.tolist()[:-1]


def test_exported_schedule_samples_like_our_ddim():
    """Our DDIM on a trailing schedule = diffusers' DPMSolver(order 1) fed the exported timesteps."""
    from optsteps.core.solvers import sample
    from optsteps.models.gmm import GaussianMixture, GMMDenoiser

    gmm = GaussianMixture.random(2, 6, seed=4)
    den = GMMDenoiser(gmm, VP)
    s = baseline("trailing", VP, 8)
    sch, _ = configure(DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=1), s)
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    for ts in sch.timesteps:
        t = VP.t_of_timestep(float(ts))
        y = sch.step(den.eps(y, t), ts, y).prev_sample
    ours = sample(den, x, s, "ddim")
    assert (ours - y).abs().max() < 1e-3


def test_the_start_state_travels_with_the_export():
    from optsteps.integrations.diffusers.export import diffusers_export, start_latents

    flow = RectifiedFlow()
    scaled = baseline("uniform-t@start=0.98", flow, 4).with_meta(solver="ddim")
    raw = baseline("uniform-t@start=0.98,state=raw", flow, 4).with_meta(solver="ddim")
    assert start_latents(scaled) == {"start_state": "scaled", "sigma": pytest.approx(0.98)}
    assert start_latents(raw) == {"start_state": "raw", "sigma": 1.0}
    d = diffusers_export(raw)
    assert d["latents"] == {"start_state": "raw", "sigma": 1.0}
    assert d["config"]["t"][0] == pytest.approx(0.98) and d["config"]["start_state"] == "raw"
    d = diffusers_export(raw, "FlowMatchEulerDiscreteScheduler")
    assert d["set_timesteps"]["sigmas"][0] == pytest.approx(0.98)  # the first σ is the schedule's
    assert to_comfyui(scaled)[0] == pytest.approx(0.98)
    with pytest.raises(OptstepsError, match="unscaled noise"):
        to_comfyui(raw)
    top = baseline("uniform-t@state=raw", flow, 4)  # raw at t_max is the scaled state: nothing to refuse
    assert to_comfyui(top) == to_comfyui(baseline("uniform-t", flow, 4))
    vp = baseline("uniform-lambda@start=0.9,state=raw", VP, 4)
    assert start_latents(vp)["sigma"] == pytest.approx(float(VP.sigma(1.0)))


def test_tool_exports_comfyui_kjnodes_a1111_and_interpolated_steps():
    """ComfyUI SamplerCustom sigmas, KJNodes CustomSigmas text, A1111 ExtraSchedulers "custom" list; ``steps``:
    the AYS log-linear recipe (log σ linear in the normalised index), labelled interpolated; raw starts refused."""
    from optsteps.integrations.diffusers.export import interpolate_sigmas, tool_export

    s = baseline("uniform-lambda", VP, 5)
    sig = to_comfyui(s)
    assert tool_export(s, "comfyui") == sig and len(sig) == 6 and sig[-1] == 0.0
    assert [float(v) for v in tool_export(s, "comfyui-text").split(",")] == pytest.approx(sig, rel=1e-5)
    a = tool_export(s, "a1111")
    assert a.startswith("[") and a.endswith("]") and json.loads(a) == pytest.approx(sig, rel=1e-5)
    # steps = K reproduces the measured sigmas; log σ of 2K−1 steps: the measured points plus midpoints in log σ
    assert interpolate_sigmas(s, 5) == pytest.approx(sig, rel=1e-12)
    fine = interpolate_sigmas(s, 10)  # the 6 positive sigmas (σ_K = σ_min > 0) at every other point, then 0
    assert len(fine) == 11 and fine[-1] == 0.0 and fine[0:10:2] == pytest.approx(sig[:5], rel=1e-12)
    assert np.log(fine[1]) == pytest.approx((np.log(sig[0]) + np.log(sig[1])) / 2, rel=1e-12)
    j = tool_export(s, "comfyui", steps=10)
    assert j["interpolated"] is True and j["sigmas"] == fine and "not measured" in j["note"] and j["measured_nfe"] == 5
    for fmt in ("comfyui-text", "a1111"):
        head, body = tool_export(s, fmt, steps=10).split("\n")
        assert head.startswith("# interpolated to 10 steps") and "not measured" in head
        assert [float(v) for v in body.strip("[]").split(",")] == pytest.approx(fine, rel=1e-5)
    flow = baseline("uniform-t", RectifiedFlow(), 4)  # flow σ = t, ending at 0: interpolated over the positive ones
    f = interpolate_sigmas(flow, 7)
    assert f[0] == pytest.approx(1.0) and f[-1] == 0.0 and all(a > b for a, b in zip(f, f[1:]))
    raw = baseline("uniform-lambda@start=0.9,state=raw", VP, 4)
    for fmt in ("comfyui", "comfyui-text", "a1111"):
        with pytest.raises(OptstepsError, match="unscaled noise"):
            tool_export(raw, fmt)
        with pytest.raises(OptstepsError, match="unscaled noise"):
            tool_export(raw, fmt, steps=8)
    with pytest.raises(OptstepsError, match="whole number of steps"):
        interpolate_sigmas(s, 0)
