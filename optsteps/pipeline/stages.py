"""The pipeline's entry points. The CLI, the DVC stages and the Prefect tasks all call these functions.

Paths (under ``params.artifacts`` / ``params.results``):
    artifacts/models/<model>/                 trained models (``train``)
    artifacts/trajectories/<model>/           teacher shards + manifest.json (``trajectories``)
    results/schedules/<model>/<method>/<solver>-nfe<K>.json   optimized schedules (``lambda_opt``, ``oss``)
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from optsteps.pipeline.config import Params
from optsteps.errors import OptstepsError
from optsteps.models import BUILTIN, CLASSIFIER, EMBEDDED, TRAINABLE, load_model, model_dir, noise_schedule_for
from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import DEFAULT_ORDER, SolverSpec


def trajectories_dir(p: Params, model: str) -> Path:
    return Path(p.artifacts) / "trajectories" / model


def schedule_path(p: Params, model: str, method: str, solver: str, nfe: int) -> Path:
    return Path(p.results) / "schedules" / model / method / f"{solver}-nfe{nfe}.json"


def lambda_opt_all(p: Params, model: str) -> list[Path]:
    """Every (solver, NFE) of ``lambda_opt`` in params; the DVC stage ``lambda_opt@<model>``."""
    return [schedule_path(p, model, "lambda-opt", solver, nfe)
            for solver in p.lambda_opt.solvers for nfe in p.lambda_opt.nfe
            if lambda_opt(p, model, solver, nfe) is not None]


def oss_all(p: Params, model: str) -> list[Path]:
    """Every (solver, NFE) of ``oss`` in params, OSS and (if enabled) GITS; the DVC stage ``oss@<model>``."""
    methods = ["oss"] + (["gits"] if p.oss.gits else [])
    for method in ("oss", "gits"):  # both folders exist so that the DVC stage's outputs always do
        (Path(p.results) / "schedules" / model / method).mkdir(parents=True, exist_ok=True)
    return [schedule_path(p, model, method, solver, nfe)
            for method in methods for solver in p.oss.solvers for nfe in p.oss.nfe
            if oss(p, model, solver, nfe, method=method) is not None]


def train(p: Params, model: str, force: bool = False) -> Path:
    out = model_dir(p.artifacts, model)
    if (out / "optsteps_model.json").is_file() and not force:
        return out
    if model == CLASSIFIER:
        from optsteps.models.classifier import train_classifier

        return train_classifier(p.classifier, out)
    if model in EMBEDDED:
        from optsteps.models.digits import train_digits

        return train_digits(model, p.train_config(model), out)
    raise OptstepsError(f"unknown model {model!r} to train; use {', '.join(TRAINABLE[:-1])} or {TRAINABLE[-1]}.")


def trajectories(p: Params, model: str, use_ray: bool | None = None, out=None) -> dict:
    from optsteps.teacher.trajectories import generate_trajectories

    out = Path(out) if out else trajectories_dir(p, model)
    m = load_model(model, p.artifacts)
    runner = None
    if p.ray.enabled if use_ray is None else use_ray:
        from optsteps.integrations.ray_pool import ray_runner

        runner = ray_runner(model, p.artifacts, p.teacher, out, p.ray)
    return generate_trajectories(m, p.teacher, out, p.trajectories.samples, p.trajectories.shard_size, runner=runner)


def load_teacher(p: Params, model, traj_dir, samples: int):
    """(t [N+1], states [N+1, S, ...], labels [S] or None) from the first ``samples`` teacher samples."""
    from optsteps.teacher.trajectories import iter_shards

    states, labels, t = [], [], None
    have = 0
    for sh in iter_shards(traj_dir, model, p.teacher):
        take = min(sh["states"].shape[1], samples - have)
        states.append(sh["states"][:, :take])
        labels.append(sh["labels"][:take])
        t = sh["t"]
        have += take
        if have >= samples:
            break
    if not states:
        raise OptstepsError(f"{traj_dir} has no shards; run `optsteps trajectories --model {model.name}`.")
    lab = torch.cat(labels)
    return t, torch.cat(states, dim=1), (None if (lab < 0).all() else lab)


class LabelledDenoiser:
    """A model denoiser for batches that stack node states of the same S samples (row r is sample r mod S)."""

    def __init__(self, model, labels, guidance: float = 1.0):
        self.model, self.labels, self.guidance = model, labels, guidance

    def __call__(self, x, t):
        if self.labels is None:
            return self.model.denoiser(None, self.guidance)(x, t)
        s = len(self.labels)
        if x.shape[0] % s:
            raise OptstepsError(f"batch of {x.shape[0]} rows is not a whole number of {s}-sample blocks.")
        return self.model.denoiser(self.labels.repeat(x.shape[0] // s), self.guidance)(x, t)


_GITS_COSTS: dict = {}
_GITS_LOCK = threading.Lock()


def _shared_gits_costs(p: Params, model, traj_dir, t, states, den):
    """GITS's one-jump cost matrix depends on the teacher shards, the samples read and the guidance, not on the
    student solver or NFE: computed once per process (the flow's GITS tasks share it; one lock, so concurrent
    tasks wait for the first instead of recomputing)."""
    from optsteps.optimizers.oss import gits_costs

    manifest = Path(traj_dir) / "manifest.json"
    key = (str(Path(traj_dir).resolve()), manifest.read_bytes() if manifest.is_file() else b"", states.shape[1],
           p.teacher.guidance)
    with _GITS_LOCK:
        if key not in _GITS_COSTS:
            _GITS_COSTS.clear()
            _GITS_COSTS[key] = gits_costs(t, states, den, model.noise_schedule, eval_batch_size=states.shape[1])
        return _GITS_COSTS[key]


def oss(p: Params, model: str, solver: str, nfe: int, method: str = "oss", traj_dir=None) -> Schedule:
    """OSS (or GITS) on the model's teacher shards; the schedule is written to ``schedule_path``."""
    from optsteps.optimizers.oss import gits_search, oss_search

    m = load_model(model, p.artifacts)
    traj_dir = traj_dir or trajectories_dir(p, model)
    t, states, labels = load_teacher(p, m, traj_dir, p.oss.samples)
    den = LabelledDenoiser(m, labels, p.teacher.guidance)
    s = states.shape[1]
    t0 = time.perf_counter()
    if method == "gits":
        costs = _shared_gits_costs(p, m, traj_dir, t, states, den)
        res = gits_search(t, states, den, m.noise_schedule, nfe, solver=solver, eval_batch_size=s, model=model,
                          costs=costs, start_window=p.oss.start_window)
    elif method == "oss":
        res = oss_search(t, states, den, m.noise_schedule, nfe, solver=solver, distance=p.oss.distance,
                         mode=p.oss.mode, refine=p.oss.refine, refine_radius=p.oss.refine_radius, calibration=p.oss.calibration or None,
                         eval_batch_size=s, model=model, start_window=p.oss.start_window, objective=p.oss.objective)
    else:
        raise OptstepsError(f"unknown distillation method {method!r}; use oss or gits.")
    sched = res.schedule.with_meta(extra={"wall_time_s": round(time.perf_counter() - t0, 3),
                                          "teacher_samples": s})
    sched.save(schedule_path(p, model, method, solver, nfe))
    return sched


