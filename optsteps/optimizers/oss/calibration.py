"""Amplitude calibration (an option of the OSS reference, docs/algorithms.md §3): per teacher index, the mean
over teacher samples of the per-sample 5 % / 95 % quantiles; the student maps each sample's quantiles of
its state affinely onto the entry of the current index right before every model evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.problem import F64
from optsteps.optimizers.oss.shards import Shards


@dataclass
class AmplitudeCalibration:
    """Per teacher index: mean over teacher samples of the per-sample low/high quantiles of the state."""

    low: torch.Tensor  # [N + 1]
    high: torch.Tensor  # [N + 1]
    q: tuple = (0.05, 0.95)

    @classmethod
    def from_teacher(cls, teacher, q=(0.05, 0.95)) -> AmplitudeCalibration:
        """Tables from teacher states (tensor [N + 1, S, ...], list of shards, or callable), shard by shard."""
        if not 0 <= q[0] < q[1] <= 1:
            raise OptstepsError(f"calibration quantiles {q} must satisfy 0 ≤ low < high ≤ 1.")
        if isinstance(teacher, torch.Tensor):
            shards = [teacher]
        elif isinstance(teacher, (list, tuple, Shards)):
            shards = teacher
        elif callable(teacher):
            shards = teacher()
        else:
            shards = teacher
        lo_sum = hi_sum = None
        count = 0
        for shard in shards:
            n1, s = shard.shape[:2]
            lo, hi = _quantiles(shard.reshape(n1 * s, -1), q)
            lo, hi = lo.reshape(n1, s).sum(1), hi.reshape(n1, s).sum(1)
            lo_sum = lo if lo_sum is None else lo_sum + lo
            hi_sum = hi if hi_sum is None else hi_sum + hi
            count += s
        if count == 0:
            raise OptstepsError("no teacher samples to calibrate from.")
        return cls(lo_sum / count, hi_sum / count, tuple(q))

    def apply(self, x: torch.Tensor, index) -> torch.Tensor:
        """Map each sample's (q_low, q_high) onto the table entry of its teacher index (int or [B] tensor)."""
        b = x.shape[0]
        index = torch.as_tensor(index, dtype=torch.long).expand(b)
        lo, hi = _quantiles(x.reshape(b, -1), self.q)
        t_lo, t_hi = self.low[index], self.high[index]
        span = hi - lo
        scale = torch.where(
            span > 0, (t_hi - t_lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(span)
        )
        shift = t_lo - scale * lo
        shape = (b,) + (1,) * (x.dim() - 1)
        return (scale.reshape(shape) * x.to(F64) + shift.reshape(shape)).to(x.dtype)


def _quantiles(flat: torch.Tensor, q) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise quantiles of a [B, F] tensor, chunked below torch.quantile's size limit."""
    qs = torch.tensor(q, dtype=F64)
    rows = max(1, (1 << 23) // max(1, flat.shape[1]))
    out = [torch.quantile(flat[a : a + rows].to(F64), qs, dim=1) for a in range(0, flat.shape[0], rows)]
    out = torch.cat(out, dim=1)
    return out[0], out[1]
