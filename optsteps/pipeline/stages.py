"""The pipeline's entry points. The CLI, the DVC stages and the Prefect tasks all call these functions.

Every stage takes the params and a model: a name of ``params.yaml`` ``models:``, a built-in name, a pipeline folder
or hub id (``Params.entry``), or a ``ModelEntry``; it runs on ``params.for_model(model)`` (the model's own guidance
and overrides merged in). Where each stage reads and writes: ``optsteps.pipeline.layout``.
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

from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import DEFAULT_ORDER, SolverSpec
from optsteps.errors import OptstepsError
from optsteps.io.shards import MANIFEST
from optsteps.models import CLASSIFIER, TRAINABLE, ModelEntry, describe_model, load_model, noise_schedule_for
from optsteps.pipeline.config import Params
from optsteps.pipeline.layout import (
    METHOD_DIRS,
    classifier_dir,
    classifier_record_path,
    digests_cache,
    eval_dir,
    grids_dir,
    identity_path,
    markdown_path,
    metrics_dir,
    model_folder,
    model_name,
    model_record_path,
    plot_png,
    plots_csv,
    registry_path,
    resamples_path,
    schedule_path,
    schedules_dir,
    summary_path,
    trajectories_dir,
)

log = logging.getLogger("optsteps.pipeline")


def resolve(p: Params, model) -> tuple[Params, ModelEntry]:
    """(the params with the model's own settings merged in and scaled to its budget, if any; its entry)."""
    from optsteps.pipeline.plan import budgeted

    e = p.entry(model)
    return budgeted(p, e), e


def lambda_opt_all(p: Params, model, say=None) -> list[Path]:
    """Every (solver, NFE) of ``lambda_opt`` in params; the DVC stage ``lambda_opt@<model>``. ``say``: where progress
    lines of long optimisations go (``optsteps.pipeline.progress``)."""
    q, e = resolve(p, model)
    return [
        schedule_path(q, e, "lambda-opt", solver, nfe)
        for solver in q.lambda_opt.solvers
        for nfe in q.lambda_opt.nfe
        if lambda_opt(q, e, solver, nfe, say=say) is not None
    ]


def oss_all(p: Params, model) -> list[Path]:
    """Every (solver, NFE) of ``oss`` in params, OSS and (if enabled) GITS; the DVC stage ``oss@<model>``."""
    q, e = resolve(p, model)
    methods = ["oss"] + (["gits"] if q.oss.gits else [])
    for method in ("oss", "gits"):  # both folders exist so that the DVC stage's outputs always do
        schedules_dir(q, e, method).mkdir(parents=True, exist_ok=True)
    return [
        schedule_path(q, e, method, solver, nfe)  # one DP per solver for every K (oss_nfes)
        for method in methods
        for solver in q.oss.solvers
        for nfe in oss_nfes(q, e, solver, q.oss.nfe, method=method)
    ]


def identity(p: Params, model) -> dict:
    """What the model is, by content: a pipeline's class, the digest of its config and weight files (with the
    prompts and image size: ``describe_model``) and its noise schedule; an embedded model's training recipe (its
    ``train`` settings and the data's hash); nothing heavy is loaded. Weight digests are cached by path, size and
    mtime in ``artifacts/cache/digests.json``, so an unchanged multi-GB folder is not hashed again."""
    from optsteps.io.hashing import persistent_digests

    e = p.entry(model)
    if e.is_embedded:
        from optsteps.models.digits_data import digits_sha256

        return {
            "name": e.name,
            "kind": "embedded",
            "train": dataclasses.asdict(p.train_config(e.name)),
            "data_sha256": digits_sha256(),
        }
    with persistent_digests(digests_cache(p)):
        card = describe_model(e, p.artifacts)
    out = {
        "name": e.name,
        "kind": "pipeline" if e.is_pipeline else "builtin",
        "sha256": card.identity["sha256"],
        "noise_schedule": card.noise_schedule.to_dict(),
    }
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
    write_text_atomic(model_record_path(p, e), json.dumps(identity(p, e), indent=1, sort_keys=True) + "\n")
    return model_folder(p, e)


def model_identity(p: Params, model) -> str:
    """A digest of ``artifacts/models/<model>/optsteps_model.json`` (after ``prepare``): what the Prefect tasks of a
    model take as an input, so that new weights (or a retrained model) miss their caches."""
    path = model_record_path(p, model)
    if not path.is_file():
        raise OptstepsError(f"{path} is missing; run `optsteps stage model --model {model_name(p, model)}` first.")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded_model_sha(p: Params, model) -> str | None:
    """The model's content digest as the earlier stages recorded it (nothing is described or hashed again): an
    embedded model's weights digest from its training record (``model@<model>``), any other model's from
    ``artifacts/identity/<model>.json`` (``identify@<model>``, which DVC runs before every stage of the model)."""
    e = p.entry(model)
    if e.is_embedded:
        path, key, stage = model_record_path(p, e), "weights_sha256", "model"
    else:
        path, key, stage = identity_path(p, e), "sha256", "identify"
    if not path.is_file():
        raise OptstepsError(f"{path} is missing; run `optsteps stage {stage} --model {e.name}` first.")
    from optsteps.io.readers import read_json

    return read_json(path, "model record", fix=f"rerun `optsteps stage {stage} --model {e.name}`").get(key)


def train(p: Params, model: str, force: bool = False) -> Path:
    """Train an embedded model or the classifier (skipped when trained, unless ``force``). Pipeline models are
    never trained: their weights are used as they are."""
    if model == CLASSIFIER:
        if classifier_record_path(p).is_file() and not force:
            return classifier_dir(p)
        from optsteps.models.classifier import train_classifier

        return train_classifier(p.classifier, classifier_dir(p))
    e = p.entry(model)
    if not e.is_embedded:
        raise OptstepsError(
            f"{e.name!r} is not trainable: optsteps trains {', '.join(TRAINABLE[:-1])} and "
            f"{TRAINABLE[-1]}; a diffusers pipeline is used with its own weights (its DVC stage "
            f"`model@{e.name}` records its identity: `optsteps stage model --model {e.name}`)."
        )
    out = model_folder(p, e)
    if model_record_path(p, e).is_file() and not force:
        return out
    from optsteps.models.digits import train_digits

    return train_digits(e.name, p.train_config(e.name), out)


def trajectories(p: Params, model, use_ray: bool | None = None, out=None, say=None) -> dict:
    """Teacher shards of the model (``artifacts/trajectories/<model>``, or ``out``). With Ray, actors load the model
    (each once, on its device) and the driver only reads its identity (``describe_model``). ``say``: where the plan's
    count and the progress lines go (shard i/n, elapsed, ETA; ``optsteps.pipeline.progress``); None: a progress bar."""
    from optsteps.teacher.load import drop_stale_shards
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
        drop_stale_shards(out, m, q.teacher)
    from optsteps.pipeline.plan import batching, teacher_cost
    from optsteps.teacher.trajectories import shard_ranges

    c = teacher_cost(
        q.teacher.steps,
        shard_ranges(q.trajectories.samples, q.trajectories.shard_size),
        batching(m, e, q.teacher.guidance),
    )
    log.info("teacher %s: %d forwards in %d network calls (existing shards are skipped)", e.name, c.forwards, c.calls)
    from optsteps.pipeline.progress import progress_for

    t = q.trajectories
    n = len(shard_ranges(t.samples, t.shard_size))
    report = progress_for(
        f"teacher {e.name}",
        say,
        "shard",
        intro=lambda todo: (
            f"{todo:,} of {n:,} shards to compute ({t.samples:,} samples in shards of {t.shard_size}; "
            f"{c.forwards:,} network forwards in {c.calls:,} calls for all {n:,})"
        ),
    )
    return generate_trajectories(
        m, q.teacher, out, q.trajectories.samples, q.trajectories.shard_size, runner=runner, report=report
    )


_GITS_COSTS: dict = {}
_GITS_LOCK = threading.Lock()


def _shared_gits_costs(p: Params, model, traj_dir, t, states, den):
    """GITS's one-jump cost matrix depends on the teacher shards, the samples read and the guidance, not on the
    student solver or NFE: computed once per process (the flow's GITS tasks share it; one lock, so concurrent
    tasks wait for the first instead of recomputing)."""
    from optsteps.optimizers.oss import gits_costs

    manifest = Path(traj_dir) / MANIFEST
    key = (
        str(Path(traj_dir).resolve()),
        manifest.read_bytes() if manifest.is_file() else b"",
        states.shape[1],
        p.teacher.guidance,
    )
    with _GITS_LOCK:
        if key not in _GITS_COSTS:
            _GITS_COSTS.clear()
            _GITS_COSTS[key] = gits_costs(t, states, den, model.noise_schedule, eval_batch_size=states.shape[1])
        return _GITS_COSTS[key], key


def _shared_gits_start_costs(p: Params, model, traj_dir, t, states, den, window: int):
    """The start candidates' first-jump costs for the widest window the GITS searches use (that of the smallest
    K): like the cost matrix, one computation per process for every solver and K (``gits_search(start_costs=)``)."""
    from optsteps.optimizers.oss import gits_start_costs, start_candidates

    (cost, _), key = _shared_gits_costs(p, model, traj_dir, t, states, den)
    with _GITS_LOCK:
        if (key, window) not in _GITS_COSTS:
            starts = start_candidates(model.noise_schedule, t, window)
            first, evals = gits_start_costs(
                t, states, den, model.noise_schedule, starts, cost, eval_batch_size=states.shape[1]
            )
            _GITS_COSTS[(key, window)] = (starts, first, evals)
        return _GITS_COSTS[(key, window)]


def with_manifest_teacher(p: Params, traj_dir) -> Params:
    """``p`` with the teacher recorded in ``traj_dir``'s manifest (``optsteps.teacher.load.manifest_teacher``)."""
    from optsteps.teacher.load import manifest_teacher

    return dataclasses.replace(p, teacher=manifest_teacher(traj_dir, p.teacher))


def oss_options(p: Params):
    """The ``OSSOptions`` of params' ``oss`` section (the same fields)."""
    from optsteps.optimizers.oss import OSSOptions

    return p.oss if isinstance(p.oss, OSSOptions) else OSSOptions(**dataclasses.asdict(p.oss))


def oss(p: Params, model, solver: str, nfe: int, method: str = "oss", traj_dir=None) -> Schedule:
    """OSS (or GITS) on the model's teacher shards; the schedule is written to ``schedule_path``."""
    return oss_nfes(p, model, solver, [nfe], method, traj_dir)[nfe]


def oss_nfes(p: Params, model, solver: str, nfes, method: str = "oss", traj_dir=None) -> dict:
    """OSS (or GITS) for every K of ``nfes`` (``compute_oss_nfes``: one DP for all K); each schedule is written to
    ``schedule_path``. Returns {K: Schedule}."""
    q, e = resolve(p, model)
    for folder in ("oss", "gits"):  # both outputs of the DVC stage oss@<model> exist, whichever runs
        schedules_dir(q, e, folder).mkdir(parents=True, exist_ok=True)
    found = compute_oss_nfes(p, model, solver, nfes, method=method, traj_dir=traj_dir)
    for nfe, sched in found.items():
        sched.save(schedule_path(q, e, method, solver, nfe))
    return found


def compute_oss(p: Params, model, solver: str, nfe: int, method: str = "oss", traj_dir=None) -> Schedule:
    """OSS (or GITS) on the model's teacher shards (``traj_dir``, default the pipeline's); nothing is written."""
    return compute_oss_nfes(p, model, solver, [nfe], method=method, traj_dir=traj_dir)[nfe]


def compute_oss_nfes(p: Params, model, solver: str, nfes, method: str = "oss", traj_dir=None) -> dict:
    """OSS (or GITS) for every K of ``nfes``, one DP for all K (``oss_search_all``); nothing is written.

    With ``oss.heldout_samples`` H > 0 and teacher samples left after the first S (``oss.samples``), the
    candidates — the refined and the DP's own path, of the search with the configured start window and, with
    ``oss.t_max_candidate``, of the search from t_max — are scored on samples [S, S + H) and the best is kept
    (``optimizers.select.choose_by_heldout``; its record is the schedule's ``heldout``)."""
    from optsteps.optimizers.oss import check_start_window, gits_search, oss_search_all
    from optsteps.optimizers.select import choose_by_heldout
    from optsteps.teacher.load import LabelledDenoiser, load_teacher

    p, e = resolve(p, model)
    m = load_model(e, p.artifacts)
    if traj_dir is not None:  # shards from elsewhere (--trajectories): they say which teacher made them
        p = with_manifest_teacher(p, traj_dir)
    traj_dir = traj_dir or trajectories_dir(p, e)
    t, all_states, all_labels = load_teacher(p.teacher, m, traj_dir, p.oss.samples + p.oss.heldout_samples)
    if all_states.shape[1] < p.oss.samples:  # recorded in the schedule as teacher_samples
        log.warning(
            "%s holds %d teacher samples, fewer than oss.samples = %d; OSS uses those %d (raise "
            "trajectories.samples for more)",
            traj_dir,
            all_states.shape[1],
            p.oss.samples,
            all_states.shape[1],
        )
    s = min(p.oss.samples, all_states.shape[1])
    states, labels = all_states[:, :s], None if all_labels is None else all_labels[:s]
    heldout = None
    if all_states.shape[1] > s and p.oss.heldout_samples:
        heldout = teacher_split(m, t, all_states, all_labels, s, all_states.shape[1])
    elif p.oss.heldout_samples:
        log.warning(
            "%s holds no teacher samples after the first %d: no held-out choice between candidates (raise "
            "trajectories.samples to %d for oss.heldout_samples = %d)",
            traj_dir,
            s,
            p.oss.samples + p.oss.heldout_samples,
            p.oss.heldout_samples,
        )
    den = LabelledDenoiser(m, labels, p.teacher.guidance)
    t0 = time.perf_counter()
    options = oss_options(p)
    searches = [("", options)]
    if heldout is not None and options.start_window != 0 and options.t_max_candidate:
        searches.append(("t_max", dataclasses.replace(options, start_window=0)))
    candidates = {nfe: [] for nfe in nfes}
    for tag, opts in searches:
        if method == "gits":
            costs, _ = _shared_gits_costs(p, m, traj_dir, t, states, den)
            window = check_start_window(opts.start_window, len(t) - 1, min(nfes))
            shared = _shared_gits_start_costs(p, m, traj_dir, t, states, den, window) if window else None
            found = {
                nfe: gits_search(
                    t,
                    states,
                    den,
                    m.noise_schedule,
                    nfe,
                    solver,
                    opts,
                    costs=costs,
                    start_costs=shared,
                    eval_batch_size=s,
                    model=e.name,
                )
                for nfe in nfes
            }
        elif method == "oss":
            found = oss_search_all(
                t, states, den, m.noise_schedule, nfes, solver, opts, eval_batch_size=s, model=e.name
            )
        else:
            raise OptstepsError(f"unknown distillation method {method!r}; use oss or gits.")
        for nfe, res in found.items():
            name = "searched start" if tag == "" and len(searches) > 1 else (tag or "")
            candidates[nfe].append((_join(name, "refined" if method == "oss" and opts.refine else ""), res.schedule))
            if method == "oss" and opts.refine and heldout is not None:
                candidates[nfe].append((_join(name, "dp"), res.dp_schedule(t)))
    wall = round(time.perf_counter() - t0, 3)  # of the whole call (the K share one DP)
    out = {}
    for nfe, cands in candidates.items():
        if heldout is None:
            chosen = cands[0][1]
        else:
            chosen = choose_by_heldout(
                [(n or method, c) for n, c in cands], lambda lab: LabelledDenoiser(m, lab, p.teacher.guidance), heldout
            )
        if len(searches) > 1:  # what the other searches spent (the plan's "as run")
            others = [c for n, c in cands if n.startswith("t_max") and c.extra.get("candidate") != "dp"]
            chosen = chosen.with_meta(
                extra={
                    "t_max_search": {
                        "model_evals": int(others[0].extra.get("model_evals", 0)),
                        "refine_model_evals": int(others[0].extra.get("refine_model_evals", 0)),
                    }
                }
            )
        out[nfe] = polish_stage_schedule(
            p, m, chosen.with_meta(extra={"wall_time_s": wall, "teacher_samples": s}), traj_dir
        )
    return out


def _join(*words: str) -> str:
    return ", ".join(w for w in words if w)


def lambda_opt(p: Params, model, solver: str, nfe: int, max_order: int = 3, traj_dir=None, say=None) -> Schedule:
    """The λ-optimized schedule (``compute_lambda_opt``), written to ``schedule_path``."""
    q, e = resolve(p, model)
    sched = compute_lambda_opt(p, model, solver, nfe, max_order=max_order, traj_dir=traj_dir, say=say)
    sched.save(schedule_path(q, e, "lambda-opt", solver, nfe))
    return sched


def compute_lambda_opt(
    p: Params, model, solver: str, nfe: int, max_order: int = 3, traj_dir=None, say=None
) -> Schedule:
    """The λ-optimized schedule of ``model`` for ``solver`` (at order ≤ ``max_order``) and NFE, with the options
    ``p.lambda_opt`` (command-line flags arrive there through ``config.override``); nothing is written. ``say``: where
    the iteration progress of a long optimisation goes (``optsteps.pipeline.progress``)."""
    from optsteps.optimizers.lambda_opt import lambda_opt_schedule
    from optsteps.pipeline.progress import progress_for

    p, e = resolve(p, model)
    ns = noise_schedule_for(e, p.artifacts)
    eps_fn = empirical_eps_for(p, e, traj_dir) if p.lambda_opt.error_model == "empirical" else None
    spec = SolverSpec(solver, min(max_order, DEFAULT_ORDER[solver]))
    report = progress_for(f"lambda-opt {e.name} {solver} NFE {nfe}", say, "iteration", bound=True)
    sched = lambda_opt_schedule(ns, nfe, spec, p.lambda_opt, eps_fn=eps_fn, model=e.name, progress=report)
    if p.polish.enabled:
        sched = polish_stage_schedule(p, load_model(e, p.artifacts), sched, traj_dir or trajectories_dir(p, e))
    return sched


POLISH_HELDOUT = 64  # held-out samples when oss.heldout_samples does not exist (yet)


def teacher_split(m, t, states, labels, a: int, b: int):
    """Teacher samples [a, b) of loaded shards as a ``polish.Split``: unit noise ε = x̄_0 / σ_{t_0} (the teacher
    starts from σ_{t_0} ε, the scaled state), the endpoints x̄_N and the labels (the polish's and the held-out
    choice's splits)."""
    from optsteps.optimizers.polish import Split

    eps = states[0, a:b] / float(m.noise_schedule.sigma(float(t[0])))
    return Split(eps, states[-1, a:b], None if labels is None else labels[a:b])


def polish_stage_schedule(p: Params, m, sched: Schedule, traj_dir) -> Schedule:
    """``sched`` polished (docs/algorithms.md §8) when ``polish.enabled``, else unchanged. Distillation split: the
    shards' samples [0, S) (S = oss.samples), held-out split: [S, S + H) (H = oss.heldout_samples); the polished
    times replace the schedule's only if its held-out MSE falls, and its JSON records ``polish`` (steps, forwards
    and backwards in rows, distillation/held-out MSE before and after) either way."""
    from optsteps.optimizers.polish import polish_schedule
    from optsteps.teacher.load import LabelledDenoiser, load_teacher

    if not p.polish.enabled:
        return sched
    s, h = p.oss.samples, getattr(p.oss, "heldout_samples", POLISH_HELDOUT)
    t, states, labels = load_teacher(p.teacher, m, traj_dir, s + h)
    if states.shape[1] <= s:
        raise OptstepsError(
            f"{traj_dir} holds {states.shape[1]} teacher samples, none left for the polish's held-out "
            f"split after oss.samples = {s}; raise trajectories.samples to at least {s + h}."
        )
    res = polish_schedule(
        sched,
        lambda lab: LabelledDenoiser(m, lab, p.teacher.guidance),
        m.noise_schedule,
        teacher_split(m, t, states, labels, 0, s),
        teacher_split(m, t, states, labels, s, s + h),
        p.polish,
    )
    return res.schedule.with_meta(
        extra={"polish": {**res.info(), "distill_samples": s, "heldout_samples": states.shape[1] - s}}
    )


def empirical_eps_for(p: Params, model, traj_dir=None):
    """ε(λ) measured on the teacher shards: mean ‖x̂_0(x_t, t) − x_final‖ per teacher time, interpolated in λ."""
    from optsteps.optimizers.lambda_opt import empirical_eps
    from optsteps.teacher.load import mean_x0_error

    p, e = resolve(p, model)
    if traj_dir is not None:
        p = with_manifest_teacher(p, traj_dir)
    m = describe_model(e, p.artifacts)  # the shards' identity and noise schedule; no network needed
    t, err = mean_x0_error(p.teacher, m, traj_dir or trajectories_dir(p, e))
    lam = m.noise_schedule.lambda_(t[:-1])
    return empirical_eps(lam.numpy(), err.double().numpy())


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
    """The evaluation grid of ``model`` (``plan.evaluation_rows``: baselines × solvers × (``evaluate.nfe`` ∪
    ``evaluate.baseline_nfe``) plus every optimized schedule its stage makes for an evaluated solver and NFE),
    the optimized ones read from disk where they exist."""
    from optsteps.core.baselines import baseline
    from optsteps.io.paths import inside
    from optsteps.pipeline.plan import evaluation_rows

    p, e = resolve(p, model)
    ns = noise_schedule_for(e, p.artifacts)
    out = []
    for method, solver, nfe in evaluation_rows(p, e):
        if method in METHOD_DIRS:
            path = schedule_path(p, e, method, solver, nfe)
            if path.is_file():
                s = Schedule.load(path)
                inside(path.parent, f"{s.method}-{s.solver}.json", f'{path}: "method"')  # it names output files
                out.append(s)
        else:
            out.append(baseline(method, ns, nfe, model=e.name).with_meta(solver=solver))
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
        clf_dir = classifier_dir(p)
        if not classifier_record_path(p).is_file():
            raise OptstepsError(
                f"the digits classifier is not trained ({clf_dir}); run `optsteps train --model classifier`."
            )
        classifier = load_classifier(clf_dir)
    if inception_n is not None:
        ev = dataclasses.replace(ev, inception_n=inception_n)
    return Evaluator.from_options(classifier, ev, teacher_inception_n=teacher_inception_n(p, e), progress=progress)


def evaluate(p: Params, model) -> Path:
    """Evaluate the grid (teacher row first) and write results/eval/<model>.json (every row, with its schedule,
    intervals and paired differences), results/eval/<model>.md (the tables), results/eval/<model>-summary.json
    (the speedup entries), results/eval/<model>-bootstrap.npz (the rows' resamples), the DVC metrics file
    results/metrics/<model>/ and the DVC plots table results/plots/<model>.csv (``write_tracked_summaries``).

    The digits metrics (classifier FID/KID, adherence) exist only for the embedded digits models; every model gets
    the model-agnostic ones (``l2_to_teacher`` in its state space, ``psnr_to_teacher`` and the Inception FID/KID to
    the teacher on decoded images), and no digits classifier is needed for a pipeline."""
    import json

    from optsteps.evaluate.run import evaluate_grid, markdown_table
    from optsteps.evaluate.speedup import speedup_table
    from optsteps.io.atomic import write_text_atomic
    from optsteps.pipeline.eval_outputs import write_evaluation

    p, e = resolve(p, model)
    torch.set_num_threads(p.evaluate.threads)
    m = load_model(e, p.artifacts)
    schedules = evaluation_schedules(p, e)
    evaluator = evaluator_for(p, e)
    grids = grids_dir(p, e)

    teacher_images = {}

    def save_grid_of(row, images):  # the row's first evaluate.grid_samples samples beside the teacher's, one PNG a row
        if not p.evaluate.grid_samples or images is None or images.dim() != 4:
            return
        from optsteps.io.images import save_labelled_grid
        from optsteps.io.paths import inside

        k = p.evaluate.grid_samples
        panels = [(f"teacher ({row['solver']}, {row['nfe']} steps)" if row["method"] == "teacher" else "", images[:k])]
        if row["method"] == "teacher":
            teacher_images["panel"] = panels[0]
            name = "teacher"
        else:
            name = f"{row['method']}-{row['solver']}-nfe{row['nfe']}"
            panels = [p_ for p_ in (teacher_images.get("panel"),) if p_ is not None] + [
                (f"{row['method']} ({row['solver']}, NFE {row['nfe']})", images[:k])
            ]
        save_labelled_grid(
            panels, inside(grids, f"{name}.png", "evaluation grid"), sample_labels(m, len(images[:k]), p.evaluate.start)
        )
        row["grid"] = f"{grids.name}/{name}.png"

    grids.mkdir(parents=True, exist_ok=True)  # the DVC stage's output exists even with grids off
    from optsteps.pipeline.plan import EVAL_BATCH

    rows, resamples = evaluate_grid(
        m,
        schedules,
        p.teacher,
        dataclasses.replace(p.evaluate, progress=True, batch_size=EVAL_BATCH),
        evaluator=evaluator,
        distill_samples=p.trajectories.samples,
        return_resamples=True,
        on_images=save_grid_of,
    )
    for row, s in zip(rows[1:], schedules):
        row["schedule"] = s.to_dict()
    out = write_evaluation(p, e, rows, resamples)  # npz then JSON, one outputs id: register checks the pair
    write_text_atomic(markdown_path(p, e), markdown_table(rows, resamples=resamples))
    write_text_atomic(summary_path(p, e), json.dumps(speedup_table(rows), indent=1) + "\n")
    write_tracked_summaries(p, e, rows)
    return out


def sample_labels(model, n: int, start: int = 0) -> list[str] | None:
    """What samples start … start + n − 1 of an evaluation asked for, as grid captions: the prompt of a text-to-image
    pipeline, the class of a class-conditional model (``DiffusionModel.labels``), None when unconditional."""
    labels = model.labels(n, start)
    if labels is None:
        return None
    prompt = getattr(model, "prompt", None)
    return [prompt(int(v)) if callable(prompt) else str(int(v)) for v in labels.tolist()]


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

    headline = [
        k
        for k in dict.fromkeys((FALLBACK_METRIC, champion_metric(p, model, rows), "psnr_to_teacher"))
        if any(k in r for r in rows[1:])
    ]
    series = {}
    for r in rows[1:]:
        series.setdefault(f"{r['method']}-{r['solver']}", []).append(r)
    folder = metrics_dir(p, model)
    if folder.is_dir():  # a method or solver dropped from the grid leaves no stale file
        shutil.rmtree(folder)
    lines = [",".join(["series", "nfe"] + headline)]
    for key, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["nfe"])
        metrics = {f"nfe{r['nfe']}": {k: r[k] for k in headline if k in r} for r in rs}
        write_text_atomic(inside(folder, f"{key}.json", "metrics file"), json.dumps(metrics, indent=1) + "\n")
        lines += [
            ",".join([f"{rs[0]['method']}/{rs[0]['solver']}", str(r["nfe"])] + [str(r.get(k, "")) for k in headline])
            for r in rs
        ]
    write_text_atomic(plots_csv(p, model), "\n".join(lines) + "\n")
    for metric in headline:
        fig = curves_figure(rows, metric, metric)
        if fig is None:
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)  # an object-API Figure (evaluate.plots): no pyplot state to close
        write_bytes_atomic(plot_png(p, model, metric), buf.getvalue())