def lambda_opt(p: Params, model: str, solver: str, nfe: int, p_exp: float | None = None,
               error_model: str | None = None, max_order: int = 3, traj_dir=None, trunc: int | None = None) -> Schedule:
    from optsteps.optimizers.lambda_opt import lambda_opt_schedule

    ns = noise_schedule_for(model, p.artifacts)
    em = error_model or p.lambda_opt.error_model
    eps_fn = empirical_eps_for(p, model, traj_dir) if em == "empirical" else None
    spec = SolverSpec(solver, min(max_order, DEFAULT_ORDER[solver]))
    sched = lambda_opt_schedule(ns, nfe, p=p.lambda_opt.p if p_exp is None else p_exp, model=model, solver=spec,
                                error_model=em, eps_fn=eps_fn, trunc=trunc)
    sched.save(schedule_path(p, model, "lambda-opt", solver, nfe))
    return sched


def empirical_eps_for(p: Params, model: str, traj_dir=None):
    """ε(λ) measured on the teacher shards: mean ‖x̂_0(x_t, t) − x_final‖ per teacher time, interpolated in λ."""
    from optsteps.optimizers.lambda_opt import empirical_eps
    from optsteps.teacher.trajectories import iter_shards

    m = load_model(model, p.artifacts)
    sums, count, t = None, 0, None
    for sh in iter_shards(traj_dir or trajectories_dir(p, model), m, p.teacher):
        err = (sh["x0"] - sh["states"][-1][None]).flatten(2).norm(dim=2).sum(1)  # [N]
        sums = err if sums is None else sums + err
        count += sh["states"].shape[1]
        t = sh["t"]
    lam = m.noise_schedule.lambda_(t[:-1])
    return empirical_eps(lam.numpy(), (sums / count).double().numpy())


