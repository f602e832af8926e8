"""The ``optsteps`` command line. Every command reads ``params.yaml`` through ``optsteps.pipeline.config``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from optsteps.cli import checks
from optsteps.cli.options import ParamsOpt
from optsteps.errors import OptstepsError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Optimized sampling step schedules for diffusion models."
)
schedule_app = typer.Typer(no_args_is_help=True, help="Compute step schedules (baselines and optimizers).")
app.add_typer(schedule_app, name="schedule")
stage_app = typer.Typer(no_args_is_help=True, help="Pipeline stages over the params.yaml grid (what dvc.yaml runs).")
app.add_typer(stage_app, name="stage")


def _say(line: str) -> None:
    """Progress lines of long stages, on stderr (stdout keeps the command's result)."""
    typer.echo(line, err=True)


def _params(path):
    from optsteps.pipeline.config import load_params

    return load_params(path)


def _override(p, values: dict, cross: bool = True):
    """``p`` with the flags in ``values`` ("section.key" → (flag, value or None)) applied and checked like
    params.yaml."""
    from optsteps.pipeline.config import override

    return override(p, values, cross)


def _is_reference(ref: str) -> bool:
    """A schedule JSON file or a registry reference (NAME@ALIAS, NAME/VERSION, models:/…), not a baseline kind."""
    import re

    return (
        Path(ref).is_file()
        or ref.endswith(".json")
        or "@" in ref
        or ref.startswith("models:/")
        or re.fullmatch(r"[^/\s]+/\d+", ref) is not None
    )


def _resolve_schedule_arg(ref: str, params: str):
    """A schedule file or registry reference, resolved before any model is loaded (None for a baseline kind)."""
    if not _is_reference(ref):
        return None
    from optsteps.integrations.schedule_refs import resolve_schedule

    tracking_uri = None
    if not (Path(ref).is_file() or ref.endswith(".json")):
        tracking_uri = _params(params).mlflow.tracking_uri or None
    return resolve_schedule(ref, tracking_uri)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="digits | digits-flow | classifier"),
    params: str = ParamsOpt,
    force: bool = typer.Option(False, help="Retrain even if trained."),
):
    """Train the embedded default model, its flow twin, or the digits classifier (skips if already trained)."""
    import optsteps.pipeline.stages as stages
    from optsteps.pipeline import layout

    p = _params(params)
    record = layout.classifier_record_path(p) if model == "classifier" else layout.model_record_path(p, model)
    out = record.parent
    if record.is_file() and not force:
        typer.echo(f"{model}: already trained at {out} (use --force to retrain)")
        return
    t0 = time.perf_counter()
    stages.train(p, model, force=True)
    meta = json.loads(record.read_text())
    extra = f", held-out accuracy {meta['holdout_accuracy']:.4f}" if "holdout_accuracy" in meta else ""
    typer.echo(f"{model}: trained in {time.perf_counter() - t0:.1f} s{extra} -> {out}")


OutOpt = typer.Option(
    None,
    "--out",
    help="also write the schedule JSON to this file (nothing is written without it; "
    "the pipeline's schedules are written only by `optsteps stage …`)",
)


def _write_out(s, out: str | None, params: str) -> None:
    """Write the schedule to ``--out`` (atomically); never into the pipeline's results/schedules/."""
    if not out:
        return
    from optsteps.pipeline.layout import is_pipeline_output

    results = _params(params).results if Path(params).is_file() else "results"
    if is_pipeline_output(results, out):
        raise OptstepsError(
            f"--out {out} lies in the pipeline's schedules ({Path(results) / 'schedules'}), which "
            "only `optsteps stage lambda-opt|oss` writes; pass a file outside it."
        )
    s.save(out)
    typer.echo(f"wrote {out}", err=True)


def _emit(s, as_json: bool):
    if as_json:
        typer.echo(s.to_json())
        return
    typer.echo(f"{s.method} NFE {s.nfe} on {s.noise_schedule.describe()} ({s.model}, {s.solver}):")
    for i, (t, sig, lam) in enumerate(zip(s.t, s.sigmas.tolist(), s.lambdas.tolist())):
        typer.echo(f"  {i:3d}  t={t:.6f}  sigma={sig:.6g}  lambda={lam:.4f}")
    for k, v in s.extra.items():
        if not isinstance(v, (list, dict)):
            typer.echo(f"  {k}: {v}")


