"""The pipeline's entry points. The CLI, the DVC stages and the Prefect tasks all call these functions.

Every stage takes the params and a model: a name of ``params.yaml`` ``models:``, a built-in name, a pipeline folder
or hub id (``Params.entry``), or a ``ModelEntry``; it runs on ``params.for_model(model)`` (the model's own guidance
and overrides merged in). Paths use the model's name (a slug), never its folder: nothing is written inside a
model's folder. Under ``params.artifacts`` / ``params.results``:

    artifacts/identity/<model>.json           the model's content identity (``identify``)
    artifacts/models/<model>/                 an embedded model's trained weights, or a pipeline model's
                                              identity record (``prepare``; the weights stay in its folder)
    artifacts/trajectories/<model>/           teacher shards + manifest.json (``trajectories``)
    results/schedules/<model>/<method>/<solver>-nfe<K>.json   optimized schedules (``lambda_opt``, ``oss``)
    results/eval/<model>.json                 the evaluation (``evaluate``)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import torch

from optsteps.pipeline.config import Params
from optsteps.errors import OptstepsError
from optsteps.models import (CLASSIFIER, EMBEDDED, TRAINABLE, ModelEntry, describe_model, load_model, model_dir,
                             noise_schedule_for)
from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import DEFAULT_ORDER, SolverSpec

log = logging.getLogger("optsteps.pipeline")


def resolve(p: Params, model) -> tuple[Params, ModelEntry]:
    """(the params with the model's own settings merged in, its entry)."""
    e = p.entry(model)
    return p.for_model(e), e


def model_name(p: Params, model) -> str:
    """The model's name (slug): the one every output path and registry name uses."""
    return p.entry(model).name


def trajectories_dir(p: Params, model) -> Path:
    return Path(p.artifacts) / "trajectories" / model_name(p, model)


def schedule_path(p: Params, model, method: str, solver: str, nfe: int) -> Path:
    return Path(p.results) / "schedules" / model_name(p, model) / method / f"{solver}-nfe{nfe}.json"


def identity_path(p: Params, model) -> Path:
    return Path(p.artifacts) / "identity" / f"{model_name(p, model)}.json"


def lambda_opt_all(p: Params, model) -> list[Path]:
    """Every (solver, NFE) of ``lambda_opt`` in params; the DVC stage ``lambda_opt@<model>``."""
    q, e = resolve(p, model)
    return [schedule_path(q, e, "lambda-opt", solver, nfe)
            for solver in q.lambda_opt.solvers for nfe in q.lambda_opt.nfe
            if lambda_opt(q, e, solver, nfe) is not None]


def oss_all(p: Params, model) -> list[Path]:
    """Every (solver, NFE) of ``oss`` in params, OSS and (if enabled) GITS; the DVC stage ``oss@<model>``."""
    q, e = resolve(p, model)
    methods = ["oss"] + (["gits"] if q.oss.gits else [])
    for method in ("oss", "gits"):  # both folders exist so that the DVC stage's outputs always do
        (Path(q.results) / "schedules" / e.name / method).mkdir(parents=True, exist_ok=True)
    return [schedule_path(q, e, method, solver, nfe)
            for method in methods for solver in q.oss.solvers for nfe in q.oss.nfe
            if oss(q, e, solver, nfe, method=method) is not None]


def identity(p: Params, model) -> dict:
    """What the model is, by content: a pipeline's class, the digest of its config and weight files (with the
    prompts and image size: ``describe_model``) and its noise schedule; an embedded model's training recipe (its
    ``train`` settings and the data's hash); nothing heavy is loaded. Weight digests are cached by path, size and
    mtime in ``artifacts/cache/digests.json``, so an unchanged multi-GB folder is not hashed again."""
    from optsteps.io.hashing import persistent_digests

    e = p.entry(model)
    if e.is_embedded:
        from optsteps.models.digits_data import digits_sha256

        return {"name": e.name, "kind": "embedded", "train": dataclasses.asdict(p.train_config(e.name)),
                "data_sha256": digits_sha256()}
    with persistent_digests(Path(p.artifacts) / "cache" / "digests.json"):
        card = describe_model(e, p.artifacts)
    out = {"name": e.name, "kind": "pipeline" if e.is_pipeline else "builtin", "sha256": card.identity["sha256"],
           "noise_schedule": card.noise_schedule.to_dict()}
    if "pipeline" in card.identity:
        out["pipeline"] = card.identity["pipeline"]
    return out


def identify(p: Params, model) -> Path:
    """Write the model's content identity to ``artifacts/identity/<model>.json`` (the DVC stage ``identify@<model>``,
    run on every ``dvc repro``; the file changes only when the identity does)."""
    from optsteps.io.atomic import write_text_atomic

    out = identity_path(p, model)
    text = json.dumps(identity(p, model), indent=1, sort_keys=True) + "\n"
    if not out.is_file() or out.read_text() != text:
        write_text_atomic(out, text)
    return out


def prepare(p: Params, model, force: bool = False) -> Path:
    """``artifacts/models/<model>/`` (the DVC stage ``model@<model>``): an embedded model is trained (``train``); a
    pipeline or built-in model is not trained: its folder holds ``optsteps_model.json``, its identity record (the
    weights stay where they are)."""
    from optsteps.io.atomic import write_text_atomic

    e = p.entry(model)
    if e.is_embedded:
        return train(p, e.name, force=force)
    out = model_dir(p.artifacts, e.name)
    write_text_atomic(out / "optsteps_model.json", json.dumps(identity(p, e), indent=1, sort_keys=True) + "\n")
    return out


def model_identity(p: Params, model) -> str:
    """A digest of ``artifacts/models/<model>/optsteps_model.json`` (after ``prepare``): what the Prefect tasks of a
    model take as an input, so that new weights (or a retrained model) miss their caches."""
    path = model_dir(p.artifacts, model_name(p, model)) / "optsteps_model.json"
    if not path.is_file():
        raise OptstepsError(f"{path} is missing; run `optsteps stage model --model {model_name(p, model)}` first.")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(p: Params, model: str, force: bool = False) -> Path:
    """Train an embedded model or the classifier (skipped when trained, unless ``force``). Pipeline models are
    never trained: their weights are used as they are."""
    if model == CLASSIFIER:
        out = model_dir(p.artifacts, CLASSIFIER)
        if (out / "optsteps_model.json").is_file() and not force:
            return out
        from optsteps.models.classifier import train_classifier

        return train_classifier(p.classifier, out)
    e = p.entry(model)
    if not e.is_embedded:
        raise OptstepsError(f"{e.name!r} is not trainable: optsteps trains {', '.join(TRAINABLE[:-1])} and "
                            f"{TRAINABLE[-1]}; a diffusers pipeline is used with its own weights (its DVC stage "
                            f"`model@{e.name}` records its identity: `optsteps stage model --model {e.name}`).")
    out = model_dir(p.artifacts, e.name)
    if (out / "optsteps_model.json").is_file() and not force:
        return out
    from optsteps.models.digits import train_digits

    return train_digits(e.name, p.train_config(e.name), out)


def _drop_stale_shards(out: Path, card, teacher) -> None:
    """In a stage's own trajectories folder, shards of another model identity or teacher (new weights, a changed
    teacher) are removed, so that the stage regenerates them (a folder passed with --out is never touched)."""
    from optsteps.io.paths import inside
    from optsteps.io.shards import read_manifest
    from optsteps.teacher.trajectories import header

    old = read_manifest(out)
    head = header(card, teacher)
    if old is None or {k: old.get(k) for k in head} == head:
        return
    log.warning("%s holds shards of %s (%s…) / teacher %s; replacing them for %s (%s…)", out, old.get("model"),
                str(old.get("model_sha256"))[:12], old.get("teacher"), head["model"], head["model_sha256"][:12])
    for e in old.get("shards", []):
        inside(out, e["file"], "manifest shard file").unlink(missing_ok=True)  # never a file outside the folder
    (out / "manifest.json").unlink()


def trajectories(p: Params, model, use_ray: bool | None = None, out=None) -> dict:
    """Teacher shards of the model (``artifacts/trajectories/<model>``, or ``out``). With Ray, actors load the model
    (each once, on its device) and the driver only reads its identity (``describe_model``)."""
    from optsteps.teacher.trajectories import generate_trajectories

    q, e = resolve(p, model)
    own = out is None
    out = Path(out) if out else trajectories_dir(q, e)
    runner = None
    if q.ray.enabled if use_ray is None else use_ray:
        from optsteps.integrations.ray_pool import ray_runner

        m = describe_model(e, q.artifacts)
        runner = ray_runner(e, q.artifacts, q.teacher, out, q.ray)
    else:
        m = load_model(e, q.artifacts)
    if own:
        _drop_stale_shards(out, m, q.teacher)
    return generate_trajectories(m, q.teacher, out, q.trajectories.samples, q.trajectories.shard_size, runner=runner)


def load_teacher(p: Params, model, traj_dir, samples: int):
    """(t [N+1], states [N+1, S, ...], labels [S] or None) from the first ``samples`` teacher samples.
    ``model``: the loaded model (or its ``ModelCard``); ``p``: the params merged for it (``for_model``)."""
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


def with_manifest_teacher(p: Params, traj_dir) -> Params:
    """``p`` with the teacher recorded in ``traj_dir``'s manifest (a folder of shards made by `optsteps
    trajectories --teacher-steps … --out DIR`): such shards are used as they are, and only a real mismatch (another
    model or noise schedule, checked shard by shard) is refused."""
    from optsteps.io.shards import read_manifest
    from optsteps.teacher.config import TeacherConfig

    man = read_manifest(traj_dir)
    if not man or not isinstance(man.get("teacher"), dict):
        return p
    try:
        teacher = TeacherConfig(**man["teacher"])
    except TypeError:
        raise OptstepsError(f"{Path(traj_dir) / 'manifest.json'} records a teacher optsteps cannot read "
                            f"({man['teacher']}); regenerate the shards with `optsteps trajectories`.") from None
    if teacher != p.teacher:
        log.info("%s: using the teacher its shards were made with: %s", traj_dir, teacher)
    return dataclasses.replace(p, teacher=teacher)


def oss(p: Params, model, solver: str, nfe: int, method: str = "oss", traj_dir=None) -> Schedule:
    """OSS (or GITS) on the model's teacher shards; the schedule is written to ``schedule_path``."""
    from optsteps.optimizers.oss import gits_search, oss_search

    p, e = resolve(p, model)
    for folder in ("oss", "gits"):  # both outputs of the DVC stage oss@<model> exist, whichever runs
        (Path(p.results) / "schedules" / e.name / folder).mkdir(parents=True, exist_ok=True)
    m = load_model(e, p.artifacts)
    if traj_dir is not None:  # shards from elsewhere (--trajectories): they say which teacher made them
        p = with_manifest_teacher(p, traj_dir)
    traj_dir = traj_dir or trajectories_dir(p, e)
    t, states, labels = load_teacher(p, m, traj_dir, p.oss.samples)
    if states.shape[1] < p.oss.samples:  # recorded in the schedule as teacher_samples
        log.warning("%s holds %d teacher samples, fewer than oss.samples = %d; OSS uses those %d (raise "
                    "trajectories.samples for more)", traj_dir, states.shape[1], p.oss.samples, states.shape[1])
    den = LabelledDenoiser(m, labels, p.teacher.guidance)
    s = states.shape[1]
    t0 = time.perf_counter()
    if method == "gits":
        costs = _shared_gits_costs(p, m, traj_dir, t, states, den)
        res = gits_search(t, states, den, m.noise_schedule, nfe, solver=solver, eval_batch_size=s, model=e.name,
                          costs=costs, start_window=p.oss.start_window)
    elif method == "oss":
        res = oss_search(t, states, den, m.noise_schedule, nfe, solver=solver, distance=p.oss.distance,
                         mode=p.oss.mode, refine=p.oss.refine, refine_radius=p.oss.refine_radius, calibration=p.oss.calibration or None,
                         eval_batch_size=s, model=e.name, start_window=p.oss.start_window, objective=p.oss.objective)
    else:
        raise OptstepsError(f"unknown distillation method {method!r}; use oss or gits.")
    sched = res.schedule.with_meta(extra={"wall_time_s": round(time.perf_counter() - t0, 3),
                                          "teacher_samples": s})
    sched.save(schedule_path(p, e, method, solver, nfe))
    return sched


def lambda_opt(p: Params, model, solver: str, nfe: int, p_exp: float | None = None,
               error_model: str | None = None, max_order: int = 3, traj_dir=None, trunc: int | None = None) -> Schedule:
    from optsteps.optimizers.lambda_opt import lambda_opt_schedule

    p, e = resolve(p, model)
    ns = noise_schedule_for(e, p.artifacts)
    em = error_model or p.lambda_opt.error_model
    eps_fn = empirical_eps_for(p, e, traj_dir) if em == "empirical" else None
    spec = SolverSpec(solver, min(max_order, DEFAULT_ORDER[solver]))
    sched = lambda_opt_schedule(ns, nfe, p=p.lambda_opt.p if p_exp is None else p_exp, model=e.name, solver=spec,
                                error_model=em, eps_fn=eps_fn, trunc=trunc)
    sched.save(schedule_path(p, e, "lambda-opt", solver, nfe))
    return sched


def empirical_eps_for(p: Params, model, traj_dir=None):
    """ε(λ) measured on the teacher shards: mean ‖x̂_0(x_t, t) − x_final‖ per teacher time, interpolated in λ."""
    from optsteps.optimizers.lambda_opt import empirical_eps
    from optsteps.teacher.trajectories import iter_shards

    p, e = resolve(p, model)
    if traj_dir is not None:
        p = with_manifest_teacher(p, traj_dir)
    m = describe_model(e, p.artifacts)  # the shards' identity and noise schedule; no network needed
    sums, count, t = None, 0, None
    for sh in iter_shards(traj_dir or trajectories_dir(p, e), m, p.teacher):
        err = (sh["x0"] - sh["states"][-1][None]).flatten(2).norm(dim=2).sum(1)  # [N]
        sums = err if sums is None else sums + err
        count += sh["states"].shape[1]
        t = sh["t"]
    lam = m.noise_schedule.lambda_(t[:-1])
    return empirical_eps(lam.numpy(), (sums / count).double().numpy())


METHOD_DIRS = ("lambda-opt", "oss", "gits")


def eval_path(p: Params, model) -> Path:
    return Path(p.results) / "eval" / f"{model_name(p, model)}.json"


def summary_path(p: Params, model) -> Path:
    """results/eval/<model>-summary.json: the speedup entries (``optsteps.evaluate.speedup.speedup_table``)."""
    return Path(p.results) / "eval" / f"{model_name(p, model)}-summary.json"


def resamples_path(p: Params, model) -> Path:
    """results/eval/<model>-bootstrap.npz: every row's bootstrap resamples (``row<i>/<metric>``), for the register
    stage's paired champion test."""
    return Path(p.results) / "eval" / f"{model_name(p, model)}-bootstrap.npz"


def is_pipeline_model(p: Params, model) -> bool:
    """A diffusers pipeline (a ``models:`` entry with ``pipeline:``, a folder or a hub id) rather than a built-in
    model (digits, digits-flow, gmm)."""
    return p.entry(model).is_pipeline


FALLBACK_METRIC = "l2_to_teacher"  # every model's evaluation has it


def champion_metric(p: Params, model, rows: list[dict] | None = None) -> str:
    """What ``champion-nfe{K}`` of ``model`` ranks by: ``mlflow.metric`` for built-in models,
    ``mlflow.pipeline_metric`` for diffusers pipelines (either may be set in a model's ``overrides``); when the
    evaluation ``rows`` lack it (e.g. its Inception count is 0), ``l2_to_teacher``."""
    q = p.for_model(model)
    metric = q.mlflow.pipeline_metric if is_pipeline_model(p, model) else q.mlflow.metric
    if rows is not None and not any(metric in r for r in rows[1:]):
        return FALLBACK_METRIC
    return metric


def teacher_inception_n(p: Params, model) -> int:
    q = p.for_model(model)
    return q.evaluate.pipeline_teacher_inception_n if is_pipeline_model(p, model) else q.evaluate.teacher_inception_n


def evaluation_schedules(p: Params, model) -> list[Schedule]:
    """The evaluation grid of ``model``: baselines × solvers × (``evaluate.nfe`` ∪ ``evaluate.baseline_nfe``) plus
    every optimized schedule on disk whose solver and NFE are in ``evaluate.nfe``."""
    from optsteps.core.baselines import baseline
    from optsteps.io.paths import inside

    p, e = resolve(p, model)
    ns = noise_schedule_for(e, p.artifacts)
    ev = p.evaluate
    base_nfe = sorted(set(ev.nfe) | set(ev.baseline_nfe))
    out = [baseline(kind, ns, nfe, model=e.name).with_meta(solver=solver)
           for solver in ev.solvers for kind in ev.baselines for nfe in base_nfe]
    for method in METHOD_DIRS:
        for solver in ev.solvers:
            for nfe in ev.nfe:
                path = schedule_path(p, e, method, solver, nfe)
                if path.is_file():
                    s = Schedule.load(path)
                    inside(path.parent, f"{s.method}-{s.solver}.json", f'{path}: "method"')  # it names output files
                    out.append(s)
    return out


def evaluator_for(p: Params, model, progress: bool = False, inception_n: int | None = None):
    """The ``Evaluator`` of ``model`` with the params' settings: the digits classifier for the embedded digits
    models (none for other models), Inception counts by model kind (``inception_n`` overrides
    ``evaluate.inception_n``), the reference folder and the bootstrap."""
    from optsteps.evaluate.run import Evaluator
    from optsteps.models.classifier import load_classifier

    q, e = resolve(p, model)
    ev = q.evaluate
    classifier = None
    if e.is_embedded:  # the classifier and the real-digits statistics are those of the digits data
        clf_dir = model_dir(p.artifacts, CLASSIFIER)
        if not (clf_dir / "optsteps_model.json").is_file():
            raise OptstepsError(f"the digits classifier is not trained ({clf_dir}); run `optsteps train --model classifier`.")
        classifier = load_classifier(clf_dir)
    return Evaluator(classifier, ev.cache_dir, inception_n=ev.inception_n if inception_n is None else inception_n,
                     kid_subsets=ev.kid_subsets,
                     teacher_inception_n=teacher_inception_n(p, e), reference_images=ev.reference_images or None,
                     bootstrap=ev.bootstrap, bootstrap_seed=ev.bootstrap_seed, progress=progress)


SUMMARY_METRICS = ("fid_digitsnet", "fid_teacher_digitsnet", "fid_teacher_inception", "fid_inception",
                   "adherence_digitsnet", "l2_to_teacher", "psnr_to_teacher")


def evaluate(p: Params, model) -> Path:
    """Evaluate the grid (teacher row first) and write results/eval/<model>.json (every row, with its schedule,
    intervals and paired differences), results/eval/<model>.md (the tables), results/eval/<model>-summary.json
    (the speedup entries), results/eval/<model>-bootstrap.npz (the rows' resamples), the DVC metrics file
    results/metrics/<model>/ and the DVC plots table results/plots/<model>.csv (``write_tracked_summaries``).

    The digits metrics (classifier FID/KID, adherence) exist only for the embedded digits models; every model gets
    the model-agnostic ones (``l2_to_teacher`` in its state space, ``psnr_to_teacher`` and the Inception FID/KID to
    the teacher on decoded images), and no digits classifier is needed for a pipeline."""
    import io
    import json

    import numpy as np

    from optsteps.evaluate.run import evaluate_grid, markdown_table
    from optsteps.evaluate.speedup import speedup_table
    from optsteps.io.atomic import write_bytes_atomic, write_text_atomic

    p, e = resolve(p, model)
    torch.set_num_threads(p.evaluate.threads)
    m = load_model(e, p.artifacts)
    schedules = evaluation_schedules(p, e)
    evaluator = evaluator_for(p, e)
    grids = Path(p.results) / "eval" / f"{e.name}-grids"

    def save_grid_of(row, images):  # the row's first evaluate.grid_samples samples, one PNG per row
        if not p.evaluate.grid_samples or images is None or images.dim() != 4:
            return
        from optsteps.io.images import save_grid
        from optsteps.io.paths import inside

        name = "teacher" if row["method"] == "teacher" else f"{row['method']}-{row['solver']}-nfe{row['nfe']}"
        save_grid(images[:p.evaluate.grid_samples], inside(grids, f"{name}.png", "evaluation grid"))
        row["grid"] = f"{grids.name}/{name}.png"

    grids.mkdir(parents=True, exist_ok=True)  # the DVC stage's output exists even with grids off
    rows, resamples = evaluate_grid(m, schedules, p.teacher, n=p.evaluate.n, seed=p.evaluate.seed,
                                    guidance=p.evaluate.guidance, evaluator=evaluator,
                                    distill_samples=p.trajectories.samples, return_resamples=True,
                                    on_images=save_grid_of)
    for row, s in zip(rows[1:], schedules):
        row["schedule"] = s.to_dict()
    out = eval_path(p, e)
    write_text_atomic(out, json.dumps(rows, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown_table(rows, resamples=resamples))
    write_text_atomic(summary_path(p, e), json.dumps(speedup_table(rows), indent=1) + "\n")
    buf = io.BytesIO()
    np.savez(buf, **{f"row{i}/{k}": v for i, res in enumerate(resamples) for k, v in res.items()},
             evaluation_id=np.array(rows[0]["evaluation_id"]))
    write_bytes_atomic(resamples_path(p, e), buf.getvalue())
    write_tracked_summaries(p, e, rows)
    return out


def write_tracked_summaries(p: Params, model, rows: list[dict]) -> None:
    """The small, git-tracked summaries of an evaluation (``results/metrics`` and ``results/plots`` are not
    git-ignored, so ``dvc metrics diff`` / ``dvc plots diff`` compare commits and experiments):

    - ``results/metrics/<model>/<method>-<solver>.json``: ``{"nfe<K>": {metric: value}}`` for the headline metrics
      (``l2_to_teacher`` and what the champions rank by): ``dvc metrics show`` prints one row per method × solver;
    - ``results/plots/<model>.csv``: columns series (``<method>/<solver>``), nfe and the headline metrics, for
      ``dvc plots show`` with the repository's template ``.dvc/plots/series.json`` (one line per series);
    - ``results/plots/<model>-<metric>.png``: the same curves drawn here (matplotlib), readable offline."""
    import io
    import shutil

    from optsteps.evaluate.plots import curves_figure
    from optsteps.io.atomic import write_bytes_atomic, write_text_atomic
    from optsteps.io.paths import inside

    name = model_name(p, model)
    headline = [k for k in dict.fromkeys((FALLBACK_METRIC, champion_metric(p, model, rows), "psnr_to_teacher"))
                if any(k in r for r in rows[1:])]
    series = {}
    for r in rows[1:]:
        series.setdefault(f"{r['method']}-{r['solver']}", []).append(r)
    folder = Path(p.results) / "metrics" / name
    if folder.is_dir():  # a method or solver dropped from the grid leaves no stale file
        shutil.rmtree(folder)
    lines = [",".join(["series", "nfe"] + headline)]
    for key, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["nfe"])
        metrics = {f"nfe{r['nfe']}": {k: r[k] for k in headline if k in r} for r in rs}
        write_text_atomic(inside(folder, f"{key}.json", "metrics file"), json.dumps(metrics, indent=1) + "\n")
        lines += [",".join([f"{rs[0]['method']}/{rs[0]['solver']}",
                            str(r["nfe"])] + [str(r.get(k, "")) for k in headline]) for r in rs]
    write_text_atomic(Path(p.results) / "plots" / f"{name}.csv", "\n".join(lines) + "\n")
    for metric in headline:
        fig = curves_figure(rows, metric, metric)
        if fig is None:
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)  # an object-API Figure (evaluate.plots): no pyplot state to close
        write_bytes_atomic(Path(p.results) / "plots" / f"{name}-{metric}.png", buf.getvalue())


