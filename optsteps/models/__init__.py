"""Model registry: ``load_model(name)`` for ``digits``, ``digits-flow``, ``gmm`` or a diffusers pipeline (folder or
locally cached hub id; see ``pipelines.load_pipeline_model`` for the supported pipeline classes), and the model
names in one place (``EMBEDDED``, ``BUILTIN``, ``CLASSIFIER``, ``TRAINABLE``)."""
from __future__ import annotations

from pathlib import Path

import torch

from optsteps.errors import OptstepsError
from optsteps.core.noise_schedules import VPDiscrete
from optsteps.models.base import DiffusionModel

EMBEDDED = ("digits", "digits-flow")  # trained by the project (`optsteps train`), weights in artifacts/models/<name>
BUILTIN = EMBEDDED + ("gmm",)  # the noise schedule needs no weights
CLASSIFIER = "classifier"  # the digits classifier of the evaluation (artifacts/models/classifier)
TRAINABLE = EMBEDDED + (CLASSIFIER,)


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

    return DiffusionModel("gmm", ns, net, "sample", (dim,), 0, None,
                          {"model": "gmm", "sha256": f"gmm-d{dim}-k{components}-s{seed}"})


def load_model(name: str, artifacts="artifacts") -> DiffusionModel:
    if name in EMBEDDED:
        from optsteps.models.digits import load_digits_model

        return load_digits_model(name, model_dir(artifacts, name))
    if name == "gmm":
        return gmm_model()
    if "/" in name or Path(name).exists():
        if Path(name).is_dir() and not (Path(name) / "model_index.json").is_file():
            from optsteps.models.diffusers.unet2d import load_unet2d_pipeline  # a bare unet/ + scheduler/ folder

            return load_unet2d_pipeline(name)
        from optsteps.models.diffusers.pipelines import load_pipeline_model  # DDPM (pixel), Stable Diffusion (latent, CFG), SD3 (flow)

        return load_pipeline_model(name)
    raise OptstepsError(f"unknown model {name!r}; use one of {', '.join(BUILTIN)}, a diffusers pipeline folder or a hub id.")


def noise_schedule_for(name: str, artifacts="artifacts"):
    """The noise schedule of model ``name``. Built-in models (``BUILTIN``) need no weights: nothing is loaded and
    ``artifacts`` is not used; any other model is loaded (``load_model``)."""
    if name in EMBEDDED:
        from optsteps.models.digits import noise_schedule_for as digits_noise_schedule

        return digits_noise_schedule(name)
    if name == "gmm":
        return gmm_model().noise_schedule
    return load_model(name, artifacts).noise_schedule


__all__ = ["DiffusionModel", "load_model", "gmm_model", "model_dir", "noise_schedule_for", "BUILTIN", "EMBEDDED",
           "CLASSIFIER", "TRAINABLE", "torch"]
