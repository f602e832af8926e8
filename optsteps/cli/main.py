"""The ``optsteps`` command line. Every command reads ``params.yaml`` through ``optsteps.pipeline.config``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from optsteps.cli import checks
from optsteps.cli.options import ParamsOpt
from optsteps.errors import OptstepsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Optimized sampling step schedules for diffusion models.")
schedule_app = typer.Typer(no_args_is_help=True, help="Compute step schedules (baselines and optimizers).")
app.add_typer(schedule_app, name="schedule")
stage_app = typer.Typer(no_args_is_help=True, help="Pipeline stages over the params.yaml grid (what dvc.yaml runs).")
app.add_typer(stage_app, name="stage")


def _params(path):
    from optsteps.pipeline.config import load_params

    return load_params(path)


def _is_reference(ref: str) -> bool:
    """A schedule JSON file or a registry reference (NAME@ALIAS, NAME/VERSION, models:/…), not a baseline kind."""
    import re

    return (Path(ref).is_file() or ref.endswith(".json") or "@" in ref or ref.startswith("models:/")
            or re.fullmatch(r"[^/\s]+/\d+", ref) is not None)


def _resolve_schedule_arg(ref: str, params: str):
    """A schedule file or registry reference, resolved before any model is loaded (None for a baseline kind)."""
    if not _is_reference(ref):
        return None
    from optsteps.integrations.schedule_refs import resolve_schedule

    tracking_uri = None
    if not (Path(ref).is_file() or ref.endswith(".json")):
        tracking_uri = _params(params).mlflow.tracking_uri or None
    return resolve_schedule(ref, tracking_uri)


def _schedule_for(kind_or_ref: str, model, nfe: int, solver: str | None, resolved=None):
    from optsteps.core.baselines import baseline_for

    s = resolved
    if s is not None:
        if s.noise_schedule != model.noise_schedule:
            raise OptstepsError(f"{kind_or_ref} was made for noise schedule {s.noise_schedule.to_dict()}, but model "
                                f"{model.name!r} uses {model.noise_schedule.to_dict()}; compute a schedule for this model.")
        return s
    return baseline_for(kind_or_ref, model, nfe).with_meta(solver=solver or "unipc")


@app.command()
def train(model: str = typer.Option(..., "--model", help="digits | digits-flow | classifier"),
          params: str = ParamsOpt, force: bool = typer.Option(False, help="Retrain even if trained.")):
    """Train the embedded default model, its flow twin, or the digits classifier (skips if already trained)."""
    import optsteps.pipeline.stages as stages
    from optsteps.models import model_dir

    p = _params(params)
    out = model_dir(p.artifacts, model if model == "classifier" else p.entry(model).name)
    if (out / "optsteps_model.json").is_file() and not force:
        typer.echo(f"{model}: already trained at {out} (use --force to retrain)")
        return
    t0 = time.perf_counter()
    stages.train(p, model, force=True)
    meta = json.loads((out / "optsteps_model.json").read_text())
    extra = f", held-out accuracy {meta['holdout_accuracy']:.4f}" if "holdout_accuracy" in meta else ""
    typer.echo(f"{model}: trained in {time.perf_counter() - t0:.1f} s{extra} -> {out}")


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
def schedule_baseline(kind: str = typer.Argument(..., help="uniform-t | uniform-lambda | karras | time-quadratic | "
                                                 "linspace | leading | trailing | ays | flow-shift | oss-published"),
                      model: str = typer.Option(..., "--model"), nfe: int = typer.Option(..., "--nfe"),
                      solver: str = typer.Option("", "--solver"), as_json: bool = typer.Option(False, "--json"),
                      table: Optional[str] = typer.Option(None, "--table", help="published table: ays sd | sdxl | svd, "
                                                          "oss-published flux | wan"),
                      params: str = ParamsOpt):
    """Print a baseline schedule (JSON with --json)."""
    from optsteps.core.baselines import baseline
    from optsteps.models import BUILTIN, noise_schedule_for

    # a built-in model's noise schedule needs no weights, so no params file either
    if model in BUILTIN:
        ns, name = noise_schedule_for(model), model
    else:
        p = _params(params)
        e = p.entry(model)
        ns, name = noise_schedule_for(e, p.artifacts), e.name
    opts = {"table": table} if table else {}
    _emit(baseline(kind, ns, nfe, model=name, **opts).with_meta(solver=solver), as_json)


@schedule_app.command("lambda-opt")
def schedule_lambda_opt(model: str = typer.Option(..., "--model"), nfe: int = typer.Option(..., "--nfe"),
                        solver: str = typer.Option("unipc", "--solver"),
                        order: int = typer.Option(3, "--order", help="solver order the step pattern ramps to (1-3)"),
                        p_exp: Optional[float] = typer.Option(None, "--p", help="error model exponent (default lambda_opt.p)"),
                        error_model: Optional[str] = typer.Option(None, "--error-model", help="analytic | empirical"),
                        trajectories: Optional[str] = typer.Option(None, "--trajectories", help="shards for --error-model empirical"),
                        trunc: Optional[int] = typer.Option(None, "--trunc", help="truncNum T_c (default 3; 0 = the paper's K ≥ 7 variant)"),
                        as_json: bool = typer.Option(False, "--json"), params: str = ParamsOpt):
    """The λ-optimizer (Xue et al. 2024): data-free optimized steps in log-SNR, trust-constr."""
    import optsteps.pipeline.stages as stages

    if solver not in ("ddim", "dpmpp2m", "unipc"):
        raise OptstepsError(f"unknown solver {solver!r}; use ddim, dpmpp2m or unipc.")
    if not 1 <= order <= 3:
        raise OptstepsError(f"--order {order} is not supported; use 1, 2 or 3.")
    if order > nfe:
        raise OptstepsError(f"--order {order} exceeds --nfe {nfe}; a K-step schedule supports orders up to K.")
    checks.check_limit("MAX_LAMBDA_OPT_NFE", nfe, "--nfe")
    p = _params(params)
    _emit(stages.lambda_opt(p, model, solver, nfe, p_exp=p_exp, error_model=error_model, max_order=order,
                            traj_dir=trajectories, trunc=trunc), as_json)


def _distill(method: str, model: str, nfe: int, solver: str, trajectories: Optional[str], as_json: bool, params: str):
    import optsteps.pipeline.stages as stages

    p = _params(params)
    if solver not in ("ddim", "dpmpp2m", "unipc"):
        raise OptstepsError(f"unknown solver {solver!r}; use ddim, dpmpp2m or unipc.")
    _emit(stages.oss(p, model, solver, nfe, method=method, traj_dir=trajectories), as_json)


@schedule_app.command("oss")
def schedule_oss(model: str = typer.Option(..., "--model"), nfe: int = typer.Option(..., "--nfe"),
                 solver: str = typer.Option("ddim", "--solver"),
                 trajectories: Optional[str] = typer.Option(None, "--trajectories", help="teacher shards folder"),
                 as_json: bool = typer.Option(False, "--json"), params: str = ParamsOpt):
    """OSS (Pei et al. 2025): DP over the teacher trajectory, plus refinement by the true final error."""
    _distill("oss", model, nfe, solver, trajectories, as_json, params)


@schedule_app.command("gits")
def schedule_gits(model: str = typer.Option(..., "--model"), nfe: int = typer.Option(..., "--nfe"),
                  solver: str = typer.Option("ddim", "--solver"),
                  trajectories: Optional[str] = typer.Option(None, "--trajectories", help="teacher shards folder"),
                  as_json: bool = typer.Option(False, "--json"), params: str = ParamsOpt):
    """GITS-style additive one-jump DP (γ = 1.15) on the same teacher shards."""
    _distill("gits", model, nfe, solver, trajectories, as_json, params)


@app.command("sample")
def sample_cmd(model: str = typer.Option(..., "--model"),
               schedule: str = typer.Option(..., "--schedule",
                                            help="a baseline KIND, a schedule JSON file or a registry reference NAME@ALIAS"),
               nfe: int = typer.Option(10, "--nfe", help="steps of a baseline KIND (a file or reference has its own)"),
               solver: Optional[str] = typer.Option(None, "--solver",
                                                    help="ddim | dpmpp2m | unipc; default: the schedule's own solver "
                                                         "and order (unipc for a baseline KIND)"),
               n: int = typer.Option(100, "--n", help="number of samples"), seed: int = typer.Option(0, "--seed"),
               guidance: float = typer.Option(1.0, "--guidance"), out: str = typer.Option("grid.png", "--out"),
               params: str = ParamsOpt):
    """Sample a grid PNG with a solver on a schedule."""
    from optsteps.core.solver_spec import SolverSpec
    from optsteps.io.images import save_grid
    from optsteps.models import EMBEDDED, load_model
    from optsteps.models.sampling import generate

    checks.check_int("--n", n, 1, 100_000)
    checks.check_int("--nfe", nfe, 1, 10_000)
    checks.check_seed(seed)
    checks.check_float("--guidance", guidance)
    checks.check_png("--out", out)
    spec = SolverSpec(solver) if solver else None
    resolved = _resolve_schedule_arg(schedule, params)  # a bad file or reference fails before the model loads
    p = _params(params)
    m = load_model(p.entry(model), p.artifacts)
    if len(m.sample_shape) != 3:
        raise OptstepsError(f"model {model!r} does not produce images; sample an image model ({', '.join(EMBEDDED)}).")
    s = _schedule_for(schedule, m, nfe, solver, resolved)
    spec = spec or s.solver_spec or SolverSpec("unipc")
    x = generate(m, s, spec, n, seed, guidance=guidance)
    save_grid(x, out)
    typer.echo(f"wrote {out} ({n} samples, {spec.name}-{spec.order}, NFE {s.nfe}, {s.method or schedule})")


@app.command()
def trajectories(model: str = typer.Option(..., "--model"),
                 samples: Optional[int] = typer.Option(None, "--samples", help="default: trajectories.samples"),
                 teacher_steps: Optional[int] = typer.Option(None, "--teacher-steps", help="default: teacher.steps"),
                 out: Optional[str] = typer.Option(None, "--out", help="default: artifacts/trajectories/MODEL"),
                 shard_size: Optional[int] = typer.Option(None, "--shard-size"),
                 ray: Optional[bool] = typer.Option(None, "--ray/--no-ray", help="default: ray.enabled"),
                 params: str = ParamsOpt):
    """Generate teacher-trajectory shards (skips shards already written with a matching hash)."""
    import dataclasses

    import optsteps.pipeline.stages as stages

    if samples is not None:
        checks.check_count("--samples", samples, "MAX_SAMPLES")
    p = _params(params).for_model(model)  # the model's own settings first, so that the flags below win
    if teacher_steps is not None:
        p.teacher = dataclasses.replace(p.teacher, steps=teacher_steps)
    if samples is not None:
        p.trajectories = dataclasses.replace(p.trajectories, samples=samples)
    if shard_size is not None:
        p.trajectories = dataclasses.replace(p.trajectories, shard_size=shard_size)
    man = stages.trajectories(p, model, use_ray=ray, out=out)
    typer.echo(f"{len(man['shards'])} shards, {man['samples']} samples, teacher {p.teacher.solver} × "
               f"{p.teacher.steps} -> {out or stages.trajectories_dir(p, model)}")


@stage_app.command("identify")
def stage_identify(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """Write the model's content identity to artifacts/identity/MODEL.json (changes only with the model)."""
    import optsteps.pipeline.stages as stages

    typer.echo(f"wrote {stages.identify(_params(params), model)}")


@stage_app.command("model")
def stage_model(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """artifacts/models/MODEL: train an embedded model (skipped when trained); for a pipeline, its identity record."""
    import optsteps.pipeline.stages as stages

    typer.echo(f"wrote {stages.prepare(_params(params), model)}")


@stage_app.command("lambda-opt")
def stage_lambda_opt(model: str = typer.Option(..., "--model"), params: str = ParamsOpt):
    """λ-optimized schedules for every solver × NFE in params.lambda_opt."""
    import optsteps.pipeline.stages as stages

    for path in stages.lambda_opt_all(_params(params), model):
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


_mount_registry()
_mount_apply()


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


if __name__ == "__main__":
    main()
