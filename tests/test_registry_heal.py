"""Registry state that heals (issue 28 §5), on a sqlite registry in tmp_path fed by a hand-made evaluation of three
digits schedules (the register stage's real path: ``stages.register``):

- crash injection at every MLflow client call a clean register makes — the client raising there (the register's own
  cleanup then runs) or dying there (every later call fails too: a kill, runs left RUNNING) — then a rerun: the
  registry (runs and their statuses, params, metrics, tags and artifacts; versions and their tags; aliases) equals a
  clean register's;
- two registers started together (subprocesses of the real CLI) on a new and on an existing registry: both exit 0
  and the registry equals a clean one; a lock held past ``mlflow.lock_timeout_s`` is one line naming the lock file;
- the database is created once, by rename: a half-migrated empty database is moved aside and rebuilt;
- evaluation outputs as one unit: a JSON and an npz from different evaluations are refused in one line.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from optsteps.core.baselines import baseline  # noqa: E402
from optsteps.errors import OptstepsError  # noqa: E402
from optsteps.integrations.registry_lock import ATTEMPTS_TAG, WRITER_TAG, ensure_database, registry_lock  # noqa: E402
from optsteps.models.digits import noise_schedule_for  # noqa: E402
from optsteps.pipeline import stages  # noqa: E402
from optsteps.pipeline.config import load_params  # noqa: E402
from optsteps.pipeline.eval_outputs import write_evaluation  # noqa: E402
from optsteps.pipeline.layout import eval_path, model_record_path, resamples_path  # noqa: E402

pytestmark = pytest.mark.integration  # MLflow on sqlite registries, the CLI in subprocesses

ROOT = Path(__file__).resolve().parent.parent
METHODS = (("uniform-t", 5.0), ("uniform-lambda", 4.2))  # the second takes the alias from the first
VOLATILE_RUN_TAGS = {WRITER_TAG, ATTEMPTS_TAG, "mlflow.user", "mlflow.source.git.commit"}


def evaluation(seed=0, shift=0.0):
    """A teacher row and two NFE-4 rows of one evaluation, with bootstrap resamples of the champion metric."""
    g = np.random.default_rng(seed)
    ns = noise_schedule_for("digits")
    rows = [{"model": "digits", "method": "teacher", "solver": "unipc", "nfe": 12, "evaluation_id": f"e{seed}"}]
    res = [{}]
    base = g.normal(0, 0.3, 40)
    for method, fid in METHODS:
        s = baseline(method, ns, 4, model="digits").with_meta(solver="unipc")
        r = base + fid + shift + g.normal(0, 0.05, 40)
        rows.append(
            {
                "model": "digits",
                "method": method,
                "solver": "unipc",
                "nfe": 4,
                "n": 40,
                "seed": 99,
                "fid_digitsnet": fid + shift,
                "l2_to_teacher": fid / 10,
                "evaluation_id": f"e{seed}",
                "ci95": {"fid_digitsnet": [fid + shift - 0.2, fid + shift + 0.2]},
                "schedule": s.to_dict(),
            }
        )
        res.append({"fid_digitsnet": r, "l2_to_teacher": r / 10})
    return rows, res


def project(root: Path, seed=0, shift=0.0, db: Path | None = None):
    """A project folder: params.yaml (a sqlite registry in it: a copy of the empty database ``db`` if given), the
    digits model's record and an evaluation."""
    root.mkdir(parents=True, exist_ok=True)
    if db is not None:
        shutil.copyfile(db, root / "mlruns.db")
    (root / "params.yaml").write_text(
        f"artifacts: {root / 'artifacts'}\nresults: {root / 'results'}\nmodels:\n  digits: {{}}\n"
        f"mlflow:\n  tracking_uri: sqlite:///{root / 'mlruns.db'}\n  metric: fid_digitsnet\n  lock_timeout_s: 300\n"
    )
    p = load_params(root / "params.yaml")
    rec = model_record_path(p, "digits")
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"weights_sha256": "ab" * 32}))
    write_evaluation(p, "digits", *evaluation(seed, shift))
    return p


