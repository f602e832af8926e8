"""``optsteps apply``: one image from the user's own diffusers pipeline on an optsteps schedule.

Mounted by ``optsteps.cli.main`` with ``app.command("apply")(apply_command)``; the work is done by
``optsteps.integrations.diffusers.apply_schedule``.
"""

from __future__ import annotations

import typer


def apply_command(
    pipeline: str = typer.Option(..., "--pipeline", help="diffusers pipeline folder or a hub id in the local cache"),
    schedule: str = typer.Option(
        ..., "--schedule", help="schedule JSON file, or NAME@ALIAS / NAME/VERSION from the registry"
    ),
    prompt: str = typer.Option("", "--prompt", help="text prompt (ignored by unconditional pipelines)"),
    out: str = typer.Option("img.png", "--out", help="output PNG"),
    seed: int = typer.Option(0, "--seed", help="optsteps noise seed (sample 0 of this seed)"),
    guidance: float | None = typer.Option(None, "--guidance", help="CFG scale (default: the pipeline's own)"),
    scheduler: str = typer.Option(
        "auto",
        "--scheduler",
        help="auto (= optsteps: the measured solver, exact times) | dpmsolver | euler | flowmatch | unipc | native",
    ),
    device: str | None = typer.Option(None, "--device", help="default: cuda if available, else cpu"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | float16 | bfloat16 (default by device)"),
    height: int | None = typer.Option(None, "--height"),
    width: int | None = typer.Option(None, "--width"),
    num_frames: int | None = typer.Option(
        None,
        "--num-frames",
        help="video pipelines (Wan): frames (default the pipeline's); the video is written as one PNG frame strip",
    ),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="registry (MLflow) URI for NAME@ALIAS"),
):
    """Generate one image with your own diffusers pipeline on an optsteps schedule."""
    from optsteps.cli import checks
    from optsteps.integrations.diffusers import apply_schedule
    from optsteps.integrations.schedule_refs import resolve_schedule
    from optsteps.models.diffusers.hub import resolve_pipeline

    checks.check_seed(seed)  # the checks of `sample`, before the pipeline loads
    checks.check_png("--out", out)
    if guidance is not None:
        checks.check_float("--guidance", guidance)
    checks.check_device(device)
    checks.check_pipeline_call(resolve_pipeline(pipeline), height, width, num_frames)
    s = resolve_schedule(schedule, tracking_uri)
    extra = {"num_frames": num_frames} if num_frames else {}
    info = apply_schedule(pipeline, s, prompt, out, seed, guidance, scheduler, device, dtype, height, width, **extra)
    if info.get("changes"):
        typer.echo(f"note: {info['changes']}")
    typer.echo(
        f"wrote {info['out']} ({info['size'][0]}×{info['size'][1]}, {info['scheduler']}, NFE {info['nfe']}, "
        f"{info['model_calls']} model calls, first timestep {info['timesteps'][0]:.6g})"
    )
