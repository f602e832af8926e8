"""The monotone parametrisation of a schedule's interior times (docs/algorithms.md §8.1).

t_0 and t_K stay fixed; the K gaps g_k = t_k − t_{k+1} > 0 are (t_0 − t_K)·softmax(θ)_k, so for any θ ∈ R^K

    t_i = t_0 − (t_0 − t_K) Σ_{k<i} softmax(θ)_k,   i = 1 … K − 1,

is strictly descending between the fixed ends. θ_k = log g_k is one preimage (softmax is shift-invariant).
"""

from __future__ import annotations

import torch


def logits_of_times(t) -> torch.Tensor:
    """θ_k = log(t_k − t_{k+1}) (float64 [K]), a preimage of the times under ``times_of_logits``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.log(t[:-1] - t[1:])


def times_of_logits(theta: torch.Tensor, t0: float, t_end: float) -> list:
    """[t_0, t_1(θ), …, t_{K−1}(θ), t_K] as 0-dim float64 tensors; the ends are the given floats exactly and carry
    no gradient, the interior t_i = t_0 − (t_0 − t_K)·cumsum(softmax(θ))_{i−1}."""
    frac = torch.cumsum(torch.softmax(theta, 0), 0)[:-1]
    inner = t0 - (t0 - t_end) * frac
    ends = [torch.tensor(float(v), dtype=torch.float64) for v in (t0, t_end)]
    return [ends[0], *inner.unbind(0), ends[1]]
