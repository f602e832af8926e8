"""Real diffusers pipelines, built tiny with random weights in the test (nothing is downloaded):

- pixel DDPM (UNet2DModel + DDPMScheduler, ``DDPMPipeline``),
- Stable Diffusion (UNet2DConditionModel + AutoencoderKL + CLIPTextModel/CLIPTokenizer, scaled-linear β),
- Stable Diffusion 3 (SD3Transformer2DModel + two CLIP encoders, no T5; FlowMatchEulerDiscreteScheduler, shift 3).

For each: teacher trajectories → OSS → λ-opt → export → ``apply_schedule`` through the pipeline's own
``__call__``. Checks: image size, model calls = NFE, the exported first timestep/σ, and that the pipeline run
reproduces optsteps' own sampler on the same noise (DDIM/Euler, DPM-Solver++ and UniPC, to 1e-4).
Models are loaded on the CPU in float32 (device="cpu") so that the comparisons are exact on GPU machines too.
"""

import json
import logging
import stat
import sys

import pytest
import torch

pytestmark = pytest.mark.integration  # real diffusers pipelines (tiny, random weights)

from tiny_pipelines import GUIDANCE, PROMPTS, build_ddpm, build_sd, build_sd3, distill  # noqa: E402,F401

from optsteps.core.noise_schedules import RectifiedFlow  # noqa: E402
from optsteps.errors import OptstepsError  # noqa: E402

RF = RectifiedFlow()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipelines")
    return {"ddpm": build_ddpm(tmp / "ddpm"), "sd": build_sd(tmp / "sd", tmp), "sd3": build_sd3(tmp / "sd3", tmp)}


# ---- the whole path per pipeline kind -----------------------------------------------------------------


def test_pixel_ddpm(folders, tmp_path):
    from diffusers import DDPMPipeline

    from optsteps.integrations.diffusers.apply import apply_schedule
    from optsteps.integrations.diffusers.export import configure
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    model = load_pipeline_model(folders["ddpm"], device="cpu")  # dispatches to the UNet2D adapter
    assert model.sample_shape == (3, 8, 8) and model.noise_schedule.describe() == "vp/linear"
    oss, lam, labels = distill(model, tmp_path / "traj", 1.0)
    assert labels is None
    for sched in (oss, lam):
        # the default: OptstepsScheduler, the schedule's own solver at its exact (unsnapped) times
        info = apply_schedule(folders["ddpm"], sched, out_png=tmp_path / f"{sched.method}.png", seed=1)
        assert info["size"] == [8, 8] and (tmp_path / f"{sched.method}.png").is_file()
        assert info["scheduler"] == "OptstepsScheduler" and "changes" not in info
        assert info["solver"] == sched.solver_spec.name and info["model_calls"] == sched.nfe
        exact = model.noise_schedule.timestep(sched.timesteps_t[:-1]).float().double().tolist()
        assert info["timesteps"] == pytest.approx(exact, abs=1e-4) and info["timesteps"][0] == 999
        # stock DPM-Solver++ on request: pinned (DDPMPipeline has no timesteps=), snapped, and it says what changes
        info = apply_schedule(folders["ddpm"], sched, out_png=tmp_path / "stock.png", seed=1, scheduler="dpmsolver")
        assert info["scheduler"] == "DPMSolverMultistepScheduler" and info["pinned"] and "changes" in info
        assert info["model_calls"] == sched.nfe and info["timesteps"][0] == 999
    # the pipeline's own DDPMScheduler takes integer timesteps=; the exported first step is the schedule's
    from optsteps.integrations.diffusers.export import snap_to_training_timesteps

    snapped, _ = snap_to_training_timesteps(oss)
    own = DDPMPipeline.from_pretrained(folders["ddpm"]).scheduler
    s, kwargs = configure(own, snapped)
    assert int(s.timesteps[0]) == round(float(model.noise_schedule.timestep(snapped.t[0]))) == 999
    assert kwargs["timesteps"] == [round(float(v)) for v in model.noise_schedule.timestep(snapped.timesteps_t[:-1])]


