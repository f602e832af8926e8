"""The main Prefect 3 flow: train-if-needed (the embedded models; a pipeline model is identified by the content of
its folder) → teacher trajectories (fanned out over Ray actors when ``ray.enabled``) → λ-optimizer and OSS/GITS
per (model, solver, NFE), mapped in parallel → evaluate → register in MLflow.

Every task calls the same ``optsteps.pipeline.stages`` entry point as the matching DVC stage, so both paths produce
the same schedules for the same params and seeds.

    python flows/optimize_schedules.py                       # one run (Prefect's temporary local server)
    python flows/optimize_schedules.py serve --cron "0 3 * * *"   # a cron deployment; needs `prefect server start`

Tasks cache on their inputs (the params file's content hash is one of them) and their source, and persist
their results — but only while the files they produced are still on disk: a deleted schedule, shard manifest or
evaluation is recomputed, never answered from the cache. The trajectory and evaluation tasks retry.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import CachePolicy
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optsteps.pipeline.stages as stages  # noqa: E402
from optsteps.io.shards import MANIFEST  # noqa: E402
from optsteps.models import CLASSIFIER, model_record  # noqa: E402
from optsteps.pipeline import layout  # noqa: E402
from optsteps.pipeline.config import load_params  # noqa: E402


def cached_while_present(outputs):
    """A cache policy keyed on the task's inputs and source that returns no key (so the task runs) when any
    of ``outputs(parameters)`` is missing on disk."""

    def key(ctx, parameters):
        if not all(Path(q).exists() for q in outputs(parameters)):
            return None
        blob = json.dumps(parameters, sort_keys=True, default=str) + inspect.getsource(ctx.task.fn)
        return hashlib.sha256(blob.encode()).hexdigest()

    return CachePolicy.from_cache_key_fn(key)


def _params(a):
    return load_params(a["params_path"])


TRAINED = cached_while_present(lambda a: [model_record(_params(a).artifacts, a["model"])])
SHARDS = cached_while_present(lambda a: [layout.trajectories_dir(_params(a), a["model"]) / MANIFEST])
SCHEDULE = cached_while_present(
    lambda a: [layout.schedule_path(_params(a), a["model"], a.get("method", "lambda-opt"), a["solver"], a["nfe"])]
)
DISTILLED = cached_while_present(
    lambda a: [layout.schedule_path(_params(a), a["model"], a["method"], a["solver"], nfe) for nfe in a["nfes"]]
)
EVALUATED = cached_while_present(lambda a: [layout.eval_path(_params(a), a["model"])])


def params_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@task(cache_policy=TRAINED, persist_result=True)
def train_task(params_path: str, digest: str, model: str) -> str:
    return str(stages.train(load_params(params_path), model))


@task
def model_task(params_path: str, digest: str, model: str, trained: str | None = None) -> str:
    """The model's identity (a digest), an input of every task of the model: an embedded model is trained first
    (``train_task``); a pipeline model is identified by the content of its folder, every run (new weights miss the
    caches of that model's tasks, and only theirs)."""
    p = load_params(params_path)
    stages.identify(p, model)  # as the DVC stages identify@ and model@ (the same files)
    stages.prepare(p, model)
    return stages.model_identity(p, model)


@task(retries=2, retry_delay_seconds=5, cache_policy=SHARDS, persist_result=True)
def trajectories_task(params_path: str, digest: str, model: str, identity: str) -> list[str]:
    man = stages.trajectories(load_params(params_path), model, say=get_run_logger().info)  # progress in the task log
    return [e["sha256"] for e in man["shards"]]


@task(cache_policy=SCHEDULE, persist_result=True)
def lambda_opt_task(params_path: str, digest: str, model: str, solver: str, nfe: int, identity: str) -> str:
    p = load_params(params_path)
    stages.lambda_opt(p, model, solver, nfe, say=get_run_logger().info)
    return str(layout.schedule_path(p, model, "lambda-opt", solver, nfe))


@task(cache_policy=DISTILLED, persist_result=True)
def oss_task(
    params_path: str, digest: str, model: str, method: str, solver: str, nfes: list[int], shards: list[str]
) -> list[str]:
    """OSS or GITS for every K of ``nfes`` of one solver: one DP for all K (``stages.oss_nfes``)."""
    p = load_params(params_path)
    stages.oss_nfes(p, model, solver, nfes, method=method)
    return [str(layout.schedule_path(p, model, method, solver, nfe)) for nfe in nfes]


@task(retries=1, retry_delay_seconds=5, cache_policy=EVALUATED, persist_result=True)
def evaluate_task(params_path: str, digest: str, model: str, identity: str, schedules: list[str]) -> str:
    return str(stages.evaluate(load_params(params_path), model))


DVC_STAGES = (
    "identify",
    "model",
    "classifier",
    "trajectories",
    "lambda_opt",
    "oss",
    "evaluate",
)  # dvc.yaml, before register


def record_in_dvc(targets) -> bool:
    """Record what the flow computed in ``dvc.lock`` (``dvc commit -f``: the outputs', deps' and params' hashes as
    they are now), so that after the flow ``dvc status`` is clean and ``dvc repro`` reruns nothing — one pipeline
    state for both paths. Only in a DVC repository (``dvc.yaml`` and ``.dvc/`` in the working directory)."""
    if not (Path("dvc.yaml").is_file() and Path(".dvc").is_dir()):
        print("not a DVC repository here: dvc.lock not updated (run `dvc init` to share state with `dvc repro`)")
        return False
    r = subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", "-q", *targets], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"dvc commit {' '.join(targets)} failed: {(r.stderr or r.stdout).strip()[-2000:]}")
    return True


@task
def record_task(targets: list[str], after) -> bool:
    return record_in_dvc(targets)


@task
def register_task(params_path: str, evaluations: list[str]) -> str:
    return str(stages.register(load_params(params_path)))


def _paths(futures) -> list[str]:
    """The schedule paths of finished lambda-opt tasks (one path) and OSS/GITS tasks (one per K)."""
    out = []
    for f in futures:
        r = f.result()
        out.extend(r if isinstance(r, list) else [r])
    return out


@flow(name="optimize_schedules", log_prints=True)
def optimize_schedules(params_path: str = "params.yaml") -> list[str]:
    p = load_params(params_path)
    digest = params_digest(params_path)
    from optsteps.pipeline.plan import plan  # the bill before the work (counts; `optsteps plan` adds an ETA)

    print(plan(p, measure=False).table())
    if p.ray.enabled:  # ray.init belongs in the main thread (the flow body), not in a task's worker thread
        from optsteps.integrations.ray_pool import init_ray

        init_ray(p.ray)
    models = list(p.models)
    train_task(params_path, digest, CLASSIFIER)  # the digits judge (as the DVC stage `classifier`)
    identity = {
        m: model_task(params_path, digest, m, train_task(params_path, digest, m) if p.models[m].is_embedded else None)
        for m in models
    }  # only the embedded models are trained
    shards = {m: trajectories_task(params_path, digest, m, identity[m]) for m in models}
    futures, per_model = [], {}
    for m in models:
        q = p.for_model(m)
        first = len(futures)
        for solver in q.lambda_opt.solvers:
            for nfe in q.lambda_opt.nfe:
                futures.append(lambda_opt_task.submit(params_path, digest, m, solver, nfe, identity[m]))
        for method in ["oss"] + (["gits"] if q.oss.gits else []):
            for solver in q.oss.solvers:
                futures.append(oss_task.submit(params_path, digest, m, method, solver, list(q.oss.nfe), shards[m]))
        per_model[m] = futures[first:]
    wait(futures)
    evaluations = [evaluate_task(params_path, digest, m, identity[m], _paths(per_model[m])) for m in models]
    record_task(list(DVC_STAGES), evaluations)  # before register: versions carry the real DVC data hash
    registered = register_task(params_path, evaluations)
    record_task(["register"], registered)
    paths = _paths(futures)
    print(
        f"{len(paths)} schedules under {Path(p.results) / 'schedules'}; evaluations {evaluations}; "
        f"registry {registered}"
    )
    return paths


def flow_for(params_path: str):
    """The flow with its task pool sized by params.yaml ``flow.task_workers``."""
    workers = load_params(params_path).flow.task_workers
    return optimize_schedules.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers or None))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="run", choices=["run", "serve"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cron", default="0 3 * * *", help="schedule for `serve` (needs a real `prefect server start`)")
    ap.add_argument("--name", default="nightly")
    a = ap.parse_args(argv)
    if a.command == "serve":
        flow_for(a.params).serve(name=a.name, cron=a.cron, parameters={"params_path": a.params})
    else:
        flow_for(a.params)(a.params)


if __name__ == "__main__":
    main()
