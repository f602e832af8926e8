"""Prompt lists for text-to-image pipelines: a prompt file (GenEval's ``evaluation_metadata.jsonl``, any ``.jsonl``
or plain text) or the default prompts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.readers import read_text

# Used only when no prompt file is configured; recorded in the model identity like any other prompt list.
DEFAULT_PROMPTS = (
    "a photo of a cat",
    "a photo of a red apple on a wooden table",
    "a watercolor painting of a lighthouse at sunset",
    "a photo of two dogs playing in the snow",
)


def load_prompts(path) -> list[str]:
    """Prompts from a file: GenEval's ``evaluation_metadata.jsonl`` (or any ``.jsonl`` whose lines are objects
    with a "prompt" field, or JSON strings), else plain text with one prompt a line (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise OptstepsError(
            f"prompt file {p} not found; pass a text file (one prompt a line) or GenEval's "
            "prompts/evaluation_metadata.jsonl."
        )
    lines = read_text(
        p, "prompt file", fix="write one prompt a line (or GenEval's evaluation_metadata.jsonl)"
    ).splitlines()
    prompts = []
    if p.suffix == ".jsonl":
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                raise OptstepsError(
                    f"{p}:{i} is not JSON ({e}); a .jsonl prompt file needs one JSON object a line "
                    "(GenEval's format) or rename it to .txt for one plain prompt a line."
                ) from None
            if isinstance(row, str):
                prompts.append(row)
            elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
                prompts.append(row["prompt"])
            else:
                raise OptstepsError(
                    f"{p}:{i} has no string field 'prompt'; use GenEval's evaluation_metadata.jsonl "
                    'format ({"prompt": ...}).'
                )
    else:
        prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise OptstepsError(f"{p} holds no prompts; write one prompt a line.")
    return prompts


def resolve_prompts(prompts) -> list[str]:
    """The prompt list: ``DEFAULT_PROMPTS`` for None, a prompt file's prompts (``load_prompts``), or the given list."""
    if prompts is None:
        return list(DEFAULT_PROMPTS)
    if isinstance(prompts, (str, os.PathLike)):
        return load_prompts(prompts)
    out = [str(s) for s in prompts]
    if not out:
        raise OptstepsError("the prompt list is empty; pass at least one prompt or a prompt file.")
    return out