@schedule_app.command("baseline")
def schedule_baseline(
    kind: str = typer.Argument(
        ...,
        help="uniform-t | uniform-lambda | karras | time-quadratic | "
        "linspace | leading | trailing | ays | flow-shift | oss-published",
    ),
    model: str = typer.Option(..., "--model"),
    nfe: int = typer.Option(..., "--nfe"),
    solver: str = typer.Option("", "--solver"),
    as_json: bool = typer.Option(False, "--json"),
    table: str | None = typer.Option(
        None, "--table", help="published table: ays sd | sdxl | svd, oss-published flux | wan"
    ),
    out: str | None = OutOpt,
    params: str = ParamsOpt,
):
    """Print a baseline schedule (JSON with --json)."""
    from optsteps.pipeline.adhoc import baseline_schedule

    checked = _params(params) if params != "params.yaml" or Path(params).is_file() else None  # a --params is read
    s = baseline_schedule(kind, model, nfe, solver, table, params=lambda: checked or _params(params))
    _write_out(s, out, params)  # a bad --out fails before anything is printed
    _emit(s, as_json)


@schedule_app.command("lambda-opt")
def schedule_lambda_opt(
    model: str = typer.Option(..., "--model"),
    nfe: int = typer.Option(..., "--nfe"),
    solver: str | None = typer.Option(None, "--solver", help="default: lambda_opt.solvers[0]"),
    order: int = typer.Option(3, "--order", help="solver order the step pattern ramps to (1-3)"),
    p_exp: float | None = typer.Option(None, "--p", help="error model exponent (default lambda_opt.p)"),
    error_model: str | None = typer.Option(None, "--error-model", help="analytic | empirical"),
    trajectories: str | None = typer.Option(None, "--trajectories", help="shards for --error-model empirical"),
    trunc: int | None = typer.Option(None, "--trunc", help="truncNum T_c (default 3; 0 = the paper's K ≥ 7 variant)"),
    as_json: bool = typer.Option(False, "--json"),
    out: str | None = OutOpt,
    params: str = ParamsOpt,
):
    """The λ-optimizer (Xue et al. 2024): data-free optimized steps in log-SNR, trust-constr."""
    import optsteps.pipeline.stages as stages

    if not 1 <= order <= 3:
        raise OptstepsError(f"--order {order} is not supported; use 1, 2 or 3.")
    if order > nfe:
        raise OptstepsError(f"--order {order} exceeds --nfe {nfe}; a K-step schedule supports orders up to K.")
    p = _params(params).for_model(model)  # the model's own settings first, so that the flags below win
    solver = solver or p.lambda_opt.solvers[0]
    p = _override(
        p,
        {
            "lambda_opt.nfe": ("--nfe", [nfe]),
            "lambda_opt.solvers": ("--solver", [solver]),
            "lambda_opt.p": ("--p", p_exp),
            "lambda_opt.error_model": ("--error-model", error_model),
            "lambda_opt.trunc": ("--trunc", trunc),
        },
    )
    s = stages.compute_lambda_opt(p, model, solver, nfe, max_order=order, traj_dir=trajectories, say=_say)
    _write_out(s, out, params)
    _emit(s, as_json)


def _distill(
    method: str,
    model: str,
    nfe: int,
    solver: str | None,
    trajectories: str | None,
    as_json: bool,
    out: str | None,
    params: str,
):
    import optsteps.pipeline.stages as stages

    p = _params(params).for_model(model)
    solver = solver or p.oss.solvers[0]
    # shards from --trajectories bring their own teacher (steps): the search checks K against those
    p = _override(p, {"oss.nfe": ("--nfe", [nfe]), "oss.solvers": ("--solver", [solver])}, cross=trajectories is None)
    s = stages.compute_oss(p, model, solver, nfe, method=method, traj_dir=trajectories)
    _write_out(s, out, params)
    _emit(s, as_json)


