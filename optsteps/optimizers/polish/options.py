"""``PolishOptions``: the settings of the continuous polish (docs/algorithms.md §8), params.yaml ``polish:``.

Each numeric field carries its allowed range in ``metadata["range"]`` (inclusive); ``__post_init__`` checks
every field against it, so a bad value fails with one line naming the key and the range."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from optsteps.errors import OptstepsError


@dataclass(frozen=True)
class PolishOptions:
    enabled: bool = False  # the pipeline polishes OSS/GITS/λ-opt schedules (off: measured gain on digits is small)
    iterations: int = field(default=20, metadata={"range": (1, 10_000)})  # Adam steps at most
    lr: float = field(default=0.05, metadata={"range": (1e-6, 10.0)})  # Adam step on the log-gap logits
    patience: int = field(
        default=4, metadata={"range": (1, 10_000)}
    )  # stop after this many steps without a held-out gain
    micro_batch: int = field(default=0, metadata={"range": (0, 1 << 30)})  # samples per forward/backward; 0 = all
    checkpoint: bool = False  # recompute each model evaluation in the backward pass (memory O(K·state), +K−1 forwards)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = bool if f.type in (bool, "bool") else (int if f.type in (int, "int") else float)
            ok = (
                isinstance(v, bool)
                if want is bool
                else (isinstance(v, (int, float) if want is float else int) and not isinstance(v, bool))
            )
            if not ok:
                raise OptstepsError(
                    f"polish.{f.name} = {v!r}: use {'true or false' if want is bool else 'a number'}"
                    f"{' (an integer)' if want is int else ''}."
                )
            lo, hi = f.metadata.get("range", (None, None))
            if lo is not None and not lo <= v <= hi:
                raise OptstepsError(f"polish.{f.name} = {v!r} is outside [{lo}, {hi}]; use a value in that range.")
