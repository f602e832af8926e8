"""Resolving a ``--schedule`` argument: a schedule JSON file, or a reference into the MLflow schedule registry."""

from __future__ import annotations

import re
from pathlib import Path

from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.io.paths import redact


def resolve_schedule(ref: str, tracking_uri: str | None = None) -> Schedule:
    """A schedule JSON file, or ``NAME@ALIAS`` / ``NAME/VERSION`` / ``models:/…`` from the schedule registry
    (``optsteps.integrations.mlflow_registry.Registry``; ``tracking_uri`` defaults to sqlite:///<cwd>/mlruns.db)."""
    p = Path(ref)
    if p.is_file() or ref.endswith(".json"):
        return Schedule.load(p)
    if "@" in ref or ref.startswith("models:/") or re.fullmatch(r"[^/\s]+/\d+", ref):
        from optsteps.integrations.mlflow_registry import Registry, default_tracking_uri

        uri = tracking_uri or default_tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
            raise OptstepsError(
                f"{ref!r} names a registered schedule, but there is no schedule registry at {redact(uri)}; "
                "run `optsteps stage register` (or `make run`) first, or pass --tracking-uri."
            )
        try:
            reg = Registry(tracking_uri, create=False)
        except ImportError as e:
            raise OptstepsError(
                f"{ref!r} names a registered schedule, but the registry needs MLflow ({e}); "
                "`pip install mlflow`, or pass a schedule JSON file."
            ) from None
        return reg.load_schedule(ref)
    raise OptstepsError(
        f"--schedule {ref!r} is neither a schedule JSON file nor a registry reference; pass a file "
        "written by `optsteps schedule … --json` or NAME@ALIAS (e.g. digits-unipc-schedules@"
        "champion-nfe5)."
    )
