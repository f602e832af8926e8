"""Commands that print a result never write the pipeline's outputs: `optsteps schedule baseline|lambda-opt|oss|gits`
print the schedule and write only the file `--out` names; only `optsteps stage …` writes results/schedules/."""

import hashlib
import json

import pytest
from typer.testing import CliRunner

from optsteps.cli.main import app
from optsteps.core.schedule import Schedule

PARAMS = """\
models:
  gmm: {}
teacher:
  steps: 8
trajectories:
  samples: 4
  shard_size: 4
oss:
  nfe: [3]
  solvers: [ddim]
  samples: 4
  refine: false
  gits: true
lambda_opt:
  nfe: [3]
  solvers: [unipc]
"""


def hashes(root) -> dict:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run(*args):
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS)
    run("trajectories", "--model", "gmm", "--no-ray")
    run("stage", "lambda-opt", "--model", "gmm")
    run("stage", "oss", "--model", "gmm")
    return tmp_path


def test_schedule_commands_leave_the_pipelines_schedules_unchanged(ws):
    schedules = ws / "results" / "schedules"
    before = hashes(schedules)
    assert set(before) == {"gmm/lambda-opt/unipc-nfe3.json", "gmm/oss/ddim-nfe3.json", "gmm/gits/ddim-nfe3.json"}
    commands = {  # each differs from the stage's file (another p, solver or method), as a user's ad-hoc run would
        "baseline": ["schedule", "baseline", "uniform-t", "--model", "gmm", "--nfe", "3"],
        "lambda-opt": ["schedule", "lambda-opt", "--model", "gmm", "--nfe", "3", "--solver", "unipc", "--p", "2"],
        "oss": ["schedule", "oss", "--model", "gmm", "--nfe", "3", "--solver", "unipc"],
        "oss-same": ["schedule", "oss", "--model", "gmm", "--nfe", "3", "--solver", "ddim"],
        "gits": ["schedule", "gits", "--model", "gmm", "--nfe", "3", "--solver", "dpmpp2m"],
    }
    for name, args in commands.items():
        printed = Schedule.from_json(run(*args, "--json").stdout)
        assert hashes(schedules) == before, name
        out = ws / "mine" / f"{name}.json"
        run(*args, "--out", str(out))
        assert hashes(schedules) == before, name
        written = Schedule.load(out)
        assert written.t == printed.t and written.method == printed.method, name
    assert sorted(p.name for p in (ws / "mine").iterdir()) == sorted(f"{n}.json" for n in commands)


def test_out_into_the_pipelines_schedules_is_refused(ws):
    target = ws / "results" / "schedules" / "gmm" / "lambda-opt" / "unipc-nfe3.json"
    before = target.read_bytes()
    r = CliRunner().invoke(
        app, ["schedule", "lambda-opt", "--model", "gmm", "--nfe", "3", "--p", "2", "--out", str(target)]
    )
    assert r.exit_code != 0 and "only `optsteps stage" in str(r.exception)
    assert target.read_bytes() == before and json.loads(before)["method"] == "lambda-opt"
