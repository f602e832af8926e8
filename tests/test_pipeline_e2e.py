"""The real stack on a tiny params file: `dvc repro` in a temp git repo (every stage runs, shards are
DVC-tracked, a second repro does nothing, changing the OSS NFE reruns only the OSS stage and what follows, a
change in the solvers' code makes `dvc status` report the stages that run them), and the Prefect flow on
Prefect's temporary local server producing the same schedules as DVC.

The stage commands import the temp repo's copy of optsteps (PYTHONPATH), the code its dvc.yaml deps hash."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration  # dvc repro and the Prefect flow on its local server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

TINY = {
    "artifacts": "artifacts", "results": "results", "models": ["digits"],
    "train": {name: {"steps": 6, "batch_size": 16, "warmup_steps": 2, "threads": 1} for name in ("digits", "digits-flow")},
    "classifier": {"epochs": 1, "threads": 1},
    "teacher": {"solver": "unipc", "steps": 12, "schedule": "uniform-lambda", "seed": 0},
    "trajectories": {"samples": 12, "shard_size": 6},
    "oss": {"nfe": [3], "solvers": ["ddim"], "samples": 12, "gits": True},
    "lambda_opt": {"nfe": [3], "solvers": ["unipc"]},
    "evaluate": {"baselines": ["uniform-lambda"], "solvers": ["ddim", "unipc"], "nfe": [3, 4], "baseline_nfe": [],
                 "n": 40, "kid_subsets": 2, "seed": 99, "bootstrap": 50},
    "mlflow": {"tracking_uri": "", "metric": "fid_digitsnet"},
}


def env(tmp, repo):
    e = dict(os.environ)
    e.update(PATH=f"{BIN}:{e['PATH']}", PYTHONPATH=str(repo), DVC_NO_ANALYTICS="1", PREFECT_HOME=str(tmp / ".prefect"),
             PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
             PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PREFECT_UI_ENABLED="false",
             OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
             GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    e.pop("PREFECT_API_URL", None)
    return e


def project(tmp: Path, params: dict) -> Path:
    (tmp / "repo").mkdir()
    repo = tmp / "repo"
    shutil.copytree(ROOT / "optsteps", repo / "optsteps", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "flows", repo / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # __pycache__ is not part of a code dep
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return repo


def run(cmd, cwd, e, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def dvc_status(repo: Path, e) -> dict:
    """`dvc status --json`: {stage: [{"changed deps": {path: "modified"}}, …]}, {} when up to date."""
    r = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def schedules(repo: Path) -> dict:
    return {str(p.relative_to(repo)): json.loads(p.read_text())["t"] for p in sorted((repo / "results").rglob("*.json"))
            if "schedules" in p.parts}


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dvc")
    repo = project(tmp, TINY)
    e = env(tmp, repo)
    run(["git", "init", "-q"], repo, e)
    run(["dvc", "init", "-q"], repo, e)
    out = run(["dvc", "repro"], repo, e)
    return repo, e, out, schedules(repo)


def test_dvc_repro_runs_every_stage_and_tracks_the_shards(dvc_repo):
    repo, e, out, _ = dvc_repo
    for stage in ("train@digits", "train@classifier", "trajectories@digits", "lambda_opt@digits", "oss@digits",
                  "evaluate@digits", "register"):
        assert f"Running stage '{stage}'" in out, stage
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    traj = lock["stages"]["trajectories@digits"]["outs"][0]
    assert traj["path"] == "artifacts/trajectories/digits" and traj["md5"].endswith(".dir") and traj["nfiles"] == 3
    s = schedules(repo)
    assert set(s) == {"results/schedules/digits/lambda-opt/unipc-nfe3.json", "results/schedules/digits/oss/ddim-nfe3.json",
                      "results/schedules/digits/gits/ddim-nfe3.json"}
    assert all(len(t) == 4 for t in s.values())
    rows = json.loads((repo / "results/eval/digits.json").read_text())
    assert rows[0]["method"] == "teacher" and rows[0]["l2_to_teacher"] == 0.0
    assert {(r["method"], r["solver"], r["nfe"]) for r in rows[1:]} == {
        ("uniform-lambda", "ddim", 3), ("uniform-lambda", "ddim", 4), ("uniform-lambda", "unipc", 3),
        ("uniform-lambda", "unipc", 4), ("lambda-opt", "unipc", 3), ("oss", "ddim", 3), ("gits", "ddim", 3)}
    assert all(r["fid_digitsnet"] > 0 for r in rows)
    assert all(len(r["ci95"]["l2_to_teacher"]) == 2 and "fid_teacher_digitsnet" in r for r in rows[1:])
    assert len({r["evaluation_id"] for r in rows}) == 1
    speedup = json.loads((repo / "results/eval/digits-summary.json").read_text())
    assert {(e["method"], e["solver"], e["nfe"]) for e in speedup} == {("oss", "ddim", 3), ("gits", "ddim", 3),
                                                                      ("lambda-opt", "unipc", 3)}
    registered = json.loads((repo / "results/registry.json").read_text())
    assert len(registered) == len(rows) - 1
    assert {r["decision"] for r in registered} <= {"first", "significant", "not_significant", "not_better"}
    metrics = run(["dvc", "metrics", "show", "--json"], repo, e)
    assert "oss/ddim/nfe3" in metrics


def test_second_repro_does_nothing_and_oss_nfe_change_reruns_only_oss(dvc_repo):
    repo, e, _, _ = dvc_repo
    out = run(["dvc", "repro"], repo, e)
    assert "Running stage" not in out
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["oss"]["nfe"] = [4]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(["dvc", "repro"], repo, e)
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["evaluate@digits", "oss@digits", "register"], out
    assert (repo / "results/schedules/digits/oss/ddim-nfe4.json").is_file()


@pytest.mark.integration
def test_a_solver_change_makes_dvc_status_report_the_stages_that_run_it(dvc_repo):
    repo, e, _, _ = dvc_repo
    where = run([str(BIN / "python"), "-c", "import optsteps.cli.main as m; print(m.__file__)"], repo, e)
    assert Path(where.strip()) == repo / "optsteps" / "cli" / "main.py"  # the stage commands run the deps' code
    assert dvc_status(repo, e) == {}  # the stages' imports wrote __pycache__ into the deps: .dvcignore leaves it out
    solvers = repo / "optsteps" / "core" / "solvers" / "updates.py"  # core/solvers is a package
    code = solvers.read_text()
    solvers.write_text(code + "# a fix\n")
    try:
        status = dvc_status(repo, e)
    finally:
        solvers.write_text(code)
    for stage in ("trajectories@digits", "lambda_opt@digits", "oss@digits", "evaluate@digits"):
        assert any("optsteps/core" in c.get("changed deps", {}) for c in status.get(stage, []) if isinstance(c, dict)), \
            (stage, status)
    assert dvc_status(repo, e) == {}


def test_prefect_flow_gives_the_same_schedules_as_dvc(dvc_repo, tmp_path):
    _, _, _, from_dvc = dvc_repo  # the schedules of the first `dvc repro`, before the NFE change
    flow_repo = project(tmp_path, TINY)
    run([sys.executable, "flows/optimize_schedules.py", "--params", "params.yaml"], flow_repo, env(tmp_path, flow_repo),
        timeout=1200)
    assert schedules(flow_repo) == from_dvc
    assert (flow_repo / "results/registry.json").is_file()
