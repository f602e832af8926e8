"""The continuous polish (docs/algorithms.md §8): a schedule's interior times moved off the teacher grid by
gradient descent of the student's final error to the teacher endpoints (cf. LD3, Tong et al. 2025), through the
library's own samplers, early-stopped on held-out samples and never worse there than its start.

- ``times``: the monotone parametrisation t(θ) (softmax gaps in t between the fixed ends);
- ``options``: ``PolishOptions`` (params.yaml ``polish:``);
- ``polish``: ``polish_schedule`` → ``PolishResult`` (the schedule, its before/after errors, exact forward and
  backward counts), ``split_sum_squares`` (the loss, micro-batched, optionally checkpointed per evaluation).
"""

from optsteps.optimizers.polish.options import PolishOptions
from optsteps.optimizers.polish.polish import (
    DenoiserFor,
    PolishResult,
    Split,
    evaluations,
    polish_schedule,
    split_sum_squares,
)
from optsteps.optimizers.polish.times import logits_of_times, times_of_logits

__all__ = [
    "DenoiserFor",
    "PolishOptions",
    "PolishResult",
    "Split",
    "evaluations",
    "logits_of_times",
    "polish_schedule",
    "split_sum_squares",
    "times_of_logits",
]
