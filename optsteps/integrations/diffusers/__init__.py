"""optsteps schedules in diffusers pipelines: one entry point for running, exporting and planning.

- ``apply_schedule`` / ``generate`` / ``pipeline_prompt_sampler`` (``apply``): run a user's own pipeline on a
  schedule (``optsteps apply``).
- ``diffusers_export`` and the other tools' formats (``export``): what ``registry export`` writes.
- ``plan_scheduler`` (``plan``): which scheduler runs a schedule on a pipeline — by default ``OptstepsScheduler``
  (``scheduler``), the schedule's own solver at its exact times.

The modules import diffusers lazily where they can; ``OptstepsScheduler`` needs it (imported on first use).
"""

from __future__ import annotations

from optsteps.integrations.diffusers.apply import apply_schedule, generate, pipeline_prompt_sampler
from optsteps.integrations.diffusers.export import diffusers_export, to_comfyui, to_comfyui_text, to_diffusers
from optsteps.integrations.diffusers.plan import plan_scheduler


def __getattr__(name):
    if name == "OptstepsScheduler":
        from optsteps.integrations.diffusers.scheduler import OptstepsScheduler

        return OptstepsScheduler
    raise AttributeError(name)


__all__ = [
    "OptstepsScheduler",
    "apply_schedule",
    "diffusers_export",
    "generate",
    "pipeline_prompt_sampler",
    "plan_scheduler",
    "to_comfyui",
    "to_comfyui_text",
    "to_diffusers",
]
