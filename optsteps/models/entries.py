"""A model of the pipeline: one entry of ``params.yaml`` ``models:`` (name → settings), or a ``--model`` argument.

    models:
      digits: {}                         # an embedded model (digits, digits-flow) or the analytic gmm
      sd15:                              # the slug: every output path, DVC stage and registry name uses it
        pipeline: /models/sd-v1-5        # a diffusers folder, or a hub id already in the local cache
        prompts: prompts/coco-500.txt    # text (one a line) or GenEval's evaluation_metadata.jsonl
        guidance: 7.5                    # the teacher's and the evaluation's CFG scale for this model
        height: 512
        width: 512
        dtype: auto                      # auto | float32 | float16 | bfloat16
        device: auto                     # auto | cpu | cuda (cuda:N)
        overrides: {lambda_opt: {p: 2}}  # per-model teacher/trajectories/oss/lambda_opt/evaluate settings
        options: {max_sequence_length: 256}  # the pipeline's own options (SD3: max_sequence_length; FLUX: also
                                         # negative_prompt, true_cfg_scale; Wan: num_frames, negative_prompt)

``parse_entry`` checks an entry before any work starts: unknown keys, a pipeline folder (or cached hub id) that
is missing or not a supported diffusers pipeline, a missing or empty prompt file, settings that the pipeline
cannot take; each error names the key and the fix. Relative paths are relative to the working directory (the
repository root, like ``artifacts``). ``overrides`` is only checked to be a mapping here: its sections are the
pipeline layer's (``optsteps.pipeline.config``), which validates and merges them.

Nothing is ever written inside a model's folder: outputs live under ``artifacts/…/<name>`` and
``results/…/<name>``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.models.names import BUILTIN, CLASSIFIER, EMBEDDED, RESERVED, is_slug, slug_for_pipeline, slugify

DTYPES = ("auto", "float32", "float16", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PIPELINE_KEYS = ("pipeline", "prompts", "height", "width", "dtype", "device", "max_batch", "options")
KEYS = PIPELINE_KEYS + ("guidance", "overrides", "budget")
BUDGET_KEYS = ("forwards", "gpu_hours", "forward_ms")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the pipeline. ``pipeline`` empty: an embedded/built-in model (``name`` is its name)."""

    name: str
    pipeline: str = ""
    prompts: str = ""  # "" = the default prompt list (text pipelines)
    guidance: float | None = None  # None: teacher.guidance / evaluate.guidance of params.yaml
    height: int | None = None
    width: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_batch: int = 16  # rows per network call (text pipelines)
    overrides: dict = field(default_factory=dict, hash=False)  # {section: {key: value}}, checked by the pipeline layer
    options: dict = field(default_factory=dict, hash=False)  # the pipeline's own options (``PIPELINE_OPTIONS``)
    budget: dict = field(default_factory=dict, hash=False)  # {forwards: N} | {gpu_hours: H, forward_ms: X} (plan)

    @property
    def is_pipeline(self) -> bool:
        return bool(self.pipeline)

    @property
    def is_embedded(self) -> bool:
        return self.name in EMBEDDED and not self.pipeline

    def as_param(self) -> dict:
        """The entry as ``params.yaml`` writes it (only the keys that differ from the defaults)."""
        default = ModelEntry(self.name)
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "name" and getattr(self, f.name) != getattr(default, f.name)
        }


def _where(name, key=None) -> str:
    return f"params.yaml models.{name}" + (f".{key}" if key else "")