def load_resamples(p: Params, model, rows: int) -> list[dict]:
    """The rows' resamples written by ``evaluate`` ([{}] * rows when the file is missing: no intervals). The register
    stage reads the rows and resamples together, checked as one unit (``eval_outputs.read_evaluation``)."""
    from optsteps.pipeline.eval_outputs import read_resamples

    path = resamples_path(p, model)
    if not path.is_file():
        return [{} for _ in range(rows)]
    return read_resamples(path, rows, f"rerun `optsteps stage evaluate --model {model_name(p, model)}`")[0]


def _grid_file(p: Params, model, row: dict) -> str | None:
    """The PNG grid of the row's samples written by ``evaluate`` (None when grids are off or missing)."""
    rel = row.get("grid")
    path = eval_dir(p) / rel if rel else None
    return str(path) if path is not None and path.is_file() else None


def register(p: Params, models: list[str] | None = None) -> Path:
    """Log one MLflow run per evaluated (model, method, solver, NFE) with its resamples, register each schedule as
    a model version (champion-nfe{K}: the best version by ``champion_metric`` of the latest evaluation, tagged with
    whether its lead is significant; docs/algorithms.md §7.3) and log one summary run per model (with the speedup
    figure). Writes results/registry.json (what was registered, its action and where each version stands now).

    Each model's evaluation JSON and resamples are checked to be one unit first (``eval_outputs.read_evaluation``);
    then everything runs under the registry's lock (``registry_lock.open_registry``: one writer, the database created
    once, runs a killed register left reopened), so a rerun after a crash ends as a clean register would."""
    import json

    from optsteps.integrations.registry_lock import open_registry
    from optsteps.io.atomic import write_text_atomic
    from optsteps.io.provenance import dvc_data_hash, git_commit, params_hash
    from optsteps.pipeline.eval_outputs import read_evaluation

    models = models or list(p.models)
    uri = p.mlflow.tracking_uri
    if uri and uri.startswith(("http://", "https://")):  # a server that does not work fails first, in one line
        from optsteps.integrations.mlflow_registry import Registry

        Registry(uri, timeout_s=p.mlflow.timeout_s)
    evaluations = {model: read_evaluation(p, model) for model in models}  # every pair checked before any write
    git, digest, dvc_hash = git_commit(), params_hash(), dvc_data_hash()
    done = []
    # one register at a time (the lock), the database created once, runs a killed register left healed
    with open_registry(p.mlflow.tracking_uri, p.mlflow.timeout_s, p.mlflow.lock_timeout_s) as reg:
        for model in models:
            done += _register_model(p, reg, model, evaluations[model], git, digest, dvc_hash)
        out = registry_path(p)
        write_text_atomic(out, json.dumps(done, indent=1) + "\n")
    return out


