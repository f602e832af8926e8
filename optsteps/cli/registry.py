"""``optsteps registry ...``: list, show and export registered schedules; and ``evaluate`` (a function the main
CLI mounts as a command) that evaluates a schedule, logs it to MLflow and optionally registers it.

Mount with ``app.add_typer(registry_app, name="registry")`` and ``app.command("evaluate")(evaluate)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from optsteps.cli.options import ParamsOpt
from optsteps.errors import OptstepsError

registry_app = typer.Typer(no_args_is_help=True, help="The MLflow registry of step schedules.")

TrackingOpt = typer.Option(
    None,
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI (default: mlflow.tracking_uri of --params; empty there: sqlite:///<abs cwd>/mlruns.db).",
)


def _registry(uri, params_path, create: bool = False):
    """The registry at ``--tracking-uri`` (or MLFLOW_TRACKING_URI), else at params.yaml's ``mlflow.tracking_uri``;
    read-only commands (``create`` False) never create a database, and an unreachable server fails within
    ``mlflow.timeout_s``."""
    from optsteps.integrations.mlflow_registry import Registry
    from optsteps.pipeline.config import load_params

    p = load_params(params_path) if not uri or Path(params_path).is_file() else None
    timeout = p.mlflow.timeout_s if p is not None else 10.0
    if not uri:
        uri = p.mlflow.tracking_uri
    return Registry(uri or None, create=create, timeout_s=timeout)


def registration_line(res: dict) -> str:
    """What a registration did, in one line (``Registry.register_schedule``'s result)."""
    held = f"{res['alias']} points to it" if res["champion"] else f"{res['alias']} is another version"
    if res["decision"] == "unchanged":
        return (
            f"{res['name']} version {res['version']} already holds this schedule with this evaluation: "
            f"nothing registered ({held})"
        )
    if res["decision"] == "updated":
        return f"{res['name']} version {res['version']} holds this schedule: its metrics were updated ({held})"
    return f"registered {res['name']} version {res['version']}" + (
        f"; {res['alias']} now points to it ({res['decision']})"
        if res["champion"]
        else f"; {res['alias']} unchanged ({res['decision']})"
    )


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    return str(v)


def _cell(row: dict, col: str) -> str:
    """A cell; a metric with its 95 % interval (``<metric>_ci95``) as ``value [lo, hi]``."""
    ci = row.get(f"{col}_ci95")
    if isinstance(row.get(col), float) and ci and len(ci) == 2:
        return f"{row[col]:.4g} [{ci[0]:.3g}, {ci[1]:.3g}]"
    return _fmt(row.get(col))


def table(rows: list[dict], cols: list[str]) -> str:
    cells = [[_cell(r, c) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


LIST_COLUMNS = [
    "name",
    "version",
    "aliases",
    "method",
    "nfe",
    "fid_digitsnet",
    "kid_digitsnet",
    "fid_teacher_digitsnet",
    "adherence_digitsnet",
    "fid_inception",
    "fid_teacher_inception",
    "l2_to_teacher",
    "psnr_to_teacher",
    "decision",
    "significance",
    "created",
]


@registry_app.command("list")
def list_cmd(
    model: str | None = typer.Option(None, "--model", help="only this model"),
    nfe: int | None = typer.Option(None, "--nfe", help="only this NFE"),
    tracking_uri: str | None = TrackingOpt,
    params: str = ParamsOpt,
):
    """Registered schedules with their metrics and 95 % intervals, best first by the champion metric within each
    (model, solver, NFE); ``created`` in UTC."""
    rows = _registry(tracking_uri, params).list_schedules(model, nfe)
    if not rows:
        typer.echo(
            "no registered schedules"
            + (f" for model {model}" if model else "")
            + (f" at NFE {nfe}" if nfe is not None else "")
            + "; register one with `optsteps evaluate ... --register`."
        )
        return
    cols = [c for c in LIST_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    typer.echo(table(rows, cols))
    metrics = sorted({r["metric"] for r in rows if r.get("metric")})
    if metrics:
        typer.echo(f"sorted by {', '.join(metrics)} (best first) within each name and NFE; [95 % interval].")
    if any(c.startswith("kid") for c in cols):
        typer.echo("kid_*: unbiased MMD² (cubic kernel), unscaled (×1, not ×10³); values near 0 can be negative.")


@registry_app.command("show")
def show_cmd(
    ref: str = typer.Argument(..., help="NAME@ALIAS (e.g. digits-unipc-schedules@champion-nfe5) or NAME/VERSION"),
    tracking_uri: str | None = TrackingOpt,
    params: str = ParamsOpt,
):
    """One registered schedule: version, aliases, tags, metrics and the schedule itself."""
    typer.echo(json.dumps(_registry(tracking_uri, params).show(ref), indent=2, default=str))


@registry_app.command("export")
def export_cmd(
    ref: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION"),
    fmt: str = typer.Option("json", "--format", help="json | diffusers | comfyui | comfyui-text | a1111 | ays"),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help="comfyui/a1111: interpolate to N steps (AYS log-linear; labelled interpolated, not measured)",
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="diffusers scheduler class (default by model family)"
    ),
    out: str | None = typer.Option(None, "--out", help="write to this file instead of stdout"),
    tracking_uri: str | None = TrackingOpt,
    params: str = ParamsOpt,
):
    """Export a registered schedule (the JSON byte for byte, diffusers kwargs, or ComfyUI sigmas)."""
    text = _registry(tracking_uri, params).export(ref, fmt, scheduler, steps)
    if out:
        from optsteps.io.atomic import write_text_atomic

        write_text_atomic(out, text if text.endswith("\n") else text + "\n")
        typer.echo(f"wrote {out}")
    else:
        typer.echo(text.rstrip("\n"))


def evaluate(
    model: str = typer.Option(..., "--model"),
    schedule: str = typer.Option(..., "--schedule", help="a baseline KIND or a schedule JSON file"),
    nfe: int = typer.Option(5, "--nfe", help="NFE for a baseline KIND"),
    solver: str | None = typer.Option(
        None, "--solver", help="default: the schedule file's own solver (evaluate.solvers[0] for a baseline KIND)"
    ),
    n: int | None = typer.Option(None, "--n", help="generated samples for the digitsnet metrics (default: evaluate.n)"),
    inception_n: int | None = typer.Option(
        None, "--inception-n", help="samples for Inception FID/KID (0: off; default: evaluate.inception_n)"
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="held-out evaluation seed, not the teacher's (default: evaluate.seed)"
    ),
    start: int = typer.Option(0, "--start"),
    guidance: float | None = typer.Option(None, "--guidance", help="default: teacher.guidance"),
    teacher: bool = typer.Option(True, "--teacher/--no-teacher", help="compute L2 to the teacher endpoint"),
    log: bool = typer.Option(True, "--log/--no-log", help="log an MLflow run"),
    register: bool = typer.Option(False, "--register", help="register the schedule (implies --log)"),
    tracking_uri: str | None = TrackingOpt,
    geneval_prompts: str | None = typer.Option(
        None,
        "--geneval-prompts",
        help="GenEval evaluation_metadata.jsonl: run the official GenEval "
        "evaluator on images from the --model pipeline (when installed; see README)",
    ),
    params: str = ParamsOpt,
):
    """Evaluate one schedule (FID/KID, gated adherence, L2 to the teacher, GenEval for text-to-image
    pipelines when its evaluator is installed) and log/register it in MLflow."""
    from optsteps.pipeline.config import load_params
    from optsteps.pipeline.evaluate_one import evaluate_one

    if geneval_prompts is not None and not Path(model).is_dir() and "/" not in model:
        raise OptstepsError(
            f"--geneval-prompts needs a text-to-image diffusers pipeline as --model (got {model!r}); "
            "GenEval scores prompts, the embedded digits models take class labels."
        )
    from optsteps.cli import checks

    if seed is not None:
        checks.check_seed(seed)
    if solver is not None:
        from optsteps.core.solver_spec import SolverSpec

        SolverSpec(solver)  # a known solver, or one line
    res = evaluate_one(
        load_params(params),
        model,
        schedule,
        nfe=nfe,
        solver=solver,
        n=n,
        inception_n=inception_n,
        seed=seed,
        start=start,
        guidance=guidance,
        teacher=teacher,
        log=log,
        register=register,
        tracking_uri=tracking_uri,
        geneval_prompts=geneval_prompts,
        say=lambda line: typer.echo(line, err=True),
    )
    typer.echo(json.dumps({k: v for k, v in res.metrics.items() if k != "resamples"}, indent=2))
    if res.run_id is not None:
        typer.echo(f"logged MLflow run {res.run_id} at {res.tracking_uri}")
    if res.registration is not None:
        typer.echo(registration_line(res.registration))
