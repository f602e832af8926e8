"""FLUX.1 and Wan 2.1 pipelines, built tiny with random weights in the test (nothing is downloaded; builders in
tests/tiny_pipelines.py).

For each: the model's state and shapes, the pipeline's own default schedule = the ``flow-shift`` baseline with the
model's options, teacher shards → OSS and λ-opt, and ``generate``/``apply`` through the pipeline's own ``__call__``
reproducing optsteps' sampler on the same noise (FlowMatchEuler = DDIM, UniPC with float flow timesteps = UniPC) to
1e-4, with the transformer fed exactly the schedule's times; the published OSS table runs as a baseline; the
pipeline folder is unchanged afterwards. Models are loaded on the CPU in float32.
"""

import math

import pytest
import torch
from tiny_pipelines import (
    GUIDANCE,
    PROMPTS,
    TimestepRecorder,
    build_flux,
    build_wan,
    distill,  # noqa: E402
    fingerprint,
)

pytestmark = pytest.mark.integration  # real diffusers pipelines (tiny, random weights)

MSL = 8  # T5 / UMT5 tokens


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flow_pipelines")
    return {
        "flux": build_flux(tmp / "flux", tmp),
        "flux-schnell": build_flux(tmp / "flux-schnell", tmp, schnell=True),
        "wan": build_wan(tmp / "wan"),
    }


def _parity(model, pipe, sched, label, seed, solver, guidance, **call):
    """(pipeline latents, optsteps' sampler latents, info, times the transformer saw) for one sample."""
    from optsteps.core.solvers import sample
    from optsteps.integrations.diffusers.apply import generate

    rec = TimestepRecorder(pipe.transformer)
    try:
        theirs, info = generate(
            pipe,
            sched,
            PROMPTS[label],
            seed=seed,
            guidance=guidance,
            output_type="latent",
            height=model.height,
            width=model.width,
            max_sequence_length=MSL,
            **call,
        )
    finally:
        rec.remove()
    x = model.initial_state(model.noise(1, seed, 0), sched.t[0])
    ours = sample(model.denoiser(torch.tensor([label]), guidance), x, sched, solver, order=info["solver_order"])
    return theirs, ours, info, rec.seen


def _moved(sched):
    """diffusers' UniPC starts a flow schedule at t = 1 from 1 − 1e-6 (finite λ); the same schedule moved there."""
    from optsteps.core.schedule import Schedule

    return Schedule((1 - 1e-6,) + sched.t[1:], sched.noise_schedule, solver=sched.solver) if sched.t[0] == 1 else sched


