"""Significance-gated champions (docs/algorithms.md §7.3): does a new version take ``champion-nfe{K}``?

A pure rule on what the registry knows at registration time: the candidate's and the champion's metric, their
evaluation ids and their bootstrap resamples of that metric.

- no champion yet: the candidate takes the alias (``first``);
- the champion comes from another evaluation (another ``evaluation_id``: other model weights, teacher, seeds,
  count, feature nets, references or bootstrap; or registered before evaluations had ids): its numbers are not
  comparable sample by sample, so the candidate takes the alias (``new_evaluation``) and later versions of the
  new evaluation are compared with it;
- a candidate without an evaluation id (logged by hand, without the evaluation's resamples) never displaces a
  champion that has one (``not_comparable``); when neither has one, the point values decide, strictly
  (``point_only``, the rule before evaluations had ids);
- same evaluation, both with resamples: the paired difference Δ = candidate − champion on the shared resamples;
  the alias moves only if Δ is better (< 0, or > 0 where higher is better) *and* its 95 % interval excludes 0
  (``significant``); a better point value whose interval includes 0 stays (``not_significant``), as does a
  worse one (``not_better``);
- same evaluation without resamples (bootstrap off): the point values decide, strictly (``point_only``).
"""
from __future__ import annotations

from dataclasses import dataclass

from optsteps.evaluate.bootstrap import CI_LEVEL, excludes_zero, higher_is_better, paired_difference


@dataclass(frozen=True)
class Decision:
    move: bool
    reason: str  # first | new_evaluation | not_comparable | significant | not_significant | not_better | point_only
    diff: float | None = None  # candidate − champion
    ci95: tuple | None = None

    @property
    def significant(self) -> bool | None:
        return None if self.ci95 is None else excludes_zero(self.ci95)


def decide(metric: str, value: float, evaluation_id: str | None, resamples,
           champion_value: float | None, champion_evaluation_id: str | None, champion_resamples,
           has_champion: bool = True, level: float = CI_LEVEL) -> Decision:
    """Whether a candidate (``value`` of ``metric``, its ``evaluation_id`` and ``resamples``) takes the alias
    from the champion (its value, evaluation id and resamples; ``has_champion`` False: none yet). See the
    module docstring for the rule."""
    if not has_champion:
        return Decision(True, "first")
    sign = -1.0 if higher_is_better(metric) else 1.0  # gain = sign · Δ < 0
    if not evaluation_id:
        if champion_evaluation_id:
            return Decision(False, "not_comparable")
        if champion_value is None:
            return Decision(True, "point_only")
        diff = float(value) - float(champion_value)
        return Decision(sign * diff < 0, "point_only", diff)
    if evaluation_id != champion_evaluation_id or champion_value is None:
        return Decision(True, "new_evaluation")
    if resamples is None or champion_resamples is None:
        diff = float(value) - float(champion_value)
        return Decision(sign * diff < 0, "point_only", diff)
    diff, ci = paired_difference(value, resamples, champion_value, champion_resamples, level)
    better = sign * diff < 0
    if better and excludes_zero(ci):
        return Decision(True, "significant", diff, ci)
    return Decision(False, "not_significant" if better or not excludes_zero(ci) else "not_better", diff, ci)


__all__ = ["Decision", "decide"]