def test_stable_diffusion(folders, tmp_path):
    from diffusers import EulerDiscreteScheduler

    from optsteps.core.solvers import sample
    from optsteps.integrations.diffusers.apply import apply_schedule, generate
    from optsteps.integrations.diffusers.export import configure, snap_to_training_timesteps
    from optsteps.models.diffusers.pipelines import PipelineModel, load_pipeline_model

    model = load_pipeline_model(folders["sd"], prompts=PROMPTS, guidance=GUIDANCE, device="cpu")
    assert isinstance(model, PipelineModel) and model.prediction_type == "epsilon"
    assert model.sample_shape == (4, 8, 8) and (model.height, model.width) == (16, 16)
    assert model.noise_schedule.to_dict() == {
        "family": "vp",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
    }
    oss, lam, labels = distill(model, tmp_path / "traj", GUIDANCE)
    assert labels.tolist() == [0, 1, 2]
    assert len(model.conditioner.cache) == len(PROMPTS) + 1  # each prompt encoded once, plus the null condition
    imgs = model.decode(torch.zeros(2, *model.sample_shape))
    assert imgs.shape == (2, 3, 16, 16) and imgs.abs().max() <= 1

    for sched in (oss, lam):
        info = apply_schedule(
            folders["sd"], sched, PROMPTS[1], tmp_path / f"{sched.method}.png", seed=3, guidance=GUIDANCE
        )
        assert info["size"] == [16, 16] and info["model_calls"] == sched.nfe
        assert info["scheduler"] == "OptstepsScheduler" and info["timesteps"][0] == 999  # the default, exact times
        exact = model.noise_schedule.timestep(sched.timesteps_t[:-1]).float().double().tolist()
        assert info["timesteps"] == pytest.approx(exact, abs=1e-4)
    assert info["solver_order"] == 2  # the λ-opt schedule was made for DPM-Solver++(2M)

    # stock DPM-Solver++ (snapped integer timesteps) reproduces optsteps' own sampler on the snapped schedule, on the
    # same seeded noise, prompt and guidance
    pipe = model.pipeline
    snapped, _ = snap_to_training_timesteps(oss)
    x = model.initial_state(model.noise(1, 3, 0), snapped.t[0])
    ours = sample(model.denoiser(torch.tensor([1]), GUIDANCE), x, snapped, "ddim")
    kw = dict(seed=3, guidance=GUIDANCE, scheduler="dpmsolver", output_type="latent")
    theirs, info = generate(pipe, oss, PROMPTS[1], **kw)
    assert info["scheduler"] == "DPMSolverMultistepScheduler" and info["solver_order"] == 1
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
    ours2 = sample(model.denoiser(torch.tensor([1]), GUIDANCE), x, snap_to_training_timesteps(lam)[0], "dpmpp2m")
    theirs2, _ = generate(pipe, lam, PROMPTS[1], **kw)
    assert torch.allclose(theirs2, ours2, atol=1e-4, rtol=1e-4), (theirs2 - ours2).abs().max()

    # Euler with exact sigmas (no snapping): the first σ is the schedule's, and the sampler agrees with DDIM
    # except for the last step, which diffusers' Euler takes to σ = 0
    s, kwargs = configure(EulerDiscreteScheduler.from_config(pipe.scheduler.config), oss)
    assert float(s.sigmas[0]) == pytest.approx(float(oss.sigmas[0]), rel=1e-6)
    assert float(s.timesteps[0]) == pytest.approx(999.0, abs=1e-3)
    _, info = generate(pipe, oss, PROMPTS[0], scheduler="euler", guidance=GUIDANCE, output_type="latent")
    assert info["scheduler"] == "EulerDiscreteScheduler" and info["model_calls"] == oss.nfe
    assert info["sigmas"][0] == pytest.approx(float(oss.sigmas[0]), rel=1e-6) and info["sigmas"][-1] == 0


