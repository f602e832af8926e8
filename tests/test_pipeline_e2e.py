"""The real stack on a tiny params file whose ``models:`` hold a small digits config, a tiny random-weight DDPM
pipeline and a tiny random-weight Stable Diffusion pipeline (built here, outside the repository, as
tests/tiny_pipelines.py builds them):

- `dvc repro` in a temp git repo runs every stage of every model through `register` (shards are DVC-tracked, a
  pipeline model is identified by content and never trained, no digits metric for a pipeline model);
- a second repro runs no stage but the identity checks (and changes nothing), changing the OSS NFE reruns only the
  OSS stages and what follows, a change in the solvers' code makes `dvc status` report the stages that run them;
- `optsteps apply --schedule tiny-sd-ddim-schedules@champion-nfe<K>` runs the tiny SD pipeline with K model calls;
- the Prefect flow on Prefect's temporary local server produces the same schedules as DVC;
- nothing is ever written inside a model's folder (file list and hashes before and after);
- replacing the tiny SD weights reruns only the tiny SD model's stages.

The stage commands import the temp repo's copy of optsteps (PYTHONPATH), the code its dvc.yaml deps hash."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_pipelines import build_ddpm, build_sd

pytestmark = pytest.mark.integration  # dvc repro and the Prefect flow on its local server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PIPELINES = ("tiny-ddpm", "tiny-sd")
MODELS = ("digits",) + PIPELINES
PROMPTS = "a red cube\ntwo blue balls\na green tree\n"
SMALL = {
    "trajectories": {"samples": 6, "shard_size": 3},
    "oss": {"samples": 6, "refine_radius": 1},
    "evaluate": {"n": 6, "solvers": ["ddim"], "nfe": [2, 3]},
}  # the pipeline models' own overrides


def tiny_params(pipes: Path) -> dict:
    return {
        "artifacts": "artifacts",
        "results": "results",
        "models": {
            "digits": {},
            "tiny-ddpm": {"pipeline": str(pipes / "tiny-ddpm"), "overrides": SMALL},
            "tiny-sd": {
                "pipeline": str(pipes / "tiny-sd"),
                "prompts": "prompts.txt",
                "guidance": 3.0,
                "device": "cpu",
                "overrides": {**SMALL, "lambda_opt": {"p": 2.0}},
            },
        },
        "train": {
            name: {"steps": 6, "batch_size": 16, "warmup_steps": 2, "threads": 1} for name in ("digits", "digits-flow")
        },
        "classifier": {"epochs": 1, "threads": 1},
        "teacher": {"solver": "unipc", "steps": 12, "schedule": "uniform-lambda", "seed": 0},
        "trajectories": {"samples": 12, "shard_size": 6},
        "oss": {"nfe": [2, 3], "solvers": ["ddim"], "samples": 12, "gits": True},
        "lambda_opt": {"nfe": [2, 3], "solvers": ["unipc"]},
        "evaluate": {
            "baselines": ["uniform-lambda"],
            "solvers": ["ddim", "unipc"],
            "nfe": [2, 3],
            "baseline_nfe": [],
            "n": 40,
            "kid_subsets": 2,
            "seed": 99,
            "bootstrap": 50,
            "pipeline_teacher_inception_n": 0,
        },
        "mlflow": {"tracking_uri": "", "metric": "fid_digitsnet"},
        # dvc.yaml's stages read these (a params file must carry every key a stage lists); {} here: no budget, and
        # the tiny pipelines run on this file's settings rather than the GPU-sized pipeline defaults
        "budget": {},
        "pipeline_defaults": {},
    }


def env(tmp, repo):
    e = dict(os.environ)
    e.update(
        PATH=f"{BIN}:{e['PATH']}",
        PYTHONPATH=str(repo),
        DVC_NO_ANALYTICS="1",
        PREFECT_HOME=str(tmp / ".prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_UI_ENABLED="false",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    e.pop("PREFECT_API_URL", None)
    return e


def project(tmp: Path, params: dict) -> Path:
    (tmp / "repo").mkdir()
    repo = tmp / "repo"
    shutil.copytree(ROOT / "optsteps", repo / "optsteps", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "flows", repo / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # __pycache__ is not part of a code dep
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "prompts.txt").write_text(PROMPTS)
    return repo


def run(cmd, cwd, e, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def ran(out: str) -> list[str]:
    return sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))


def dvc_status(repo: Path, e) -> dict:
    """`dvc status --json` without the identify stages' permanent "always changed" (they rerun on every repro):
    {stage: [{"changed deps": {path: "modified"}}, …]}, {} when up to date."""
    r = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    status = json.loads(r.stdout)
    assert all("always changed" in status.get(f"identify@{m}", []) for m in MODELS), status
    out = {}
    for stage, changes in status.items():
        changes = [c for c in changes if not (stage.startswith("identify@") and c == "always changed")]
        if changes:
            out[stage] = changes
    return out


def schedules(repo: Path) -> dict:
    return {
        str(p.relative_to(repo)): json.loads(p.read_text())["t"]
        for p in sorted((repo / "results").rglob("*.json"))
        if "schedules" in p.parts
    }


def snapshot(folder: Path) -> dict:
    """Every file of a model folder (hidden ones included) with its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """The tiny pipelines, in a folder outside every repository, and their file lists with hashes."""
    tmp = tmp_path_factory.mktemp("pipes")
    build_ddpm(tmp / "tiny-ddpm")
    build_sd(tmp / "tiny-sd", tmp / "tokenizer")
    return tmp, {name: snapshot(tmp / name) for name in PIPELINES}


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, pipes):
    tmp = tmp_path_factory.mktemp("dvc")
    repo = project(tmp, tiny_params(pipes[0]))
    e = env(tmp, repo)
    run(["git", "init", "-q"], repo, e)
    run(["dvc", "init", "-q"], repo, e)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # the series template
    out = run(["dvc", "repro"], repo, e, timeout=1800)
    return repo, e, out, schedules(repo)


