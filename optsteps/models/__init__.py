"""Model registry: ``load_model(name)`` for ``digits``, ``digits-flow``, ``gmm`` or a diffusers pipeline (folder or
locally cached hub id; see ``pipelines.load_pipeline_model`` for the supported pipeline classes), and the model
names (``EMBEDDED``, ``BUILTIN``, ``CLASSIFIER``, ``TRAINABLE``; ``optsteps.models.names``) and the entries of
``params.yaml`` ``models:`` (``ModelEntry``; ``optsteps.models.entries``)."""

from __future__ import annotations

from pathlib import Path

import torch

from optsteps.core.noise_schedules import VPDiscrete
from optsteps.errors import OptstepsError
from optsteps.models.base import DiffusionModel, ModelCard
from optsteps.models.entries import ModelEntry, entry_for  # noqa: F401
from optsteps.models.identity import MODEL_RECORD
from optsteps.models.names import BUILTIN, CLASSIFIER, EMBEDDED, TRAINABLE, slugify  # noqa: F401 - the names in one place


def model_record(artifacts, name: str) -> Path:
    """``artifacts/models/<name>/optsteps_model.json``: what training (or ``prepare``) wrote about the model."""
    return model_dir(artifacts, name) / MODEL_RECORD


def model_dir(artifacts, name: str) -> Path:
    return Path(artifacts) / "models" / name


def gmm_model(dim: int = 16, components: int = 4, seed: int = 0) -> DiffusionModel:
    """The analytic Gaussian-mixture model (exact x̂_0) on the linear-β VP schedule; unconditional."""
    from optsteps.models.gmm import GaussianMixture, GMMDenoiser

    ns = VPDiscrete("linear", 1e-4, 0.02, 1000)
    gmm = GaussianMixture.random(components, dim, seed=seed, spread=1.0)
    den = GMMDenoiser(gmm, ns)

    def net(x, t, cond):
        return den(x.double(), t).to(x.dtype)

    return DiffusionModel(
        "gmm", ns, net, "sample", (dim,), 0, None, {"model": "gmm", "sha256": f"gmm-d{dim}-k{components}-s{seed}"}
    )


def load_model(model, artifacts="artifacts") -> DiffusionModel:
    """The model of a ``ModelEntry`` (its settings: prompts, guidance, size, device, dtype) or of a name / folder /
    hub id (a pipeline then gets the default settings and keeps the argument as its name)."""
    if isinstance(model, ModelEntry) and model.is_pipeline:
        return _load_pipeline(model.pipeline, model, model.name)
    name = model.name if isinstance(model, ModelEntry) else str(model)
    if name in EMBEDDED:
        from optsteps.models.digits import load_digits_model

        return load_digits_model(name, model_dir(artifacts, name))
    if name == "gmm":
        return gmm_model()
    if "/" in name or Path(name).exists():
        return _load_pipeline(name, ModelEntry(slugify(name)), name)
    raise OptstepsError(
        f"unknown model {name!r}; use one of {', '.join(BUILTIN)}, a diffusers pipeline folder or a hub id."
    )


def _auto(v):
    return None if v == "auto" else v


def _load_pipeline(pipeline: str, e: ModelEntry, name: str) -> DiffusionModel:
    if Path(pipeline).is_dir() and not (Path(pipeline) / "model_index.json").is_file():
        from optsteps.models.diffusers.unet2d import load_unet2d_pipeline  # a bare unet/ + scheduler/ folder

        return load_unet2d_pipeline(pipeline, name=name, device=_auto(e.device), dtype=_auto(e.dtype))
    from optsteps.models.diffusers.pipelines import (
        load_pipeline_model,
    )  # DDPM (pixel), Stable Diffusion (latent, CFG), SD3 (flow)

    return load_pipeline_model(
        pipeline,
        prompts=e.prompts or None,
        guidance=1.0 if e.guidance is None else e.guidance,
        device=_auto(e.device),
        dtype=_auto(e.dtype),
        height=e.height,
        width=e.width,
        max_batch=e.max_batch,
        name=name,
        **e.options,
    )


def describe_model(model, artifacts="artifacts") -> ModelCard:
    """``load_model(model).identity``, noise schedule, shape and conditioning without loading any network: for a
    pipeline from its config files (and the weights' digest), for an embedded model from its optsteps_model.json."""
    if isinstance(model, ModelEntry) and model.is_pipeline:
        pipeline, name, e = model.pipeline, model.name, model
    else:
        name = model.name if isinstance(model, ModelEntry) else str(model)
        pipeline, e = (None, None) if name in BUILTIN else (name, ModelEntry(slugify(name)))
    if pipeline is None:
        if name in EMBEDDED:
            from optsteps.models.digits import describe_digits_model

            return describe_digits_model(name, model_dir(artifacts, name))
        m = gmm_model()
        return ModelCard(
            m.name, m.noise_schedule, m.prediction_type, m.sample_shape, m.num_classes, m.null_label, m.identity
        )
    if Path(pipeline).is_dir() and not (Path(pipeline) / "model_index.json").is_file():
        from optsteps.models.diffusers.unet2d import describe_unet2d

        return describe_unet2d(pipeline, name=name)
    from optsteps.models.diffusers.pipelines import describe_pipeline

    return describe_pipeline(pipeline, e.prompts or None, e.height, e.width, name=name, **e.options)


def noise_schedule_for(model, artifacts="artifacts"):
    """The noise schedule of ``model`` (a ``ModelEntry`` or a name / folder / hub id). Built-in models need no weights
    and no ``artifacts``; a pipeline's comes from its scheduler config (nothing is loaded)."""
    name = model.name if isinstance(model, ModelEntry) and not model.is_pipeline else None
    name = name or (None if isinstance(model, ModelEntry) else str(model))
    if name in EMBEDDED:
        from optsteps.models.digits import noise_schedule_for as digits_noise_schedule

        return digits_noise_schedule(name)
    if name == "gmm":
        return gmm_model().noise_schedule
    return describe_model(model, artifacts).noise_schedule


__all__ = [
    "DiffusionModel",
    "ModelCard",
    "ModelEntry",
    "entry_for",
    "load_model",
    "describe_model",
    "gmm_model",
    "model_dir",
    "model_record",
    "MODEL_RECORD",
    "noise_schedule_for",
    "slugify",
    "BUILTIN",
    "EMBEDDED",
    "CLASSIFIER",
    "TRAINABLE",
    "torch",
]