def _register_model(p: Params, reg, model, evaluation, git, digest, dvc_hash) -> list[dict]:
    """``register`` for one model's evaluation (rows, resamples) on an open registry: its records."""
    from optsteps.evaluate.speedup import best_baseline
    from optsteps.io.readers import read_json

    done = []
    name = model_name(p, model)
    rows, resamples = evaluation
    metric = champion_metric(p, model, rows)
    model_sha = recorded_model_sha(p, model)  # versions keyed by content
    summary = summary_path(p, model)
    fix = f"rerun `optsteps stage evaluate --model {name}`"
    speedup = read_json(summary, "speedup summary", top=list, fix=fix) if summary.is_file() else None
    best = best_baseline(speedup or [])
    for row, res in zip(rows[1:], resamples[1:]):
        here = [row["method"], row["solver"], row["nfe"]]
        s = Schedule.from_dict(row["schedule"])
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("nfe", "seed", "start")}
        metrics["ci95"] = row.get("ci95") or {}
        run_id = reg.log_schedule_run(
            s,
            metrics=metrics,
            solver=row["solver"],
            resamples=res,
            evaluation_id=row.get("evaluation_id"),
            model_sha=model_sha,
            grid=_grid_file(p, model, row),
            vs_best_baseline=row.get("vs_best_baseline"),
            speedup=[e for e in best if [e[k] for k in ("method", "solver", "nfe")] == here],
            teacher_seed=p.teacher.seed,
            params={"eval_seed": row["seed"]} if "seed" in row else None,
        )
        info = reg.register_schedule(
            run_id, metric=metric, git=git, params_digest=digest, dvc_hash=dvc_hash, resamples=res.get(metric)
        )
        done.append(
            {
                "model": name,
                "method": row["method"],
                "solver": row["solver"],
                "nfe": row["nfe"],
                "run_id": run_id,
                "dvc_data_hash": dvc_hash,
                **{k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))},
            }
        )
    for d in done:  # a later row may have taken the alias: record where each version stands now
        if "version" in d:
            d.update(reg.standing(d["name"], d["version"]))
    reg.log_summary_run(rows, run_name=f"summary-{name}", metric=metric, speedup=speedup)
    return done
