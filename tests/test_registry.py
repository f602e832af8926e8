"""The MLflow adapter on a sqlite registry in tmp_path: bit-exact round trip, the champion alias, no
half-registered versions, the pyfunc flavour via the alias, the CLI, and MLflow staying out of the library."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from optsteps.core.baselines import baseline  # noqa: E402
from optsteps.core.schedule import Schedule  # noqa: E402
from optsteps.errors import OptstepsError  # noqa: E402
from optsteps.integrations.diffusers.export import to_comfyui, to_diffusers  # noqa: E402
from optsteps.integrations.mlflow_registry import Registry, registered_name  # noqa: E402
from optsteps.models.digits import noise_schedule_for  # noqa: E402

pytestmark = pytest.mark.integration  # MLflow on a sqlite registry, the CLI in subprocesses

REG = dict(metric="fid_digitsnet", git="0123abc", params_digest="p" * 8, dvc_hash="d" * 8)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return Registry(f"sqlite:///{root}/mlruns.db")


def odd_schedule(model="digits", nfe=5, jitter=0.0123456789):
    """A schedule with full-precision float times (not a round grid), to test bit-exactness."""
    ns = noise_schedule_for("digits")
    b = baseline("uniform-lambda", ns, nfe, model=model)
    t = list(b.t)
    for i in range(1, nfe):
        t[i] = t[i] + jitter * (t[i - 1] - t[i]) * math.sin(i + 0.1)
    return Schedule(t, ns, model=model, method="lambda-opt", solver="unipc", extra={"note": "test"})


def log(reg, s, fid, **kw):
    return reg.log_schedule_run(s, {"fid_digitsnet": fid, "adherence_digitsnet": 0.9, "l2_to_teacher": 0.1}, **kw)


def test_round_trip_is_bit_exact_and_runs_have_plots(reg):
    s = odd_schedule()
    rid = log(reg, s, 3.0, samples=torch.rand(20, 1, 8, 8) * 2 - 1, params={"n": 2000})
    res = reg.register_schedule(rid, **REG)
    assert res["name"] == "digits-unipc-schedules" == registered_name("digits", "unipc")
    assert res["champion"] and res["alias"] == "champion-nfe5"
    back = reg.load_schedule("digits-unipc-schedules@champion-nfe5")
    assert back.t == s.t and back.to_dict() == s.to_dict() and back.noise_schedule == s.noise_schedule
    assert reg.export("digits-unipc-schedules@champion-nfe5", "json") == s.to_json() + "\n"
    arts = {f.path for f in reg.client.list_artifacts(rid, "plots")}
    assert {"plots/schedule_t.png", "plots/schedule_lambda.png"} <= arts
    assert "samples.png" in {f.path for f in reg.client.list_artifacts(rid)}  # at the root: the compare view's
    mv = reg.client.get_model_version(res["name"], res["version"])
    assert mv.source == f"{reg.client.get_run(rid).info.artifact_uri}/schedule"
    for k, v in {
        "method": "lambda-opt",
        "nfe": "5",
        "solver": "unipc",
        "git_commit": "0123abc",
        "params_hash": "pppppppp",
        "dvc_data_hash": "dddddddd",
    }.items():
        assert mv.tags[k] == v
    assert reg.artifact_location.startswith("file:///") and reg.artifact_location.endswith("/mlartifacts")


def test_without_evaluation_ids_the_best_point_value_is_champion(reg):
    name = registered_name("champ", "unipc")
    seq = [(5.0, True), (6.0, False), (5.5, False), (4.0, True), (4.5, False)]
    versions = []
    for i, (fid, holds) in enumerate(seq):
        res = reg.register_schedule(log(reg, odd_schedule("champ", 4, 0.01 * (i + 1)), fid), **REG)
        assert res["champion"] is holds, (fid, res)
        versions.append(res["version"])
    assert versions == [1, 2, 3, 4, 5]
    champ = reg.client.get_model_version_by_alias(name, "champion-nfe4")
    assert str(champ.version) == "4" and float(champ.tags["fid_digitsnet"]) == 4.0
    assert len(reg.client.search_model_versions(f"name = '{name}'")) == 5  # nothing overwritten or deleted
    rows = reg.list_schedules(model="champ", nfe=4)
    assert {r["version"] for r in rows} == {1, 2, 3, 4, 5} and rows[0]["version"] == 4
    assert rows[0]["aliases"] == ["champion-nfe4"]
    assert reg.list_schedules(model="champ", nfe=7) == []
    # the tags describe the present: one best, the others behind it (point values, no resamples)
    tags = {int(mv.version): mv.tags for mv in reg.client.search_model_versions(f"name = '{name}'")}
    assert [tags[v]["champion_decision"] for v in versions] == ["behind", "behind", "behind", "best", "behind"]
    assert {tags[v]["champion_significance"] for v in versions} == {"point_only"}
    assert tags[4]["compared_with"] == f"{name}/5" and tags[4]["rank"] == "1/5" and tags[2]["rank"] == "5/5"


def _standings_by_method(reg, name):
    """Each version's present tags, keyed by method, with version references replaced by methods (version numbers
    depend on the registration order, the schedules do not)."""
    mvs = reg.client.search_model_versions(f"name = '{name}'")
    method = {str(mv.version): mv.tags["method"] for mv in mvs}
    keep = (
        "champion_decision",
        "champion_significance",
        "rank",
        "compared_with",
        "paired_diff",
        "paired_ci95",
        "not_significant",
    )
    out = {}
    for mv in mvs:
        t = {k: mv.tags.get(k) for k in keep}
        if t["compared_with"]:
            t["compared_with"] = method[t["compared_with"].rsplit("/", 1)[1]]
        out[mv.tags["method"]] = t
    champ = reg.client.get_model_version_by_alias(name, "champion-nfe4")
    return out, champ.tags["method"]


def test_champion_is_the_best_of_its_evaluation_whatever_the_registration_order(tmp_path):
    """The same evaluation's rows registered in three orders: the same champion and the same tags. The best point
    value holds the alias even when its lead over the runner-up is inside the noise (tagged not_significant); losers'
    tags follow the present; a new evaluation's best takes over and the old versions say so; a version without an
    evaluation id never displaces one with an id; a settle heals an alias a crash left behind."""
    import numpy as np

    g = np.random.default_rng(0)
    base = 5.0 + g.normal(0, 0.3, 100)
    rows = {
        "uniform-t": (5.0, base),
        "karras": (4.9, base - 0.1 + g.normal(0, 1.0, 100)),
        "lambda-opt": (3.0, base - 2.0 + g.normal(0, 0.05, 100)),
        "oss": (2.95, base - 2.05 + g.normal(0, 1, 100)),
        "tq": (6.0, base + 1.0),
    }
    methods = list(rows)
    seen = []
    for k, order in enumerate((methods, methods[::-1], [methods[i] for i in (2, 0, 4, 1, 3)])):
        r = Registry(f"sqlite:///{tmp_path}/order{k}/mlruns.db")
        for m in order:
            fid, res = rows[m]
            s = odd_schedule("ord", 4, 0.01 * (methods.index(m) + 1)).with_meta(method=m)
            rid = r.log_schedule_run(
                s,
                {"fid_digitsnet": fid, "ci95": {"fid_digitsnet": [fid - 0.5, fid + 0.5]}},
                resamples={"fid_digitsnet": res},
                evaluation_id="eval-1",
            )
            r.register_schedule(rid, **REG)
        seen.append(_standings_by_method(r, registered_name("ord", "unipc")))
    assert seen[0] == seen[1] == seen[2]
    tags, champ = seen[0]
    assert champ == "oss" and tags["oss"]["champion_decision"] == "best"
    assert tags["oss"]["compared_with"] == "lambda-opt" and tags["oss"]["champion_significance"] == "not_significant"
    assert tags["oss"]["not_significant"] == "true" and float(tags["oss"]["paired_diff"]) == pytest.approx(-0.05)
    assert tags["tq"]["champion_decision"] == "behind" and tags["tq"]["champion_significance"] == "significant"
    assert tags["tq"]["compared_with"] == "oss" and tags["tq"]["rank"] == "5/5"
    assert [t["champion_decision"] for t in tags.values()].count("best") == 1
    # ``standing`` (what results/registry.json records) says the same as the tags now, not at registration time
    r = Registry(f"sqlite:///{tmp_path}/order0/mlruns.db")
    for mv in r.client.search_model_versions(f"name = '{registered_name('ord', 'unipc')}'"):
        st, t = r.standing(mv.name, int(mv.version)), mv.tags
        assert st["champion_significance"] == t["champion_significance"] and st["compared_with"] == t["compared_with"]
        assert st["decision"] == t["champion_decision"] and st["champion"] == (t["method"] == "oss")
        assert st["paired_diff"] == pytest.approx(float(t["paired_diff"]))
    # a new evaluation's best takes over; the previous evaluation's versions say so
    r = Registry(f"sqlite:///{tmp_path}/order0/mlruns.db")
    name = registered_name("ord", "unipc")
    new = r.register_schedule(
        r.log_schedule_run(
            odd_schedule("ord", 4, 0.3).with_meta(method="gits"),
            {"fid_digitsnet": 9.0},
            resamples={"fid_digitsnet": base + 4},
            evaluation_id="eval-2",
        ),
        **REG,
    )
    assert new["champion"] and new["decision"] == "best" and new["champion_significance"] == "alone"
    after, champ = _standings_by_method(r, name)
    assert champ == "gits" and {after[m]["champion_decision"] for m in methods} == {"older_evaluation"}
    assert after["oss"]["paired_diff"] is None and after["oss"]["compared_with"] is None
    hand = r.register_schedule(
        r.log_schedule_run(odd_schedule("ord", 4, 0.07).with_meta(method="hand"), {"fid_digitsnet": 1.0}), **REG
    )
    assert not hand["champion"] and hand["decision"] == "not_comparable"  # no evaluation id: no displacing
    # a crash between the version and the alias: the next settle heals it
    r.client.set_registered_model_alias(name, "champion-nfe4", str(new["version"] - 1))
    r.settle(name, 4, "fid_digitsnet", "eval-2")
    assert str(r.client.get_model_version_by_alias(name, "champion-nfe4").version) == str(new["version"])


def test_failed_evaluation_leaves_no_registered_version(reg):
    s = odd_schedule("broken", 3)

    def boom():
        raise RuntimeError("sampler diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        reg.publish(s, boom, **REG)
    assert reg.list_schedules(model="broken") == []
    runs = reg.client.search_runs([reg.experiment_id()], "tags.model = 'broken'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    with pytest.raises(OptstepsError, match="FAILED"):
        reg.register_schedule(runs[0].info.run_id, **REG)
    rid = reg.log_schedule_run(s, {"l2_to_teacher": 0.2})  # finished but without the FID
    with pytest.raises(OptstepsError, match="no finite 'fid_digitsnet'"):
        reg.register_schedule(rid, **REG)
    nan_run = reg.log_schedule_run(s, {"fid_digitsnet": float("nan")})
    with pytest.raises(OptstepsError, match="no finite"):
        reg.register_schedule(nan_run, **REG)
    assert reg.list_schedules(model="broken") == []
    res = reg.publish(s, lambda: ({"fid_digitsnet": 2.0}, None), **REG)  # a working evaluation registers
    assert res["version"] == 1 and res["champion"]


def test_pyfunc_load_via_the_champion_alias(reg):
    import mlflow

    s = odd_schedule("pyf", 5)
    res = reg.register_schedule(log(reg, s, 1.5), **REG)
    prev = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(reg.tracking_uri)
    try:
        m = mlflow.pyfunc.load_model(f"models:/{res['name']}@champion-nfe5")
    finally:
        mlflow.set_tracking_uri(prev)
    assert m.predict(None) == json.loads(s.to_json())
    assert m.predict("comfyui") == to_comfyui(s)
    d = m.predict({"format": "diffusers", "scheduler": "EulerDiscreteScheduler"})
    kwargs, overrides = to_diffusers(s, "EulerDiscreteScheduler")
    assert d["set_timesteps"] == kwargs and d["config"] == overrides
    assert m.get_raw_model().schedule.t == s.t
    assert m.metadata.flavors["python_function"]["loader_module"] == "optsteps.integrations.mlflow_pyfunc"
    with pytest.raises(OptstepsError, match="unknown format"):
        m.predict("onnx")


def test_summary_run_logs_curves(reg):
    rows = [
        {
            "model": "digits",
            "method": "teacher",
            "solver": "unipc",
            "nfe": 200,
            "fid_digitsnet": 1.7,
            "l2_to_teacher": 0.0,
        }
    ]
    for method, base in (("uniform-t", 30.0), ("lambda-opt", 10.0)):
        for k in (3, 5, 8):
            rows.append(
                {
                    "model": "digits",
                    "method": method,
                    "solver": "unipc",
                    "nfe": k,
                    "fid_digitsnet": base / k,
                    "l2_to_teacher": base / k / 10,
                }
            )
    rid = reg.log_summary_run(rows, metric="fid_digitsnet")
    arts = {f.path for f in reg.client.list_artifacts(rid, "plots")}
    assert arts == {"plots/fid_vs_nfe.png", "plots/l2_vs_nfe.png"}
    hist = reg.client.get_metric_history(rid, "digits/unipc/lambda-opt/fid_digitsnet")
    assert sorted((h.step, h.value) for h in hist) == [(3, 10 / 3), (5, 2.0), (8, 1.25)]
    from optsteps.evaluate.speedup import speedup_table

    speedup = speedup_table(rows, metrics=("l2_to_teacher",))
    assert speedup and all(e["baseline"] == "uniform-t" for e in speedup)
    rid = reg.log_summary_run(rows, metric="fid_digitsnet", speedup=speedup)
    arts = {f.path for f in reg.client.list_artifacts(rid, "plots")}
    assert arts == {"plots/fid_vs_nfe.png", "plots/l2_vs_nfe.png", "plots/speedup.png"}
    assert {f.path for f in reg.client.list_artifacts(rid, "summary")} == {
        "summary/rows.json",
        "summary/speedup.json",
        "summary/table.csv",
        "summary/table.md",
    }


def test_cli_list_show_export(reg):
    from typer.testing import CliRunner

    from optsteps.cli.registry import registry_app

    s = odd_schedule("clidig", 6)
    reg.register_schedule(log(reg, s, 2.5), **REG)
    r = CliRunner()
    uri = ["--tracking-uri", reg.tracking_uri]
    out = r.invoke(registry_app, ["list", "--model", "clidig", *uri])
    assert out.exit_code == 0, out.output
    assert "clidig-unipc-schedules" in out.output and "champion-nfe6" in out.output and "2.5" in out.output
    out = r.invoke(registry_app, ["show", "clidig-unipc-schedules@champion-nfe6", *uri])
    assert out.exit_code == 0 and json.loads(out.output)["schedule"]["t"] == list(s.t)
    out = r.invoke(registry_app, ["export", "clidig-unipc-schedules@champion-nfe6", "--format", "comfyui", *uri])
    assert out.exit_code == 0 and json.loads(out.output) == to_comfyui(s)
    out = r.invoke(registry_app, ["export", "clidig-unipc-schedules/1", "--format", "json", *uri])
    assert Schedule.from_json(out.output).t == s.t
    out = r.invoke(registry_app, ["show", "clidig-unipc-schedules@champion-nfe9", *uri])
    assert out.exit_code != 0 and "no registered schedule" in str(out.exception)


def test_library_never_imports_mlflow_or_prefect():
    code = (
        "import sys, optsteps, optsteps.evaluate, optsteps.integrations.mlflow_registry, "
        "optsteps.integrations.mlflow_pyfunc, optsteps.cli.registry; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect')]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_cli_evaluate_logs_and_registers(reg, tmp_path):
    import typer
    from typer.testing import CliRunner

    from optsteps.cli.registry import evaluate
    from optsteps.models.classifier import train_classifier
    from optsteps.models.digits import train_digits
    from optsteps.pipeline.config import ClassifierConfig, TrainConfig

    arts = tmp_path / "artifacts"
    train_digits(
        "digits",
        TrainConfig(steps=4, batch_size=16, warmup_steps=2, threads=1),
        arts / "models" / "digits",
        progress=False,
    )
    train_classifier(ClassifierConfig(epochs=1), arts / "models" / "classifier", progress=False)
    params = tmp_path / "params.yaml"
    params.write_text(f"artifacts: {arts}\nteacher:\n  solver: ddim\n  steps: 6\n  seed: 0\noss:\n  nfe: [3, 4]\n")
    app = typer.Typer()
    app.command()(evaluate)
    app.command("noop")(lambda: None)  # two commands: typer keeps "evaluate" as a subcommand name
    args = [
        "evaluate",
        "--model",
        "digits",
        "--schedule",
        "uniform-lambda",
        "--nfe",
        "3",
        "--solver",
        "ddim",
        "--n",
        "20",
        "--register",
        "--tracking-uri",
        reg.tracking_uri,
        "--params",
        str(params),
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, (out.output, out.exception)
    assert "registered digits-ddim-schedules version 1" in out.output and "champion-nfe3 now points to it" in out.output
    row = reg.list_schedules(model="digits", nfe=3)[0]
    assert row["method"] == "uniform-lambda" and row["l2_to_teacher"] > 0 and "fid_digitsnet" in row
    # the same schedule evaluated again: the same evaluation and metrics — nothing new is registered
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, (out.output, out.exception)
    assert "digits-ddim-schedules version 1 already holds this schedule with this evaluation" in out.output
    assert len(reg.client.search_model_versions("name = 'digits-ddim-schedules'")) == 1
    v1 = reg.client.get_model_version("digits-ddim-schedules", 1)
    assert "fid_digitsnet_ci95_lo" in reg.client.get_run(v1.run_id).data.metrics
    out = CliRunner().invoke(app, args[:-2] + ["--seed", "0", "--params", str(params)])
    assert out.exit_code != 0 and "overlap" in str(out.exception)


def test_filters_are_quoted_and_read_only_commands_create_nothing(reg, tmp_path):
    """A model name with a quote is searched for, not pasted into the filter; a read-only registry command on a
    sqlite file that does not exist is an error and creates neither the folder nor a database."""
    from optsteps.integrations.mlflow_registry import filter_value

    assert filter_value("digits") == "'digits'" and filter_value("o'brien") == '"o\'brien"'
    with pytest.raises(OptstepsError, match="both quote characters"):
        filter_value("""a'b"c""")
    assert reg.list_schedules("o'brien") == []
    with pytest.raises(OptstepsError, match="no schedule registry at"):
        Registry(f"sqlite:///{tmp_path}/typo/mlruns.db", create=False)
    assert not (tmp_path / "typo").exists()


