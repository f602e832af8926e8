"""The model-agnostic metrics on real diffusers pipelines built tiny with random weights (as in test_pipelines.py):
a latent Stable Diffusion pipeline (images decoded by its VAE) and a pixel DDPM pipeline get FID/KID to the
teacher in Inception features, PSNR and L2 to the teacher with intervals, and FID against a reference folder;
no digits metric appears. Inception on CPU is slow, so the counts are tiny."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration  # real diffusers pipelines and the bundled Inception-v3

import transformers  # noqa: F401,E402 - pinned in requirements.txt: a missing install must fail, not skip
from tiny_pipelines import PROMPTS, build_ddpm, build_sd  # noqa: E402

from optsteps.core.baselines import baseline  # noqa: E402
from optsteps.evaluate.options import EvaluateOptions  # noqa: E402
from optsteps.evaluate.run import Evaluator, evaluate_grid, images_of  # noqa: E402
from optsteps.teacher.config import TeacherConfig  # noqa: E402


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    tmp = tmp_path_factory.mktemp("sd")
    return load_pipeline_model(build_sd(tmp / "sd", tmp), prompts=PROMPTS, guidance=2.0, device="cpu")


def grid(model, ev, solver="ddim"):
    ns = model.noise_schedule
    scheds = [
        baseline(k, ns, k_nfe, model=model.name).with_meta(solver=solver)
        for k, k_nfe in (("uniform-t", 2), ("uniform-lambda", 3))
    ]
    tcfg = TeacherConfig(solver="unipc", steps=6, seed=0, guidance=getattr(model, "guidance", 1.0))
    return evaluate_grid(
        model, scheds, tcfg, EvaluateOptions(n=6, seed=5, guidance=tcfg.guidance), evaluator=ev, return_resamples=True
    )


def test_latent_pipeline_gets_teacher_metrics_in_decoded_images(sd, tmp_path):
    from PIL import Image

    from optsteps.io.images import to_uint8

    assert sd.sample_shape == (4, 8, 8)
    # a reference folder of real images: here the decoded images of some other latents, saved as PNG
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, a in enumerate(to_uint8(sd.decode(torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(3))))):
        Image.fromarray(a).save(refs / f"{i}.png")
    ev = Evaluator(
        None,
        tmp_path / "cache",
        inception_n=4,
        kid_subsets=2,
        teacher_inception_n=4,
        reference_images=refs,
        bootstrap=20,
        bootstrap_seed=1,
    )
    rows, res = grid(sd, ev)
    assert [r["method"] for r in rows] == ["teacher", "uniform-t", "uniform-lambda"]
    assert not any(k.endswith("_digitsnet") for r in rows for k in r)  # no digits classifier for this model
    for r in rows[1:]:
        for k in (
            "fid_teacher_inception",
            "kid_teacher_inception",
            "fid_inception",
            "kid_inception",
            "l2_to_teacher",
            "psnr_to_teacher",
        ):
            assert np.isfinite(r[k]), (k, r)
            assert k in r["ci95"] and len(res[rows.index(r)][k]) == 20
        assert r["n_teacher_inception"] == 4 and r["n_inception"] == 4 and r["fid_teacher_inception"] > 0
        assert 0 < r["psnr_to_teacher"] < 106 and r["l2_to_teacher"] > 0
    assert "fid_teacher_inception" not in rows[0] and rows[0]["l2_to_teacher"] == 0.0
    assert "fid_inception" in rows[0]  # the teacher against the reference folder
    # the teacher's Inception features and the folder's are cached by content hash
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert names.count("inception") == 2 and names.count("teacher") == 1
    # PSNR is computed on the decoded images, L2 on the latents
    assert images_of(sd, torch.zeros(1, 4, 8, 8)).shape == (1, 3, 16, 16)


def test_pixel_pipeline_images_are_its_states(tmp_path):
    from optsteps.models.diffusers.pipelines import load_pipeline_model

    model = load_pipeline_model(build_ddpm(tmp_path / "ddpm"), device="cpu")
    x = torch.zeros(2, *model.sample_shape)
    assert images_of(model, x) is x  # a pixel model: its states are its images
    ev = Evaluator(None, None, inception_n=0, kid_subsets=2, teacher_inception_n=3, bootstrap=10)
    rows, _ = grid(model, ev)
    for r in rows[1:]:
        assert {"fid_teacher_inception", "psnr_to_teacher", "l2_to_teacher"} <= set(r["ci95"])
        assert "fid_inception" not in r  # no reference folder, no real images: no fid_inception