@schedule_app.command("oss")
def schedule_oss(
    model: str = typer.Option(..., "--model"),
    nfe: int = typer.Option(..., "--nfe"),
    solver: str | None = typer.Option(None, "--solver", help="default: oss.solvers[0]"),
    trajectories: str | None = typer.Option(None, "--trajectories", help="teacher shards folder"),
    as_json: bool = typer.Option(False, "--json"),
    out: str | None = OutOpt,
    params: str = ParamsOpt,
):
    """OSS (Pei et al. 2025): DP over the teacher trajectory, plus refinement by the true final error."""
    _distill("oss", model, nfe, solver, trajectories, as_json, out, params)


@schedule_app.command("gits")
def schedule_gits(
    model: str = typer.Option(..., "--model"),
    nfe: int = typer.Option(..., "--nfe"),
    solver: str | None = typer.Option(None, "--solver", help="default: oss.solvers[0]"),
    trajectories: str | None = typer.Option(None, "--trajectories", help="teacher shards folder"),
    as_json: bool = typer.Option(False, "--json"),
    out: str | None = OutOpt,
    params: str = ParamsOpt,
):
    """GITS-style additive one-jump DP (γ = 1.15) on the same teacher shards."""
    _distill("gits", model, nfe, solver, trajectories, as_json, out, params)


@app.command("sample")
def sample_cmd(
    model: str = typer.Option(..., "--model"),
    schedule: str = typer.Option(
        ..., "--schedule", help="a baseline KIND, a schedule JSON file or a registry reference NAME@ALIAS"
    ),
    nfe: int = typer.Option(10, "--nfe", help="steps of a baseline KIND (a file or reference has its own)"),
    solver: str | None = typer.Option(
        None,
        "--solver",
        help="ddim | dpmpp2m | unipc; default: the schedule's own solver and order (unipc for a baseline KIND)",
    ),
    n: int = typer.Option(100, "--n", help="number of samples"),
    seed: int = typer.Option(0, "--seed"),
    guidance: float = typer.Option(1.0, "--guidance"),
    out: str = typer.Option("grid.png", "--out"),
    params: str = ParamsOpt,
):
    """Sample a grid PNG with a solver on a schedule."""
    from optsteps.core.solver_spec import SolverSpec
    from optsteps.pipeline.adhoc import sample_grid

    checks.check_int("--n", n, 1, 100_000)
    checks.check_int("--nfe", nfe, 1, 10_000)
    checks.check_seed(seed)
    checks.check_float("--guidance", guidance)
    checks.check_png("--out", out)
    if solver:
        SolverSpec(solver)  # a bad solver name fails before anything is read
    resolved = _resolve_schedule_arg(schedule, params)  # a bad file or reference fails before the model loads
    s, spec = sample_grid(_params(params), model, schedule, nfe, solver, n, seed, guidance, out, resolved)
    typer.echo(f"wrote {out} ({n} samples, {spec.name}-{spec.order}, NFE {s.nfe}, {s.method or schedule})")


@app.command()
def trajectories(
    model: str = typer.Option(..., "--model"),
    samples: int | None = typer.Option(None, "--samples", help="default: trajectories.samples"),
    teacher_steps: int | None = typer.Option(None, "--teacher-steps", help="default: teacher.steps"),
    out: str | None = typer.Option(None, "--out", help="default: artifacts/trajectories/MODEL"),
    shard_size: int | None = typer.Option(None, "--shard-size", help="default: trajectories.shard_size"),
    ray: bool | None = typer.Option(None, "--ray/--no-ray", help="default: ray.enabled"),
    params: str = ParamsOpt,
):
    """Generate teacher-trajectory shards (skips shards already written with a matching hash)."""
    import optsteps.pipeline.stages as stages
    from optsteps.pipeline import layout

    if samples is not None:
        checks.check_limit("MAX_TEACHER_SAMPLES", samples, "--samples")  # the work bound; its range is the params rule
    p = _params(params).for_model(model)  # the model's own settings first, so that the flags below win
    # each flag passes its params.yaml rule; ad-hoc shards need not fit the OSS grid (cross rules are the stages')
    p = _override(
        p,
        {
            "teacher.steps": ("--teacher-steps", teacher_steps),
            "trajectories.samples": ("--samples", samples),
            "trajectories.shard_size": ("--shard-size", shard_size),
        },
        cross=False,
    )
    man = stages.trajectories(p, model, use_ray=ray, out=out, say=_say)
    typer.echo(
        f"{len(man['shards'])} shards, {man['samples']} samples, teacher {p.teacher.solver} × "
        f"{p.teacher.steps} -> {out or layout.trajectories_dir(p, model)}"
    )