def snapshot(p) -> dict:
    """The registry as content: every run (kind, content key, status, params, latest metrics, tags, artifact
    files), every registered model (tags, aliases) and version (tags, its run's key), with ids, paths, times and
    the writer bookkeeping left out."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    uri = p.mlflow.tracking_uri
    c = MlflowClient(uri, uri)
    runs, key_of = [], {}

    def files(rid, path=None):
        out = []
        for f in c.list_artifacts(rid, path):
            out += files(rid, f.path) if f.is_dir else [(f.path, f.file_size if not f.path.endswith(".png") else 0)]
        return out

    for exp in c.search_experiments(view_type=ViewType.ALL):
        for run in c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000):
            tags = {k: v for k, v in run.data.tags.items() if k not in VOLATILE_RUN_TAGS}
            key = tags.get("schedule_key") or tags.get("summary_key")
            key_of[run.info.run_id] = key
            runs.append(
                (
                    exp.name,
                    key,
                    run.info.status,
                    run.info.lifecycle_stage,
                    json.dumps(run.data.params, sort_keys=True),
                    json.dumps(run.data.metrics, sort_keys=True),
                    json.dumps(tags, sort_keys=True),
                    json.dumps(sorted(files(run.info.run_id))),
                )
            )
    models, versions = [], []
    for rm in c.search_registered_models():
        models.append((rm.name, json.dumps(rm.tags, sort_keys=True), json.dumps(rm.aliases, sort_keys=True)))
        for mv in c.search_model_versions(f"name = '{rm.name}'"):
            versions.append((mv.name, int(mv.version), key_of.get(mv.run_id), json.dumps(mv.tags, sort_keys=True)))
    return {"runs": sorted(runs), "models": sorted(models), "versions": sorted(versions)}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean register's registry, and how many MLflow client calls it made."""
    from mlflow import MlflowClient

    p = project(tmp_path_factory.mktemp("clean"))
    calls = []
    real = {n: getattr(MlflowClient, n) for n in public_methods()}
    try:
        for n, f in real.items():
            setattr(MlflowClient, n, counting(f, n, calls))
        stages.register(p)
    finally:
        for n, f in real.items():
            setattr(MlflowClient, n, f)
    snap = snapshot(p)
    assert len(snap["versions"]) == 2 and all(r[2] == "FINISHED" for r in snap["runs"])
    assert len(snap["runs"]) == 3  # two schedule runs and one summary run
    empty = tmp_path_factory.mktemp("empty") / "mlruns.db"  # a new registry's database, copied for each crash
    ensure_database(f"sqlite:///{empty}", None)
    return p, snap, calls, empty


def public_methods():
    from mlflow import MlflowClient

    return [n for n, v in vars(MlflowClient).items() if callable(v) and not n.startswith("_")]


def counting(f, name, calls):
    def wrapper(*a, **k):
        calls.append(name)
        return f(*a, **k)

    return wrapper


class Killed(BaseException):
    """The process dies here: nothing after it runs (not even ``except Exception`` cleanups)."""


def test_a_second_register_changes_nothing(clean, tmp_path):
    p, snap, _, _ = clean
    stages.register(p)
    assert snapshot(p) == snap


