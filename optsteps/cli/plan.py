"""``optsteps plan``: the bill before the work (``optsteps.pipeline.plan``); parses flags and calls ``plan``."""

from __future__ import annotations

import json

import typer

from optsteps.cli.options import ParamsOpt


def plan_command(
    params: str = ParamsOpt,
    model: str | None = typer.Option(None, "--model", help="One model (default: every models: entry)."),
    forward_ms: float | None = typer.Option(
        None,
        "--forward-ms",
        help="Milliseconds of one per-sample forward (CFG rows included); "
        "default: a short timed warm-up of the model's own forward at each stage's batch.",
    ),
    no_measure: bool = typer.Option(False, "--no-measure", help="Counts only: no warm-up, no ETA."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
):
    """Per model and stage: model forwards, network calls (CFG rows, max_batch chunks), samples, shard bytes, ETA."""
    from optsteps.pipeline.config import load_params
    from optsteps.pipeline.plan import plan

    out = plan(load_params(params), model, forward_ms=forward_ms, measure=not no_measure)
    typer.echo(json.dumps(out.to_dict(), indent=1) if as_json else out.table())
