"""The options of the evaluation (``params.yaml`` section ``evaluate`` plus the sampler's knobs), next to it;
assembled by ``optsteps.pipeline.config``. Field metadata are the validation rules (``pipeline.config.check_fields``;
``param: False`` marks a library option that params.yaml does not carry)."""

from __future__ import annotations

from dataclasses import dataclass, field

from optsteps.core.limits import MAX_GUIDANCE, MAX_SAMPLES, MAX_STEPS, baseline_kind_rule
from optsteps.core.solver_spec import SOLVERS

COUNT = {"range": (0, MAX_SAMPLES)}  # a sample count where 0 turns the metric off
LIB = {"param": False}


@dataclass(frozen=True)
class EvaluateOptions:
    """Evaluation grid: every method (baselines + optimized) × solver × NFE on held-out seeds (docs/algorithms.md §7).
    Library options: ``start`` (the first sample index: sample i uses noise (seed, start + i)), ``batch_size`` (samples
    per sampler batch), ``progress`` (progress bars)."""

    baselines: list = field(
        default_factory=lambda: ["uniform-t", "uniform-lambda", "karras", "time-quadratic"],
        metadata={"check": baseline_kind_rule},
    )
    solvers: list = field(default_factory=lambda: ["unipc", "dpmpp2m"], metadata={"choices": SOLVERS, "nonempty": True})
    nfe: list = field(default_factory=lambda: [4, 5, 6, 8, 10], metadata={"range": (1, MAX_STEPS)})
    baseline_nfe: list = field(
        default_factory=lambda: [4, 5, 6, 8, 10, 12, 15, 20],  # baselines also here (speedup)
        metadata={"range": (1, MAX_STEPS)},
    )
    n: int = field(default=1000, metadata={"range": (1, MAX_SAMPLES)})  # generated samples per row
    inception_n: int = field(default=0, metadata=COUNT)  # samples for fid_inception against reference_images; 0 = off
    teacher_inception_n: int = field(default=0, metadata=COUNT)  # fid_teacher_inception, built-in models: off
    pipeline_teacher_inception_n: int = field(default=64, metadata=COUNT)  # the same for diffusers pipeline models
    reference_images: str = ""  # a folder of real images for fid_inception ("" = none; digits: the real digits)
    seed: int = 1234  # held-out seed: must differ from teacher.seed (the distillation seed)
    guidance: float = field(default=1.0, metadata={"range": (0.0, MAX_GUIDANCE)})
    kid_subsets: int = field(default=10, metadata={"range": (1, MAX_SAMPLES)})
    bootstrap: int = field(default=200, metadata=COUNT)  # paired bootstrap resamples for the intervals; 0 = none
    bootstrap_seed: int = 0
    cache_dir: str = field(default="artifacts/cache/fid", metadata={"nonempty": "a folder path"})
    threads: int = field(default=2, metadata={"range": (1, MAX_SAMPLES)})  # torch threads while evaluating
    grid_samples: int = field(default=64, metadata=COUNT)  # samples in each row's grid PNG; 0 = none
    start: int = field(default=0, metadata={**LIB, "range": (0, MAX_SAMPLES)})
    batch_size: int = field(default=500, metadata={**LIB, "range": (1, MAX_SAMPLES)})
    progress: bool = field(default=False, metadata=LIB)


__all__ = ["EvaluateOptions"]