def test_stable_diffusion_3(folders, tmp_path):
    from diffusers import UniPCMultistepScheduler

    from optsteps.core.baselines import baseline
    from optsteps.core.denoisers import PredictionDenoiser
    from optsteps.core.schedule import Schedule
    from optsteps.core.solvers import sample
    from optsteps.integrations.diffusers.apply import apply_schedule, generate
    from optsteps.integrations.diffusers.export import configure
    from optsteps.integrations.diffusers.plan import plan_scheduler
    from optsteps.models.diffusers.pipelines import load_pipeline_model
    from optsteps.optimizers.lambda_opt import LambdaOptOptions, lambda_opt_schedule

    model = load_pipeline_model(folders["sd3"], prompts=PROMPTS, guidance=GUIDANCE, max_sequence_length=8, device="cpu")
    assert model.prediction_type == "flow" and model.noise_schedule.family == "flow"
    assert model.flow_shift == 3.0 and model.identity["flow_shift"] == 3.0
    assert model.sample_shape == (4, 8, 8)
    shifted = baseline("flow-shift", model.noise_schedule, 4, **model.baseline_options()["flow-shift"])
    assert shifted.t[1] == pytest.approx(3 * 0.75 / (1 + 2 * 0.75))
    oss, lam, labels = distill(model, tmp_path / "traj", GUIDANCE)
    assert labels.tolist() == [0, 1, 2]

    pipe = model.pipeline
    own = pipe.scheduler  # FlowMatchEulerDiscreteScheduler: sigmas= with shift 1 keeps the times verbatim
    s, kwargs = configure(own, oss)
    assert float(s.sigmas[0]) == pytest.approx(oss.t[0]) and float(s.timesteps[0]) == pytest.approx(1000 * oss.t[0])
    assert torch.allclose(s.sigmas[:-1].double(), torch.tensor(oss.t[:-1], dtype=torch.float64), atol=1e-6)

    for sched in (oss, lam, shifted.with_meta(solver="ddim")):  # the default: OptstepsScheduler at the exact times
        info = apply_schedule(folders["sd3"], sched, PROMPTS[2], tmp_path / "img.png", seed=2, guidance=GUIDANCE)
        assert info["size"] == [16, 16] and info["model_calls"] == sched.nfe
        assert info["scheduler"] == "OptstepsScheduler" and info["solver"] == sched.solver_spec.name
        assert info["sigmas"] == pytest.approx(list(sched.t), abs=1e-6)
        assert info["timesteps"] == pytest.approx([1000 * v for v in sched.t[:-1]], abs=1e-3)

    # Euler on the velocity = optsteps' DDIM, and UniPC(flow sigmas) = optsteps' UniPC of the same order
    x = model.initial_state(model.noise(1, 5, 0), oss.t[0])
    den = model.denoiser(torch.tensor([2]), GUIDANCE)
    kw = dict(seed=5, guidance=GUIDANCE, output_type="latent", max_sequence_length=8)
    theirs, info = generate(pipe, oss, PROMPTS[2], scheduler="flowmatch", **kw)
    assert info["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert torch.allclose(theirs, sample(den, x, oss, "ddim"), atol=1e-4, rtol=1e-4)
    theirs, info = generate(pipe, lam, PROMPTS[2], scheduler="unipc", **kw)
    assert info["scheduler"] == "UniPCMultistepScheduler" and info["model_calls"] == lam.nfe
    # diffusers' UniPC moves a flow start σ = 1 to 1 − 1e-6 (finite λ, so its second step is already order 2,
    # where optsteps drops to order 1 at λ = −∞): the same schedule started at 1 − 1e-6 is what it runs
    lam_moved = Schedule((1 - 1e-6,) + lam.t[1:], lam.noise_schedule)
    ours = sample(den, x, lam_moved, "unipc", order=info["solver_order"])
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()

    # a start below 1 with times that are not multiples of 1/1000: diffusers' UniPC casts its flow timesteps
    # σ·1000 to int64, i.e. the network would see ⌊1000 σ⌋; apply keeps them float (exact_flow_timesteps)
    lam98 = lambda_opt_schedule(model.noise_schedule, 3, "dpmpp2m", LambdaOptOptions(t_start=0.98))
    assert lam98.t[1] * 1000 % 1 > 1e-3  # the schedule does sit between integer timesteps
    x98 = model.initial_state(model.noise(1, 5, 0), 0.98)
    theirs, info = generate(pipe, lam98, PROMPTS[2], scheduler="unipc", **kw)
    assert info["scheduler"] == "UniPCMultistepScheduler" and info["timesteps"] == pytest.approx(
        [1000 * v for v in lam98.t[:-1]], abs=1e-3
    )
    ours = sample(den, x98, lam98, "unipc", order=info["solver_order"])
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
    # the root cause, shown: stock UniPC = optsteps' UniPC with the network fed ⌊1000 t⌋ (not a precision issue:
    # diffusers' float32 coefficients agree with optsteps' float64 ones to ~1e-6 here)
    plan = plan_scheduler(pipe, lam98, "unipc")
    stock = UniPCMultistepScheduler.from_config(plan.scheduler.config)
    stock.set_timesteps(**plan.kwargs)
    assert stock.timesteps.dtype == torch.int64 and stock.timesteps.tolist() == [int(1000 * v) for v in lam98.t[:-1]]
    floor_net = lambda x_, t_, c: model.net(x_, torch.floor(t_ * 1000) / 1000, c)  # noqa: E731
    den_floor = PredictionDenoiser(
        floor_net, model.noise_schedule, "flow", torch.tensor([2]), torch.tensor([model.null_label]), GUIDANCE
    )
    x_stock = x98.clone()
    for _i, ts in enumerate(stock.timesteps):
        raw = den.raw(x_stock, torch.tensor(float(ts) / 1000, dtype=torch.float64))
        x_stock = stock.step(raw, ts, x_stock, return_dict=False)[0]
    ours_floor = sample(den_floor, x98, lam98, "unipc", order=info["solver_order"])
    assert torch.allclose(x_stock, ours_floor, atol=1e-5, rtol=1e-5), (x_stock - ours_floor).abs().max()
    assert (x_stock - theirs).abs().max() > 1e-4  # and the floor does change the result


# ---- bad input ----------------------------------------------------------------------------------------


def test_apply_starts_from_the_schedules_start_state(folders):
    """A schedule that starts below t_max from the unscaled noise (``"start_state": "raw"``, e.g. an OSS start
    window's winner): the pipeline gets σ_{t_max} ε as latents at the schedule's first σ, and reproduces
    optsteps' own sampler from ``initial_state``; the scaled start differs (issue 20)."""
    from optsteps.core.baselines import baseline
    from optsteps.core.solvers import sample
    from optsteps.integrations.diffusers.apply import generate
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    model = load_pipeline_model(folders["sd3"], prompts=PROMPTS, guidance=GUIDANCE, max_sequence_length=8, device="cpu")
    den = model.denoiser(torch.tensor([1]), GUIDANCE)
    kw = dict(seed=4, guidance=GUIDANCE, output_type="latent", max_sequence_length=8)
    outs = {}
    for state in ("raw", "scaled"):
        sched = baseline(f"uniform-t@start=0.9,state={state}", model.noise_schedule, 3).with_meta(solver="ddim")
        x = model.initial_state(model.noise(1, 4, 0), sched)
        assert torch.allclose(x, model.noise(1, 4, 0) * (1.0 if state == "raw" else 0.9))
        theirs, info = generate(model.pipeline, sched, PROMPTS[1], **kw)
        assert info["start_state"] == state and info["sigmas"][0] == pytest.approx(0.9, abs=1e-6)
        ours = sample(den, x, sched, "ddim")
        assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (state, (theirs - ours).abs().max())
        outs[state] = theirs
    assert not torch.allclose(outs["raw"], outs["scaled"], atol=1e-3)


def test_refuses_schedule_for_another_noise_schedule(folders, tmp_path):
    from optsteps.core.baselines import baseline
    from optsteps.integrations.diffusers.apply import apply_schedule
    from optsteps.models.diffusers.pipelines import pipeline_noise_schedule

    sd3_ns, sd_ns, ddpm_ns = (pipeline_noise_schedule(folders[k]) for k in ("sd3", "sd", "ddpm"))
    flow = baseline("uniform-t", sd3_ns, 3)
    with pytest.raises(OptstepsError, match="compute a schedule for this pipeline"):
        apply_schedule(folders["sd"], flow, "x", tmp_path / "a.png")
    with pytest.raises(OptstepsError, match="scaled_linear"):  # linear-β DDPM schedule on the SD pipeline
        apply_schedule(folders["sd"], baseline("uniform-lambda", ddpm_ns, 3), "x", tmp_path / "b.png")
    with pytest.raises(OptstepsError, match="noise schedule"):
        apply_schedule(folders["sd3"], baseline("uniform-lambda", sd_ns, 3), "x", tmp_path / "c.png")
    assert not any(tmp_path.iterdir())


def test_missing_pipeline_is_a_clear_error(tmp_path, monkeypatch):
    from optsteps.core.baselines import baseline
    from optsteps.core.noise_schedules import RectifiedFlow
    from optsteps.integrations.diffusers.apply import apply_schedule
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OptstepsError, match="local cache.*huggingface-cli download"):
        load_pipeline_model("no-such-org/no-such-pipeline")
    with pytest.raises(OptstepsError, match="local cache"):
        apply_schedule("no-such-org/no-such-pipeline", baseline("uniform-t", RectifiedFlow(), 2), "x")
    with pytest.raises(OptstepsError, match="does not exist"):
        load_pipeline_model(str(tmp_path / "nothing-here"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(OptstepsError, match="supports .*StableDiffusion3Pipeline"):
        load_pipeline_model(tmp_path / "odd")


# ---- prompts, CLI, GenEval hook -----------------------------------------------------------------------


def test_load_prompts(tmp_path):
    from optsteps.models.diffusers.prompts import load_prompts

    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert load_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    rows = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "counting", "include": [{"class": "cup", "count": 2}], "prompt": "a photo of two cups"},
    ]
    (tmp_path / "evaluation_metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_prompts(tmp_path / "evaluation_metadata.jsonl") == ["a photo of a bench", "a photo of two cups"]
    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt field"}\n')
    with pytest.raises(OptstepsError, match="'prompt'"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(OptstepsError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(OptstepsError, match="not found"):
        load_prompts(tmp_path / "missing.txt")


def test_apply_command_line(folders, tmp_path, monkeypatch):
    """``optsteps apply`` on the real CLI app: a schedule file, NAME@ALIAS through the registry adapter, and the
    refusal of a schedule made for another noise schedule (exit code 2, the problem and the fix)."""
    from typer.testing import CliRunner

    import optsteps.integrations.mlflow_registry
    from optsteps.cli.main import app, main
    from optsteps.core.baselines import baseline
    from optsteps.models.diffusers.pipelines import pipeline_noise_schedule

    flow = baseline("uniform-t", pipeline_noise_schedule(folders["sd3"]), 2, model="tiny-sd3").with_meta(solver="ddim")
    path = flow.save(tmp_path / "s.json")
    run = CliRunner().invoke
    r = run(
        app,
        [
            "apply",
            "--pipeline",
            str(folders["sd3"]),
            "--schedule",
            str(path),
            "--prompt",
            "a red cube",
            "--out",
            str(tmp_path / "img.png"),
            "--guidance",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "16×16" in r.output and "NFE 2" in r.output and "first timestep 1000" in r.output
    from PIL import Image

    assert Image.open(tmp_path / "img.png").size == (16, 16)

    class FakeRegistry:  # the real Registry round trip is tested in test_registry.py; here only the wiring
        def __init__(self, tracking_uri=None, **kw):
            self.tracking_uri = tracking_uri

        def load_schedule(self, ref):
            assert ref == "tiny-sd3-ddim-schedules@champion-nfe2" and self.tracking_uri == db_uri
            return flow

    monkeypatch.setattr(optsteps.integrations.mlflow_registry, "Registry", FakeRegistry)
    (tmp_path / "x.db").touch()  # a read-only command never creates a registry: it must exist
    db_uri = f"sqlite:///{tmp_path / 'x.db'}"
    r = run(
        app,
        [
            "apply",
            "--pipeline",
            str(folders["sd3"]),
            "--schedule",
            "tiny-sd3-ddim-schedules@champion-nfe2",
            "--tracking-uri",
            db_uri,
            "--out",
            str(tmp_path / "reg.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "reg.png").is_file()

    r = run(
        app,
        [
            "apply",
            "--pipeline",
            str(folders["sd3"]),
            "--schedule",
            str(tmp_path / "none.json"),
            "--out",
            str(tmp_path / "x.png"),
        ],
    )
    assert r.exit_code != 0 and isinstance(r.exception, OptstepsError) and "does not exist" in str(r.exception)

    vp = baseline("uniform-lambda", pipeline_noise_schedule(folders["sd"]), 2).save(tmp_path / "vp.json")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "optsteps",
            "apply",
            "--pipeline",
            str(folders["sd3"]),
            "--schedule",
            str(vp),
            "--out",
            str(tmp_path / "refused.png"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and not (tmp_path / "refused.png").exists()


def test_refusal_message_names_problem_and_fix(folders, tmp_path):
    from optsteps.core.baselines import baseline
    from optsteps.integrations.diffusers.apply import apply_schedule
    from optsteps.models.diffusers.pipelines import pipeline_noise_schedule

    vp = baseline("uniform-lambda", pipeline_noise_schedule(folders["sd"]), 2, model="tiny-sd")
    with pytest.raises(OptstepsError) as e:
        apply_schedule(folders["sd3"], vp, "x", tmp_path / "x.png")
    msg = str(e.value)
    assert "was made for the noise schedule" in msg and "'family': 'vp'" in msg and "'family': 'flow'" in msg
    assert "compute a schedule for this pipeline" in msg and str(folders["sd3"]) in msg
    flow_short = baseline("uniform-t", pipeline_noise_schedule(folders["sd3"]), 2)
    from optsteps.core.schedule import Schedule

    ends_above_0 = Schedule((1.0, 0.5, 0.01), flow_short.noise_schedule, solver="ddim")
    for stock in ("flowmatch", "unipc"):  # diffusers' stock flow schedulers cannot stop above σ = 0
        with pytest.raises(OptstepsError, match="always end at σ = 0"):
            apply_schedule(folders["sd3"], ends_above_0, "x", scheduler=stock)
    info = apply_schedule(folders["sd3"], ends_above_0, "x")  # the default runs it as measured, to t = 0.01
    assert info["scheduler"] == "OptstepsScheduler" and info["sigmas"] == pytest.approx([1.0, 0.5, 0.01], abs=1e-6)


# ---- device and precision --------------------------------------------------------------------------------


def test_device_and_dtype_defaults(monkeypatch):
    import optsteps.models.diffusers.hub as hub

    monkeypatch.delenv("OPTSTEPS_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hub.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hub.default_device() == "cpu"
    monkeypatch.setenv("OPTSTEPS_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hub.default_device() == "cpu"
    assert hub.pick_dtype("cpu", "sd") == hub.pick_dtype("cpu", "sd3") == torch.float32
    assert hub.pick_dtype("cuda", "sd") == hub.pick_dtype("cuda:0", "unet2d") == torch.float16
    assert hub.pick_dtype("cuda", "sd3") == torch.bfloat16
    assert hub.pick_dtype("cuda", "sd", "fp32") == torch.float32
    with pytest.raises(OptstepsError, match="unknown dtype"):
        hub.pick_dtype("cuda", "sd", "int8")
    with pytest.raises(OptstepsError, match="on the CPU use float32"):
        hub.pick_dtype("cpu", "sd", "fp16")


@pytest.mark.gpu  # skipped without CUDA by tests/skip_policy.py
def test_half_precision_on_gpu(folders, tmp_path, monkeypatch):
    from optsteps.core.baselines import baseline
    from optsteps.integrations.diffusers.apply import apply_schedule
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    monkeypatch.delenv("OPTSTEPS_DEVICE", raising=False)
    for kind, dtype in (("ddpm", torch.float16), ("sd", torch.float16), ("sd3", torch.bfloat16)):
        model = load_pipeline_model(folders[kind], prompts=PROMPTS, max_sequence_length=8)
        x0 = model.denoiser(model.labels(2), 1.0)(model.noise(2, 0), torch.tensor(0.5, dtype=torch.float64))
        assert x0.device.type == "cpu" and x0.dtype == torch.float32 and torch.isfinite(x0).all()
        if kind != "ddpm":
            assert model.device == "cuda" and model.dtype == dtype
        sched = baseline("uniform-lambda" if kind != "sd3" else "uniform-t", model.noise_schedule, 3)
        info = apply_schedule(folders[kind], sched.with_meta(solver="ddim"), "a cube", tmp_path / f"{kind}.png")
        assert info["model_calls"] == 3 and (tmp_path / f"{kind}.png").is_file()


# ---- GenEval -----------------------------------------------------------------------------------------------

GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "cup", "count": 1}], "prompt": "a photo of a cup"},
    {"tag": "counting", "include": [{"class": "cup", "count": 2}], "prompt": "a photo of two cups"},
]


def test_geneval_absent_means_no_metric_and_nothing_generated(folders, tmp_path, monkeypatch, caplog):
    from optsteps.core.baselines import baseline
    from optsteps.evaluate.adherence import geneval_metrics
    from optsteps.integrations.diffusers.apply import pipeline_prompt_sampler

    for var in ("GENEVAL_DIR", "GENEVAL_DETECTOR_DIR", "GENEVAL_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_ROWS))
    calls = []
    with caplog.at_level(logging.WARNING, logger="optsteps.evaluate"):
        out = geneval_metrics(meta, lambda *a: calls.append(a), baseline("uniform-t", RF, 2), workdir=tmp_path / "g")
    assert out == {} and calls == [] and not (tmp_path / "g").exists()
    lines = [r.getMessage() for r in caplog.records if "GenEval" in r.getMessage()]
    assert len(lines) == 1 and "not installed" in lines[0] and "GENEVAL_DIR" in lines[0]
    monkeypatch.setenv("GENEVAL_DIR", str(tmp_path / "clone"))  # a folder without evaluate_images.py is not GenEval
    assert geneval_metrics(meta, pipeline_prompt_sampler(None), None) == {}


FAKE_EVALUATOR = """import json, sys, pathlib
# stands in for GenEval's evaluation/evaluate_images.py in the test: checks the image layout, writes results.jsonl
image_dir, outfile, model_path = sys.argv[1], sys.argv[sys.argv.index("--outfile") + 1], \
sys.argv[sys.argv.index("--model-path") + 1]
assert (pathlib.Path(model_path) / "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth").is_file()
with open(outfile, "w") as out:
    for d in sorted(pathlib.Path(image_dir).iterdir()):
        meta = json.loads((d / "metadata.jsonl").read_text())
        for png in sorted((d / "samples").glob("*.png")):
            correct = meta["tag"] == "single_object" or png.name == "0000.png"
            out.write(json.dumps({"filename": str(png), "tag": meta["tag"], "correct": correct}) + "\\n")
"""


def test_geneval_runs_the_installed_evaluator_on_pipeline_images(folders, tmp_path, monkeypatch):
    """With an 'installed' GenEval (a stand-in evaluator script, detector file and importable module names),
    the pipeline's images are written in GenEval's layout, the evaluator runs, and its results are summarised."""
    from PIL import Image

    from optsteps.core.baselines import baseline
    from optsteps.evaluate.adherence import GENEVAL_DETECTOR, GENEVAL_MODULES, geneval_metrics
    from optsteps.integrations.diffusers.apply import pipeline_prompt_sampler
    from optsteps.models.diffusers.pipelines import load_diffusers_pipeline

    clone, det, stubs = tmp_path / "geneval", tmp_path / "models", tmp_path / "stubs"
    (clone / "evaluation").mkdir(parents=True)
    (clone / "evaluation" / "evaluate_images.py").write_text(FAKE_EVALUATOR)
    det.mkdir()
    (det / GENEVAL_DETECTOR).write_bytes(b"")
    for m in GENEVAL_MODULES:
        (stubs / m).mkdir(parents=True)
        (stubs / m / "__init__.py").write_text("")
    py = tmp_path / "python"
    py.write_text(f'#!/bin/sh\nPYTHONPATH={stubs} exec {sys.executable} "$@"\n')
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("GENEVAL_DIR", str(clone))
    monkeypatch.setenv("GENEVAL_DETECTOR_DIR", str(det))
    monkeypatch.setenv("GENEVAL_PYTHON", str(py))
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_ROWS))

    pipe, _, _ = load_diffusers_pipeline(folders["sd3"], device="cpu")
    sched = baseline("uniform-t", RF, 2).with_meta(solver="ddim")
    out = geneval_metrics(
        meta,
        pipeline_prompt_sampler(pipe, guidance=2.0, max_sequence_length=8),
        sched,
        images_per_prompt=2,
        workdir=tmp_path / "work",
    )
    assert out == {"geneval_counting": 0.5, "geneval_single_object": 1.0, "geneval_overall": 0.75}
    for i, row in enumerate(GENEVAL_ROWS):
        d = tmp_path / "work" / "images" / f"{i:05d}"
        assert json.loads((d / "metadata.jsonl").read_text()) == row
        assert [Image.open(d / "samples" / f"{j:04d}.png").size for j in range(2)] == [(16, 16)] * 2
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "work").rglob("*"))


def test_describe_model_is_load_model_without_the_networks(folders, tmp_path):
    """The identity the Ray driver and the identify stage compute from config files and weight digests equals the
    loaded model's, for every pipeline kind; the entry's settings reach the model."""
    from optsteps.models import ModelEntry, describe_model, load_model

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    for kind in ("ddpm", "sd", "sd3"):
        text = kind != "ddpm"
        e = ModelEntry(
            f"tiny-{kind}",
            pipeline=str(folders[kind]),
            prompts=str(prompts) if text else "",
            guidance=GUIDANCE if text else None,
            height=32 if kind == "sd" else None,
            width=16 if kind == "sd" else None,
            device="cpu",
        )
        card, model = describe_model(e), load_model(e)
        assert card.identity == model.identity and card.identity["model"] == e.name == model.name
        assert (card.noise_schedule, card.prediction_type, card.sample_shape, card.num_classes, card.null_label) == (
            model.noise_schedule,
            model.prediction_type,
            tuple(model.sample_shape),
            model.num_classes,
            model.null_label,
        )
        if text:
            assert model.prompts == PROMPTS and model.guidance == GUIDANCE and model.device == "cpu"
    assert describe_model(ModelEntry("sd", pipeline=str(folders["sd"]), height=32, width=16)).sample_shape == (4, 16, 8)
    other = describe_model(ModelEntry("x", pipeline=str(folders["sd"]), prompts=str(prompts)))
    assert other.identity["sha256"] != describe_model(ModelEntry("x", pipeline=str(folders["sd"]))).identity["sha256"]