def test_an_unreachable_tracking_server_fails_within_the_timeout(tmp_path):
    """A server that refuses connections, and one that accepts but never answers: one OptstepsError naming the
    server and the fix after at most ``timeout_s`` (not MLflow's minutes of retries)."""
    import socket

    with pytest.raises(OptstepsError, match=r"cannot reach the MLflow tracking server http://127\.0\.0\.1:1 "):
        Registry("http://127.0.0.1:1", timeout_s=2)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts into the backlog, never replies
    try:
        port = silent.getsockname()[1]
        with pytest.raises(OptstepsError, match=r"within 0\.5 s .*raise mlflow\.timeout_s"):
            Registry(f"http://127.0.0.1:{port}", timeout_s=0.5)
    finally:
        silent.close()


def test_registering_the_same_schedule_twice_adds_nothing(reg):
    """Content-keyed versions: the same schedule with the same metrics → the same run and version, no writes;
    new metrics for it → the same run (next metric step) and version, its tags updated; another model's weights
    (model_sha) → another version. n and guidance are run params; runs carry MLflow's source tags."""
    name = registered_name("idem", "unipc")
    s = odd_schedule("idem", 4, 0.02)
    m = {"fid_digitsnet": 3.0, "l2_to_teacher": 0.2, "n": 100, "guidance": 1.0}
    first = reg.register_schedule(reg.log_schedule_run(s, m, evaluation_id="e1"), **REG)
    again = reg.register_schedule(
        reg.log_schedule_run(s.with_meta(extra={"wall_time_s": 9.9}), m, evaluation_id="e1"), **REG
    )
    assert (again["version"], again["run_id"], again["decision"]) == (first["version"], first["run_id"], "unchanged")
    assert len(reg.client.search_model_versions(f"name = '{name}'")) == 1
    assert len(reg.client.search_runs([reg.experiment_id()], "tags.model = 'idem'")) == 1
    run = reg.client.get_run(first["run_id"])
    assert run.data.params["n"] == "100" and "n" not in run.data.metrics and "guidance" not in run.data.metrics
    assert run.data.tags["mlflow.source.name"] == "optsteps" and run.data.tags["schedule_key"]
    better = reg.register_schedule(reg.log_schedule_run(s, dict(m, fid_digitsnet=2.5), evaluation_id="e2"), **REG)
    assert better["version"] == first["version"] and better["run_id"] == first["run_id"]
    assert [h.value for h in reg.client.get_metric_history(first["run_id"], "fid_digitsnet")] == [3.0, 2.5]
    assert float(reg.client.get_model_version(name, first["version"]).tags["fid_digitsnet"]) == 2.5
    other = reg.register_schedule(reg.log_schedule_run(s, m, evaluation_id="e1", model_sha="f" * 64), **REG)
    assert other["version"] != first["version"]
    # listed best first by the champion metric within (name, NFE): 2.5 before 3.0
    assert [r["version"] for r in reg.list_schedules(model="idem")] == [first["version"], other["version"]]


