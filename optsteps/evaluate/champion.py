"""Champions mean best (docs/algorithms.md §7.3): the standings of the versions measured in one evaluation.

A pure rule on what the registry knows: each version's value of the champion metric, its evaluation id and its
bootstrap resamples of that metric (on the evaluation's shared index matrix, so two versions pair sample by sample).

- Within one evaluation the champion is the best point value (lowest; highest where higher is better), whatever the
  order the versions were registered in; ties go to the smaller content key, so the result is a function of the set.
- The champion's tags say whether its lead over the runner-up is significant: the paired difference
  Δ = runner-up − champion on the shared resamples and its 95 % interval (``significant`` when it excludes 0);
  every other version's tags give its paired gap to the champion the same way.
- Without resamples (bootstrap off, or runs logged by hand) the point values decide and the significance is
  ``point_only``; a version alone in its evaluation is ``alone``.

Which evaluation holds the alias (a new evaluation's best takes over; versions without an evaluation id never
displace one that has one) is the registry's rule (``integrations/mlflow_registry``): numbers of two evaluations are
not comparable sample by sample, so no significance is ever computed across them.
"""

from __future__ import annotations

from dataclasses import dataclass

from optsteps.evaluate.bootstrap import CI_LEVEL, excludes_zero, higher_is_better, paired_difference


@dataclass(frozen=True)
class Entry:
    """One version of one evaluation: its content ``key``, the metric ``value`` and its ``resamples`` (or None)."""

    key: str
    value: float
    resamples: object = None


@dataclass(frozen=True)
class Standing:
    """Where one version stands. ``compared_with``: the key of the runner-up (for the champion) or of the champion
    (for the others); ``diff`` = this − compared_with; ``ci95`` its paired interval (None without resamples)."""

    key: str
    rank: int  # 1 = champion
    of: int
    compared_with: str | None = None
    diff: float | None = None
    ci95: tuple | None = None

    @property
    def champion(self) -> bool:
        return self.rank == 1

    @property
    def significance(self) -> str:
        """significant | not_significant (interval includes 0) | point_only (no resamples) | alone."""
        if self.compared_with is None:
            return "alone"
        if self.ci95 is None:
            return "point_only"
        return "significant" if excludes_zero(self.ci95) else "not_significant"


def standings(metric: str, entries: list[Entry], level: float = CI_LEVEL) -> list[Standing]:
    """The standings of ``entries`` (one evaluation) by ``metric``, best first (see the module docstring)."""
    if not entries:
        return []
    sign = -1.0 if higher_is_better(metric) else 1.0  # best = min of sign · value
    order = sorted(entries, key=lambda e: (sign * float(e.value), e.key))
    n = len(order)

    def against(a: Entry, b: Entry):
        if a.resamples is None or b.resamples is None:
            return float(a.value) - float(b.value), None
        diff, ci = paired_difference(a.value, a.resamples, b.value, b.resamples, level)
        return diff, tuple(float(v) for v in ci)

    best = order[0]
    out = []
    if n == 1:
        return [Standing(best.key, 1, 1)]
    diff, ci = against(order[1], best)  # the champion's lead: runner-up − champion
    out.append(Standing(best.key, 1, n, order[1].key, -diff, None if ci is None else (-ci[1], -ci[0])))
    for i, e in enumerate(order[1:], start=2):
        diff, ci = against(e, best)
        out.append(Standing(e.key, i, n, best.key, diff, ci))
    return out


__all__ = ["Entry", "Standing", "standings"]