def test_dvc_repro_runs_every_stage_of_every_model_and_writes_nothing_into_model_folders(dvc_repo, pipes):
    repo, e, out, _ = dvc_repo
    expected = {
        f"{stage}@{m}"
        for m in MODELS
        for stage in ("identify", "model", "trajectories", "lambda_opt", "oss", "evaluate")
    } | {"classifier", "register"}
    assert set(ran(out)) == expected
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    traj = lock["stages"]["trajectories@digits"]["outs"][0]
    assert traj["path"] == "artifacts/trajectories/digits" and traj["md5"].endswith(".dir") and traj["nfiles"] == 3
    assert lock["stages"]["trajectories@tiny-sd"]["outs"][0]["nfiles"] == 3  # 6 samples in shards of 3 + manifest
    s = schedules(repo)
    assert set(s) == {
        f"results/schedules/{m}/{method}-nfe{k}.json"
        for m in MODELS
        for method in ("lambda-opt/unipc", "oss/ddim", "gits/ddim")
        for k in (2, 3)
    }
    assert all(len(t) == int(path[-6]) + 1 for path, t in s.items())  # K steps: K + 1 times
    # a pipeline model is never trained: artifacts/models/<name> holds its identity record only
    for m in PIPELINES:
        assert [p.name for p in (repo / "artifacts" / "models" / m).iterdir()] == ["optsteps_model.json"]
        record = json.loads((repo / "artifacts" / "models" / m / "optsteps_model.json").read_text())
        assert record == json.loads((repo / "artifacts" / "identity" / f"{m}.json").read_text())
        assert record["kind"] == "pipeline" and len(record["sha256"]) == 64
    rows = {m: json.loads((repo / f"results/eval/{m}.json").read_text()) for m in MODELS}
    for m, r in rows.items():
        assert r[0]["method"] == "teacher" and r[0]["l2_to_teacher"] == 0.0 and r[0]["model"] == m
    assert {(r["method"], r["solver"], r["nfe"]) for r in rows["digits"][1:]} == {
        (method, solver, k)
        for method, solver in (
            ("uniform-lambda", "ddim"),
            ("uniform-lambda", "unipc"),
            ("lambda-opt", "unipc"),
            ("oss", "ddim"),
            ("gits", "ddim"),
        )
        for k in (2, 3)
    }
    assert all(r["fid_digitsnet"] > 0 for r in rows["digits"])
    for m in MODELS:  # every row has its paired intervals, one evaluation per model, a speedup file
        assert all(len(r["ci95"]["l2_to_teacher"]) == 2 for r in rows[m][1:])
        assert len({r["evaluation_id"] for r in rows[m]}) == 1
        speedup = json.loads((repo / f"results/eval/{m}-summary.json").read_text())
        assert {e["method"] for e in speedup} <= {"oss", "gits", "lambda-opt"}
    assert all("fid_teacher_digitsnet" in r for r in rows["digits"][1:])
    for m in PIPELINES:  # ddim only (the models' own evaluate overrides), L2 to the teacher, no digits metric
        assert {(r["method"], r["nfe"]) for r in rows[m][1:]} == {
            (method, k) for method in ("uniform-lambda", "oss", "gits") for k in (2, 3)
        }
        assert all(r["n"] == 6 and r["l2_to_teacher"] > 0 for r in rows[m][1:])
        assert not [k for r in rows[m] for k in r if "digitsnet" in k or "inception" in k]
    assert rows["tiny-sd"][0]["guidance"] == 3.0 and rows["tiny-ddpm"][0]["guidance"] == 1.0
    assert json.loads((repo / "results/schedules/tiny-sd/lambda-opt/unipc-nfe2.json").read_text())["p"] == 2.0
    assert json.loads((repo / "results/schedules/tiny-ddpm/lambda-opt/unipc-nfe2.json").read_text())["p"] == 1.0
    registered = json.loads((repo / "results/registry.json").read_text())
    assert len(registered) == sum(len(r) - 1 for r in rows.values())
    assert {r["name"] for r in registered} == {
        "digits-ddim-schedules",
        "digits-unipc-schedules",
        "tiny-ddpm-ddim-schedules",
        "tiny-sd-ddim-schedules",
    }
    for r in registered:  # champions rank by mlflow.metric where the model has it, else by the L2 to the teacher
        assert ("fid_digitsnet" if r["model"] == "digits" else "l2_to_teacher") in r, r
    assert {r["decision"] for r in registered} <= {"best", "behind"}
    for key in {(r["name"], r["nfe"]) for r in registered}:  # one champion per alias, the best of its evaluation
        group = [r for r in registered if (r["name"], r["nfe"]) == key]
        assert [r["decision"] for r in group if r["champion"]] == ["best"], group
    for m in MODELS:  # a sample grid per row (decoded for the latent SD), logged with the row's run
        assert all((repo / "results/eval" / r["grid"]).is_file() for r in rows[m]), m
    # the tracked summaries: one metrics file per method × solver (a row each in `dvc metrics show`), one plots table
    # with a series column drawn by the repository's template, and the curves as PNG
    r = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=repo, env=e, capture_output=True, text=True)
    shown = next(iter(json.loads(r.stdout).values()))["data"]
    oss = shown["results/metrics/digits/oss-ddim.json"]["data"]
    assert set(oss) == {"nfe2", "nfe3"} and {"l2_to_teacher", "fid_digitsnet"} <= set(oss["nfe3"])
    assert "results/metrics/tiny-sd/oss-ddim.json" in shown
    table = (repo / "results/plots/digits.csv").read_text().splitlines()
    assert table[0].startswith("series,nfe,l2_to_teacher") and "oss/ddim,3," in "\n".join(table)
    r = subprocess.run(["dvc", "plots", "show", "--json"], cwd=repo, env=e, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert all((repo / f"results/plots/{m}-l2_to_teacher.png").read_bytes()[:4] == b"\x89PNG" for m in MODELS)
    for m in PIPELINES:  # nothing was written inside the models' folders
        assert snapshot(pipes[0] / m) == pipes[1][m], m


@pytest.mark.parametrize("nfe", [2, 3])
def test_apply_runs_the_registered_champion_on_the_tiny_sd_pipeline_with_k_model_calls(dvc_repo, pipes, nfe, tmp_path):
    repo, e, _, _ = dvc_repo
    out = run(
        [
            "optsteps",
            "apply",
            "--pipeline",
            str(pipes[0] / "tiny-sd"),
            "--schedule",
            f"tiny-sd-ddim-schedules@champion-nfe{nfe}",
            "--prompt",
            "a red cube",
            "--out",
            str(tmp_path / "x.png"),
        ],
        repo,
        e,
    )
    m = re.search(r"\(16×16, (\w+), NFE (\d+), (\d+) model calls", out)
    assert m and int(m.group(2)) == nfe and int(m.group(3)) == nfe, out
    assert (tmp_path / "x.png").is_file()
    assert snapshot(pipes[0] / "tiny-sd") == pipes[1]["tiny-sd"]


def test_second_repro_does_nothing_and_oss_nfe_change_reruns_only_oss(dvc_repo):
    repo, e, _, _ = dvc_repo
    lock = (repo / "dvc.lock").read_bytes()
    out = run(["dvc", "repro"], repo, e)
    assert ran(out) == sorted(f"identify@{m}" for m in MODELS)  # the identity checks, nothing else
    assert (repo / "dvc.lock").read_bytes() == lock  # and no identity changed
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["oss"]["nfe"] = [4]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo, e)
    assert ran(out) == sorted(
        [f"identify@{m}" for m in MODELS]
        + [f"oss@{m}" for m in MODELS]
        + [f"evaluate@{m}" for m in MODELS]
        + ["register"]
    ), out
    assert (repo / "results/schedules/digits/oss/ddim-nfe4.json").is_file()