def test_flux_dev(folders, tmp_path):
    from optsteps.core.baselines import baseline_for
    from optsteps.integrations.diffusers.apply import apply_schedule
    from optsteps.models.diffusers.flux import FluxPipelineModel
    from optsteps.models.diffusers.pipelines import load_pipeline_model
    from optsteps.optimizers.lambda_opt import LambdaOptOptions, lambda_opt_schedule

    before = fingerprint(folders["flux"])
    model = load_pipeline_model(
        folders["flux"], prompts=PROMPTS, guidance=GUIDANCE, device="cpu", height=16, width=16, max_sequence_length=MSL
    )
    assert isinstance(model, FluxPipelineModel) and model.prediction_type == "flow" and model.guidance_embeds
    # state: the unpacked latent [C, H/f, W/f] (f = 2 here); the transformer sees its 2×2 packing [16 tokens, 16]
    assert model.sample_shape == (4, 8, 8) and model.noise_schedule.to_dict() == {
        "family": "flow",
        "num_train_timesteps": 1000,
    }
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (4 * 4 - 256)  # FLUX's dynamic shift for 16 image tokens
    assert model.flow_mu == pytest.approx(mu) and model.flow_shift == pytest.approx(math.exp(mu))
    assert model.identity["flow_shift"] == model.flow_shift
    pipe = model.pipeline

    # the pipeline's own default schedule (its sigmas and what the transformer saw) is flow-shift for this model
    for k in (3, 7):
        rec = TimestepRecorder(pipe.transformer)
        pipe(PROMPTS[0], height=16, width=16, num_inference_steps=k, max_sequence_length=MSL, output_type="latent")
        rec.remove()
        fs = baseline_for("flow-shift", model, k)
        assert pipe.scheduler.sigmas.double().tolist() == pytest.approx(fs.t, abs=1e-6)
        assert rec.seen == pytest.approx(fs.t[:-1], abs=1e-6)

    oss, lam, labels = distill(model, tmp_path / "traj", GUIDANCE)
    assert labels.tolist() == [0, 1, 2]
    assert sorted(model.conditioner.cache) == [0, 1, 2]  # each prompt encoded once; no CFG, so no null condition
    assert model.decode(torch.zeros(2, *model.sample_shape)).shape == (2, 3, 16, 16)

    # FlowMatchEuler (sigmas=, shift 1, no dynamic shift) = optsteps' DDIM; the transformer sees the times verbatim
    theirs, ours, info, seen = _parity(model, pipe, oss, 1, 3, "ddim", GUIDANCE, scheduler="flowmatch")
    assert info["scheduler"] == "FlowMatchEulerDiscreteScheduler" and info["model_calls"] == oss.nfe
    assert theirs.shape == (1, 4, 8, 8) and torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (
        (theirs - ours).abs().max()
    )
    assert seen == pytest.approx(oss.t[:-1], abs=1e-6)
    # UniPC with float flow timesteps = optsteps' UniPC of the schedule's order (FluxPipeline drops sigmas= for a
    # use_flow_sigmas scheduler, so apply pins it), on times that are not multiples of 1/1000
    lam98 = lambda_opt_schedule(model.noise_schedule, 3, "dpmpp2m", LambdaOptOptions(t_start=0.98))
    assert lam98.t[1] * 1000 % 1 > 1e-3
    for sched in (lam, lam98):
        theirs, ours, info, seen = _parity(model, pipe, _moved(sched), 2, 5, "unipc", GUIDANCE, scheduler="unipc")
        assert info["scheduler"] == "UniPCMultistepScheduler" and info["model_calls"] == sched.nfe
        assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
        assert seen == pytest.approx(_moved(sched).t[:-1], abs=1e-6)
    # the published OSS table for FLUX, at another NFE, runs through the pipeline like any schedule
    pub = baseline_for("oss-published", model, 4).with_meta(solver="ddim")
    assert pub.t[0] == 0.9968 and pub.t[-1] == 0.0
    theirs, ours, _, seen = _parity(model, pipe, pub, 0, 1, "ddim", 2.0)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4) and seen == pytest.approx(pub.t[:-1], abs=1e-6)

    # export to the pipeline's own scheduler (dynamic shifting on): shift 1 and no dynamic shift, times verbatim
    from optsteps.integrations.diffusers.export import configure, diffusers_export

    assert pipe.scheduler.config.use_dynamic_shifting
    s, kwargs = configure(pipe.scheduler, oss)
    assert s.sigmas.double().tolist() == pytest.approx(oss.t, abs=1e-6) and kwargs["sigmas"] == list(oss.t[:-1])
    exp = diffusers_export(lam, "UniPCMultistepScheduler")  # the stock scheduler, on request
    assert exp["scheduler"] == "UniPCMultistepScheduler" and exp["set_timesteps"]["sigmas"] == list(lam.t[:-1])
    assert exp["config"] == {"use_flow_sigmas": True, "flow_shift": 1.0, "use_dynamic_shifting": False}

    info = apply_schedule(
        pipe, oss, PROMPTS[0], tmp_path / "flux.png", seed=1, height=16, width=16, max_sequence_length=MSL
    )
    assert info["size"] == [16, 16] and info["guidance"] == 3.5 and (tmp_path / "flux.png").is_file()
    assert fingerprint(folders["flux"]) == before