def load_resamples(p: Params, model, rows: int) -> list[dict]:
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


def _grid_file(p: Params, model, row: dict) -> str | None:
    """The PNG grid of the row's samples written by ``evaluate`` (None when grids are off or missing)."""
    rel = row.get("grid")
    path = Path(p.results) / "eval" / rel if rel else None
    return str(path) if path is not None and path.is_file() else None


def register(p: Params, models: list[str] | None = None) -> Path:
    """Log one MLflow run per evaluated (model, method, solver, NFE) with its resamples, register each schedule as
    a model version (champion-nfe{K} moves only on a significant paired gain in ``champion_metric`` within one
    evaluation; docs/algorithms.md §7.3) and log one summary run per model (with the speedup figure).
    Writes results/registry.json (what was registered and each champion decision)."""
    import json

    from optsteps.integrations.mlflow_registry import Registry
    from optsteps.io.provenance import dvc_data_hash, git_commit, params_hash
    from optsteps.io.atomic import write_text_atomic

    reg = Registry(p.mlflow.tracking_uri or None, timeout_s=p.mlflow.timeout_s)
    git, digest, dvc_hash = git_commit(), params_hash(), dvc_data_hash()
    done = []
    for model in models or list(p.models):
        path = eval_path(p, model)
        name = model_name(p, model)
        if not path.is_file():
            raise OptstepsError(f"{path} is missing; run the evaluate stage first (`optsteps stage evaluate --model {name}`).")
        rows = json.loads(path.read_text())
        resamples = load_resamples(p, model, len(rows))
        metric = champion_metric(p, model, rows)
        model_sha = describe_model(p.entry(model), p.artifacts).identity.get("sha256")  # versions keyed by content
        for row, res in zip(rows[1:], resamples[1:]):
            s = Schedule.from_dict(row["schedule"])
            metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("nfe", "seed", "start")}
            metrics["ci95"] = row.get("ci95") or {}
            run_id = reg.log_schedule_run(s, metrics=metrics, solver=row["solver"], resamples=res,
                                          evaluation_id=row.get("evaluation_id"), model_sha=model_sha,
                                          grid=_grid_file(p, model, row))
            info = reg.register_schedule(run_id, metric=metric, git=git, params_digest=digest, dvc_hash=dvc_hash,
                                         resamples=res.get(metric))
            done.append({"model": name, "method": row["method"], "solver": row["solver"], "nfe": row["nfe"],
                         "run_id": run_id, "dvc_data_hash": dvc_hash,
                         **{k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))}})
        summary = summary_path(p, model)
        reg.log_summary_run(rows, run_name=f"summary-{name}", metric=metric,
                            speedup=json.loads(summary.read_text()) if summary.is_file() else None)
    out = Path(p.results) / "registry.json"
    write_text_atomic(out, json.dumps(done, indent=1) + "\n")
    return out
