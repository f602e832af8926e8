"""``params.yaml`` → typed config. One source of configuration for the CLI, the flows and the DVC stages.

Unknown keys and bad values raise ``OptstepsError`` naming the key and the fix.

``models:`` maps each model's name (a slug) to its entry (``optsteps.models.entries``: ``{}`` for an embedded model,
``pipeline:`` and its settings for a diffusers pipeline). ``Params.for_model(name)`` merges a model's own settings
(its ``guidance`` and ``overrides`` of teacher/trajectories/oss/lambda_opt/evaluate, typed by the same dataclasses)
into the params; every stage runs on those.

Sections that a lower layer consumes are defined next to that code and only assembled here (so nothing below
``optsteps.pipeline`` imports it): ``TrainConfig`` (``optsteps.models.digits``), ``ClassifierConfig``
(``optsteps.models.classifier``), ``TeacherConfig`` (``optsteps.teacher.config``), ``RayConfig``
(``optsteps.integrations.ray_pool``), ``OSSOptions`` (``optsteps.optimizers.oss.options``), ``LambdaOptOptions``
(``optsteps.optimizers.lambda_opt.options``), ``EvaluateOptions`` (``optsteps.evaluate.options``). Every dataclass
default equals ``params.yaml`` (tests/test_params_defaults.py).

Validation: each field's own rule lives in its dataclass field metadata and one walker checks them all
(``check_fields``, conventions in its docstring); the rules that join sections are in ``check_across``; command-line
flags reach the params through ``override``, which runs the same checks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from optsteps.core.limits import MAX_SAMPLES
from optsteps.errors import OptstepsError
from optsteps.evaluate.options import EvaluateOptions
from optsteps.integrations.ray_pool import RayConfig
from optsteps.io.limits import limit as work_limit
from optsteps.io.paths import has_credentials
from optsteps.io.readers import read_yaml
from optsteps.models.classifier import ClassifierConfig
from optsteps.models.digits import TrainConfig
from optsteps.models.entries import ModelEntry, entry_for, parse_budget, parse_entry
from optsteps.optimizers.lambda_opt.options import LambdaOptOptions
from optsteps.optimizers.oss.options import OSSOptions
from optsteps.optimizers.polish.options import PolishOptions
from optsteps.teacher.config import TeacherConfig


@dataclass(frozen=True)
class TrajectoriesConfig:
    samples: int = field(default=256, metadata={"range": (1, MAX_SAMPLES)})
    shard_size: int = field(default=128, metadata={"range": (1, MAX_SAMPLES)})


def _metric_rule(name) -> str | None:
    from optsteps.evaluate.metric_names import METRICS

    if name in METRICS or str(name).startswith("geneval_"):
        return None
    return f"champions rank by a metric the evaluation writes: {', '.join(METRICS)}"


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = ""  # empty: sqlite:///<repo>/mlruns.db with artifacts in <repo>/mlartifacts
    # what champion-nfe{K} aliases rank by, built-in models (digits); and the same for diffusers pipeline models
    metric: str = field(default="fid_teacher_digitsnet", metadata={"check": _metric_rule})
    pipeline_metric: str = field(default="fid_teacher_inception", metadata={"check": _metric_rule})
    # an http(s) tracking server must answer /health within this (else one clear error)
    timeout_s: float = field(default=10.0, metadata={"range": (0.0, 3600.0), "open": "lo"})
    # a register waits this long for another register of the same registry (the lock file) before failing
    lock_timeout_s: float = field(default=600.0, metadata={"range": (0.0, 86400.0)})


@dataclass(frozen=True)
class FlowConfig:
    """The Prefect flow. ``task_workers``: tasks run at once (threads; each task's torch uses one thread under
    ``make run``), 0 = Prefect's default pool. On a small CPU machine, as many as cores: more only adds
    GIL and cache contention."""

    task_workers: int = field(default=2, metadata={"range": (0, MAX_SAMPLES)})


PIPELINE_DEFAULTS = {  # = params.yaml pipeline_defaults (chosen from benchmarks/cost_quality.py: docs/costs.md)
    "teacher": {"steps": 50},
    "trajectories": {"samples": 32, "shard_size": 32},
    "oss": {"samples": 16, "heldout_samples": 16, "refine_radius": 1, "refine_max_evals": 40, "t_max_candidate": False},
    "evaluate": {"baseline_nfe": [], "n": 32},
}


@dataclass
class Params:
    artifacts: str = "artifacts"
    results: str = "results"
    train: dict = field(default_factory=lambda: {"digits": TrainConfig(), "digits-flow": TrainConfig()})
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    trajectories: TrajectoriesConfig = field(default_factory=TrajectoriesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    oss: OSSOptions = field(default_factory=OSSOptions)
    lambda_opt: LambdaOptOptions = field(default_factory=LambdaOptOptions)
    polish: PolishOptions = field(default_factory=PolishOptions)
    models: dict = field(default_factory=lambda: {"digits": ModelEntry("digits")})  # name → ModelEntry
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    budget: dict = field(default_factory=dict)  # every model's budget unless its entry has one (plan.budgeted)
    pipeline_defaults: dict = field(default_factory=lambda: {k: dict(v) for k, v in PIPELINE_DEFAULTS.items()})

    def entry(self, model) -> ModelEntry:
        """The ``ModelEntry`` a ``--model`` argument means (an entry's name, a built-in name, or a pipeline
        folder / hub id, which gets the matching entry or a new one named by its slug)."""
        return entry_for(model, self.models)

    def for_model(self, model) -> Params:
        """These params with the model's own settings merged in — the one place where that happens: its
        ``guidance`` (teacher.guidance and evaluate.guidance), then its ``overrides`` of teacher, trajectories, oss,
        lambda_opt and evaluate (checked when params.yaml is loaded)."""
        e = self.entry(model)
        if getattr(self, "_for_model", None) == e.name:  # already merged (e.g. by the CLI before its own flags)
            return self
        base = getattr(self, "_base", self)  # merged for another model: start again from the params themselves
        q = _merged(base, e)
        q._for_model, q._base = e.name, base
        return q

    def train_config(self, model: str) -> TrainConfig:
        if model not in self.train:
            raise OptstepsError(
                f"params.yaml has no train.{model} section; add one (keys: "
                f"{', '.join(f.name for f in dataclasses.fields(TrainConfig))})."
            )
        return self.train[model]


def param_fields(cls) -> list:
    """The fields of an options dataclass that params.yaml carries (all but those marked ``param: False``)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("param", True)]


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise OptstepsError(f"{where} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in param_fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise OptstepsError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(names)}.")
    kwargs = {}
    for k, v in data.items():
        typ = hints[k]
        if typ is int and not (isinstance(v, int) and not isinstance(v, bool)):
            raise OptstepsError(f"{where}.{k} must be an integer, got {v!r}.")
        if typ is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise OptstepsError(f"{where}.{k} must be a number, got {v!r}.")
            v = float(v)
            if not math.isfinite(v):
                raise OptstepsError(f"{where}.{k} = {v}: use a finite number (NaN and infinity are refused).")
        if typ is bool and not isinstance(v, bool):
            raise OptstepsError(f"{where}.{k} must be true or false, got {v!r}.")
        if typ is str and v is None:
            v = ""
        if typ is str and not isinstance(v, str):
            raise OptstepsError(f"{where}.{k} must be a string, got {v!r}.")
        if typ is list and not isinstance(v, list):
            raise OptstepsError(f"{where}.{k} must be a list, got {v!r}.")
        kwargs[k] = v
    return cls(**kwargs)


