"""The embedded models on a tiny training budget (the real budget is `make run`), the classifier, the
diffusers adapter on a tiny random-weight pipeline saved in the test, and the gmm model."""

import json

import pytest
import torch

from optsteps.core.baselines import baseline
from optsteps.errors import OptstepsError
from optsteps.models import gmm_model, load_model
from optsteps.models.classifier import load_classifier, train_classifier
from optsteps.models.digits import train_digits
from optsteps.models.sampling import generate
from optsteps.pipeline.config import ClassifierConfig, TrainConfig

TINY = TrainConfig(steps=4, batch_size=16, warmup_steps=2, threads=1)


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    for name in ("digits", "digits-flow"):
        train_digits(name, TINY, root / "models" / name, progress=False)
    return root


@pytest.mark.parametrize("name", ["digits", "digits-flow"])
def test_trained_model_loads_with_metadata_and_samples(arts, name):
    meta = json.loads((arts / "models" / name / "optsteps_model.json").read_text())
    assert meta["data_sha256"] and meta["weights_sha256"] and meta["params"]["steps"] == 4
    assert meta["noise_schedule"]["family"] == ("vp" if name == "digits" else "flow")
    m = load_model(name, arts)
    x = generate(m, baseline("uniform-lambda", m.noise_schedule, 3), "unipc", 12, seed=0)
    assert x.shape == (12, 1, 8, 8) and torch.isfinite(x).all()
    x2 = generate(m, baseline("uniform-lambda", m.noise_schedule, 3), "unipc", 12, seed=0, guidance=2.0)
    assert not torch.allclose(x, x2)


def test_training_is_deterministic_given_the_seed(arts, tmp_path):
    train_digits("digits", TINY, tmp_path / "again", progress=False)
    a = json.loads((arts / "models" / "digits" / "optsteps_model.json").read_text())["weights_sha256"]
    b = json.loads((tmp_path / "again" / "optsteps_model.json").read_text())["weights_sha256"]
    assert a == b


def test_seeded_noise_depends_only_on_seed_and_index():
    m = gmm_model()
    assert torch.equal(m.noise(10, 3)[4:], m.noise(6, 3, start=4))
    assert not torch.equal(m.noise(4, 3), m.noise(4, 4))


def test_classifier_trains_and_loads(tmp_path):
    out = train_classifier(ClassifierConfig(epochs=1), tmp_path / "clf", progress=False)
    meta = json.loads((out / "optsteps_model.json").read_text())
    assert 0 <= meta["holdout_accuracy"] <= 1 and meta["holdout_size"] > 300
    clf = load_classifier(out)
    assert clf(torch.zeros(2, 1, 8, 8)).shape == (2, 10) and clf.features(torch.zeros(2, 1, 8, 8)).shape == (2, 128)


def test_missing_models_name_the_command(tmp_path):
    with pytest.raises(OptstepsError, match="optsteps train --model digits"):
        load_model("digits", tmp_path)
    with pytest.raises(OptstepsError, match="optsteps train --model classifier"):
        load_classifier(tmp_path)
    with pytest.raises(OptstepsError, match="unknown model"):
        load_model("imagenet", tmp_path)


@pytest.mark.integration  # a real diffusers DDPMPipeline saved and loaded
def test_diffusers_pipeline_folder_adapter(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    sched = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    m = load_model(str(tmp_path / "pipe"))
    assert m.noise_schedule.to_dict()["beta_schedule"] == "scaled_linear" and m.prediction_type == "v_prediction"
    assert m.sample_shape == (3, 8, 8)
    x = generate(m, baseline("ays", m.noise_schedule, 5), "dpmpp2m", 2, seed=0)  # AYS exists for this schedule
    assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(OptstepsError, match="not a UNet2D diffusers pipeline"):
        load_model(str(tmp_path))
    with pytest.raises(OptstepsError, match="local cache"):
        load_model("nobody/no-such-model")


def test_ema_warm_up_forgets_the_random_initialisation():
    from optsteps.models.digits import ema_decay

    assert ema_decay(0, 0.999) == 0.1 and ema_decay(10**6, 0.999) == 0.999
    left = 1.0
    for step in range(1500):
        left *= ema_decay(step, 0.999)
    assert left < 1e-6  # a constant 0.999 would leave 0.999**1500 ≈ 22 % of the initial weights
