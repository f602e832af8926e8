"""params.yaml ``models:`` entries: names (slugs), validation at load (one error naming the key and the fix), the
per-model merge of guidance and overrides, and what a ``--model`` argument resolves to. Pipeline folders here are
config-only stand-ins (model_index.json, scheduler and component configs): validation reads nothing else."""

import json
from pathlib import Path

import pytest
import yaml

import optsteps.pipeline.stages as stages
from optsteps.errors import OptstepsError
from optsteps.models import ModelEntry, entry_for
from optsteps.models.names import slug_for_pipeline, slugify
from optsteps.pipeline import layout
from optsteps.pipeline.config import load_params, params_from_dict

SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}


def fake_pipeline(folder: Path, cls: str = "StableDiffusionPipeline") -> Path:
    """A folder with the config files of a pipeline (no weights)."""
    (folder / "scheduler").mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": cls, "unet": ["diffusers", "UNet2DConditionModel"]})
    )
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    for comp, cfg in (("unet", {"sample_size": 8, "in_channels": 4}), ("vae", {"block_out_channels": [8, 16]})):
        (folder / comp).mkdir()
        (folder / comp / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def sd(tmp_path):
    return fake_pipeline(tmp_path / "My SD v1.5")


def test_slugs():
    assert slugify("SD v1.5") == "sd-v1-5" and slugify("///") == "model" and slugify("a__b") == "a__b"
    assert slug_for_pipeline("stabilityai/stable-diffusion-3-medium") == "stabilityai-stable-diffusion-3-medium"


def test_slug_of_a_folder_is_its_name(sd):
    assert slug_for_pipeline(str(sd)) == "my-sd-v1-5"
    assert slug_for_pipeline(str(sd) + "/") == "my-sd-v1-5"


def test_a_pipeline_entry_and_its_merged_params(sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red cube\n")
    p = params_from_dict(
        {
            "models": {
                "digits": {},
                "sd15": {
                    "pipeline": str(sd),
                    "prompts": "prompts.txt",
                    "guidance": 7.5,
                    "height": 32,
                    "width": 16,
                    "dtype": "float16",
                    "device": "cuda",
                    "overrides": {"lambda_opt": {"p": 2}, "teacher": {"steps": 20}},
                },
            }
        }
    )
    e = p.models["sd15"]
    assert (e.pipeline, e.prompts, e.guidance, e.height, e.width, e.dtype, e.device) == (
        str(sd),
        "prompts.txt",
        7.5,
        32,
        16,
        "float16",
        "cuda",
    )
    q = p.for_model("sd15")
    assert q.lambda_opt.p == 2.0 and isinstance(q.lambda_opt.p, float) and q.teacher.steps == 20
    assert (
        q.teacher.guidance == q.evaluate.guidance == 7.5
    )  # the entry's guidance is the model's teacher and evaluation CFG
    assert p.lambda_opt.p == 1.0 and p.teacher.guidance == 1.0 and p.teacher.steps == 100  # the base is untouched
    assert p.for_model("digits").teacher == p.teacher
    assert q.for_model("sd15") is q and q.for_model("digits").teacher == p.teacher  # merged once, from the base
    assert p.entry(str(sd)) is e and p.entry(str(sd) + "/") is e  # a --model path that is an entry's folder
    assert layout.trajectories_dir(p, str(sd)) == Path("artifacts/trajectories/sd15")


def test_a_cli_path_not_in_params_gets_the_slug_of_its_folder(sd):
    p = params_from_dict({})
    e = p.entry(str(sd))
    assert e == ModelEntry("my-sd-v1-5", pipeline=str(sd))
    assert layout.trajectories_dir(p, str(sd)) == Path("artifacts/trajectories/my-sd-v1-5")
    assert layout.schedule_path(p, str(sd), "oss", "unipc", 5) == Path(
        "results/schedules/my-sd-v1-5/oss/unipc-nfe5.json"
    )
    assert layout.eval_path(p, str(sd)) == Path("results/eval/my-sd-v1-5.json")
    assert entry_for("digits", {}) == ModelEntry("digits") and p.entry("gmm") == ModelEntry("gmm")


def test_the_default_entry_round_trips():
    p = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    assert list(p.models) == ["digits"] and p.models["digits"] == ModelEntry("digits")
    assert p.models["digits"].as_param() == {}


@pytest.mark.parametrize(
    "models,match",
    [
        (["digits"], r"models: must map each model's name to its entry.*\{digits: \{\}\}"),
        ({"SD 1.5": {"pipeline": "x"}}, r"models.SD 1.5: .* call it 'sd-1-5'"),
        ({"sd.v1": {"pipeline": "x"}}, r"call it 'sd-v1'"),
        ({"classifier": {}}, r"models.classifier: 'classifier' is the digits judge"),
        ({"sd15": {}}, r"models.sd15: 'sd15' is not an embedded model .* add `pipeline: FOLDER_OR_HUB_ID`"),
        ({"digits": {"prompts": "p.txt"}}, r"models.digits: \['prompts'\] apply to diffusers pipelines only"),
        (
            {"digits": {"overrides": {"train": {"steps": 3}}}},
            r"models.digits.overrides: unknown section\(s\) \['train'\]",
        ),
        (
            {"digits": {"overrides": {"oss": {"nfes": [3]}}}},
            r"unknown key\(s\) \['nfes'\] in models.digits.overrides.oss",
        ),
        (
            {"digits": {"overrides": {"oss": {"samples": "many"}}}},
            r"models.digits.overrides.oss.samples must be an integer",
        ),
        ({"digits": {"overrides": {"teacher": {"seed": 1234}}}}, r"held-out seeds"),  # = evaluate.seed, once merged
        ({"digits": {"overrides": {"oss": 3}}}, r"models.digits.overrides must map sections to settings"),
        ({"digits": {"guidance": "high"}}, r"models.digits.guidance must be a number"),
        ({"digits": "yes"}, r"models.digits must be a mapping"),
        ({"gmm": {"pipeline": "x"}}, r"models.gmm: 'gmm' is the name of a built-in model"),
    ],
)
def test_bad_entries_name_the_key_and_the_fix(models, match):
    with pytest.raises(OptstepsError, match=match):
        params_from_dict({"models": models})


def test_bad_pipeline_entries_name_the_key_and_the_fix(sd, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    def bad(entry, match):
        with pytest.raises(OptstepsError, match=match):
            params_from_dict({"models": {"mine": entry}})

    bad({"pipeline": str(tmp_path / "nowhere")}, r"models.mine.pipeline: .*does not exist")
    bad({"pipeline": "no-org/no-model"}, r"models.mine.pipeline: .*local cache.*huggingface-cli download")
    bad({"pipeline": str(sd), "colour": "red"}, r"models.mine: unknown key\(s\) \['colour'\]; allowed: ")
    bad({"pipeline": str(sd), "prompts": str(tmp_path / "none.txt")}, r"models.mine.prompts: prompt file .* not found")
    (tmp_path / "empty.txt").write_text("\n")
    bad({"pipeline": str(sd), "prompts": str(tmp_path / "empty.txt")}, r"models.mine.prompts: .* holds no prompts")
    bad({"pipeline": str(sd), "dtype": "int8"}, r"models.mine.dtype must be one of auto, float32")
    bad({"pipeline": str(sd), "dtype": "float16", "device": "cpu"}, r"models.mine.dtype: .*on the CPU use float32")
    bad({"pipeline": str(sd), "device": "tpu"}, r"models.mine.device must be auto, cpu or cuda")
    bad({"pipeline": str(sd), "height": 13}, r"models.mine height: image size 13×16 must be a multiple of 2")
    bad({"pipeline": str(sd), "width": 0}, r"models.mine.width must be a positive integer")
    kandinsky = fake_pipeline(tmp_path / "k", cls="KandinskyPipeline")
    bad({"pipeline": str(kandinsky)}, r"models.mine.pipeline: .* is a KandinskyPipeline .*supports DDPMPipeline")
    ddpm = fake_pipeline(tmp_path / "d", cls="DDPMPipeline")
    bad(
        {"pipeline": str(ddpm), "prompts": "p.txt"},
        r"models.mine: DDPMPipeline is unconditional .*remove \['prompts'\]",
    )
    bad({"pipeline": str(ddpm), "guidance": 3}, r"models.mine.guidance: DDPMPipeline has no null condition")
    (tmp_path / "bare").mkdir()
    bad({"pipeline": str(tmp_path / "bare")}, r"models.mine.pipeline: .* has no model_index.json")


def test_a_name_given_twice_is_refused(tmp_path, sd):
    path = tmp_path / "params.yaml"
    path.write_text(
        f"models:\n  sd15: {{pipeline: '{sd}'}}\n  digits: {{}}\n  sd15: {{pipeline: '{sd}', guidance: 2}}\n"
    )
    with pytest.raises(OptstepsError, match=r"params.yaml line 4: 'sd15' is given twice"):
        load_params(path)
    path.write_text(yaml.safe_dump({"models": {"sd15": {"pipeline": str(sd)}, "digits": {}}}, sort_keys=False))
    assert list(load_params(path).models) == ["sd15", "digits"]


def test_only_embedded_models_train(sd):
    p = params_from_dict({"models": {"sd15": {"pipeline": str(sd)}}})
    with pytest.raises(OptstepsError, match=r"'sd15' is not trainable.*`optsteps stage model --model sd15`"):
        stages.train(p, "sd15")