@stage_app.command("identify")
def stage_identify(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """Write the model's content identity to artifacts/identity/MODEL.json (changes only with the model)."""
    import optsteps.pipeline.stages as stages
    from optsteps.pipeline.plan import plan

    p = _params(params)
    typer.echo(f"wrote {stages.identify(p, model)}")
    typer.echo(plan(p, model, measure=False).table())  # what `dvc repro` shows before the work


@stage_app.command("model")
def stage_model(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """artifacts/models/MODEL: train an embedded model (skipped when trained); for a pipeline, its identity record."""
    import optsteps.pipeline.stages as stages

    typer.echo(f"wrote {stages.prepare(_params(params), model)}")


@stage_app.command("lambda-opt")
def stage_lambda_opt(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """λ-optimized schedules for every solver × NFE in params.lambda_opt."""
    import optsteps.pipeline.stages as stages

    for path in stages.lambda_opt_all(_params(params), model, say=_say):
        typer.echo(f"wrote {path}")


@stage_app.command("oss")
def stage_oss(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """OSS (and GITS) schedules for every solver × NFE in params.oss, from the model's teacher shards."""
    import optsteps.pipeline.stages as stages

    for path in stages.oss_all(_params(params), model):
        typer.echo(f"wrote {path}")


@stage_app.command("evaluate")
def stage_evaluate(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """Evaluate baselines and optimized schedules on held-out seeds (teacher row first)."""
    import optsteps.pipeline.stages as stages

    typer.echo(f"wrote {stages.evaluate(_params(params), model)}")


@stage_app.command("register")
def stage_register(params: str = ParamsOpt):
    """Log and register every evaluated schedule in MLflow (champion-nfe{K} aliases)."""
    import optsteps.pipeline.stages as stages

    typer.echo(f"wrote {stages.register(_params(params))}")


def _mount_registry():
    from optsteps.cli.registry import evaluate, registry_app

    app.add_typer(registry_app, name="registry")
    app.command("evaluate")(evaluate)


def _mount_apply():
    from optsteps.cli.apply import apply_command

    app.command("apply")(apply_command)


def _mount_plan():
    from optsteps.cli.plan import plan_command

    app.command("plan")(plan_command)


_mount_registry()
_mount_apply()
_mount_plan()


def main():
    from optsteps.io.atomic import machine_error
    from optsteps.io.paths import redact

    try:
        app()
    except OptstepsError as e:
        typer.echo(f"error: {redact(e)}", err=True)  # no credential of a tracking URI is ever printed
        sys.exit(2)
    except OSError as e:  # a full disk or a read-only folder outside the atomic writers (mkdir, a library's write)
        err = machine_error(e, e.filename or ".")
        if err is None:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except Exception as e:  # a tracking server failing a request outside the Registry's client (MLflow, requests)
        err = _server_error(e)
        if err is None:
            raise
        typer.echo(f"error: {redact(err)}", err=True)
        sys.exit(2)


def _server_error(e: Exception):
    """``e`` as one line when it is MLflow's or an HTTP library's report of a failing tracking server, else None.
    (The Registry's own calls already raise that line; this catches the rest, e.g. artifact downloads.)"""
    if type(e).__module__.split(".")[0] not in ("mlflow", "requests", "urllib3"):
        return None
    from optsteps.integrations.tracking_server import server_error

    return server_error(e)


if __name__ == "__main__":
    main()