def test_a_solver_change_makes_dvc_status_report_the_stages_that_run_it(dvc_repo):
    repo, e, _, _ = dvc_repo
    where = run([str(BIN / "python"), "-c", "import optsteps.cli.main as m; print(m.__file__)"], repo, e)
    assert Path(where.strip()) == repo / "optsteps" / "cli" / "main.py"  # the stage commands run the deps' code
    assert dvc_status(repo, e) == {}  # the stages' imports wrote __pycache__ into the deps: .dvcignore leaves it out
    solvers = repo / "optsteps" / "core" / "solvers" / "updates.py"  # the solver updates: every stage that samples
    code = solvers.read_text()
    solvers.write_text(code + "# a fix\n")
    try:
        status = dvc_status(repo, e)
    finally:
        solvers.write_text(code)
    for stage in ("trajectories@digits", "lambda_opt@digits", "oss@digits", "evaluate@digits", "oss@tiny-sd"):
        assert any(
            "optsteps/core" in c.get("changed deps", {}) for c in status.get(stage, []) if isinstance(c, dict)
        ), (stage, status)
    assert dvc_status(repo, e) == {}


def test_prefect_flow_gives_the_same_schedules_as_dvc_and_writes_nothing_into_model_folders(dvc_repo, pipes, tmp_path):
    _, _, _, from_dvc = dvc_repo  # the schedules of the first `dvc repro`, before the NFE change
    flow_repo = project(tmp_path, tiny_params(pipes[0]))
    fe = env(tmp_path, flow_repo)
    run(["git", "init", "-q"], flow_repo, fe)
    run(["dvc", "init", "-q"], flow_repo, fe)
    flow = [sys.executable, "flows/optimize_schedules.py", "--params", "params.yaml"]
    run(flow, flow_repo, fe, timeout=1800)
    assert schedules(flow_repo) == from_dvc
    registered = json.loads((flow_repo / "results/registry.json").read_text())
    assert {r["model"] for r in registered} == set(MODELS)
    # one pipeline state: the flow recorded its outputs in dvc.lock, so DVC has nothing to do after it
    assert dvc_status(flow_repo, fe) == {}
    assert ran(run(["dvc", "repro"], flow_repo, fe)) == sorted(f"identify@{m}" for m in MODELS)
    assert all(r["dvc_data_hash"] not in ("", "none") for r in registered)
    # the flow run again: the same schedules and evaluations, so the registry gains nothing
    run(flow, flow_repo, fe, timeout=1800)
    again = json.loads((flow_repo / "results/registry.json").read_text())
    assert [(r["name"], r["version"]) for r in again] == [(r["name"], r["version"]) for r in registered]
    assert {r["action"] for r in again} == {"unchanged"}  # nothing registered, updated or re-tagged
    assert {r["decision"] for r in again} <= {"best", "behind"}  # the decision tags describe the present
    assert dvc_status(flow_repo, fe) == {}
    assert not (flow_repo / "artifacts" / "models" / "tiny-sd" / "unet").exists()  # never trained
    for m in PIPELINES:
        assert snapshot(pipes[0] / m) == pipes[1][m], m


def test_new_tiny_sd_weights_rerun_only_its_stages(dvc_repo, pipes, tmp_path):
    """Last in this module: it replaces the tiny SD pipeline's UNet weights (random weights of another seed)."""
    repo, e, _, _ = dvc_repo
    build_sd(tmp_path / "other", tmp_path / "tokenizer", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    identity = (repo / "artifacts/identity/tiny-sd.json").read_text()
    shutil.copy(tmp_path / "other" / weights, pipes[0] / "tiny-sd" / weights)
    out = run(["dvc", "repro"], repo, e)
    assert ran(out) == sorted(
        [f"identify@{m}" for m in MODELS]
        + [f"{stage}@tiny-sd" for stage in ("model", "trajectories", "lambda_opt", "oss", "evaluate")]
        + ["register"]
    ), out
    assert (repo / "artifacts/identity/tiny-sd.json").read_text() != identity
    assert dvc_status(repo, e) == {}