def crash_then_rerun(tmp_path, n: int, mode: str, db: Path):
    """A register whose n-th MLflow client call raises (``raise``: an MlflowException, that call only) or kills it
    (``kill``: that call and every later one), then a rerun; returns the project's params."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    p = project(tmp_path / f"{mode}-{n}", db=db)
    calls = []
    real = {name: getattr(MlflowClient, name) for name in public_methods()}

    def inject(f, name):
        def wrapper(*a, **k):
            calls.append(name)
            if len(calls) == n or (mode == "kill" and len(calls) > n):
                if mode == "kill":
                    raise Killed(name)
                raise MlflowException(f"injected failure in {name}")
            return f(*a, **k)

        return wrapper

    try:
        for name, f in real.items():
            setattr(MlflowClient, name, inject(f, name))
        stages.register(p)
        assert mode == "raise", f"the register survived a kill at call {n}"  # MLflow may retry or skip a failed call
    except (Killed, MlflowException, OptstepsError):
        pass
    finally:
        for name, f in real.items():
            setattr(MlflowClient, name, f)
    stages.register(p)
    return p, calls[n - 1]


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_a_rerun_after_a_crash_at_any_mlflow_call_equals_a_clean_register(clean, tmp_path, mode):
    _, snap, calls, db = clean
    failures = []
    # every call is crashed once, in one of the two modes (odd calls killed, even calls raising): the suite's time
    assert len(calls) > 20
    for n in range(1 if mode == "kill" else 2, len(calls) + 1, 2):
        p, where = crash_then_rerun(tmp_path, n, mode, db)
        got = snapshot(p)
        if got != snap:
            diff = {k: (sorted(set(got[k]) - set(snap[k])), sorted(set(snap[k]) - set(got[k]))) for k in snap}
            failures.append((n, where, {k: v for k, v in diff.items() if v != ([], [])}))
    assert not failures, failures[:3]


def cli_register(params: Path) -> subprocess.Popen:
    """``optsteps stage register --params …`` in a subprocess (in the repository, as the clean register ran: the
    versions' git, params and DVC hash tags are the same)."""
    code = "import sys; from optsteps.cli.main import main; sys.argv[0] = 'optsteps'; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "stage", "register", "--params", str(params)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("existing", [False, True], ids=["new-registry", "existing-registry"])
def test_two_registers_started_together_serialise_and_equal_a_clean_one(clean, tmp_path, existing):
    _, snap, _, _ = clean
    p = project(tmp_path / "proj")
    if existing:
        stages.register(p)
    db = Path(p.mlflow.tracking_uri[len("sqlite:///") :])
    assert db.is_file() is existing
    procs = [cli_register(tmp_path / "proj" / "params.yaml") for _ in range(2)]
    outs = [pr.communicate(timeout=600) for pr in procs]
    for pr, (out, err) in zip(procs, outs):
        assert pr.returncode == 0, err[-3000:]
        assert "Traceback" not in err and out.startswith("wrote ")
    assert snapshot(p) == snap  # one version per schedule, one run per schedule and summary, all FINISHED
    assert not list(db.parent.glob(".mlruns.db.*.tmp"))  # the database was made by one rename


def test_a_lock_held_too_long_is_one_line_naming_the_lock_file(tmp_path):
    p = project(tmp_path / "proj")
    params = tmp_path / "proj" / "params.yaml"
    params.write_text(params.read_text().replace("lock_timeout_s: 300", "lock_timeout_s: 1"))
    uri = p.mlflow.tracking_uri
    with registry_lock(uri, 5) as lock:
        assert lock == Path(uri[len("sqlite:///") :] + ".lock")
        pr = cli_register(params)
        out, err = pr.communicate(timeout=300)
    assert pr.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(lock) in lines[0] and "lock_timeout_s" in lines[0] and "Traceback" not in err
    assert str(os.getpid()) in lines[0]  # the holder is named
    assert not Path(uri[len("sqlite:///") :]).exists()  # nothing was created while waiting


def test_a_half_migrated_empty_database_is_rebuilt_and_a_full_one_refused(clean, tmp_path):
    import sqlite3

    _, snap, _, _ = clean
    p = project(tmp_path / "proj")
    db = Path(p.mlflow.tracking_uri[len("sqlite:///") :])
    con = sqlite3.connect(db)  # what two concurrent first migrations left (issue 28): tables, no alembic_version
    con.execute("create table experiments (experiment_id integer)")
    con.execute("create table _alembic_tmp_latest_metrics (x integer)")
    con.commit()
    con.close()
    stages.register(p)
    assert snapshot(p) == snap
    assert len(list(db.parent.glob("mlruns.db.broken-*"))) == 1  # kept aside, not deleted
    q = project(tmp_path / "full")
    qdb = Path(q.mlflow.tracking_uri[len("sqlite:///") :])
    con = sqlite3.connect(qdb)
    con.execute("create table runs (run_uuid text)")
    con.execute("insert into runs values ('r1')")
    con.commit()
    con.close()
    with pytest.raises(OptstepsError, match="half-migrated .* holds 1 runs"):
        stages.register(q)


def test_a_json_and_an_npz_of_different_evaluations_are_refused(tmp_path):
    """A crash inside evaluate after the npz (written first) and before the JSON: the old rows with new resamples
    are refused in one line naming both files and the fix; so are a missing npz and a JSON without the id."""
    p = project(tmp_path / "proj")
    path, npz = eval_path(p, "digits"), resamples_path(p, "digits")
    old_rows = path.read_text()
    write_evaluation(p, "digits", *evaluation(seed=1, shift=0.5))  # a second evaluation ...
    path.write_text(old_rows)  # ... whose JSON never replaced the first one's
    with pytest.raises(OptstepsError) as e:
        stages.register(p)
    msg = str(e.value)
    assert str(path) in msg and str(npz) in msg and "optsteps stage evaluate --model digits" in msg
    assert "not one evaluation" in msg and "\n" not in msg
    assert not Path(p.mlflow.tracking_uri[len("sqlite:///") :]).exists()  # refused before any registry write
    npz.unlink()
    with pytest.raises(OptstepsError, match="bootstrap.npz is missing"):
        stages.register(p)
    rows = json.loads(old_rows)
    for r in rows:
        r.pop("outputs_id")
    path.write_text(json.dumps(rows))
    with pytest.raises(OptstepsError, match="no single outputs_id"):
        stages.register(p)
    write_evaluation(p, "digits", *evaluation(seed=1, shift=0.5))  # a whole evaluation registers
    stages.register(p)
    assert json.loads((Path(p.results) / "registry.json").read_text())[0]["action"] == "registered"


def test_evaluate_writes_the_npz_before_the_json(tmp_path, monkeypatch):
    """The write order ``read_evaluation`` relies on: a crash after the first write leaves the old JSON."""
    import optsteps.pipeline.eval_outputs as eo

    p = project(tmp_path / "proj")
    order = []

    def recording(write):
        def wrapper(path, data):
            order.append(Path(path).name)
            return write(path, data)

        return wrapper

    monkeypatch.setattr(eo, "write_bytes_atomic", recording(eo.write_bytes_atomic))
    monkeypatch.setattr(eo, "write_text_atomic", recording(eo.write_text_atomic))
    write_evaluation(p, "digits", *evaluation(seed=2))
    assert order == ["digits-bootstrap.npz", "digits.json"]


def test_a_register_killed_mid_run_is_finished_by_the_rerun(clean, tmp_path):
    """A real SIGKILL while a schedule run is RUNNING (the writer's process is gone, its lock freed by the kernel):
    the rerun marks the run FAILED, reopens and finishes it; the registry equals a clean register's."""
    import signal
    import sqlite3
    import time

    _, snap, _, db = clean
    p = project(tmp_path / "proj", db=db)
    dbfile = Path(p.mlflow.tracking_uri[len("sqlite:///") :])
    pr = cli_register(tmp_path / "proj" / "params.yaml")
    deadline, running = time.monotonic() + 300, 0
    while time.monotonic() < deadline and pr.poll() is None and not running:
        with contextlib.closing(sqlite3.connect(f"file:{dbfile}?mode=ro", uri=True, timeout=5)) as con:
            with contextlib.suppress(sqlite3.OperationalError):  # locked by the writer for a moment
                running = con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
        time.sleep(0.02)
    assert running, "the register finished before a run was seen RUNNING"
    os.kill(pr.pid, signal.SIGKILL)
    pr.communicate(timeout=60)
    assert pr.returncode == -signal.SIGKILL
    stages.register(p)
    assert snapshot(p) == snap