def test_flux_true_cfg_and_guidance_embedding(folders):
    """The guidance embedding takes the caller's guidance (no CFG batch); true CFG with a negative prompt is CFG
    at true_cfg_scale with the negative prompt as the null condition, as FluxPipeline does it."""
    from optsteps.core.baselines import baseline
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    model = load_pipeline_model(
        folders["flux"],
        prompts=PROMPTS,
        device="cpu",
        height=16,
        width=16,
        max_sequence_length=MSL,
        negative_prompt="blurry",
        true_cfg_scale=2.5,
    )
    assert model.true_cfg and model.prompt(model.null_label) == "blurry"
    den = model.denoiser(torch.tensor([0]), 2.0)
    assert den.guidance == 2.5 and den.null_cond.tolist() == [len(PROMPTS)]
    sched = baseline("uniform-t", model.noise_schedule, 3).with_meta(solver="ddim")
    theirs, ours, info, _ = _parity(
        model, model.pipeline, sched, 0, 2, "ddim", 2.0, negative_prompt="blurry", true_cfg_scale=2.5
    )
    assert info["model_calls"] == 2 * sched.nfe  # the pipeline runs cond and negative separately
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
    # a different embedded guidance changes the prediction (the embedding is used), true CFG off: no null half
    plain = load_pipeline_model(
        folders["flux"], prompts=PROMPTS, device="cpu", height=16, width=16, max_sequence_length=MSL
    )
    x, t = plain.noise(1, 0), torch.tensor(0.7, dtype=torch.float64)
    d1, d4 = plain.denoiser(torch.tensor([1]), 1.0), plain.denoiser(torch.tensor([1]), 4.0)
    assert d4.null_cond is None and d4.guidance == 1.0
    assert (d1(x, t) - d4(x, t)).abs().max() > 1e-4


def test_flux_schnell(folders, tmp_path):
    """FLUX.1-schnell layout: no guidance embedding (guidance is ignored, as by the pipeline), no dynamic shift."""
    from optsteps.core.baselines import baseline_for
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    before = fingerprint(folders["flux-schnell"])
    model = load_pipeline_model(
        folders["flux-schnell"], prompts=PROMPTS, device="cpu", height=16, width=16, max_sequence_length=MSL
    )
    assert not model.guidance_embeds and model.flow_shift == 1.0 and model.flow_mu is None
    pipe = model.pipeline
    pipe(PROMPTS[0], height=16, width=16, num_inference_steps=4, max_sequence_length=MSL, output_type="latent")
    assert pipe.scheduler.sigmas.double().tolist() == pytest.approx(baseline_for("flow-shift", model, 4).t, abs=1e-6)
    oss, lam, _ = distill(model, tmp_path / "traj", 1.0)
    # stock FlowMatchEuler = DDIM and stock UniPC = UniPC; the default OptstepsScheduler = the measured dpmpp2m
    runs = ((oss, "ddim", "flowmatch"), (_moved(lam), "unipc", "unipc"), (lam, "dpmpp2m", "auto"))
    for sched, solver, scheduler in runs:
        theirs, ours, info, seen = _parity(model, pipe, sched, 1, 4, solver, 0.0, scheduler=scheduler)
        assert (info["scheduler"] == "OptstepsScheduler") == (scheduler == "auto")
        assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
        assert seen == pytest.approx(sched.t[:-1], abs=1e-6) and info["model_calls"] == sched.nfe
    x, t = model.noise(1, 0), torch.tensor(0.4, dtype=torch.float64)
    assert torch.equal(model.denoiser(torch.tensor([0]), 1.0)(x, t), model.denoiser(torch.tensor([0]), 7.0)(x, t))
    assert fingerprint(folders["flux-schnell"]) == before


