"""MLflow adapter: schedule runs, summary runs and a model registry of step schedules.

With ``mlflow_pyfunc``, the only library modules that import MLflow, and only inside functions (``import
optsteps.integrations.mlflow_registry`` is cheap and works without MLflow). Recipe:
``docs/dependencies.md`` §4 (MLflow 3.17.2):

- tracking in sqlite (default ``sqlite:///<abs cwd>/mlruns.db``), artifacts in ``file:///<abs>/mlartifacts``
  next to the database, fixed when the experiment is created;
- one run per (model, method, solver, NFE): params, metrics, the schedule as a pyfunc model folder under
  the run's ``schedule/`` artifact path (``schedule/MLmodel``, ``schedule/data/schedule.json``) and PNG plots;
- registered model ``<model>-<solver>-schedules``; each schedule is a version created with
  ``MlflowClient.create_model_version(name, source=<run artifact uri>/schedule, run_id=...)`` (not
  ``register_model("runs:/...")``, which fails in MLflow 3), tagged at creation (method, nfe, solver,
  git commit, params hash, DVC data hash, metric). Creating the version is the last step, after every
  check, so a failed evaluation never leaves a half-registered version; versions are never overwritten
  or deleted. The alias ``champion-nfe{K}`` moves only on a significant paired gain in the champion metric
  within one evaluation (``optsteps.evaluate.champion``); every version records the decision in its tags;
- a run evaluated with a bootstrap carries its resamples (``bootstrap/resamples.json``: metric → values on the
  evaluation's shared resamples) and its ``evaluation_id`` tag, which is what the gate compares.

The pyfunc flavour of the logged schedule (``loader_module``, no pickle) is ``optsteps.integrations.mlflow_pyfunc``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.integrations.mlflow_pyfunc import FORMATS, SCHEDULE_FILE, SchedulePyfunc, save_schedule_model
from optsteps.integrations.registry_lock import open_run
from optsteps.integrations.registry_pages import model_description, nfe_table, schedule_params, version_description
from optsteps.integrations.tracking_server import DEFAULT_TIMEOUT_S, check_reachable, guarded_client
from optsteps.io.provenance import dvc_data_hash, git_commit, params_hash
from optsteps.io.readers import read_json

EXPERIMENT = "optsteps-schedules"
SUMMARY_EXPERIMENT = "optsteps-summary"
SCHEDULE_PATH = "schedule"  # run artifact folder holding the pyfunc model
KIND_TAG = "optsteps_kind"
RESAMPLES_FILE = "bootstrap/resamples.json"
EVALUATION_TAG = "evaluation_id"
KEY_TAG = "schedule_key"  # the content key of a schedule version (``schedule_key``)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI: training view, not GenAI
GRID_PATH = "samples.png"  # one root-level path in every run: MLflow's compare view shows common root files only
SUMMARY_KEY_TAG = "summary_key"  # the content key of a summary run (rows, speedup, metric, name)
REGISTERED_METRICS = (
    "fid_inception",
    "adherence_digitsnet",
    "l2_to_teacher",
    "kid_digitsnet",
    "fid_teacher_inception",
    "fid_teacher_digitsnet",
    "kid_teacher_digitsnet",
    "psnr_to_teacher",
    "fid_digitsnet",
)
RUN_PARAMS = ("n", "guidance", "n_inception", "n_teacher_inception", "seed", "start")  # row settings, not metrics


def _quiet():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keeps CLI stdout clean


# ---- locations ---------------------------------------------------------------------------------------


def default_tracking_uri(root=".") -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlruns.db'}"


def artifact_location_for(tracking_uri: str) -> str | None:
    """``file:///<dir>/mlartifacts`` next to a sqlite database; ``file:///<abs cwd>/mlartifacts`` for other
    local stores; None for a tracking server (``http(s)://``): the server's ``--artifacts-destination`` decides
    (artifacts are uploaded through it), so clients need no access to the artifact store."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    m = re.match(r"^sqlite:///(.+)$", tracking_uri)
    base = Path(m.group(1)).resolve().parent if m and m.group(1) != ":memory:" else Path.cwd().resolve()
    return (base / "mlartifacts").as_uri()


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow search filter: in single quotes, or double quotes when it holds a single
    quote (MLflow's filter grammar has no escapes; a value with both is refused)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise OptstepsError(
        f"{value!r} holds both quote characters, which an MLflow filter cannot express; model "
        "names are slugs (letters, digits, '-', '_')."
    )


def schedule_key(schedule: Schedule, solver: str | None = None, model_sha: str | None = None) -> str:
    """The content key of a registered schedule: what it *is* — model (name and, when known, the weights' identity),
    method, noise schedule, the exact times, the solver spec and the start-state rule — and nothing about how it was
    found (wall times, costs). Registering the same key again adds no version."""
    import hashlib

    spec = schedule.with_meta(solver=solver or schedule.solver).solver_spec
    blob = {
        "model": schedule.model,
        "model_sha256": model_sha or "",
        "method": schedule.method,
        "noise_schedule": schedule.noise_schedule.to_dict(),
        "t": [float(v).hex() for v in schedule.t],
        "solver": spec.name if spec else "",
        "order": spec.order if spec else None,
        "lower_order_final": spec.lower_order_final if spec else None,
        "corrector": spec.corrector if spec else None,
        "start_state": schedule.start_state,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:32]


def registered_name(model: str, solver: str) -> str:
    """``<model>-<solver>-schedules``, e.g. ``digits-unipc-schedules`` (other characters become '-')."""
    if not model or not solver:
        raise OptstepsError("a registered schedule needs the model name and the solver; set schedule.model and solver.")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{solver}").strip("-")
    return f"{slug}-schedules"


def champion_alias(nfe: int) -> str:
    return f"champion-nfe{int(nfe)}"


# ---- the adapter -------------------------------------------------------------------------------------


def _numeric(metrics: dict) -> dict:
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def _split_metrics(metrics: dict) -> tuple[dict, dict]:
    """(metrics with ``<metric>_ci95_lo``/``_hi`` from a ``ci95`` entry, the row's settings — n, guidance, seeds —
    which are params, not metrics)."""
    metrics = dict(metrics)
    metrics.pop("resamples", None)
    metrics.pop("evaluation_id", None)
    for k, (lo, hi) in (metrics.pop("ci95", None) or {}).items():
        metrics[f"{k}_ci95_lo"], metrics[f"{k}_ci95_hi"] = lo, hi
    settings = {k: metrics.pop(k) for k in RUN_PARAMS if k in metrics}
    return metrics, settings


def _source_tags() -> dict:
    """MLflow's own source tags (the UI's "Source" and git columns)."""
    tags = {"mlflow.source.type": "JOB", "mlflow.source.name": "optsteps"}
    commit = git_commit()
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def _page_tags(model_sha, vs_best_baseline, speedup) -> dict:
    """Run tags a version's page quotes: the weights' hash, the paired differences to the best baseline and the
    speedup entries (JSON, numbers to 6 digits; MLflow tags hold 8000 characters)."""

    def r6(v):
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: r6(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [r6(x) for x in v]
        return v

    out = {}
    if model_sha:
        out["model_sha256"] = model_sha
    if vs_best_baseline:
        out["vs_best_baseline"] = json.dumps(r6(vs_best_baseline))
    if speedup:
        out["speedup"] = json.dumps(r6(speedup))
    return {k: v for k, v in out.items() if len(v) <= 8000}  # a longer one would be cut into invalid JSON


def _metric_key(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]+", "_", s).strip("_")


def _tag_float(tags: dict, key: str):
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def _date(ms) -> str:
    """An MLflow timestamp (epoch milliseconds) as ISO 8601 in UTC to the minute, ``YYYY-MM-DDTHH:MMZ``."""
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(int(ms) / 1000))


def _list_order(row: dict):
    """(name, NFE), then the champion metric's value (best first; rows without it last), then the newest version."""
    from optsteps.evaluate.bootstrap import higher_is_better

    metric = row.get("metric") or ""
    v = row.get(metric)
    key = (1, 0.0) if v is None else (0, -v if higher_is_better(metric) else v)
    return (row["name"], row["nfe"] or 0, *key, -row["version"])


def _order(sched: Schedule, solver: str) -> str:
    spec = sched.with_meta(solver=solver).solver_spec
    return str(spec.order) if spec is not None else ""


class Registry:
    """An MLflow tracking + registry location. ``tracking_uri`` defaults to sqlite:///<abs cwd>/mlruns.db."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        experiment: str = EXPERIMENT,
        create: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        """``create`` False (read-only commands): a sqlite registry that does not exist is an error, not a new empty
        database. An http(s) server must answer ``/health`` and one API request within ``timeout_s`` (mlflow.timeout_s),
        else one clear error instead of MLflow's minutes of retries; the same bound is MLflow's per-request timeout,
        without retries (``bound_requests``), and a request that fails later raises ``ServerError`` (one line)."""
        _quiet()
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        check_reachable(self.tracking_uri, timeout_s, create)
        self.artifact_location = artifact_location or artifact_location_for(self.tracking_uri)
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        if self.tracking_uri.startswith(("http://", "https://")):  # a server: its failures become one line
            self.client = guarded_client(self.client, self.tracking_uri, timeout_s)
            self.client.search_experiments(max_results=1)  # its API answers too (not only /health), before any work
        self._resamples: dict = {}  # run id → its logged resamples (read once)

    # -- runs ----------------------------------------------------------------------------------------
    def experiment_id(self, name: str | None = None) -> str:
        name = name or self.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location, tags=EXPERIMENT_KIND)
        except Exception:  # created concurrently
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _log(
        self,
        run_id: str,
        params: dict | None = None,
        metrics: dict | None = None,
        step: int = 0,
        tags: dict | None = None,
    ):
        from mlflow.entities import Metric, Param, RunTag

        ts = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(_metric_key(k), v, ts, step) for k, v in _numeric(metrics).items()],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def find_run(self, key: str):
        """The finished schedule run whose content key is ``key`` (newest), or None: one search."""
        runs = self.client.search_runs(
            [self.experiment_id()],
            filter_string=f"tags.{KEY_TAG} = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def log_schedule_run(
        self,
        schedule: Schedule,
        metrics: dict | None = None,
        solver: str | None = None,
        params: dict | None = None,
        samples=None,
        run_name: str | None = None,
        evaluate=None,
        resamples: dict | None = None,
        evaluation_id: str | None = None,
        model_sha: str | None = None,
        grid: str | None = None,
        vs_best_baseline: dict | None = None,
        speedup: list[dict] | None = None,
        teacher_seed: int | None = None,
    ) -> str:
        """One run for (model, method, solver, NFE): params, metrics (with ``<metric>_ci95_lo``/``_hi`` from a
        ``ci95`` entry), the schedule (pyfunc folder under ``schedule/``), plots of the schedule against the
        baselines in t and λ, and a sample grid; ``resamples`` (metric → values on the evaluation's bootstrap
        resamples) as ``bootstrap/resamples.json`` and ``evaluation_id`` as a tag, for the champion gate.

        ``evaluate``: optional callable returning (metrics, samples) run inside the run (its metrics may carry
        ``resamples`` and ``evaluation_id``); if it (or any logging) raises, the run ends FAILED and the error
        propagates. Returns the run id.

        Idempotent by content (``schedule_key`` with ``model_sha``): a finished run of the same schedule is reused
        (``evaluate`` then runs outside any run) — unchanged when its metrics and evaluation are the same, else updated
        in place (the new values logged as the metrics' next step, the resamples and evaluation id replaced), never a
        second run.
        ``grid``: a PNG of the row's samples (beside the teacher's; logged as ``samples.png`` at the run's root,
        ``GRID_PATH``, where MLflow's compare view finds it).
        ``vs_best_baseline`` (the row's paired differences to the best baseline, ``compare_to_baselines``), ``speedup``
        (its best-baseline speedup entries) and ``model_sha`` are run tags the version's page quotes
        (``registry_pages``); ``teacher_seed`` a param beside the evaluation seed, order, times and sigmas.
        """
        from optsteps.evaluate.plots import schedule_figures

        solver = solver or schedule.solver
        if not solver:
            raise OptstepsError("log_schedule_run needs the solver (the schedule names none); pass solver=.")
        registered_name(schedule.model, solver)  # fails early if the schedule names no model
        sched = schedule if schedule.solver == solver else schedule.with_meta(solver=solver)
        name = run_name or f"{sched.model}-{sched.method}-{solver}-nfe{sched.nfe}"
        key = schedule_key(sched, solver, model_sha)
        old = self.find_run(key)
        if old is not None:  # this schedule has a run: measure (if asked) and update it, never a second run
            if evaluate is not None:
                metrics, samples = evaluate()
            self._log(old.info.run_id, tags=_page_tags(model_sha, vs_best_baseline, speedup))
            return self._update_run(old, metrics, resamples, evaluation_id, params)
        run = open_run(  # a run of this key a crash left is reopened and finished, not doubled
            self,
            self.experiment_id(),
            KEY_TAG,
            key,
            name,
            {
                KIND_TAG: "schedule",
                "model": sched.model,
                "method": sched.method,
                "solver": solver,
                "nfe": str(sched.nfe),
                KEY_TAG: key,
                **_source_tags(),
                **_page_tags(model_sha, vs_best_baseline, speedup),
            },
            None if evaluate is not None else {**_split_metrics(metrics or {})[1], **(params or {})},
        )
        rid = run.info.run_id
        try:
            p = {
                "model": sched.model,
                "method": sched.method,
                "solver": solver,
                "nfe": sched.nfe,
                "noise_schedule": json.dumps(sched.noise_schedule.to_dict(), sort_keys=True),
                "t": json.dumps(list(sched.t)),
                **schedule_params(sched, solver, teacher_seed=teacher_seed),
            }
            p.update(params or {})
            self._log(rid, params=p)
            if evaluate is not None:
                metrics, samples = evaluate()
            metrics = dict(metrics or {})
            resamples = metrics.pop("resamples", None) if resamples is None else resamples
            evaluation_id = metrics.pop("evaluation_id", None) if evaluation_id is None else evaluation_id
            metrics, settings = _split_metrics(metrics)
            if "seed" in settings and "eval_seed" not in p:
                settings["eval_seed"] = settings["seed"]
            self._log(
                rid, metrics=metrics, params=settings, tags={EVALUATION_TAG: evaluation_id} if evaluation_id else None
            )
            if resamples:
                self.client.log_dict(
                    rid,
                    {
                        "evaluation_id": evaluation_id,
                        "resamples": {k: [float(v) for v in r] for k, r in resamples.items()},
                    },
                    RESAMPLES_FILE,
                )
            self._log_schedule_model(rid, sched)
            for fname, fig in schedule_figures(sched).items():
                self.client.log_figure(rid, fig, f"plots/{fname}")
            fname = GRID_PATH
            if grid is not None:
                with tempfile.TemporaryDirectory() as d:
                    shutil.copyfile(grid, Path(d) / fname)
                    self.client.log_artifact(rid, str(Path(d) / fname))
            elif samples is not None and getattr(samples, "dim", lambda: 0)() == 4:  # images only
                from optsteps.io.images import save_labelled_grid

                with tempfile.TemporaryDirectory() as d:
                    title = f"{sched.method} ({solver}, NFE {sched.nfe})"
                    save_labelled_grid([(title, samples[:64])], Path(d) / fname)
                    self.client.log_artifact(rid, str(Path(d) / fname))
        except BaseException:
            self.client.set_terminated(rid, "FAILED")
            raise
        self.client.set_terminated(rid, "FINISHED")
        return rid

    def _update_run(self, run, metrics, resamples, evaluation_id, params) -> str:
        """An existing run of the same schedule: nothing written when the metrics and evaluation are unchanged;
        else the changed metrics logged as their next step, the evaluation id and resamples replaced."""
        rid = run.info.run_id
        metrics = dict(metrics or {})
        resamples = metrics.pop("resamples", None) if resamples is None else resamples
        evaluation_id = metrics.pop("evaluation_id", None) if evaluation_id is None else evaluation_id
        metrics, settings = _split_metrics(metrics)
        new = _numeric(metrics)
        old = dict(run.data.metrics)
        changed = {k: v for k, v in new.items() if old.get(_metric_key(k)) != v}
        same_eval = (evaluation_id or None) == (run.data.tags.get(EVALUATION_TAG) or None)
        if not changed and same_eval:
            return rid
        step = 1 + max(
            (m.step for k in changed for m in self.client.get_metric_history(rid, _metric_key(k))), default=0
        )
        # the resamples first, the evaluation id tag last: the tag marks the update complete (a crash between them
        # leaves the old id, and the rerun writes both again)
        if resamples:
            self.client.log_dict(
                rid,
                {"evaluation_id": evaluation_id, "resamples": {k: [float(v) for v in r] for k, r in resamples.items()}},
                RESAMPLES_FILE,
            )
            self._resamples.pop(rid, None)
        self._log(rid, metrics=changed, step=step, tags={EVALUATION_TAG: evaluation_id} if evaluation_id else None)
        return rid

    def _log_schedule_model(self, run_id: str, schedule: Schedule):
        with tempfile.TemporaryDirectory() as d:
            model_dir = save_schedule_model(schedule, Path(d) / "model")
            self.client.log_artifacts(run_id, str(model_dir), SCHEDULE_PATH)

    def log_summary_run(
        self, rows: list[dict], run_name: str = "summary", *, metric: str, speedup: list[dict] | None = None
    ) -> str:
        """A run with the grid's rows (JSON), ``metric``-vs-NFE (params.yaml ``mlflow.metric``) and L2-vs-NFE
        curves per method (with their 95 % interval bars), the per-NFE table (``summary/table.csv`` and ``.md``,
        ``registry_pages.nfe_table``), per-method metric series (step = NFE) and, with ``speedup`` (the entries of
        ``optsteps.evaluate.speedup.speedup_table``), the speedup figure and its table."""
        from optsteps.evaluate.plots import curves_figure, speedup_figure

        if not rows:
            raise OptstepsError("no rows to summarise; run an evaluation grid first.")
        import hashlib

        key = hashlib.sha256(
            json.dumps([rows, speedup, metric, run_name], sort_keys=True, default=str).encode()
        ).hexdigest()[:32]
        exp = self.experiment_id(SUMMARY_EXPERIMENT)
        done = self.client.search_runs(
            [exp], f"tags.{SUMMARY_KEY_TAG} = '{key}' and attributes.status = 'FINISHED'", max_results=1
        )
        if done:  # the same summary is logged: nothing to add
            return done[0].info.run_id
        run = open_run(self, exp, SUMMARY_KEY_TAG, key, run_name, {KIND_TAG: "summary", SUMMARY_KEY_TAG: key}, {})
        rid = run.info.run_id
        try:
            self.client.log_dict(rid, {"rows": rows}, "summary/rows.json")
            csv, md = nfe_table(rows, metric)
            self.client.log_text(rid, csv, "summary/table.csv")
            self.client.log_text(rid, md, "summary/table.md")
            for r in rows:
                if r.get("method") == "teacher":
                    continue
                base = _metric_key(f"{r.get('model')}/{r.get('solver')}/{r.get('method')}")
                self._log(
                    rid,
                    metrics={
                        f"{base}/{k}": r[k]
                        for k in (
                            metric,
                            "l2_to_teacher",
                            "fid_inception",
                            "fid_teacher_inception",
                            "psnr_to_teacher",
                            "adherence_digitsnet",
                        )
                        if k in r
                    },
                    step=int(r.get("nfe", 0)),
                )
            for fname, key, label in (
                ("fid_vs_nfe.png", metric, metric),
                ("l2_vs_nfe.png", "l2_to_teacher", "L2 to teacher"),
            ):
                fig = curves_figure(rows, key, label)
                if fig is not None:
                    self.client.log_figure(rid, fig, f"plots/{fname}")
            if speedup:
                self.client.log_dict(rid, {"speedup": speedup}, "summary/speedup.json")
                fig = speedup_figure(speedup)
                if fig is not None:
                    self.client.log_figure(rid, fig, "plots/speedup.png")
        except BaseException:
            self.client.set_terminated(rid, "FAILED")
            raise
        self.client.set_terminated(rid, "FINISHED")
        return rid

    # -- registry ------------------------------------------------------------------------------------
    def register_schedule(
        self,
        run_id: str,
        metric: str,
        git: str | None = None,
        params_digest: str | None = None,
        dvc_hash: str | None = None,
        description: str | None = None,
        resamples=None,
    ) -> dict:
        """Register the run's schedule as a version of ``<model>-<solver>-schedules`` (one version per content key)
        and settle ``champion-nfe{K}`` (``settle``): within the evaluation being registered the alias goes to the
        best version by ``metric`` (params.yaml ``mlflow.metric``), whatever the registration order, and every
        version's tags describe where it stands now (``optsteps.evaluate.champion.standings``).

        ``resamples``: the run's resampled values of ``metric`` (default: read from its ``bootstrap/`` artifact).
        Every check (run finished, metric present and finite, schedule artifact readable) comes first; creating the
        version is the last write before settling. Returns name, version, alias, whether it is champion now, its
        decision (``unchanged`` when nothing about it changed) and the metric.
        """
        c = self.client
        run = c.get_run(run_id)
        if run.info.status != "FINISHED":
            raise OptstepsError(
                f"run {run_id} is {run.info.status}, not FINISHED; only completed evaluations "
                "are registered (rerun the evaluation)."
            )
        value = run.data.metrics.get(metric)
        if value is None or not math.isfinite(value):
            raise OptstepsError(
                f"run {run_id} has no finite {metric!r} metric; evaluate the schedule before registering it."
            )
        names = {f.path for f in c.list_artifacts(run_id, SCHEDULE_PATH)}
        if f"{SCHEDULE_PATH}/MLmodel" not in names:
            raise OptstepsError(
                f"run {run_id} has no {SCHEDULE_PATH}/MLmodel artifact; log it with "
                "log_schedule_run before registering."
            )
        with tempfile.TemporaryDirectory() as d:
            local = c.download_artifacts(run_id, f"{SCHEDULE_PATH}/data/{SCHEDULE_FILE}", d)
            sched = Schedule.load(local)
        solver = run.data.params.get("solver") or sched.solver
        name = registered_name(sched.model, solver)
        key = run.data.tags.get(KEY_TAG) or schedule_key(sched, solver)
        eid = run.data.tags.get(EVALUATION_TAG)
        if resamples is not None:
            self._resamples.setdefault(run_id, {})[metric] = resamples
        alias = champion_alias(sched.nfe)
        existing = self.version_by_key(name, key)
        measured = {metric: repr(float(value)), "metric": metric, **({EVALUATION_TAG: eid} if eid else {})}
        for k in REGISTERED_METRICS:
            if k in run.data.metrics and k != metric:
                measured[k] = repr(float(run.data.metrics[k]))
        for k in (metric, *REGISTERED_METRICS):
            lo, hi = run.data.metrics.get(f"{k}_ci95_lo"), run.data.metrics.get(f"{k}_ci95_hi")
            if lo is not None and hi is not None:
                measured[f"{k}_ci95"] = json.dumps([float(lo), float(hi)])
        tags = {
            KIND_TAG: "schedule",
            KEY_TAG: key,
            "model": sched.model,
            "method": sched.method,
            "solver": solver,
            "nfe": str(sched.nfe),
            "order": _order(sched, solver),
            "git_commit": git or git_commit(),
            "params_hash": params_digest or params_hash(),
            "dvc_data_hash": dvc_hash or dvc_data_hash(),
            **measured,
        }
        self._ensure_registered_model(name)
        if (
            existing is not None
            and existing.run_id == run_id
            and all(existing.tags.get(k) == v for k, v in measured.items())
            and (existing.tags.get(EVALUATION_TAG) or None) == (eid or None)
        ):  # the same schedule, the same evaluation
            action, mv = "unchanged", existing
        elif existing is not None:  # the same schedule re-measured: its version's tags follow the new measurement
            action, mv = "updated", existing
            for k, v in tags.items():
                if existing.tags.get(k) != v:
                    c.set_model_version_tag(name, existing.version, k, v)
        else:
            action = "registered"
            mv = c.create_model_version(
                name,
                source=f"{run.info.artifact_uri}/{SCHEDULE_PATH}",
                run_id=run_id,
                tags=tags,
                description=description or f"{sched.method} schedule, {solver}, NFE {sched.nfe}, {metric} {value:.4g}",
            )
        now = self.settle(name, sched.nfe, metric, eid or None)
        self.refresh_pages(name, sched.nfe)
        mine = now.get(str(mv.version), {})
        out = {
            "name": name,
            "version": int(mv.version),
            "alias": alias,
            "champion": bool(mine.get("champion")),
            "decision": "unchanged"
            if action == "unchanged" and not mine.get("changed")
            else mine.get("champion_decision", ""),
            "action": action,
            metric: float(value),
            "run_id": run_id,
        }
        for k in ("paired_diff", "compared_with", "champion_significance"):
            if mine.get(k) is not None:
                out[k] = mine[k]
        if mine.get("paired_ci95") is not None:
            out["paired_ci95_lo"], out["paired_ci95_hi"] = mine["paired_ci95"]
        return out

    def _versions(self, name: str, nfe: int) -> list:
        return list(self.client.search_model_versions(f"name = {filter_value(name)} and tag.nfe = '{int(nfe)}'"))

    def _version_value(self, mv, metric: str):
        v = _tag_float(mv.tags, metric)
        if v is None and mv.run_id:
            try:
                v = self.client.get_run(mv.run_id).data.metrics.get(metric)
            except Exception:
                v = None
        return v if v is not None and math.isfinite(v) else None

    def settle(self, name: str, nfe: int, metric: str, evaluation_id: str | None = None) -> dict:
        """Move ``champion-nfe{nfe}`` of ``name`` and rewrite the versions' standing tags so they describe the present.

        The evaluation that decides is ``evaluation_id`` (the one being registered: a new evaluation's best takes
        over); None: the current champion's evaluation (a version without an id never displaces one with an id),
        or, when no version has an id, the versions without one (point values). Within that evaluation the best
        version holds the alias (``standings``); the other versions of that NFE are tagged ``older_evaluation`` or
        ``not_comparable``. Idempotent: a rerun writes nothing when nothing changed (it also finishes a settle
        interrupted by a crash). Returns version → its present tags (plus ``champion`` and ``changed``)."""
        from optsteps.evaluate.champion import Entry, standings

        c = self.client
        alias = champion_alias(nfe)
        mvs = [mv for mv in self._versions(name, nfe) if mv.tags.get(KIND_TAG, "schedule") == "schedule"]
        cur = self._champion(name, alias)
        eid_of = {mv.version: mv.tags.get(EVALUATION_TAG) or None for mv in mvs}
        if evaluation_id is None and cur is not None:
            evaluation_id = cur.tags.get(EVALUATION_TAG) or None
        group = [
            mv for mv in mvs if eid_of[mv.version] == evaluation_id and self._version_value(mv, metric) is not None
        ]
        if not group and evaluation_id is not None:
            return {}
        by_key = {mv.tags.get(KEY_TAG) or f"v{mv.version}": mv for mv in group}
        entries = []
        for k, mv in by_key.items():
            res = self.run_resamples(mv.run_id).get(metric) if (evaluation_id and mv.run_id) else None
            entries.append(Entry(k, self._version_value(mv, metric), res))
        if evaluation_id and any(e.resamples is None for e in entries):  # pair only when every version has them
            entries = [Entry(e.key, e.value) for e in entries]
        stand = {s.key: s for s in standings(metric, entries)}
        present: dict = {}
        for k, mv in by_key.items():
            s = stand[k]
            other = by_key.get(s.compared_with)
            t = {
                "champion_decision": "best" if s.champion else "behind",
                "champion_significance": s.significance,
                "rank": f"{s.rank}/{s.of}",
                "compared_with": f"{name}/{other.version}" if other is not None else None,
                "compared_with_method": other.tags.get("method") if other is not None else None,
                "paired_diff": repr(float(s.diff)) if s.diff is not None else None,
                "paired_ci95": json.dumps([float(v) for v in s.ci95]) if s.ci95 is not None else None,
                "not_significant": (str(s.significance != "significant").lower() if s.ci95 is not None else None),
            }
            present[str(mv.version)] = t
        out_of_group = {
            "champion_decision": None,
            "champion_significance": None,
            "rank": None,
            "compared_with": None,
            "compared_with_method": None,
            "paired_diff": None,
            "paired_ci95": None,
            "not_significant": None,
        }
        for mv in mvs:
            if str(mv.version) not in present:
                present[str(mv.version)] = {
                    **out_of_group,
                    "champion_decision": "older_evaluation" if eid_of[mv.version] else "not_comparable",
                }
        result = {}
        for mv in mvs:
            t = present[str(mv.version)]
            changed = False
            for k, v in t.items():
                if v is None and k in mv.tags:
                    c.delete_model_version_tag(name, mv.version, k)
                    changed = True
                elif v is not None and mv.tags.get(k) != v:
                    c.set_model_version_tag(name, mv.version, k, v)
                    changed = True
            result[str(mv.version)] = {**t, "changed": changed}
        best = next((by_key[k] for k, s in stand.items() if s.champion), None)
        if best is not None and (cur is None or str(cur.version) != str(best.version)):
            c.set_registered_model_alias(name, alias, str(best.version))
            for r in (result.get(str(best.version)), result.get(str(cur.version)) if cur is not None else None):
                if r is not None:
                    r["changed"] = True
        champ = str(best.version) if best is not None else (str(cur.version) if cur is not None else None)
        for v, r in result.items():
            r["champion"] = v == champ
            r["paired_ci95"] = json.loads(r["paired_ci95"]) if r.get("paired_ci95") else None
            r["paired_diff"] = float(r["paired_diff"]) if r.get("paired_diff") else None
        return result

    def refresh_pages(self, name: str, nfe: int) -> int:
        """Rewrite the markdown descriptions (``registry_pages``) of ``name``'s versions at ``nfe`` from their present
        tags and runs, and the registered model's champion table; only what changed is written. Returns how many
        descriptions were written."""
        c = self.client
        mvs = [mv for mv in self._versions(name, nfe) if mv.tags.get(KIND_TAG, "schedule") == "schedule"]
        method_of = {str(mv.version): mv.tags.get("method", "") for mv in mvs}
        written = 0
        for mv in mvs:
            try:
                run = c.get_run(mv.run_id) if mv.run_id else None
            except Exception:
                run = None
            other = (mv.tags.get("compared_with") or "").rpartition("/")[2]
            text = version_description(
                name,
                mv.version,
                dict(mv.tags),
                dict(run.data.params) if run else {},
                dict(run.data.metrics) if run else {},
                dict(run.data.tags) if run else {},
                mv.tags.get("compared_with_method") or method_of.get(other),
                REGISTERED_METRICS,
            )
            if (mv.description or "") != text:
                c.update_model_version(name, mv.version, description=text)
                written += 1
        champions = []
        rm = c.get_registered_model(name)
        for alias, version in sorted((rm.aliases or {}).items()):
            if not alias.startswith("champion-nfe"):
                continue
            try:
                mv = c.get_model_version(name, str(version))
            except Exception:
                continue
            metric = mv.tags.get("metric", "")
            champions.append(
                {
                    "nfe": mv.tags.get("nfe", alias.removeprefix("champion-nfe")),
                    "version": mv.version,
                    "method": mv.tags.get("method", ""),
                    "metric": metric,
                    "value": _tag_float(mv.tags, metric),
                    "ci95": json.loads(mv.tags[f"{metric}_ci95"]) if mv.tags.get(f"{metric}_ci95") else None,
                    "significance": mv.tags.get("champion_significance", ""),
                    "rank": mv.tags.get("rank", ""),
                }
            )
        text = model_description(name, champions)
        if (rm.description or "") != text:
            c.update_registered_model(name, description=text)
            written += 1
        return written

    def standing(self, name: str, version: int) -> dict:
        """Whether a version holds its NFE's alias now, its present ``champion_decision`` and its present comparison
        (runner-up or champion, paired difference and interval, significance): what its tags say after the last
        settle, so that a record written at registration time is brought up to date."""
        mv = self.client.get_model_version(name, str(version))
        champ = self._champion(name, champion_alias(int(mv.tags.get("nfe", 0))))
        tags = mv.tags
        out = {
            "champion": champ is not None and str(champ.version) == str(mv.version),
            "decision": tags.get("champion_decision", ""),
            "compared_with": tags.get("compared_with") or None,
            "champion_significance": tags.get("champion_significance") or None,
            "paired_diff": float(tags["paired_diff"]) if tags.get("paired_diff") else None,
            "paired_ci95_lo": None,
            "paired_ci95_hi": None,
        }
        if tags.get("paired_ci95"):
            out["paired_ci95_lo"], out["paired_ci95_hi"] = json.loads(tags["paired_ci95"])
        return out

    def version_by_key(self, name: str, key: str):
        """The version of ``name`` registered for the schedule whose content key is ``key``, or None: one search."""
        mvs = self.client.search_model_versions(  # an error is no answer: None here would add a second version
            f"name = {filter_value(name)} and tag.{KEY_TAG} = '{key}'"
        )
        return min(mvs, key=lambda mv: int(mv.version)) if mvs else None

    def run_resamples(self, run_id: str) -> dict:
        """metric → resampled values logged with the run (``bootstrap/resamples.json``); {} if none."""
        cache = self._resamples
        if run_id not in cache:
            names = {f.path for f in self.client.list_artifacts(run_id, "bootstrap")}
            out = {}
            if RESAMPLES_FILE in names:
                with tempfile.TemporaryDirectory() as d:
                    local = self.client.download_artifacts(run_id, RESAMPLES_FILE, d)
                    fix = f"rerun `optsteps stage register` (run {run_id})"
                    rec = read_json(local, "run's resamples record", fix=fix)
                    out = rec.get("resamples", {})
            cache[run_id] = out
        return cache[run_id]

    def _champion(self, name: str, alias: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def _ensure_registered_model(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    name,
                    tags={KIND_TAG: "schedules"},
                    description="Optimized sampling step schedules (optsteps); one version per schedule.",
                )
            except MlflowException:
                self.client.get_registered_model(name)  # created concurrently

    def publish(
        self,
        schedule: Schedule,
        evaluate,
        solver: str | None = None,
        params: dict | None = None,
        *,
        metric: str,
        **register_kw,
    ) -> dict:
        """Evaluate inside a new run, then register it. ``evaluate()`` returns (metrics, samples or None).
        If evaluation fails the run is marked FAILED and nothing is registered."""
        rid = self.log_schedule_run(schedule, solver=solver, params=params, evaluate=evaluate)
        return self.register_schedule(rid, metric=metric, **register_kw)

    # -- queries -------------------------------------------------------------------------------------
    def parse_ref(self, ref: str):
        """``NAME@ALIAS``, ``NAME/VERSION`` or ``models:/…`` → the ModelVersion."""
        from mlflow.exceptions import MlflowException

        r = ref[len("models:/") :] if ref.startswith("models:/") else ref
        try:
            if "@" in r:
                name, alias = r.rsplit("@", 1)
                return self.client.get_model_version_by_alias(name, alias)
            if "/" in r:
                name, version = r.rsplit("/", 1)
                return self.client.get_model_version(name, version)
        except MlflowException as e:
            raise OptstepsError(
                f"no registered schedule {ref!r} ({e.message}); see `optsteps registry list`."
            ) from None
        raise OptstepsError(
            f"cannot read {ref!r}; refer to a schedule as NAME@ALIAS (e.g. digits-unipc-schedules@"
            "champion-nfe5) or NAME/VERSION."
        )

    def schedule_text(self, mv) -> str:
        """The registered schedule JSON, read from the version's download URI (its source). Resolved with this
        adapter's client: ``models:/`` URIs would go through MLflow's global tracking URI instead."""
        import mlflow

        base = self.client.get_model_version_download_uri(mv.name, mv.version).rstrip("/")
        with tempfile.TemporaryDirectory() as d:
            # tracking_uri: mlflow-artifacts:/ URIs (a tracking server's proxied store) resolve against it
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{base}/data/{SCHEDULE_FILE}", dst_path=d, tracking_uri=self.tracking_uri
            )
            return Path(local).read_text()

    def load_schedule(self, ref: str) -> Schedule:
        return Schedule.from_json(self.schedule_text(self.parse_ref(ref)))

    def _row(self, mv, run_metrics: bool = True) -> dict:
        tags = dict(mv.tags)
        row = {
            "name": mv.name,
            "version": int(mv.version),
            "aliases": list(mv.aliases or []),
            "model": tags.get("model", ""),
            "method": tags.get("method", ""),
            "solver": tags.get("solver", ""),
            "nfe": int(tags["nfe"]) if tags.get("nfe", "").isdigit() else None,
            "run_id": mv.run_id,
            "created": _date(mv.creation_timestamp),
            "decision": tags.get("champion_decision", ""),
            "significance": tags.get("champion_significance", ""),
            "metric": tags.get("metric", ""),
        }
        metrics = {}
        if run_metrics and mv.run_id:
            try:
                metrics = dict(self.client.get_run(mv.run_id).data.metrics)
            except Exception:
                metrics = {}
        for k in REGISTERED_METRICS:
            v = metrics.get(k, _tag_float(tags, k))
            if v is not None:
                row[k] = v
            ci = tags.get(f"{k}_ci95")
            if ci:
                try:
                    row[f"{k}_ci95"] = [float(x) for x in json.loads(ci)]
                except (ValueError, TypeError):
                    pass
        return row

    def list_schedules(self, model: str | None = None, nfe: int | None = None) -> list[dict]:
        """Registered schedule versions (newest first per name), optionally of one model and/or NFE."""
        q = [f"tag.{KIND_TAG} = 'schedule'"]
        if model:
            q.append(f"tag.model = {filter_value(model)}")
        if nfe is not None:
            q.append(f"tag.nfe = '{int(nfe)}'")
        mvs = self.client.search_model_versions(" and ".join(q))  # one query: metrics are the versions' tags
        rows = [self._row(mv, run_metrics=False) for mv in mvs]
        aliases = {}  # version search results carry no aliases: one more query reads them from the registered models
        names = {r["name"] for r in rows}
        token, seen = None, set()
        while names - seen:
            page = self.client.search_registered_models(
                f"tags.{KIND_TAG} = 'schedules'", max_results=1000, page_token=token
            )
            for rm in page:
                seen.add(rm.name)
                for alias, version in (rm.aliases or {}).items():
                    aliases.setdefault((rm.name, int(version)), []).append(alias)
            token = page.token
            if not token:
                break
        for name in names - seen:  # registered by hand without the kind tag
            for alias, version in (self.client.get_registered_model(name).aliases or {}).items():
                aliases.setdefault((name, int(version)), []).append(alias)
        for r in rows:
            r["aliases"] = sorted(set(r["aliases"]) | set(aliases.get((r["name"], r["version"]), [])))
        return sorted(rows, key=_list_order)

    def show(self, ref: str) -> dict:
        mv = self.parse_ref(ref)
        row = self._row(mv)
        row.update(tags=dict(mv.tags), source=mv.source, schedule=json.loads(self.schedule_text(mv)))
        return row

    def export(self, ref: str, fmt: str = "json", scheduler: str | None = None, steps: int | None = None) -> str:
        """The schedule as text: ``json`` (the registered file, byte for byte), ``diffusers`` (scheduler, kwargs,
        config overrides and the snapped move, JSON), ``comfyui`` (the sigma list, JSON), ``comfyui-text`` (the
        sigmas comma-separated) or ``ays`` (timesteps + sigmas ending in 0, JSON)."""
        if fmt not in FORMATS:
            raise OptstepsError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
        text = self.schedule_text(self.parse_ref(ref))
        if fmt == "json":
            return text
        if steps is not None and fmt not in ("comfyui", "comfyui-text", "a1111"):
            raise OptstepsError(
                f"--steps interpolates sigma lists (comfyui, comfyui-text, a1111), not {fmt}; "
                "drop --steps to export the measured schedule."
            )
        out = SchedulePyfunc(text).export(fmt, scheduler, steps)
        return out if isinstance(out, str) else json.dumps(out, indent=2 if fmt in ("diffusers", "ays") else None)