SECTIONS = {
    "classifier": ClassifierConfig,
    "teacher": TeacherConfig,
    "trajectories": TrajectoriesConfig,
    "ray": RayConfig,
    "oss": OSSOptions,
    "lambda_opt": LambdaOptOptions,
    "polish": PolishOptions,
    "evaluate": EvaluateOptions,
    "mlflow": MlflowConfig,
    "flow": FlowConfig,
}  # params.yaml section → its typed config (each built the same way)


def params_from_dict(d: dict) -> Params:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise OptstepsError(
            f"params.yaml must be a mapping of sections (artifacts:, teacher:, models:, …), got "
            f"{d!r:.60} ({type(d).__name__}); see the repository's params.yaml for the layout."
        )
    d = dict(d)
    bad = [k for k in d if not isinstance(k, str)]
    if bad:
        raise OptstepsError(f"params.yaml top-level keys must be section names, got {bad!r}.")
    p = Params()
    known = {f.name for f in dataclasses.fields(Params)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise OptstepsError(f"unknown top-level key(s) {unknown} in params.yaml; allowed: {sorted(known)}.")
    for key in ("artifacts", "results"):
        if key in d:
            v = d[key]
            if not isinstance(v, str) or not v.strip():
                raise OptstepsError(
                    f"params.yaml {key} must be a folder path (a non-empty string), got {v!r}; "
                    f"e.g. `{key}: {getattr(Params(), key)}`."
                )
            setattr(p, key, v)
    if "train" in d:
        if not isinstance(d["train"], dict) or not all(isinstance(k, str) for k in d["train"]):
            raise OptstepsError("params.yaml train: must map model names to training settings.")
        p.train = {name: _build(TrainConfig, v or {}, f"train.{name}") for name, v in d["train"].items()}
    for key, cls in SECTIONS.items():
        if key in d:
            setattr(p, key, _build(cls, d[key], key))
    if "budget" in d:
        p.budget = parse_budget(d["budget"], "params.yaml budget")
    if "pipeline_defaults" in d:
        raw = d["pipeline_defaults"] or {}
        if (
            not isinstance(raw, dict)
            or not all(isinstance(v, dict) for v in raw.values())
            or set(raw) - set(OVERRIDABLE)
        ):
            raise OptstepsError(
                f"params.yaml pipeline_defaults must map sections of {sorted(OVERRIDABLE)} to "
                f"settings (what every pipeline entry gets before its own overrides), got {raw!r}."
            )
        p.pipeline_defaults = raw
    if "models" in d:
        p.models = _models(d["models"])
    check_params(p)
    for name in p.models:  # every model's merged settings pass the same checks, before any work starts
        check_params(p.for_model(name), f" (models.{name} with its overrides)")
    for key, uri in (("mlflow.tracking_uri", p.mlflow.tracking_uri), ("ray.address", p.ray.address)):
        if has_credentials(uri):  # params.yaml is committed: credentials come only from the environment
            raise OptstepsError(
                f"{key} contains credentials (user[:password]@host or a token/password query "
                "parameter); keep only the host in params.yaml and set MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment."
            )
    return p


OVERRIDABLE = {
    "teacher": TeacherConfig,
    "trajectories": TrajectoriesConfig,
    "oss": OSSOptions,
    "lambda_opt": LambdaOptOptions,
    "evaluate": EvaluateOptions,
    "mlflow": MlflowConfig,
}  # per-model ``overrides`` sections (mlflow: only what the champions rank by)
_MODEL_MLFLOW_KEYS = ("metric", "pipeline_metric")


def _models(raw) -> dict:
    if isinstance(raw, list):
        raise OptstepsError(
            "params.yaml models: must map each model's name to its entry, e.g. `models: {digits: {}}` "
            "or, for your own pipeline, `sd15: {pipeline: /models/sd-v1-5}` (DVC names each model's "
            "stages by this key; a list would name them by position)."
        )
    if not isinstance(raw, dict):
        raise OptstepsError(f"params.yaml models: must be a mapping name → entry, got {raw!r}.")
    out = {}
    for name, body in raw.items():
        e = parse_entry(name, body)
        unknown = sorted(set(e.overrides) - set(OVERRIDABLE))
        if unknown:
            raise OptstepsError(
                f"params.yaml models.{name}.overrides: unknown section(s) {unknown}; a model can "
                f"override {sorted(OVERRIDABLE)}."
            )
        other = sorted(set(e.overrides.get("mlflow", {})) - set(_MODEL_MLFLOW_KEYS))
        if other:
            raise OptstepsError(
                f"params.yaml models.{name}.overrides.mlflow: {other} cannot differ per model (one "
                f"registry serves every model); a model can override {list(_MODEL_MLFLOW_KEYS)}."
            )
        out[name] = e
    return out


def _merged(p: Params, e: ModelEntry) -> Params:
    """A pipeline entry gets ``pipeline_defaults`` first, then every entry its guidance and ``overrides`` (a budget
    is applied by the stages on top: ``pipeline.plan.budgeted``)."""
    sections = {}
    for key, cls in OVERRIDABLE.items():
        sec = getattr(p, key)
        base = {f.name: copy.deepcopy(getattr(sec, f.name)) for f in param_fields(cls)}
        if e.is_pipeline:
            base.update(copy.deepcopy(p.pipeline_defaults.get(key, {})))
        if e.guidance is not None and key in ("teacher", "evaluate"):
            base["guidance"] = e.guidance
        base.update(e.overrides.get(key, {}))
        sections[key] = _build(cls, base, f"models.{e.name}.overrides.{key}")
    return dataclasses.replace(p, **sections)


def _rule_text(f: dataclasses.Field, hint, value) -> str | None:
    """The broken rule of field ``f`` for ``value`` ("use …"), or None when the value keeps every rule."""
    md = f.metadata
    items = value if isinstance(value, list) else None
    if items is not None and "items" in md:  # the rules of a list's items, written apart
        md = {**md, **md["items"]}
    if hint is float and not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        return "use a finite number (NaN and infinity are refused)"
    if md.get("nonempty"):
        what = md["nonempty"] if isinstance(md["nonempty"], str) else "a non-empty value"
        if items is not None and not items and "choices" not in md:
            return f"use {what}"
        if isinstance(value, str) and not value.strip():
            return f"use {what} (a non-empty string)" if isinstance(md["nonempty"], str) else f"use {what}"
    if "choices" in md:
        choices = md["choices"]
        if items is not None:
            if not all(isinstance(v, str) and v in choices for v in items) or (md.get("nonempty") and not items):
                return f"use a {'non-empty ' if md.get('nonempty') else ''}list of {', '.join(choices)}"
        elif not (isinstance(value, str) and value in choices):
            return f"use one of {', '.join(choices)}"
    if "range" in md and value is not None:
        lo, hi = md["range"]
        opened = md.get("open", "")
        if items is not None or hint is int or isinstance(lo, int) and isinstance(hi, (int, type(None))):
            vals = items if items is not None else [value]
            lo_i, hi_i = -math.inf if lo is None else lo, math.inf if hi is None else hi
            if not all(isinstance(v, int) and not isinstance(v, bool) and lo_i <= v <= hi_i for v in vals):
                span = f"≥ {lo}" if hi is None else f"≤ {hi:,}" if lo is None else f"in {lo} … {hi:,}"
                return f"use {'a list of integers' if items is not None else 'an integer'} {span}"
        else:
            low_ok = value > lo if opened in ("lo", "both") else value >= lo
            high_ok = value < hi if opened in ("hi", "both") else value <= hi
            if not (math.isfinite(value) and low_ok and high_ok):
                left = f"{lo:g} {'<' if opened in ('lo', 'both') else '≤'} {f.name}"
                right = "" if hi == math.inf else f" {'<' if opened in ('hi', 'both') else '≤'} {hi:g}"
                return f"use a finite number with {left}{right}"
    if "limit" in md and value is not None:
        name = md["limit"]
        top, most = max(items if items is not None else [value], default=0), work_limit(name)
        if top > most:
            return (
                f"use {'integers' if items is not None else 'an integer'} ≤ {most:,} (the work limit {name}; "
                f"raise it for one run with OPTSTEPS_{name}={top})"
            )
    if "check" in md:
        return md["check"](value)
    return None


def check_fields(obj, section: str, where: str = "", flags: dict | None = None) -> None:
    """Check every field of the options dataclass ``obj`` (params.yaml section ``section``) against the rules in its
    field metadata — the one table of field-level rules — and raise one ``OptstepsError`` naming ``section.key``, the
    value, where it came from (``where``, or the CLI flag ``flags[section.key]``), the rule and the fix.

    Conventions of the metadata (written next to each field, in the dataclass of the layer that uses it):

    - ``"range": (lo, hi)``: a number in [lo, hi] — an integer when both bounds are integers or the field is an
      ``int`` — or, for a list, every item an integer in [lo, hi]; ``None`` values are not checked; a bound of
      None: no bound on that side (integers);
    - ``"items": {…}``: the rules of a list's items, if written apart (same as putting them at the top level);
    - ``"open": "lo" | "hi" | "both"``: those bounds of a float range are strict (hi = ``math.inf``: no upper bound);
    - ``"choices": (…)``: the value, or every item of a list, is one of these strings;
    - ``"nonempty": True | "what it is"``: a list with at least one item, a string that is not blank;
    - ``"limit": NAME``: a number, or every item of a list, at most the work limit ``NAME`` of ``optsteps.io.limits``
      (raised for one run with the environment variable ``OPTSTEPS_<NAME>``);
    - ``"check": fn``: any other single-value rule; ``fn(value)`` returns the broken rule ("use …") or None;
    - ``"hint": "…"``: appended to the rule (why the bound exists, how to go beyond it);
    - ``"param": False``: a library option that params.yaml does not carry (its default stays unless a caller
      replaces it); still checked here.

    Every ``float`` field must be finite. Rules that join several fields are in ``check_across``."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        rule = _rule_text(f, hints.get(f.name), value)
        if rule is not None:
            key = f"{section}.{f.name}"
            hint = f.metadata.get("hint")
            raise OptstepsError(f"{key} = {value!r}{_origin(key, where, flags)}: {rule}{f'; {hint}' if hint else ''}.")


def _origin(key: str, where: str, flags: dict | None) -> str:
    flag = (flags or {}).get(key)
    return f" (given as {flag}){where}" if flag else where


def check_across(p: Params, where: str = "", flags: dict | None = None) -> None:
    """The rules that join fields of several sections (each field's own rules are in its metadata, ``check_fields``)."""

    def need(ok: bool, key: str, value, rule: str) -> None:
        if not ok:
            raise OptstepsError(f"{key} = {value!r}{_origin(key, where, flags)}: {rule}.")

    steps = p.teacher.steps
    bad = [k for k in p.oss.nfe if k >= steps]
    need(
        not bad,
        "oss.nfe",
        p.oss.nfe,
        f"OSS picks K of the teacher's {steps} steps, so every K must be below "
        f"teacher.steps; drop {bad} or raise teacher.steps",
    )
    need(
        p.oss.start_window == "full" or p.oss.start_window < steps,
        "oss.start_window",
        p.oss.start_window,
        f"the start window must stay below the teacher's {steps} steps (or be 'full': the whole grid)",
    )
    need(
        p.evaluate.seed != p.teacher.seed,
        "evaluate.seed",
        p.evaluate.seed,
        "equals teacher.seed; evaluation must use held-out seeds: pick another evaluate.seed",
    )
    need(
        not (p.evaluate.reference_images and not p.evaluate.inception_n),
        "evaluate.reference_images",
        p.evaluate.reference_images,
        "needs evaluate.inception_n > 0 (how many samples are compared with the folder through Inception)",
    )


def check_params(p: Params, where: str = "", flags: dict | None = None) -> None:
    """Every section's fields (``check_fields``), then the rules across sections (``check_across``)."""
    for key in SECTIONS:
        check_fields(getattr(p, key), key, where, flags)
    for name, tc in p.train.items():
        check_fields(tc, f"train.{name}", where, flags)
    check_across(p, where, flags)


def override(p: Params, values: dict, cross: bool = True) -> Params:
    """These params with command-line flags applied: ``values`` maps ``"section.key"`` to ``(flag, value)``; a value
    of None means the flag was not given (params.yaml's value stands). The result passes the same checks as
    params.yaml (an error names the flag); ``cross=False`` skips the rules across sections (e.g. when the teacher
    comes from another manifest). Merged model settings (``for_model``) are kept."""
    q = copy.copy(p)  # keeps the model merge markers of for_model
    given = {k: v for k, v in values.items() if v[1] is not None}
    for key, (_, value) in given.items():
        section, name = key.split(".")
        setattr(q, section, dataclasses.replace(getattr(q, section), **{name: value}))
    flags = {k: f"{flag} {value if not isinstance(value, list) else value[0]}" for k, (flag, value) in given.items()}
    for key in {k.split(".")[0] for k in given}:
        check_fields(getattr(q, key), key, "", flags)
    if cross:
        check_across(q, "", flags)
    return q


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (plain YAML keeps the last silently, so a
    second ``models:`` entry of the same name would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise OptstepsError(
                    f"params.yaml line {key_node.start_mark.line + 1}: {key!r} is given twice in one "
                    "mapping (e.g. two models of the same name); keep one, or rename the other."
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path="params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise OptstepsError(f"{path} not found; run from the repository root or pass --params PATH.")
    data = read_yaml(
        path, "params file", top=None, loader=_UniqueKeyLoader, fix="fix it, or start from the repository's params.yaml"
    )
    if data is None or data == {}:
        raise OptstepsError(
            f"{path} is empty: it has no sections, so nothing would say which models to optimize; "
            "copy the repository's params.yaml and edit it, or pass --params PATH to another file."
        )
    return params_from_dict(data)
