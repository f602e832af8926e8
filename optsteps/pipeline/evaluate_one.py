"""``optsteps evaluate``: one schedule (a baseline kind or a schedule JSON file) evaluated with the evaluate stage's
settings, optionally logged to MLflow and registered. The CLI parses the flags, calls ``evaluate_one`` and prints
its ``OneEvaluation``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from optsteps.pipeline.config import Params


@dataclass
class OneEvaluation:
    """What ``evaluate_one`` did: the metrics (bootstrap resamples included), and when logged the MLflow run, the
    tracking URI it went to and the registration (``Registry.register_schedule``'s result) when registered."""

    metrics: dict
    run_id: str | None = None
    tracking_uri: str | None = None
    registration: dict | None = None
    solver: str = ""  # the solver that ran (the schedule file's own unless one was given)


def load_one_schedule(schedule: str, model, nfe: int, solver: str | None, default_solver: str):
    """A schedule JSON file as it is, or the baseline ``schedule`` (a kind) at ``nfe`` steps for the loaded
    ``model``; run with ``solver``, else the file's own solver spec, else ``default_solver``."""
    from optsteps.core.baselines import baseline
    from optsteps.core.schedule import Schedule

    if Path(schedule).is_file() or schedule.endswith(".json"):
        s = Schedule.load(schedule)
    else:
        s = baseline(schedule, model.noise_schedule, nfe, model=model.name)
    solver = solver or s.solver or default_solver  # a file runs its own solver spec unless --solver is given
    return s.with_meta(solver=solver, model=s.model or model.name)


def _is_kind(schedule: str) -> bool:
    return not (Path(schedule).is_file() or schedule.endswith(".json"))


def evaluate_one(
    p: Params,
    model: str,
    schedule: str,
    *,
    nfe: int = 5,
    solver: str | None = None,
    n: int | None = None,
    inception_n: int | None = None,
    seed: int | None = None,
    start: int | None = None,
    guidance: float | None = None,
    teacher: bool = True,
    log: bool = True,
    register: bool = False,
    tracking_uri: str | None = None,
    geneval_prompts: str | None = None,
    say=lambda line: None,
) -> OneEvaluation:
    """Evaluate one schedule on ``model`` (``n``, ``inception_n``, ``seed``: default the params' ``evaluate``
    section; ``guidance``: default ``teacher.guidance``); ``teacher``: L2 to the teacher's endpoints (held-out
    seeds checked); ``log``/``register``: an MLflow run, and a registered version (champion rule of
    ``stages.champion_metric``); ``geneval_prompts``: GenEval on images of the pipeline ``model``."""
    import torch

    from optsteps.evaluate.run import check_heldout, evaluate_schedule, teacher_endpoints
    from optsteps.models import load_model
    from optsteps.pipeline.config import override
    from optsteps.pipeline.stages import champion_metric, evaluator_for

    torch.set_num_threads(1)
    e = p.entry(model)
    p = p.for_model(e)
    p = override(
        p,
        {
            "evaluate.n": ("--n", n),
            "evaluate.inception_n": ("--inception-n", inception_n),
            "evaluate.seed": ("--seed", seed),
            "evaluate.start": ("--start", start),
            "evaluate.guidance": ("--guidance", guidance),
        },
        cross=False,
    )  # the params.yaml rules
    n, inception_n, seed, start = p.evaluate.n, p.evaluate.inception_n, p.evaluate.seed, p.evaluate.start
    from optsteps.integrations.mlflow_registry import Registry

    uri = tracking_uri or p.mlflow.tracking_uri or None
    reg = None  # a tracking server that does not work fails now (within mlflow.timeout_s), not after the evaluation
    if (log or register) and uri and uri.startswith(("http://", "https://")):
        reg = Registry(uri, timeout_s=p.mlflow.timeout_s)
    m = load_model(e, p.artifacts)
    s = load_one_schedule(schedule, m, nfe, solver, p.evaluate.solvers[0])
    source = "--solver" if solver else "default" if _is_kind(schedule) else "the schedule file"
    solver = s.solver
    say(f"evaluating {s.method or schedule} NFE {s.nfe} with {s.solver_spec.name}-{s.solver_spec.order} ({source})")
    g = p.teacher.guidance if guidance is None else guidance
    ev = evaluator_for(p, model, progress=True, inception_n=inception_n)  # the evaluate stage's settings
    t_end = None
    if teacher:
        check_heldout(seed, start, n, p.teacher.seed, None)
        _, t_end = teacher_endpoints(m, p.teacher, n, seed, start, g, cache_dir=ev.cache_dir)

    sampler = None
    if geneval_prompts is not None:
        from optsteps.integrations.diffusers import pipeline_prompt_sampler
        from optsteps.models.diffusers.pipelines import load_diffusers_pipeline

        pipe, _, _ = load_diffusers_pipeline(model)
        sampler = pipeline_prompt_sampler(pipe, guidance, where=model)

    def run():
        return evaluate_schedule(
            m,
            s,
            dataclasses.replace(p.evaluate, guidance=g),
            solver=solver,
            teacher=t_end,
            evaluator=ev,
            return_samples=True,
            geneval_prompts=geneval_prompts,
            prompt_sampler=sampler,
            teacher_cfg=p.teacher if teacher else None,
        )

    if not (log or register):
        metrics, _ = run()
        return OneEvaluation(metrics, solver=solver)
    from optsteps.integrations.registry_lock import open_registry
    from optsteps.io.provenance import params_hash

    run_params = {
        "n": n,
        "inception_n": inception_n,
        "seed": seed,
        "eval_seed": seed,
        "start": start,
        "guidance": g,
        "teacher": json.dumps(dataclasses.asdict(p.teacher), sort_keys=True) if teacher else "none",
    }
    out = {}

    def run_and_keep():
        metrics, x = run()
        out.update(metrics)
        return metrics, x

    res = None
    uri = tracking_uri or p.mlflow.tracking_uri
    with open_registry(uri, p.mlflow.timeout_s, p.mlflow.lock_timeout_s) as reg:  # one writer at a time
        rid = reg.log_schedule_run(
            s, solver=solver, params=run_params, evaluate=run_and_keep, teacher_seed=p.teacher.seed if teacher else None
        )
        if register:
            res = reg.register_schedule(rid, metric=champion_metric(p, model, [{}, out]), params_digest=params_hash(p))
    return OneEvaluation(out, rid, reg.tracking_uri, res, solver=solver)
