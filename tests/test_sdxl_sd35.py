"""SDXL and SD3.5 parity, as tests/test_pipelines.py checks SD 1.x and SD3: tiny random-weight pipelines built in
the test (tests/tiny_pipelines.py), teacher shards → OSS / λ-opt, and the pipeline's own ``__call__`` through
``generate`` reproducing optsteps' sampler on the same noise to 1e-4.

- SDXL: two CLIP encoders (pooled embeddings from the second), the UNet's "text_time" added conditioning (size
  and crop time ids), zeros for the empty negative (``force_zeros_for_empty_prompt``); DPM-Solver++ (snapped
  integer timesteps) and Euler with exact sigmas, on OSS, λ-opt and the SDXL AYS table.
- SD3.5 (medium layout: RMS QK norm, a dual-attention layer, T5): FlowMatchEuler = DDIM and UniPC with float flow
  timesteps = UniPC; skip-layer guidance is off by default (and does change the result when turned on).
"""

import inspect

import pytest
import torch
from tiny_pipelines import (
    GUIDANCE,
    PROMPTS,
    TimestepRecorder,
    build_sd35,
    build_sdxl,
    distill,  # noqa: E402
    fingerprint,
)

pytestmark = pytest.mark.integration  # real diffusers pipelines (tiny, random weights)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl_sd35")
    return {"sdxl": build_sdxl(tmp / "sdxl", tmp), "sd35": build_sd35(tmp / "sd35", tmp)}