METHOD_DIRS = ("lambda-opt", "oss", "gits")


def eval_path(p: Params, model: str) -> Path:
    return Path(p.results) / "eval" / f"{model}.json"


def summary_path(p: Params, model: str) -> Path:
    """results/eval/<model>-summary.json: the speedup entries (``optsteps.evaluate.speedup.speedup_table``)."""
    return Path(p.results) / "eval" / f"{model}-summary.json"


def resamples_path(p: Params, model: str) -> Path:
    """results/eval/<model>-bootstrap.npz: every row's bootstrap resamples (``row<i>/<metric>``), for the register
    stage's paired champion test."""
    return Path(p.results) / "eval" / f"{model}-bootstrap.npz"


def is_pipeline_model(model: str) -> bool:
    """A diffusers pipeline (folder or hub id) rather than a built-in model (digits, digits-flow, gmm)."""
    return model not in BUILTIN


def champion_metric(p: Params, model: str) -> str:
    """What ``champion-nfe{K}`` of ``model`` ranks by: ``mlflow.metric`` for built-in models,
    ``mlflow.pipeline_metric`` for diffusers pipelines."""
    return p.mlflow.pipeline_metric if is_pipeline_model(model) else p.mlflow.metric


def teacher_inception_n(p: Params, model: str) -> int:
    return p.evaluate.pipeline_teacher_inception_n if is_pipeline_model(model) else p.evaluate.teacher_inception_n


def evaluation_schedules(p: Params, model: str) -> list[Schedule]:
    """The evaluation grid of ``model``: baselines × solvers × (``evaluate.nfe`` ∪ ``evaluate.baseline_nfe``) plus
    every optimized schedule on disk whose solver and NFE are in ``evaluate.nfe``."""
    from optsteps.core.baselines import baseline

    ns = noise_schedule_for(model, p.artifacts)
    ev = p.evaluate
    base_nfe = sorted(set(ev.nfe) | set(ev.baseline_nfe))
    out = [baseline(kind, ns, nfe, model=model).with_meta(solver=solver)
           for solver in ev.solvers for kind in ev.baselines for nfe in base_nfe]
    for method in METHOD_DIRS:
        for solver in ev.solvers:
            for nfe in ev.nfe:
                path = schedule_path(p, model, method, solver, nfe)
                if path.is_file():
                    out.append(Schedule.load(path))
    return out


def evaluator_for(p: Params, model: str, progress: bool = False, inception_n: int | None = None):
    """The ``Evaluator`` of ``model`` with the params' settings: the digits classifier for the embedded digits
    models (none for other models), Inception counts by model kind (``inception_n`` overrides
    ``evaluate.inception_n``), the reference folder and the bootstrap."""
    from optsteps.evaluate.run import Evaluator
    from optsteps.models.classifier import load_classifier

    ev = p.evaluate
    classifier = None
    if model in EMBEDDED:
        clf_dir = model_dir(p.artifacts, CLASSIFIER)
        if not (clf_dir / "optsteps_model.json").is_file():
            raise OptstepsError(f"the digits classifier is not trained ({clf_dir}); run `optsteps train --model classifier`.")
        classifier = load_classifier(clf_dir)
    return Evaluator(classifier, ev.cache_dir, inception_n=ev.inception_n if inception_n is None else inception_n,
                     kid_subsets=ev.kid_subsets,
                     teacher_inception_n=teacher_inception_n(p, model), reference_images=ev.reference_images or None,
                     bootstrap=ev.bootstrap, bootstrap_seed=ev.bootstrap_seed, progress=progress)


SUMMARY_METRICS = ("fid_digitsnet", "fid_teacher_digitsnet", "fid_teacher_inception", "fid_inception",
                   "adherence_digitsnet", "l2_to_teacher", "psnr_to_teacher")


