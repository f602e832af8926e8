"""The teacher states a search reads: one tensor [N + 1, S, ...], a list of shards, or a zero-argument callable
returning a fresh iterable of shards (loaded lazily), checked shard by shard."""

from __future__ import annotations

import math

import torch

from optsteps.errors import OptstepsError


class Shards:
    """Re-iterable view of the teacher states: one tensor, a list/tuple of tensors, or a callable."""

    def __init__(self, teacher, n_times: int):
        self.n_times = n_times
        if isinstance(teacher, torch.Tensor):
            self._get, self.single = (lambda: [teacher]), True
        elif isinstance(teacher, (list, tuple)):
            if not teacher:
                raise OptstepsError("no teacher shards given; pass a tensor [N + 1, S, ...] or a non-empty list.")
            self._get, self.single = (lambda: teacher), len(teacher) == 1
        elif callable(teacher):
            self._get, self.single = teacher, False
        else:
            try:
                it = iter(teacher)
            except TypeError:
                raise OptstepsError(
                    f"teacher states must be a tensor [N + 1, S, ...], a list of such shards or a callable "
                    f"returning an iterable of shards; got {type(teacher).__name__}."
                ) from None
            if it is teacher:
                raise OptstepsError(
                    "the teacher shards were given as a one-shot iterator, but the search passes over them "
                    "several times; pass a list of shards or a zero-argument callable that returns a fresh iterator."
                )
            self._get, self.single = (lambda: teacher), False
        self.feature_shape = None
        self.total = 0

    def __iter__(self):
        total = 0
        count = 0
        for shard in self._get():
            count += 1
            if not isinstance(shard, torch.Tensor):
                raise OptstepsError(
                    f"teacher shard {count - 1} is a {type(shard).__name__}, not a tensor [N + 1, S, ...]."
                )
            if shard.dim() < 3 or shard.shape[0] != self.n_times or shard.shape[1] < 1:
                raise OptstepsError(
                    f"teacher shard {count - 1} has shape {tuple(shard.shape)}, but the grid has {self.n_times} times: "
                    f"the states must be [N + 1 = {self.n_times}, S, ...] (x̄_0 the noise … x̄_N), with S ≥ 1 samples "
                    f"and at least one feature dimension."
                )
            if self.feature_shape is None:
                self.feature_shape = tuple(shard.shape[2:])
            elif tuple(shard.shape[2:]) != self.feature_shape:
                raise OptstepsError(
                    f"teacher shard {count - 1} has sample shape {tuple(shard.shape[2:])} but earlier shards have "
                    f"{self.feature_shape}; all shards must hold the same kind of samples."
                )
            total += shard.shape[1]
            yield shard
        if count == 0:
            raise OptstepsError("the teacher shards are empty; pass at least one shard [N + 1, S, ...].")
        self.total = total


def numel(shape) -> int:
    return int(math.prod(shape)) if shape else 1