def _close(a, b):
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def test_sdxl(folders, tmp_path):
    from optsteps.core.baselines import baseline_for
    from optsteps.core.solvers import sample
    from optsteps.errors import OptstepsError
    from optsteps.integrations.diffusers.apply import apply_schedule, generate
    from optsteps.integrations.diffusers.export import snap_to_training_timesteps
    from optsteps.models.diffusers.pipelines import PipelineModel, load_pipeline_model

    before = fingerprint(folders["sdxl"])
    model = load_pipeline_model(folders["sdxl"], prompts=PROMPTS, guidance=GUIDANCE, device="cpu")
    assert isinstance(model, PipelineModel) and model.kind == "sdxl" and model.prediction_type == "epsilon"
    assert model.sample_shape == (4, 8, 8) and (model.height, model.width) == (16, 16)
    assert model.conditioner.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]]  # original size, crop, target size
    assert model.baseline_options() == {"ays": {"table": "sdxl"}}
    pipe = model.pipeline

    # what the UNet gets from the pipeline's own call: the same time ids, and the pooled text embeddings
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]), with_kwargs=True)
    pipe(PROMPTS[1], num_inference_steps=1, guidance_scale=GUIDANCE, output_type="latent")
    hook.remove()
    assert seen[0]["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    kw = model.conditioner.kwargs(torch.tensor([len(PROMPTS), 1]))  # null, prompt 1: the pipeline's CFG order
    assert torch.allclose(seen[0]["text_embeds"], kw["added_cond_kwargs"]["text_embeds"], atol=1e-6)
    assert kw["added_cond_kwargs"]["text_embeds"][0].abs().max() == 0  # force_zeros_for_empty_prompt

    oss, lam, labels = distill(model, tmp_path / "traj", GUIDANCE)
    assert labels.tolist() == [0, 1, 2] and len(model.conditioner.cache) == len(PROMPTS) + 1
    den = model.denoiser(torch.tensor([1]), GUIDANCE)
    for sched, solver in ((oss, "ddim"), (lam, "dpmpp2m")):  # DPMSolverMultistep on snapped integer timesteps
        snapped, _ = snap_to_training_timesteps(sched)
        x = model.initial_state(model.noise(1, 3, 0), snapped.t[0])
        theirs, info = generate(
            pipe, sched, PROMPTS[1], seed=3, guidance=GUIDANCE, scheduler="dpmsolver", output_type="latent"
        )
        assert info["scheduler"] == "DPMSolverMultistepScheduler" and info["model_calls"] == sched.nfe
        _close(theirs, sample(den, x, snapped, solver))
    # Euler with exact sigmas on the SDXL AYS table (ends at σ = 0, where diffusers' Euler ends) = optsteps' DDIM
    ays = baseline_for("ays", model, 5).with_meta(solver="ddim")
    # K = 5 takes every second of the 11 levels: the SDXL table's (3.771, 1.342, …), not SD 1.5's (3.861, 1.396, …)
    assert ays.sigmas[1:5].tolist() == pytest.approx([3.771, 1.342, 0.555, 0.234], rel=1e-9) and ays.t[-1] == 0.0
    x = model.initial_state(model.noise(1, 4, 0), ays.t[0])
    theirs, info = generate(pipe, ays, PROMPTS[1], seed=4, guidance=GUIDANCE, scheduler="euler", output_type="latent")
    assert info["scheduler"] == "EulerDiscreteScheduler" and info["sigmas"][-1] == 0
    _close(theirs, sample(den, x, ays, "ddim"))

    info = apply_schedule(pipe, oss, PROMPTS[0], tmp_path / "sdxl.png", seed=1, guidance=GUIDANCE)
    assert info["size"] == [16, 16] and (tmp_path / "sdxl.png").is_file() and info["scheduler"] == "OptstepsScheduler"
    with pytest.raises(OptstepsError, match="are for FLUX/Wan pipelines"):
        load_pipeline_model(folders["sdxl"], device="cpu", num_frames=5)
    assert fingerprint(folders["sdxl"]) == before


def test_sd35(folders, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from optsteps.core.schedule import Schedule
    from optsteps.core.solvers import sample
    from optsteps.integrations.diffusers.apply import generate
    from optsteps.models.diffusers.pipelines import load_pipeline_model
    from optsteps.optimizers.lambda_opt import LambdaOptOptions, lambda_opt_schedule

    before = fingerprint(folders["sd35"])
    model = load_pipeline_model(
        folders["sd35"], prompts=PROMPTS, guidance=GUIDANCE, device="cpu", max_sequence_length=8
    )
    assert model.kind == "sd3" and model.flow_shift == 3.0 and model.sample_shape == (4, 8, 8)
    pipe = model.pipeline
    assert pipe.text_encoder_3 is not None and pipe.transformer.config.qk_norm == "rms_norm"
    assert list(pipe.transformer.config.dual_attention_layers) == [0]
    assert inspect.signature(StableDiffusion3Pipeline.__call__).parameters["skip_guidance_layers"].default is None

    oss, lam, labels = distill(model, tmp_path / "traj", GUIDANCE)
    assert labels.tolist() == [0, 1, 2]
    den = model.denoiser(torch.tensor([2]), GUIDANCE)
    kw = dict(seed=5, guidance=GUIDANCE, output_type="latent", max_sequence_length=8)
    x = model.initial_state(model.noise(1, 5, 0), oss.t[0])
    rec = TimestepRecorder(pipe.transformer)
    theirs, info = generate(pipe, oss, PROMPTS[2], scheduler="flowmatch", **kw)
    rec.remove()
    assert info["scheduler"] == "FlowMatchEulerDiscreteScheduler" and rec.seen == pytest.approx(
        [1000 * v for v in oss.t[:-1]], abs=1e-3
    )
    ours = sample(den, x, oss, "ddim")
    _close(theirs, ours)
    lam98 = lambda_opt_schedule(model.noise_schedule, 3, "dpmpp2m", LambdaOptOptions(t_start=0.98))
    # UniPC moves a start t = 1 to 1 − 1e-6 (finite λ): what it runs is the schedule moved there
    for run, ref in ((lam, Schedule((1 - 1e-6,) + lam.t[1:], lam.noise_schedule)), (lam98, lam98)):
        xs = model.initial_state(model.noise(1, 5, 0), ref.t[0])
        theirs_u, info = generate(pipe, run, PROMPTS[2], scheduler="unipc", **kw)
        assert info["scheduler"] == "UniPCMultistepScheduler"
        _close(theirs_u, sample(den, xs, ref, "unipc", order=info["solver_order"]))

    # skip-layer guidance, when asked for, changes the run: the parity above is with it off (the default)
    slg, info = generate(
        pipe,
        oss,
        PROMPTS[2],
        skip_guidance_layers=[1],
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=1.0,
        **kw,
    )
    assert info["model_calls"] > oss.nfe and (slg - ours).abs().max() > 1e-3
    assert fingerprint(folders["sd35"]) == before
