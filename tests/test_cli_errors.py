"""Bad input through the real CLI: one line `error: …` naming the argument and the fix, exit 2, no traceback,
and no file in the workspace changed (nothing half-written, no registry database created)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optsteps.models.digits import train_digits
from optsteps.pipeline.config import TrainConfig

pytestmark = pytest.mark.integration  # the CLI in subprocesses

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws")
    train_digits(
        "digits",
        TrainConfig(steps=2, batch_size=8, warmup_steps=1, threads=1),
        d / "artifacts" / "models" / "digits",
        progress=False,
    )
    (d / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (d / "bad_ns.json").write_text('{"noise_schedule": "vp", "t": [1.0, 0.5, 0.001]}')
    (d / "bad_t.json").write_text('{"noise_schedule": {"family": "edm"}, "t": "10"}')
    for name, text in BAD_PARAMS.items():
        (d / f"{name}.yaml").write_text(text)
    (d / "latin1.yaml").write_bytes(b"teacher:\n  solver: caf\xe9\n")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "data" / "digits").mkdir(parents=True)
    (d / "data" / "digits" / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    return d


BAD_PARAMS = {  # params files wrong by value: each is refused at load, before any work
    "p_list": "- digits\n- sd15\n",
    "p_number": "3\n",
    "p_artifacts_null": "artifacts: null\n",
    "p_oss_samples": "oss:\n  samples: -5\n",
    "p_threads": "evaluate:\n  threads: 0\n",
    "p_guidance_nan": "teacher:\n  guidance: .nan\n",
    "p_token": "mlflow:\n  tracking_uri: https://mlflow.example.com/?token=abc123\n",
    "p_userinfo": "mlflow:\n  tracking_uri: alice:s3cret@mlflow.example.com:5000\n",
    "p_metric": "mlflow:\n  metric: fid\n",
    "p_solver": "oss:\n  solvers: [euler]\n",
    "p_nfe": "oss:\n  nfe: [100]\n",
    "p_baseline": "evaluate:\n  baselines: [karas]\n",
    "p_models_list": "models:\n  - digits\n",
    "p_empty": "# nothing but a comment\n",
}


def _params_case(name, key):
    return (["stage", "lambda-opt", "--model", "digits", "--params", f"{name}.yaml"], key)


def snapshot(d: Path) -> dict:
    return {
        p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


CASES = [
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--guidance", "nan", "--out", "g.png"], "--guidance"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--guidance", "inf", "--out", "g.png"], "--guidance"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--n", "0", "--out", "g.png"], "--n 0"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--nfe", "1000000000000", "--out", "g.png"], "--nfe"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--out", "grid.txt"], "--out"),
    (["sample", "--model", "digits", "--schedule", "nosuch@champion-nfe5", "--out", "g.png"], "no schedule registry"),
    (["sample", "--model", "digits", "--schedule", "bad_ns.json", "--out", "g.png"], "noise_schedule"),
    (["sample", "--model", "digits", "--schedule", "bad_t.json", "--out", "g.png"], "schedule times"),
    (["sample", "--model", "digits", "--schedule", "missing.json", "--out", "g.png"], "does not exist"),
    (["sample", "--model", "nosuch", "--schedule", "uniform-t", "--out", "g.png"], "unknown model"),
    (["sample", "--model", "digits", "--schedule", "karras", "--solver", "heun", "--out", "g.png"], "unknown solver"),
    (["schedule", "baseline", "karras", "--model", "digits", "--nfe", "0"], "nfe must be"),
    _params_case("p_list", "must be a mapping of sections"),
    _params_case("p_number", "must be a mapping of sections"),
    _params_case("p_artifacts_null", "artifacts must be a folder path"),
    _params_case("p_oss_samples", "oss.samples = -5"),
    _params_case("p_threads", "evaluate.threads = 0"),
    _params_case("p_guidance_nan", "teacher.guidance = nan"),
    _params_case("p_token", "contains credentials"),
    _params_case("p_userinfo", "contains credentials"),
    _params_case("p_metric", "mlflow.metric = 'fid'"),
    _params_case("p_solver", "oss.solvers = ['euler']"),
    _params_case("p_nfe", "below teacher.steps"),
    _params_case("p_baseline", "'karas' is not a baseline"),
    _params_case("p_models_list", "models: must map"),
    _params_case("p_empty", "p_empty.yaml is empty"),
    # flags that override params values pass the params.yaml rules (issue 28 §2)
    (["trajectories", "--model", "digits", "--teacher-steps", "1"], "teacher.steps = 1 (given as --teacher-steps 1)"),
    (["trajectories", "--model", "digits", "--samples", "0"], "trajectories.samples = 0 (given as --samples 0)"),
    (["schedule", "lambda-opt", "--model", "digits", "--nfe", "5", "--p", "1e308"], "lambda_opt.p = 1e+308"),
    (["schedule", "lambda-opt", "--model", "digits", "--nfe", "5", "--p", "nan"], "lambda_opt.p = nan"),
    (["schedule", "lambda-opt", "--model", "digits", "--nfe", "5000"], "lambda_opt.nfe = [5000] (given as --nfe 5000)"),
    (["schedule", "lambda-opt", "--model", "digits", "--nfe", "5", "--error-model", "magic"], "--error-model magic"),
    (
        ["schedule", "lambda-opt", "--model", "digits", "--nfe", "5", "--solver", "heun"],
        "lambda_opt.solvers = ['heun']",
    ),
    (["schedule", "lambda-opt", "--model", "digits", "--nfe", "5", "--trunc", "-1"], "lambda_opt.trunc = -1"),
    (["schedule", "oss", "--model", "digits", "--nfe", "100"], "below teacher.steps"),
    (["schedule", "gits", "--model", "digits", "--nfe", "5", "--solver", "euler"], "oss.solvers = ['euler']"),
    (
        ["evaluate", "--model", "digits", "--schedule", "uniform-t", "--nfe", "5", "--n", "0", "--no-log"],
        "evaluate.n = 0 (given as --n 0)",
    ),
    # --params is read and checked even where the command needs nothing from it
    (
        ["schedule", "baseline", "uniform-t", "--model", "digits", "--nfe", "5", "--params", "p_list.yaml"],
        "must be a mapping of sections",
    ),
    (["schedule", "baseline", "uniform-t", "--model", "digits", "--nfe", "5", "--params", "p_empty.yaml"], "is empty"),
    (["schedule", "baseline", "uniform-t", "--model", "digits", "--nfe", "5", "--params", "nosuch.yaml"], "not found"),
    (["registry", "list", "--tracking-uri", "http://127.0.0.1:1"], "cannot reach the MLflow tracking server"),
    (["registry", "list", "--tracking-uri", "sqlite:///typo/mlruns.db"], "no schedule registry at"),
    # issue 28 (the full table runs in-process in tests/test_reliability.py): a subprocess subset for no traceback
    (["stage", "lambda-opt", "--model", "digits", "--params", "latin1.yaml"], "the params file is not UTF-8"),
    (["sample", "--model", "digits", "--schedule", "deep.json", "--out", "g.png"], "nested too deeply"),
    (
        ["sample", "--model", "digits", "--schedule", "uniform-t", "--seed", "9223372036854775807", "--out", "g.png"],
        "--seed 9223372036854775807 is out of range",
    ),
    (["stage", "model", "--model", "data/digits"], "is a built-in model"),
    (["registry", "list", "--tracking-uri", "http://alice:s3cret@127.0.0.1:1"], "http://***@127.0.0.1:1 within"),
]


@pytest.mark.parametrize(
    "args,names", CASES, ids=[" ".join(a[:1] + a[3:6]) if a[0] != "stage" else a[-1] for a, _ in CASES]
)
def test_bad_input_is_one_error_line_and_changes_nothing(ws, args, names):
    before = snapshot(ws)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "optsteps.cli.main", *args], cwd=ws, capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and names in lines[0], lines[0]
    assert snapshot(ws) == before
