"""The measured solver in the user's pipeline: ``generate``/``optsteps apply`` with the default scheduler
(``OptstepsScheduler``) runs the schedule's own solver (DDIM, DPM-Solver++(2M), UniPC-2, UniPC-3) at its exact,
non-integer times from its start state, through the pipeline's own ``__call__``, and reproduces optsteps' sampler on
the same model and noise to 1e-4 — for tiny random-weight DDPM, SD 1.x, SDXL, SD3, FLUX and Wan pipelines. Every
case's largest difference is printed (``-s``) and named in its assertion message. Models load on the CPU in float32.
"""

import pytest
import torch
from tiny_pipelines import GUIDANCE, PROMPTS, build_ddpm, build_flux, build_sd, build_sd3, build_sdxl, build_wan

pytestmark = pytest.mark.integration  # real diffusers pipelines (tiny, random weights)

SPECS = (("ddim", None), ("dpmpp2m", None), ("unipc", 2), ("unipc", 3))
MSL = 8  # T5 tokens (FLUX, Wan)
BUILD = {
    "ddpm": lambda f, t: build_ddpm(f),
    "sd": build_sd,
    "sdxl": build_sdxl,
    "sd3": build_sd3,
    "flux": build_flux,
    "wan": lambda f, t: build_wan(f),
}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("measured")


def _schedules(ns):
    """Non-integer times (5 steps), made for each solver spec; the last one also with a raw start (VP: below t_max)."""
    from optsteps.core.schedule import Schedule
    from optsteps.core.solvers import SolverSpec

    if ns.family == "vp":
        t = (0.93137, 0.61803, 0.35355, 0.15151, 0.05413, 0.00871)  # timesteps 930.37, 617.03, … (not integers)
    else:
        t = (1.0, 0.81234, 0.55555, 0.31415, 0.12121, 0.0)
    out = [(f"{name}{'' if o is None else o}", Schedule(t, ns).with_solver(SolverSpec(name, o))) for name, o in SPECS]
    raw = Schedule((0.88888,) + t[1:], ns).with_solver(SolverSpec("unipc", 2))
    raw = type(raw)(raw.t, ns, solver=raw.solver, extra=dict(raw.extra, start_state="raw"))
    return out + [("unipc2-raw", raw)]


def _check(kind, model, run_pipe, run_ours):
    per_step = 2 if kind == "wan" else 1  # Wan runs the prompt and the negative as two transformer calls
    worst = {}
    for name, sched in _schedules(model.noise_schedule):
        theirs, info = run_pipe(sched)
        ours = run_ours(sched)
        assert info["scheduler"] == "OptstepsScheduler" and info["model_calls"] == per_step * sched.nfe, info
        assert info["timesteps"] == pytest.approx(
            model.noise_schedule.timestep(sched.timesteps_t[:-1]).float().double().tolist(), abs=1e-4
        )  # exact times, not snapped
        assert "changes" not in info and info["solver"] == sched.solver_spec.name
        diff = float((torch.as_tensor(theirs).double() - ours.double()).abs().max())
        worst[name] = diff
        print(f"{kind:5s} {name:11s} max |pipeline − optsteps sampler| = {diff:.3g}")
        assert diff <= 1e-4, f"{kind} {name}: pipeline vs optsteps' sampler differ by {diff:.3g} (> 1e-4)"
    return worst


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "flux", "wan"])
def test_text_pipelines_run_the_measured_solver(kind, tmp):
    from optsteps.core.schedule import initial_state
    from optsteps.core.solvers import sample
    from optsteps.integrations.diffusers import generate
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    folder = BUILD[kind](tmp / kind, tmp)
    extra = {"max_sequence_length": MSL} if kind in ("flux", "wan") else {}
    if kind == "wan":
        extra.update(height=16, width=16, num_frames=5)
    model = load_pipeline_model(folder, prompts=PROMPTS, guidance=GUIDANCE, device="cpu", **extra)
    call = dict(extra, height=model.height, width=model.width) if kind == "flux" else dict(extra)
    label, seed = 1, 3

    def run_pipe(sched):
        return generate(
            model.pipeline, sched, PROMPTS[label], seed=seed, guidance=GUIDANCE, output_type="latent", **call
        )

    def run_ours(sched):
        x = initial_state(model.noise(1, seed, 0), sched)
        return sample(model.denoiser(torch.tensor([label]), GUIDANCE), x, sched, sched.solver_spec)

    _check(kind, model, run_pipe, run_ours)


def test_ddpm_pipeline_runs_the_measured_solver_from_its_start_state(tmp):
    """DDPMPipeline draws its own unit noise ε and takes no latents=: the start x_{t_0} = c·ε still holds."""
    import numpy as np

    from optsteps.core.schedule import initial_state
    from optsteps.core.solvers import sample
    from optsteps.integrations.diffusers import generate
    from optsteps.models.diffusers.pipelines import load_diffusers_pipeline, load_pipeline_model

    folder = build_ddpm(tmp / "ddpm")
    model = load_pipeline_model(folder, device="cpu")
    pipe = load_diffusers_pipeline(folder, "cpu", torch.float32)[0]
    seed = 5

    def run_pipe(sched):
        img, info = generate(pipe, sched, seed=seed, output_type="np")
        return torch.from_numpy(np.asarray(img)).permute(0, 3, 1, 2), info

    def run_ours(sched):
        eps = torch.randn((1, *model.sample_shape), generator=torch.Generator().manual_seed(seed))
        x = sample(model.denoiser(), initial_state(eps, sched), sched, sched.solver_spec)
        return (x / 2 + 0.5).clamp(0, 1)

    _check("ddpm", model, run_pipe, run_ours)


def test_another_scheduler_says_what_changes(tmp):
    """Asking for a stock scheduler prints one line: which solver runs, snapping and its largest move."""
    from optsteps.core.schedule import Schedule
    from optsteps.core.solvers import SolverSpec
    from optsteps.integrations.diffusers import generate
    from optsteps.models.diffusers.pipelines import load_diffusers_pipeline, load_pipeline_model

    folder = build_ddpm(tmp / "ddpm2")
    model = load_pipeline_model(folder, device="cpu")
    pipe = load_diffusers_pipeline(folder, "cpu", torch.float32)[0]
    sched = Schedule((0.93137, 0.5, 0.2, 0.001), model.noise_schedule).with_solver(SolverSpec("unipc", 2))
    _, info = generate(pipe, sched, seed=0, output_type="np", scheduler="dpmsolver")
    line = info["changes"]
    assert "\n" not in line and "DPM-Solver++" in line and "unipc order 2" in line and "snapped" in line
    shift = info["snapped_max_shift"]
    assert shift > 0.3 and f"{shift:.3g}" in line and "not the measured run" in line