def evaluate(p: Params, model: str) -> Path:
    """Evaluate the grid (teacher row first) and write results/eval/<model>.json (every row, with its schedule,
    intervals and paired differences), results/eval/<model>.md (the tables), results/eval/<model>-summary.json
    (the speedup entries), results/eval/<model>-bootstrap.npz (the rows' resamples), the DVC metrics file
    results/metrics/<model>.json and the DVC plots table results/plots/<model>.csv."""
    import io
    import json

    import numpy as np

    from optsteps.evaluate.run import evaluate_grid, markdown_table
    from optsteps.evaluate.speedup import speedup_table
    from optsteps.io.atomic import write_bytes_atomic, write_text_atomic

    torch.set_num_threads(p.evaluate.threads)
    m = load_model(model, p.artifacts)
    schedules = evaluation_schedules(p, model)
    evaluator = evaluator_for(p, model)
    rows, resamples = evaluate_grid(m, schedules, p.teacher, n=p.evaluate.n, seed=p.evaluate.seed,
                                    guidance=p.evaluate.guidance, evaluator=evaluator,
                                    distill_samples=p.trajectories.samples, return_resamples=True)
    for row, s in zip(rows[1:], schedules):
        row["schedule"] = s.to_dict()
    out = eval_path(p, model)
    write_text_atomic(out, json.dumps(rows, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown_table(rows, resamples=resamples))
    write_text_atomic(summary_path(p, model), json.dumps(speedup_table(rows), indent=1) + "\n")
    buf = io.BytesIO()
    np.savez(buf, **{f"row{i}/{k}": v for i, res in enumerate(resamples) for k, v in res.items()},
             evaluation_id=np.array(rows[0]["evaluation_id"]))
    write_bytes_atomic(resamples_path(p, model), buf.getvalue())
    metrics = {}
    for r in rows:
        key = r["method"] if r["method"] == "teacher" else f"{r['method']}/{r['solver']}/nfe{r['nfe']}"
        metrics[key] = {k: r[k] for k in SUMMARY_METRICS if k in r}
    write_text_atomic(Path(p.results) / "metrics" / f"{model}.json", json.dumps(metrics, indent=1) + "\n")
    cols = [k for k in ("fid_digitsnet", "l2_to_teacher", "adherence_digitsnet", "fid_teacher_digitsnet",
                        "fid_teacher_inception", "psnr_to_teacher") if any(k in r for r in rows)]
    lines = [",".join(["method", "nfe"] + cols)]
    for r in rows[1:]:
        lines.append(",".join([f"{r['method']}/{r['solver']}", str(r["nfe"])] + [str(r.get(k, "")) for k in cols]))
    write_text_atomic(Path(p.results) / "plots" / f"{model}.csv", "\n".join(lines) + "\n")
    return out


def load_resamples(p: Params, model: str, rows: int) -> list[dict]:
    """The rows' resamples written by ``evaluate`` ([{}] * rows when the file is missing: no intervals)."""
    import numpy as np

    path = resamples_path(p, model)
    out = [{} for _ in range(rows)]
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                if key.startswith("row"):
                    i, metric = key[3:].split("/", 1)
                    out[int(i)][metric] = z[key]
    return out


def register(p: Params, models: list[str] | None = None) -> Path:
    """Log one MLflow run per evaluated (model, method, solver, NFE) with its resamples, register each schedule as
    a model version (champion-nfe{K} moves only on a significant paired gain in ``champion_metric`` within one
    evaluation; docs/algorithms.md §7.3) and log one summary run per model (with the speedup figure).
    Writes results/registry.json (what was registered and each champion decision)."""
    import json

    from optsteps.integrations.mlflow_registry import Registry
    from optsteps.io.provenance import dvc_data_hash, git_commit, params_hash
    from optsteps.io.atomic import write_text_atomic

    reg = Registry(p.mlflow.tracking_uri or None)
    git, digest, dvc_hash = git_commit(), params_hash(), dvc_data_hash()
    done = []
    for model in models or p.models:
        path = eval_path(p, model)
        if not path.is_file():
            raise OptstepsError(f"{path} is missing; run the evaluate stage first (`optsteps stage evaluate --model {model}`).")
        rows = json.loads(path.read_text())
        resamples = load_resamples(p, model, len(rows))
        metric = champion_metric(p, model)
        for row, res in zip(rows[1:], resamples[1:]):
            s = Schedule.from_dict(row["schedule"])
            metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("nfe", "seed", "start")}
            metrics["ci95"] = row.get("ci95") or {}
            run_id = reg.log_schedule_run(s, metrics=metrics, solver=row["solver"], resamples=res,
                                          evaluation_id=row.get("evaluation_id"))
            info = reg.register_schedule(run_id, metric=metric, git=git, params_digest=digest, dvc_hash=dvc_hash,
                                         resamples=res.get(metric))
            done.append({"model": model, "method": row["method"], "solver": row["solver"], "nfe": row["nfe"],
                         "run_id": run_id, **{k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))}})
        summary = summary_path(p, model)
        reg.log_summary_run(rows, run_name=f"summary-{model}", metric=metric,
                            speedup=json.loads(summary.read_text()) if summary.is_file() else None)
    out = Path(p.results) / "registry.json"
    write_text_atomic(out, json.dumps(done, indent=1) + "\n")
    return out