def test_wan(folders, tmp_path):
    from PIL import Image

    from optsteps.core.baselines import baseline, baseline_for
    from optsteps.integrations.diffusers.apply import apply_schedule
    from optsteps.models.diffusers.pipelines import load_pipeline_model
    from optsteps.models.diffusers.wan import WanPipelineModel
    from optsteps.optimizers.lambda_opt import LambdaOptOptions, lambda_opt_schedule

    before = fingerprint(folders["wan"])
    model = load_pipeline_model(
        folders["wan"],
        prompts=PROMPTS,
        guidance=GUIDANCE,
        device="cpu",
        height=16,
        width=16,
        num_frames=5,
        max_sequence_length=MSL,
    )
    assert isinstance(model, WanPipelineModel) and model.prediction_type == "flow"
    # state: the 5-D video latent [C, F', H/f, W/f]: 5 frames → 3 latent frames (temporal factor 2), 16 px → 8
    assert model.sample_shape == (4, 3, 8, 8) and model.num_frames == 5
    assert model.flow_shift == 3.0 and model.baseline_options()["flow-shift"] == {"shift": 3.0, "grid_end": 1e-3}
    assert model.baseline_options()["oss-published"] == {"table": "wan"}
    pipe = model.pipeline

    # the pipeline's own default schedule (UniPC's flow sigmas for K steps) is flow-shift for this model; UniPC
    # moves the start 1 to 1 − 1e-6 and casts its timesteps to int (apply keeps them float)
    for k in (3, 6):
        pipe(
            PROMPTS[0],
            height=16,
            width=16,
            num_frames=5,
            num_inference_steps=k,
            max_sequence_length=MSL,
            output_type="latent",
        )
        fs = baseline_for("flow-shift", model, k)
        assert pipe.scheduler.sigmas.double().tolist() == pytest.approx(_moved(fs).t, abs=1e-6)
        assert pipe.scheduler.timesteps.tolist() == [int(1000 * v) for v in _moved(fs).t[:-1]]

    oss, lam, labels = distill(model, tmp_path / "traj", GUIDANCE)
    assert labels.tolist() == [0, 1, 2] and len(model.conditioner.cache) == len(PROMPTS) + 1
    video = model.decode(torch.zeros(1, *model.sample_shape))
    assert video.shape == (1, 3, 5, 16, 16) and video.abs().max() <= 1
    assert model.images(torch.zeros(1, *model.sample_shape))[0].size == (5 * 16, 16)

    # FlowMatchEuler pinned (WanPipeline takes no sigmas=) = DDIM; UniPC with float timesteps = UniPC; the
    # transformer sees 1000 t verbatim; CFG as the pipeline does it (cond and uncond: two calls a step)
    theirs, ours, info, seen = _parity(model, pipe, oss, 1, 3, "ddim", GUIDANCE, num_frames=5, scheduler="flowmatch")
    assert info["scheduler"] == "FlowMatchEulerDiscreteScheduler" and info["model_calls"] == 2 * oss.nfe
    assert theirs.shape == (1, 4, 3, 8, 8) and torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (
        (theirs - ours).abs().max()
    )
    assert seen[::2] == pytest.approx([1000 * v for v in oss.t[:-1]], abs=1e-3)
    lam98 = lambda_opt_schedule(model.noise_schedule, 3, "dpmpp2m", LambdaOptOptions(t_start=0.98))
    for sched in (lam, lam98):
        theirs, ours, info, seen = _parity(
            model, pipe, _moved(sched), 2, 5, "unipc", GUIDANCE, num_frames=5, scheduler="unipc"
        )
        assert info["scheduler"] == "UniPCMultistepScheduler" and info["num_frames"] == 5
        assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
        assert seen[::2] == pytest.approx([1000 * v for v in _moved(sched).t[:-1]], abs=1e-3)
    pub = baseline_for("oss-published", model, 5).with_meta(solver="ddim")
    assert pub.t[0] == 1.0 and pub.t[-1] == 0.0
    theirs, ours, _, _ = _parity(model, pipe, pub, 0, 1, "ddim", 1.0, num_frames=5)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
    # and the default flow-shift schedule through its own scheduler class (UniPC)
    fs = baseline("flow-shift", model.noise_schedule, 4, **model.baseline_options()["flow-shift"]).with_meta(
        solver="unipc"
    )
    theirs, ours, info, _ = _parity(model, pipe, _moved(fs), 0, 2, "unipc", GUIDANCE, num_frames=5, scheduler="unipc")
    assert info["scheduler"] == "UniPCMultistepScheduler" == type(pipe.scheduler).__name__
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()

    info = apply_schedule(
        pipe, oss, PROMPTS[0], tmp_path / "wan.png", seed=1, height=16, width=16, num_frames=5, max_sequence_length=MSL
    )
    assert info["size"] == [5 * 16, 16] and info["num_frames"] == 5  # a PNG strip of the 5 frames
    assert Image.open(tmp_path / "wan.png").size == (80, 16)

    # export to the pipeline's own UniPC: the schedule's sigmas
    # (stock UniPC then casts timesteps to int; apply does not)
    from optsteps.integrations.diffusers.export import configure

    s, _ = configure(pipe.scheduler, _moved(lam))
    assert s.sigmas.double().tolist() == pytest.approx(_moved(lam).t, abs=1e-6)
    assert s.timesteps.tolist() == [int(1000 * v) for v in _moved(lam).t[:-1]]

    # `optsteps apply --num-frames` on the real CLI app writes the strip
    from typer.testing import CliRunner

    from optsteps.cli.main import app

    path = oss.save(tmp_path / "oss.json")
    r = CliRunner().invoke(
        app,
        [
            "apply",
            "--pipeline",
            str(folders["wan"]),
            "--schedule",
            str(path),
            "--prompt",
            "a red cube",
            "--out",
            str(tmp_path / "cli.png"),
            "--height",
            "16",
            "--width",
            "16",
            "--num-frames",
            "5",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "80×16" in r.output and Image.open(tmp_path / "cli.png").size == (80, 16)
    assert fingerprint(folders["wan"]) == before


def test_wan_refusals_and_flowmatch_scheduler_grid(folders):
    """Sizes the pipeline would silently change are refused; a Wan scheduler that is FlowMatchEuler has its own
    default grid (down to σ_min = s(1/N)), which the flow-shift options reproduce."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from optsteps.core.baselines import baseline
    from optsteps.core.noise_schedules import RectifiedFlow
    from optsteps.errors import OptstepsError
    from optsteps.models.diffusers.pipelines import load_pipeline_model
    from optsteps.models.diffusers.wan import wan_flow_shift

    with pytest.raises(OptstepsError, match="frames − 1 must be a multiple"):
        load_pipeline_model(folders["wan"], prompts=PROMPTS, device="cpu", height=16, width=16, num_frames=4)
    with pytest.raises(OptstepsError, match="multiple of 4×4"):
        load_pipeline_model(folders["wan"], prompts=PROMPTS, device="cpu", height=18, width=16, num_frames=5)
    # `optsteps apply`'s early checks apply the same rule, from the config files (a (t, h, w) patch size)
    from optsteps.cli.checks import check_pipeline_call

    check_pipeline_call(folders["wan"], 16, 16, 5)
    with pytest.raises(OptstepsError, match="multiple of 4×4"):
        check_pipeline_call(folders["wan"], 18, 16, None)
    with pytest.raises(OptstepsError, match="frames − 1 must be a multiple"):
        check_pipeline_call(folders["wan"], None, None, 4)
    for cls, kw in (
        (FlowMatchEulerDiscreteScheduler, {"shift": 5.0}),
        (UniPCMultistepScheduler, {"flow_shift": 5.0, "use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
    ):
        s = cls(**kw)
        shift, grid = wan_flow_shift(dict(s.config, _class_name=cls.__name__), "x")
        for k in (1, 2, 6):
            s.set_timesteps(k)
            fs = baseline("flow-shift", RectifiedFlow(), k, shift=shift, **grid)
            want = _moved(fs).t if cls is UniPCMultistepScheduler else fs.t  # only UniPC moves the start off 1
            assert s.sigmas.double().tolist() == pytest.approx(want, abs=1e-6), (cls.__name__, k)
            assert (k > 1) == (fs.t != baseline("flow-shift", RectifiedFlow(), k, shift=shift).t)  # the grid matters


def test_describe_is_load_without_the_networks(folders):
    """FLUX and Wan: the identity, noise schedule and latent shape the Ray driver and the identify stage read from
    the config files equal the loaded model's, with the options of a params.yaml entry."""
    from optsteps.models import ModelEntry, describe_model, load_model

    cases = [
        ModelEntry(
            "tiny-flux",
            pipeline=str(folders["flux"]),
            height=16,
            width=32,
            device="cpu",
            options={"max_sequence_length": MSL, "negative_prompt": "blurry", "true_cfg_scale": 2.0},
        ),
        ModelEntry(
            "tiny-schnell",
            pipeline=str(folders["flux-schnell"]),
            height=16,
            width=16,
            device="cpu",
            options={"max_sequence_length": MSL},
        ),
        ModelEntry(
            "tiny-wan",
            pipeline=str(folders["wan"]),
            height=16,
            width=16,
            device="cpu",
            options={"num_frames": 5, "max_sequence_length": MSL},
        ),
    ]
    for e in cases:
        card, model = describe_model(e), load_model(e)
        assert card.identity == model.identity and card.name == model.name == e.name
        assert (card.noise_schedule, card.prediction_type, card.sample_shape, card.num_classes, card.null_label) == (
            model.noise_schedule,
            model.prediction_type,
            tuple(model.sample_shape),
            model.num_classes,
            model.null_label,
        )
    assert describe_model(cases[0]).sample_shape == (4, 8, 16)  # 16×32 px, the tiny VAE's factor 2, C = 16/4