def test_the_readme_python_path_writes_nothing_into_a_read_only_registry(reg, tmp_path):
    """README's snippet (``mlflow.pyfunc.load_model`` of ``models:/…@champion-nfeK`` with ``dst_path``) on a
    read-only copy of a registry (chmod a-w): it loads the schedule and no file of the store changes. Without
    ``dst_path`` MLflow returns the version's folder inside a local artifact store and writes its
    ``registered_model_meta`` file there."""
    import hashlib
    import shutil
    import stat
    import tempfile

    import mlflow

    s = odd_schedule("ro", 5)
    reg.register_schedule(log(reg, s, 1.5), **REG)
    root = tmp_path / "copy"
    src = reg.tracking_uri[len("sqlite:///") :]
    shutil.copytree(os.path.dirname(src), root)
    db = root / os.path.basename(src)

    def snapshot():
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
        }

    # the copied artifact locations point at the original folder: re-point the copy's experiments to itself
    import sqlite3

    con = sqlite3.connect(db)
    old = reg.artifact_location
    con.execute(
        "update experiments set artifact_location = replace(artifact_location, ?, ?)",
        (old, (root / "mlartifacts").as_uri()),
    )
    con.execute("update runs set artifact_uri = replace(artifact_uri, ?, ?)", (old, (root / "mlartifacts").as_uri()))
    con.execute(
        "update model_versions set source = replace(source, ?, ?), storage_location = replace(storage_location, ?, ?)",
        (old, (root / "mlartifacts").as_uri(), old, (root / "mlartifacts").as_uri()),
    )
    con.commit()
    con.close()
    before = snapshot()
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    prev = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(f"sqlite:///{db}")
        m = mlflow.pyfunc.load_model("models:/ro-unipc-schedules@champion-nfe5", dst_path=tempfile.mkdtemp())
        assert m.predict(None) == json.loads(s.to_json())
        assert snapshot() == before
        try:  # without dst_path MLflow writes registered_model_meta into the store: refused, or (root) it appears
            mlflow.pyfunc.load_model("models:/ro-unipc-schedules@champion-nfe5")
            wrote = set(snapshot()) - set(before)
            assert [os.path.basename(f) for f in wrote] == ["registered_model_meta"], wrote
        except OSError:
            assert snapshot() == before
    finally:
        mlflow.set_tracking_uri(prev)
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
