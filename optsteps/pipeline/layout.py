"""Where the pipeline's outputs live: every path a stage, the CLI or a flow reads or writes, in one place.

Paths use the model's name (a slug, ``model_name``), never its folder: nothing is written inside a model's folder.
Under ``params.artifacts`` / ``params.results``:

    artifacts/identity/<model>.json           the model's content identity (``identify``)
    artifacts/models/<model>/                 an embedded model's trained weights, or a pipeline model's
                                              identity record optsteps_model.json (``prepare``)
    artifacts/trajectories/<model>/           teacher shards + manifest.json (``trajectories``)
    artifacts/cache/digests.json              weight digests cached by path, size and mtime
    results/schedules/<model>/<method>/<solver>-nfe<K>.json   optimized schedules (``lambda_opt``, ``oss``)
    results/eval/<model>.json, .md, -summary.json, -bootstrap.npz, -grids/    the evaluation (``evaluate``)
    results/metrics/<model>/<method>-<solver>.json, results/plots/<model>.csv, <model>-<metric>.png
    results/registry.json                     what ``register`` registered
"""

from __future__ import annotations

from pathlib import Path

from optsteps.models import CLASSIFIER, model_dir, model_record

METHOD_DIRS = ("lambda-opt", "oss", "gits")  # results/schedules/<model>/<method>: the optimized schedules' methods


def model_name(p, model) -> str:
    """The model's name (slug): the one every output path and registry name uses."""
    return p.entry(model).name


def model_folder(p, model) -> Path:
    """artifacts/models/<model>/ (``prepare``; an embedded model's weights)."""
    return model_dir(p.artifacts, model_name(p, model))


def model_record_path(p, model) -> Path:
    """artifacts/models/<model>/optsteps_model.json."""
    return model_record(p.artifacts, model_name(p, model))


def classifier_dir(p) -> Path:
    """artifacts/models/classifier/: the digits classifier (the embedded models' judge; not a model entry)."""
    return model_dir(p.artifacts, CLASSIFIER)


def classifier_record_path(p) -> Path:
    return model_record(p.artifacts, CLASSIFIER)


def identity_path(p, model) -> Path:
    return Path(p.artifacts) / "identity" / f"{model_name(p, model)}.json"


def digests_cache(p) -> Path:
    return Path(p.artifacts) / "cache" / "digests.json"


def trajectories_dir(p, model) -> Path:
    return Path(p.artifacts) / "trajectories" / model_name(p, model)


def schedules_dir(p, model, method: str) -> Path:
    return Path(p.results) / "schedules" / model_name(p, model) / method


def is_pipeline_output(results, path) -> bool:
    """Whether ``path`` lies in the pipeline's schedules folder ``<results>/schedules`` (the DVC stages' outputs)."""
    return Path(path).resolve().is_relative_to((Path(results) / "schedules").resolve())


def schedule_path(p, model, method: str, solver: str, nfe: int) -> Path:
    return schedules_dir(p, model, method) / f"{solver}-nfe{nfe}.json"


def eval_dir(p) -> Path:
    return Path(p.results) / "eval"


def eval_path(p, model) -> Path:
    return eval_dir(p) / f"{model_name(p, model)}.json"


def markdown_path(p, model) -> Path:
    """results/eval/<model>.md: the evaluation's tables."""
    return eval_path(p, model).with_suffix(".md")


def summary_path(p, model) -> Path:
    """results/eval/<model>-summary.json: the speedup entries (``optsteps.evaluate.speedup.speedup_table``)."""
    return eval_dir(p) / f"{model_name(p, model)}-summary.json"


def resamples_path(p, model) -> Path:
    """results/eval/<model>-bootstrap.npz: every row's bootstrap resamples (``row<i>/<metric>``), for the register
    stage's paired champion test."""
    return eval_dir(p) / f"{model_name(p, model)}-bootstrap.npz"


def grids_dir(p, model) -> Path:
    """results/eval/<model>-grids/: one PNG of samples per evaluated row (rows name it relative to ``eval_dir``)."""
    return eval_dir(p) / f"{model_name(p, model)}-grids"


def metrics_dir(p, model) -> Path:
    """results/metrics/<model>/: the DVC metrics files, one per method × solver."""
    return Path(p.results) / "metrics" / model_name(p, model)


def plots_csv(p, model) -> Path:
    return Path(p.results) / "plots" / f"{model_name(p, model)}.csv"


def plot_png(p, model, metric: str) -> Path:
    return Path(p.results) / "plots" / f"{model_name(p, model)}-{metric}.png"


def registry_path(p) -> Path:
    return Path(p.results) / "registry.json"
