import json
import subprocess
import sys

import pytest

from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.pipeline.config import load_params, params_from_dict


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "optsteps.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.integration  # the CLI in a subprocess
def test_schedule_baseline_json_round_trips():
    r = cli("schedule", "baseline", "uniform-lambda", "--model", "digits", "--nfe", "5", "--solver", "unipc", "--json")
    assert r.returncode == 0, r.stderr
    s = Schedule.from_json(r.stdout)
    assert s.nfe == 5 and s.method == "uniform-lambda" and s.model == "digits" and s.solver == "unipc"
    assert json.loads(r.stdout)["noise_schedule"]["family"] == "vp"


@pytest.mark.integration  # the CLI in a subprocess
def test_bad_input_exits_2_with_the_fix():
    r = cli("schedule", "baseline", "ays", "--model", "digits", "--nfe", "5")
    assert r.returncode == 2 and "Align-Your-Steps tables exist only" in r.stderr
    r = cli("schedule", "baseline", "karras", "--model", "digits", "--nfe", "0")
    assert r.returncode == 2 and "nfe must be" in r.stderr


def test_repository_params_parse():
    p = load_params("params.yaml")
    assert p.train_config("digits").steps >= 1 and p.evaluate.nfe and p.evaluate.seed != p.teacher.seed


@pytest.mark.parametrize(
    "d,match",
    [
        ({"trian": {}}, "unknown top-level"),
        ({"train": {"digits": {"stpes": 3}}}, "unknown key"),
        ({"train": {"digits": {"steps": "many"}}}, "must be an integer"),
        ({"train": {"digits": {"ema": 1.5}}}, "ema < 1"),
        ({"evaluate": {"nfe": [0]}}, "evaluate.nfe"),
        ({"evaluate": {"seed": 0}}, "held-out seeds"),
        ({"oss": {"distance": "l1"}}, "oss.distance"),
        ({"flow": {"task_workers": -1}}, "flow.task_workers"),
        ({"flow": {"workers": 2}}, "unknown key"),
    ],
)
def test_params_errors(d, match):
    with pytest.raises(OptstepsError, match=match):
        params_from_dict(d)
    with pytest.raises(OptstepsError, match="not found"):
        load_params("/nonexistent/params.yaml")


@pytest.mark.integration  # the CLI in a subprocess
def test_geneval_needs_a_text_to_image_pipeline(tmp_path):
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text(
        '{"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}\n'
    )
    r = cli(
        "evaluate",
        "--model",
        "gmm",
        "--schedule",
        "uniform-lambda",
        "--nfe",
        "4",
        "--n",
        "8",
        "--no-teacher",
        "--no-log",
        "--geneval-prompts",
        str(prompts),
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "needs a text-to-image diffusers pipeline" in r.stderr


def test_evaluate_options_default_to_params(tmp_path):
    (tmp_path / "params.yaml").write_text("evaluate:\n  n: 6\n  seed: 4321\n")
    r = cli(
        "evaluate",
        "--model",
        "gmm",
        "--schedule",
        "uniform-lambda",
        "--nfe",
        "4",
        "--no-teacher",
        "--no-log",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 6  # evaluate.n, not a CLI default


def test_registry_commands_default_to_the_params_tracking_uri(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import optsteps.integrations.mlflow_registry as mr
    from optsteps.cli.registry import registry_app

    seen = []

    class FakeRegistry:
        def __init__(self, uri=None, **kw):
            seen.append(uri)

        def list_schedules(self, model, nfe):
            return []

    monkeypatch.setattr(mr, "Registry", FakeRegistry)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("mlflow:\n  tracking_uri: http://127.0.0.1:5999\n")
    r = CliRunner()
    assert r.invoke(registry_app, ["list", "--params", str(params)]).exit_code == 0
    assert r.invoke(registry_app, ["list", "--params", str(params), "--tracking-uri", "sqlite:///x.db"]).exit_code == 0
    params.write_text("mlflow:\n  tracking_uri: ''\n")
    assert r.invoke(registry_app, ["list", "--params", str(params)]).exit_code == 0
    assert seen == ["http://127.0.0.1:5999", "sqlite:///x.db", None]