def parse_entry(name, raw) -> ModelEntry:
    """The checked ``ModelEntry`` of ``models.<name>: raw`` (raw: a mapping, or empty for a built-in model)."""
    if not is_slug(name):
        raise OptstepsError(
            f"{_where(name)}: {name!r} is not a model name (a slug: lower-case letters, digits, "
            f"'-' and '_'); call it {slugify(str(name))!r}."
        )
    if name == CLASSIFIER:
        raise OptstepsError(
            f"{_where(name)}: 'classifier' is the digits judge of the evaluation, not a model to "
            "optimize; remove it from models: (it is trained when a digits model is evaluated)."
        )
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise OptstepsError(f"{_where(name)} must be a mapping of settings ({{}} for an embedded model), got {raw!r}.")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise OptstepsError(f"{_where(name)}: unknown key(s) {unknown}; allowed: {sorted(KEYS)}.")
    if "pipeline" not in raw:
        if name not in BUILTIN:
            raise OptstepsError(
                f"{_where(name)}: {name!r} is not an embedded model ({', '.join(BUILTIN)}); for your "
                "own diffusers model add `pipeline: FOLDER_OR_HUB_ID` to the entry."
            )
        extra = sorted(set(raw) & set(PIPELINE_KEYS))
        if extra:
            raise OptstepsError(
                f"{_where(name)}: {extra} apply to diffusers pipelines only; {name!r} is embedded "
                "(remove them, or add `pipeline:` under another name)."
            )
        return ModelEntry(
            name,
            guidance=_number(name, raw, "guidance"),
            overrides=_overrides(name, raw),
            budget=parse_budget(raw.get("budget"), _where(name, "budget")),
        )
    if name in RESERVED:
        raise OptstepsError(
            f"{_where(name)}: {name!r} is the name of a built-in model; give your pipeline "
            "another name (e.g. its folder's name)."
        )
    pipeline = raw["pipeline"]
    if not isinstance(pipeline, str) or not pipeline.strip():
        raise OptstepsError(
            f"{_where(name, 'pipeline')} must be a diffusers pipeline folder or a hub id, got {pipeline!r}."
        )
    entry = ModelEntry(
        name,
        pipeline=pipeline,
        prompts=_string(name, raw, "prompts"),
        guidance=_number(name, raw, "guidance"),
        height=_positive(name, raw, "height"),
        width=_positive(name, raw, "width"),
        dtype=_choice(name, raw, "dtype", DTYPES),
        device=_device(name, raw),
        max_batch=_positive(name, raw, "max_batch") or 16,
        overrides=_overrides(name, raw),
        options=_options(name, raw),
        budget=parse_budget(raw.get("budget"), _where(name, "budget")),
    )
    check_pipeline_entry(entry)
    return entry


def check_pipeline_entry(entry: ModelEntry) -> None:
    """The pipeline is on disk and supported, and its settings fit it (prompts, size, guidance, dtype)."""
    from optsteps.models.diffusers.hub import pick_dtype, pipeline_class_name, resolve_pipeline
    from optsteps.models.diffusers.pipelines import PIPELINE_OPTIONS, SUPPORTED, TEXT_PIPELINES, describe_pipeline
    from optsteps.models.diffusers.prompts import load_prompts

    name = entry.name
    try:
        root = resolve_pipeline(entry.pipeline)
        cls_name = pipeline_class_name(root)
    except OptstepsError as e:
        raise OptstepsError(f"{_where(name, 'pipeline')}: {e}") from None
    if cls_name not in SUPPORTED:
        raise OptstepsError(
            f"{_where(name, 'pipeline')}: {entry.pipeline} is a {cls_name} (model_index.json "
            f"_class_name); optsteps supports {', '.join(SUPPORTED)}. Point it at one of those."
        )
    text = cls_name in TEXT_PIPELINES
    allowed = PIPELINE_OPTIONS.get(TEXT_PIPELINES.get(cls_name), ())
    unknown = sorted(set(entry.options) - set(allowed))
    if unknown:
        raise OptstepsError(
            f"{_where(name, 'options')}: {unknown} are not options of a {cls_name}; "
            + (f"it takes {list(allowed)}." if allowed else "it takes none (remove options).")
        )
    if not text:
        given = [k for k in ("prompts", "height", "width") if getattr(entry, k)]
        if given:
            raise OptstepsError(f"{_where(name)}: {cls_name} is unconditional with a fixed image size; remove {given}.")
        if entry.guidance not in (None, 1.0):
            raise OptstepsError(
                f"{_where(name, 'guidance')}: {cls_name} has no null condition for classifier-free "
                "guidance; remove guidance (or set it to 1)."
            )
    if entry.prompts:
        try:
            load_prompts(entry.prompts)
        except OptstepsError as e:
            raise OptstepsError(f"{_where(name, 'prompts')}: {e}") from None
    if entry.dtype != "auto" and entry.device == "cpu":
        try:
            pick_dtype("cpu", "unet2d", entry.dtype)
        except OptstepsError as e:
            raise OptstepsError(f"{_where(name, 'dtype')}: {e}") from None
    if text and (entry.height or entry.width or entry.options):
        try:
            describe_pipeline(root, entry.prompts or None, entry.height, entry.width, name=name, **entry.options)
        except OptstepsError as e:
            keys = [k for k in ("height", "width") if getattr(entry, k)] + (["options"] if entry.options else [])
            raise OptstepsError(f"{_where(name)} {'/'.join(keys)}: {e}") from None


