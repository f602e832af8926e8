"""The MLflow pyfunc flavour of a logged schedule: a model folder (``MLmodel``, ``data/schedule.json``) whose
``loader_module`` is this module (``_load_pyfunc``) on the schedule JSON: no pickle.

``mlflow.pyfunc.load_model("models:/digits-unipc-schedules@champion-nfe5").predict(None)`` returns the schedule
dict; ``predict("comfyui")`` the ComfyUI sigmas; ``predict("diffusers")`` or
``predict({"format": "diffusers", "scheduler": "EulerDiscreteScheduler"})`` the diffusers kwargs.

MLflow is imported only inside ``save_schedule_model``; loading needs only this module and the schedule file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError

LOADER_MODULE = "optsteps.integrations.mlflow_pyfunc"  # recorded in every logged model's MLmodel: keep it importable
SCHEDULE_FILE = "schedule.json"
FORMATS = ("json", "diffusers", "comfyui", "comfyui-text", "a1111", "ays")


def save_schedule_model(schedule: Schedule, path) -> Path:
    """Write ``schedule`` as a pyfunc model folder at ``path`` (``MLmodel``, ``data/schedule.json``)."""
    import mlflow

    with tempfile.TemporaryDirectory() as d:
        js = Path(d) / SCHEDULE_FILE
        js.write_text(schedule.to_json() + "\n")
        mlflow.pyfunc.save_model(
            str(path), loader_module=LOADER_MODULE, data_path=str(js), pip_requirements=["optsteps", "torch", "numpy"]
        )
    return Path(path)


class SchedulePyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: the schedule JSON and its exports."""

    def __init__(self, text: str):
        self.text = text
        self.schedule = Schedule.from_json(text)

    def get_raw_model(self):
        return self

    def schedule_dict(self) -> dict:
        return json.loads(self.text)

    def comfyui_sigmas(self) -> list:
        from optsteps.integrations.diffusers.export import to_comfyui

        return to_comfyui(self.schedule)

    def diffusers_kwargs(self, scheduler: str | None = None) -> dict:
        from optsteps.integrations.diffusers.export import diffusers_export

        return diffusers_export(self.schedule, scheduler)

    def export(self, fmt: str, scheduler: str | None = None, steps: int | None = None):
        """``json`` (the schedule dict), ``diffusers`` (scheduler, kwargs, config, snapped move), ``comfyui``
        (the sigma list), ``comfyui-text`` (the same, comma-separated), ``a1111`` (the ExtraSchedulers custom list;
        ``steps``: interpolated to any step count, labelled) or ``ays`` (timesteps + sigmas ending in 0)."""
        from optsteps.integrations.diffusers.export import to_ays_pair

        if fmt == "json":
            return self.schedule_dict()
        if fmt in ("comfyui", "comfyui-text", "a1111"):
            from optsteps.integrations.diffusers.export import tool_export

            return tool_export(self.schedule, fmt, steps)
        if fmt == "ays":
            return to_ays_pair(self.schedule)
        return self.diffusers_kwargs(scheduler)

    def predict(self, model_input=None, params=None):
        return self.export(*_parse_request(model_input, params))


def _parse_request(model_input, params) -> tuple[str, str | None]:
    req = dict(params or {})
    if model_input is not None:
        if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a pandas DataFrame
            rows = model_input.to_dict(orient="records")
            model_input = rows[0] if rows else None
        if isinstance(model_input, str):
            req.setdefault("format", model_input)
        elif isinstance(model_input, dict):
            for k, v in model_input.items():
                req.setdefault(k, v)
        elif isinstance(model_input, (list, tuple)) and model_input and isinstance(model_input[0], str):
            req.setdefault("format", model_input[0])
    fmt = req.get("format") or "json"
    if fmt not in FORMATS:
        raise OptstepsError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return fmt, req.get("scheduler")


def _load_pyfunc(data_path):
    """MLflow's loader-module entry point: ``data_path`` is the model's ``data/schedule.json``."""
    p = Path(data_path)
    if p.is_dir():
        p = p / SCHEDULE_FILE
    return SchedulePyfunc(p.read_text())
