"""``params.yaml`` → typed config. One source of configuration for the CLI, the flows and the DVC stages.

Unknown keys and bad values raise ``OptstepsError`` naming the key and the fix.

``models:`` maps each model's name (a slug) to its entry (``optsteps.models.entries``: ``{}`` for an embedded model,
``pipeline:`` and its settings for a diffusers pipeline). ``Params.for_model(name)`` merges a model's own settings
(its ``guidance`` and ``overrides`` of teacher/trajectories/oss/lambda_opt/evaluate, typed by the same dataclasses)
into the params; every stage runs on those.

Sections that a lower layer consumes are defined next to that code and only assembled here (so nothing below
``optsteps.pipeline`` imports it): ``TrainConfig`` (``optsteps.models.digits``), ``ClassifierConfig``
(``optsteps.models.classifier``), ``TeacherConfig`` (``optsteps.teacher.config``), ``RayConfig``
(``optsteps.integrations.ray_pool``). Every dataclass default equals ``params.yaml`` (tests/test_params_defaults.py).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from optsteps.errors import OptstepsError
from optsteps.integrations.ray_pool import RayConfig
from optsteps.io.paths import has_credentials
from optsteps.io.readers import read_yaml
from optsteps.models.classifier import ClassifierConfig
from optsteps.models.digits import TrainConfig
from optsteps.models.entries import ModelEntry, entry_for, parse_entry
from optsteps.teacher.config import TeacherConfig


@dataclass
class TrajectoriesConfig:
    samples: int = 256
    shard_size: int = 128


@dataclass
class OSSConfig:
    """OSS/GITS distillation over the teacher shards (docs/algorithms.md §3)."""
    nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10])
    solvers: list = field(default_factory=lambda: ["unipc", "dpmpp2m"])
    samples: int = 64  # teacher samples the DP reads (the first S of the shards)
    distance: str = "state"  # state | x0
    mode: str = "batch"  # batch | per_sample
    refine: bool = True
    refine_radius: int = 4  # single moves of ±1…±radius teacher indices (0 = only pair moves; None-like: N)
    calibration: bool = False
    gits: bool = True
    start_window: int = 0  # teacher indices below t_max where the student may start (raw or scaled noise); 0 = t_max
    objective: str = "mse"  # mse | l2 (mean per-sample L2 norm): what the DP and the refinement minimise


@dataclass
class LambdaOptConfig:
    """The λ-optimizer (Xue et al. 2024; docs/algorithms.md §2)."""
    nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10])
    solvers: list = field(default_factory=lambda: ["unipc", "dpmpp2m"])
    p: float = 1.0
    error_model: str = "analytic"  # analytic | empirical


@dataclass
class EvaluateConfig:
    """Evaluation grid: every method (baselines + optimized) × solver × NFE on held-out seeds (docs/algorithms.md §7)."""
    baselines: list = field(default_factory=lambda: ["uniform-t", "uniform-lambda", "karras", "time-quadratic"])
    solvers: list = field(default_factory=lambda: ["unipc", "dpmpp2m"])
    nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10])
    baseline_nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10, 12, 15, 20])  # baselines also here (speedup)
    n: int = 1000  # generated samples per row (digitsnet FID/KID, adherence, L2 and PSNR to the teacher)
    inception_n: int = 0  # samples for fid_inception against reference_images (or the real digits); 0 = off
    teacher_inception_n: int = 0  # samples for fid_teacher_inception, built-in models (digits): off (~2-8 img/s on CPU)
    pipeline_teacher_inception_n: int = 64  # the same for diffusers pipeline models
    reference_images: str = ""  # a folder of real images for fid_inception ("" = none; digits: the real digits)
    seed: int = 1234  # held-out seed: must differ from teacher.seed (the distillation seed)
    guidance: float = 1.0
    kid_subsets: int = 10
    bootstrap: int = 200  # paired bootstrap resamples of the sample indices for the intervals; 0 = no intervals
    bootstrap_seed: int = 0
    cache_dir: str = "artifacts/cache/fid"
    threads: int = 2  # torch threads while evaluating (the stage runs alone at the end of the pipeline)
    grid_samples: int = 64  # samples in each row's grid PNG (results/eval/<model>-grids/, logged per run); 0 = none


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # empty: sqlite:///<repo>/mlruns.db with artifacts in <repo>/mlartifacts
    metric: str = "fid_teacher_digitsnet"  # what champion-nfe{K} aliases rank by, built-in models (digits)
    pipeline_metric: str = "fid_teacher_inception"  # the same for diffusers pipeline models
    timeout_s: float = 10.0  # an http(s) tracking server must answer /health within this (else one clear error)


@dataclass
class FlowConfig:
    """The Prefect flow. ``task_workers``: tasks run at once (threads; each task's torch uses one thread under
    ``make run``), 0 = Prefect's default pool. On a small CPU machine, as many as cores: more only adds
    GIL and cache contention."""
    task_workers: int = 2


@dataclass
class Params:
    artifacts: str = "artifacts"
    results: str = "results"
    train: dict = field(default_factory=lambda: {"digits": TrainConfig(), "digits-flow": TrainConfig()})
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    trajectories: TrajectoriesConfig = field(default_factory=TrajectoriesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    oss: OSSConfig = field(default_factory=OSSConfig)
    lambda_opt: LambdaOptConfig = field(default_factory=LambdaOptConfig)
    models: dict = field(default_factory=lambda: {"digits": ModelEntry("digits")})  # name → ModelEntry
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)

    def entry(self, model) -> ModelEntry:
        """The ``ModelEntry`` a ``--model`` argument means (an entry's name, a built-in name, or a pipeline
        folder / hub id, which gets the matching entry or a new one named by its slug)."""
        return entry_for(model, self.models)

    def for_model(self, model) -> "Params":
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
            raise OptstepsError(f"params.yaml has no train.{model} section; add one (keys: "
                                f"{', '.join(f.name for f in dataclasses.fields(TrainConfig))}).")
        return self.train[model]


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise OptstepsError(f"{where} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
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


SECTIONS = {"classifier": ClassifierConfig, "teacher": TeacherConfig, "trajectories": TrajectoriesConfig,
            "ray": RayConfig, "oss": OSSConfig, "lambda_opt": LambdaOptConfig, "evaluate": EvaluateConfig,
            "mlflow": MlflowConfig, "flow": FlowConfig}  # params.yaml section → its typed config (each built the same way)


def params_from_dict(d: dict) -> Params:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise OptstepsError(f"params.yaml must be a mapping of sections (artifacts:, teacher:, models:, …), got "
                            f"{d!r:.60} ({type(d).__name__}); see the repository's params.yaml for the layout.")
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
                raise OptstepsError(f"params.yaml {key} must be a folder path (a non-empty string), got {v!r}; "
                                    f"e.g. `{key}: {getattr(Params(), key)}`.")
            setattr(p, key, v)
    if "train" in d:
        if not isinstance(d["train"], dict) or not all(isinstance(k, str) for k in d["train"]):
            raise OptstepsError("params.yaml train: must map model names to training settings.")
        p.train = {name: _build(TrainConfig, v or {}, f"train.{name}") for name, v in d["train"].items()}
    for key, cls in SECTIONS.items():
        if key in d:
            setattr(p, key, _build(cls, d[key], key))
    if "models" in d:
        p.models = _models(d["models"])
    _check(p, "")
    for name in p.models:  # every model's merged settings pass the same checks, before any work starts
        _check(p.for_model(name), f" (models.{name} with its overrides)")
    for key, uri in (("mlflow.tracking_uri", p.mlflow.tracking_uri), ("ray.address", p.ray.address)):
        if has_credentials(uri):  # params.yaml is committed: credentials come only from the environment
            raise OptstepsError(f"{key} contains credentials (user[:password]@host or a token/password query "
                                "parameter); keep only the host in params.yaml and set MLFLOW_TRACKING_USERNAME / "
                                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment.")
    return p


OVERRIDABLE = {"teacher": TeacherConfig, "trajectories": TrajectoriesConfig, "oss": OSSConfig,
               "lambda_opt": LambdaOptConfig, "evaluate": EvaluateConfig,
               "mlflow": MlflowConfig}  # per-model ``overrides`` sections (mlflow: only what the champions rank by)
_MODEL_MLFLOW_KEYS = ("metric", "pipeline_metric")


def _models(raw) -> dict:
    if isinstance(raw, list):
        raise OptstepsError("params.yaml models: must map each model's name to its entry, e.g. `models: {digits: {}}` "
                            "or, for your own pipeline, `sd15: {pipeline: /models/sd-v1-5}` (DVC names each model's "
                            "stages by this key; a list would name them by position).")
    if not isinstance(raw, dict):
        raise OptstepsError(f"params.yaml models: must be a mapping name → entry, got {raw!r}.")
    out = {}
    for name, body in raw.items():
        e = parse_entry(name, body)
        unknown = sorted(set(e.overrides) - set(OVERRIDABLE))
        if unknown:
            raise OptstepsError(f"params.yaml models.{name}.overrides: unknown section(s) {unknown}; a model can "
                                f"override {sorted(OVERRIDABLE)}.")
        other = sorted(set(e.overrides.get("mlflow", {})) - set(_MODEL_MLFLOW_KEYS))
        if other:
            raise OptstepsError(f"params.yaml models.{name}.overrides.mlflow: {other} cannot differ per model (one "
                                f"registry serves every model); a model can override {list(_MODEL_MLFLOW_KEYS)}.")
        out[name] = e
    return out


def _merged(p: Params, e: ModelEntry) -> Params:
    sections = {}
    for key, cls in OVERRIDABLE.items():
        base = dataclasses.asdict(getattr(p, key))
        if e.guidance is not None and key in ("teacher", "evaluate"):
            base["guidance"] = e.guidance
        base.update(e.overrides.get(key, {}))
        sections[key] = _build(cls, base, f"models.{e.name}.overrides.{key}")
    return dataclasses.replace(p, **sections)


def _need(ok: bool, key: str, value, rule: str, where: str) -> None:
    if not ok:
        raise OptstepsError(f"{key} = {value!r}{where}: {rule}.")


def _count(p, key: str, lo: int, hi: int, where: str) -> None:
    v = _get(p, key)
    _need(lo <= v <= hi, key, v, f"use an integer in {lo} … {hi:,}", where)


def _get(p, key: str):
    v = p
    for part in key.split("."):
        v = getattr(v, part)
    return v


MAX_SAMPLES = 10_000_000
MAX_STEPS = 100_000  # teacher steps and NFE: more than any sampler takes (typos must not allocate terabytes)


def _check_values(p: Params, where: str) -> None:
    """Ranges and enums of every value (docs: README "Configuration"); one line naming the key and the fix."""
    from optsteps.core.baselines import BASELINES, parse_kind
    from optsteps.core.solver_spec import SOLVERS
    from optsteps.core.metric_names import METRICS

    for key, lo in (("trajectories.samples", 1), ("trajectories.shard_size", 1), ("oss.samples", 1),
                    ("oss.refine_radius", 0), ("oss.start_window", 0), ("evaluate.n", 1), ("evaluate.kid_subsets", 1),
                    ("evaluate.threads", 1), ("evaluate.grid_samples", 0), ("ray.actors", 1), ("ray.num_cpus", 1), ("ray.max_restarts", 0),
                    ("ray.object_store_mb", 64), ("classifier.epochs", 1), ("classifier.batch_size", 1),
                    ("classifier.threads", 1), ("flow.task_workers", 0)):
        _count(p, key, lo, MAX_SAMPLES, where)
    _count(p, "teacher.steps", 2, MAX_STEPS, where)
    _need(p.oss.start_window < p.teacher.steps, "oss.start_window", p.oss.start_window,
          f"the start window must stay below the teacher's {p.teacher.steps} steps (a few % of them)", where)
    for key in ("teacher.solver",):
        _need(_get(p, key) in SOLVERS, key, _get(p, key), f"use one of {', '.join(SOLVERS)}", where)
    for key in ("oss.solvers", "lambda_opt.solvers", "evaluate.solvers"):
        v = _get(p, key)
        _need(bool(v) and all(s in SOLVERS for s in v), key, v,
              f"use a non-empty list of {', '.join(SOLVERS)}", where)
    for key in ("oss.nfe", "lambda_opt.nfe", "evaluate.nfe", "evaluate.baseline_nfe"):
        v = _get(p, key)
        _need(all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_STEPS for k in v), key, v,
              f"use a list of integers in 1 … {MAX_STEPS:,}", where)
    bad = [k for k in p.oss.nfe if k >= p.teacher.steps]
    _need(not bad, "oss.nfe", p.oss.nfe, f"OSS picks K of the teacher's {p.teacher.steps} steps, so every K must be "
          f"below teacher.steps; drop {bad} or raise teacher.steps", where)
    for kind in p.evaluate.baselines:
        if not isinstance(kind, str) or parse_kind(kind)[0] not in BASELINES:
            raise OptstepsError(f"evaluate.baselines: {kind!r}{where} is not a baseline; use "
                                f"{', '.join(BASELINES)} (optionally KIND@start=T,state=raw).")
    if not isinstance(p.teacher.schedule, str) or parse_kind(p.teacher.schedule)[0] not in BASELINES:
        raise OptstepsError(f"teacher.schedule = {p.teacher.schedule!r}{where}: use a baseline kind "
                            f"({', '.join(BASELINES)}).")
    for key in ("mlflow.metric", "mlflow.pipeline_metric"):
        v = _get(p, key)
        _need(v in METRICS or str(v).startswith("geneval_"), key, v,
              f"champions rank by a metric the evaluation writes: {', '.join(METRICS)}", where)
    for key, lo, hi, closed in (("teacher.guidance", 0.0, 1e4, True), ("evaluate.guidance", 0.0, 1e4, True),
                                ("lambda_opt.p", 0.0, 100.0, False), ("classifier.lr", 0.0, 10.0, False),
                                ("classifier.holdout_fraction", 0.0, 1.0, False),
                                ("ray.num_gpus_per_actor", 0.0, 1024.0, True), ("ray.task_timeout_s", 0.0, 1e7, False),
                                ("mlflow.timeout_s", 0.0, 3600.0, False)):
        v = _get(p, key)
        ok = math.isfinite(v) and (lo <= v <= hi if closed else lo < v < hi or (key == "lambda_opt.p" and v == hi))
        _need(ok, key, v, f"use a finite number in {'[' if closed else '('}{lo:g}, {hi:g}{']' if closed else ')'}",
              where)
    for key in ("evaluate.cache_dir",):
        v = _get(p, key)
        _need(isinstance(v, str) and bool(v.strip()), key, v, "use a folder path (a non-empty string)", where)
    for name, tc in p.train.items():
        for k, lo in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("threads", 1)):
            v = getattr(tc, k)
            _need(lo <= v <= MAX_SAMPLES, f"train.{name}.{k}", v, f"use an integer in {lo} … {MAX_SAMPLES:,}", where)
        for k in ("lr", "grad_clip"):
            v = getattr(tc, k)
            _need(math.isfinite(v) and v > 0, f"train.{name}.{k}", v, "use a finite number > 0", where)
        v = tc.decay_fraction
        _need(0 <= v <= 1, f"train.{name}.decay_fraction", v, "use a number in [0, 1]", where)


def _check(p: Params, where: str) -> None:
    _check_values(p, where)
    if p.evaluate.seed == p.teacher.seed:
        raise OptstepsError(f"evaluate.seed = teacher.seed = {p.teacher.seed}{where}: evaluation must use held-out "
                            "seeds; pick another evaluate.seed.")
    if p.oss.distance not in ("state", "x0") or p.oss.mode not in ("batch", "per_sample"):
        raise OptstepsError("oss.distance must be 'state' or 'x0' and oss.mode 'batch' or 'per_sample'.")
    if p.oss.objective not in ("mse", "l2") or p.oss.start_window < 0:
        raise OptstepsError("oss.objective must be 'mse' or 'l2' and oss.start_window an integer ≥ 0.")
    if p.lambda_opt.error_model not in ("analytic", "empirical"):
        raise OptstepsError("lambda_opt.error_model must be 'analytic' or 'empirical'.")
    for sec in (p.oss, p.lambda_opt):
        if any((not isinstance(k, int)) or k < 1 for k in sec.nfe):
            raise OptstepsError("oss.nfe and lambda_opt.nfe must be lists of integers ≥ 1.")
    if p.teacher.steps < 2 or p.trajectories.samples < 1 or p.trajectories.shard_size < 1:
        raise OptstepsError("teacher.steps must be ≥ 2, trajectories.samples and trajectories.shard_size ≥ 1.")
    for name, tc in p.train.items():
        if tc.steps < 1 or tc.batch_size < 1 or not 0 <= tc.label_dropout < 1 or not 0 <= tc.ema < 1:
            raise OptstepsError(f"train.{name}: need steps ≥ 1, batch_size ≥ 1, 0 ≤ label_dropout < 1, 0 ≤ ema < 1.")
    if p.flow.task_workers < 0:
        raise OptstepsError(f"flow.task_workers = {p.flow.task_workers}; use a positive count or 0 for Prefect's default.")
    ev = p.evaluate
    if ev.n < 1 or any((not isinstance(k, int)) or k < 1 for k in ev.nfe + ev.baseline_nfe):
        raise OptstepsError("evaluate: need n ≥ 1 and every nfe and baseline_nfe an integer ≥ 1.")
    for key in ("inception_n", "teacher_inception_n", "pipeline_teacher_inception_n", "bootstrap"):
        if getattr(ev, key) < 0:
            raise OptstepsError(f"evaluate.{key} = {getattr(ev, key)}; use a count ≥ 0 (0 turns it off).")
    if ev.reference_images and not ev.inception_n:
        raise OptstepsError(f"evaluate.reference_images = {ev.reference_images!r} needs evaluate.inception_n > 0 "
                            "(how many samples are compared with the folder through Inception).")




class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (plain YAML keeps the last silently, so a
    second ``models:`` entry of the same name would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise OptstepsError(f"params.yaml line {key_node.start_mark.line + 1}: {key!r} is given twice in one "
                                    "mapping (e.g. two models of the same name); keep one, or rename the other.")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path="params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise OptstepsError(f"{path} not found; run from the repository root or pass --params PATH.")
    data = read_yaml(path, "params file", top=None, loader=_UniqueKeyLoader, fix="fix it, or start from the repository's params.yaml")
    return params_from_dict(data)