def _string(name, raw, key) -> str:
    v = raw.get(key, "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise OptstepsError(f"{_where(name, key)} must be a path, got {v!r}.")
    return v


def _number(name, raw, key):
    v = raw.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise OptstepsError(f"{_where(name, key)} must be a number ≥ 0 (the CFG scale; 1 = no guidance), got {v!r}.")
    return float(v)


def _positive(name, raw, key):
    v = raw.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise OptstepsError(f"{_where(name, key)} must be a positive integer, got {v!r}.")
    return v


def _choice(name, raw, key, choices) -> str:
    v = raw.get(key, "auto")
    if v not in choices:
        raise OptstepsError(f"{_where(name, key)} must be one of {', '.join(choices)}, got {v!r}.")
    return v


def _device(name, raw) -> str:
    v = raw.get("device", "auto")
    if not isinstance(v, str) or not _DEVICE.match(v):
        raise OptstepsError(f"{_where(name, 'device')} must be auto, cpu or cuda (cuda:N), got {v!r}.")
    return v


def _options(name, raw) -> dict:
    v = raw.get("options") or {}
    if not isinstance(v, dict):
        raise OptstepsError(
            f"{_where(name, 'options')} must map option names to values, e.g. "
            "{max_sequence_length: 256}, got " + repr(v) + "."
        )
    for k, x in v.items():
        if k in ("max_sequence_length", "num_frames") and (isinstance(x, bool) or not isinstance(x, int) or x < 1):
            raise OptstepsError(f"{_where(name, 'options.' + str(k))} must be a positive integer, got {x!r}.")
        if k == "true_cfg_scale" and (isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 1):
            raise OptstepsError(f"{_where(name, 'options.true_cfg_scale')} must be a number ≥ 1, got {x!r}.")
        if k == "negative_prompt" and not isinstance(x, str):
            raise OptstepsError(f"{_where(name, 'options.negative_prompt')} must be a string, got {x!r}.")
    return dict(v)


def parse_budget(raw, where: str) -> dict:
    """A checked budget: ``{}`` (none), ``{forwards: N}`` (per-sample model forwards of the model's stages) or
    ``{gpu_hours: H, forward_ms: X}`` (X: ms of one per-sample forward; ``optsteps plan`` measures it)."""
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, dict) or sorted(raw) not in (["forwards"], ["forward_ms", "gpu_hours"]):
        raise OptstepsError(
            f"{where} must be {{forwards: N}} or {{gpu_hours: H, forward_ms: X}} (X: ms per "
            f"per-sample forward, e.g. from `optsteps plan`), got {raw!r}."
        )
    for k, v in raw.items():
        ok = not isinstance(v, bool) and (isinstance(v, int) if k == "forwards" else isinstance(v, (int, float)))
        if not ok or not 0 < v < float("inf"):
            raise OptstepsError(
                f"{where}.{k} must be a positive {'integer' if k == 'forwards' else 'number'}, got {v!r}."
            )
    return dict(raw)


def _overrides(name, raw) -> dict:
    v = raw.get("overrides") or {}
    if not isinstance(v, dict) or not all(isinstance(b, dict) for b in v.values()):
        raise OptstepsError(
            f"{_where(name, 'overrides')} must map sections to settings, e.g. "
            "{lambda_opt: {p: 2}}, got " + repr(v) + "."
        )
    return v


def entry_for(model, entries: dict) -> ModelEntry:
    """The entry a ``--model`` argument means: an entry's name, an embedded/built-in name, or a pipeline folder /
    hub id (the entry whose ``pipeline`` is the same folder, else a new entry named ``slug_for_pipeline``)."""
    if isinstance(model, ModelEntry):
        return model
    model = str(model)
    if model in entries:
        return entries[model]
    if model in BUILTIN:
        return ModelEntry(model)
    if model == CLASSIFIER:
        raise OptstepsError("'classifier' is the digits judge of the evaluation; pass a model (e.g. digits).")
    target = _same_pipeline_key(model)
    for e in entries.values():
        if e.is_pipeline and _same_pipeline_key(e.pipeline) == target:
            return e
    if "/" in model or Path(model).exists():
        slug = slug_for_pipeline(model)
        if slug in RESERVED or slug in entries:  # its outputs would overwrite (or delete) that model's
            other = "a built-in model" if slug in RESERVED else "another models: entry in params.yaml"
            raise OptstepsError(
                f"--model {model}: its name {slug!r} (from the folder's name) is {other}, whose outputs "
                f"it would overwrite; add it to params.yaml models: under another name (e.g. "
                f"`{slug}-pipeline: {{pipeline: {model}}}`) and pass that name."
            )
        return ModelEntry(slug, pipeline=model)
    raise OptstepsError(
        f"unknown model {model!r}; use a name of params.yaml models: ({', '.join(entries) or 'none'}), "
        f"one of {', '.join(BUILTIN)}, a diffusers pipeline folder or a hub id in the local cache."
    )


def _same_pipeline_key(pipeline: str) -> str:
    p = Path(pipeline).expanduser()
    return str(p.resolve()) if p.exists() else str(pipeline)
