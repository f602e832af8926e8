"""The choice between candidate schedules by their error on held-out teacher samples (docs/algorithms.md §3.7).

A search fits its distillation samples; the schedule that is best on them need not be best on other noise (on the
VP digits model a K = 5 schedule's held-out MSE was about 3× its distillation MSE). So every candidate a search
produces — the DP's path, the refined path, the start searched or held at t_max, a polished one — is scored on a
split of the teacher shards it never saw (samples [S, S + H), not the evaluation seeds), and the lowest held-out
MSE wins; the first candidate wins a tie, so the order says which is preferred. The record written into the
schedule (``extra["heldout"]``) holds every candidate's distillation and held-out MSE and the chosen one's gap.

heldout MSE(s) = Σ_i ‖x_K^(s)(ε_i) − x̄_N(ε_i)‖² / (H · D)   (the student from ε_i's start state, ``initial_state``)
"""

from __future__ import annotations

import math

from optsteps.core.schedule import Schedule
from optsteps.errors import NonFiniteError, OptstepsError
from optsteps.optimizers.polish.polish import DenoiserFor, Split, split_sum_squares


def heldout_mse(schedule: Schedule, denoiser_for: DenoiserFor, split: Split, micro_batch: int = 0) -> float:
    """MSE per element of the student's final states to the teacher endpoints of ``split`` (K evaluations per
    sample, ``schedule.nfe``)."""
    return split_sum_squares(denoiser_for, schedule, Split.of(split), micro_batch) / split.target.numel()


def heldout_evaluations(nfes) -> int:
    """Model evaluations per held-out sample of ``choose_by_heldout`` over candidates of these NFE: Σ K."""
    return int(sum(nfes))


def choose_by_heldout(candidates, denoiser_for: DenoiserFor, heldout: Split, micro_batch: int = 0) -> Schedule:
    """The candidate with the lowest held-out MSE, with ``extra["heldout"]`` = {samples, chosen, mse,
    distill_mse, gap (held-out / distillation MSE), evaluations (per held-out sample), candidates: [{name,
    distill_mse, heldout_mse}]}. ``candidates``: [(name, Schedule)] in order of preference (ties go to the
    first); each schedule's ``extra["distill_mse"]`` is its distillation MSE (NaN if absent). Every candidate
    runs, equal ones too, so that the count is a function of the candidates' NFE alone (the plan's). A candidate
    whose student output is not finite scores inf (and loses); if every one fails, the first failure is raised."""
    candidates = list(candidates)
    if not candidates:
        raise OptstepsError("no candidate schedule to choose from.")
    heldout = Split.of(heldout)
    scores, failure = [], None
    for _, sched in candidates:
        try:
            scores.append(heldout_mse(sched, denoiser_for, heldout, micro_batch))
        except NonFiniteError as err:  # a candidate whose student leaves the finite numbers loses
            scores.append(math.inf)
            failure = err
    if failure is not None and all(v == math.inf for v in scores):
        raise failure
    best = 0
    for i, v in enumerate(scores):
        if v < scores[best]:  # NaN never wins
            best = i
    name, chosen = candidates[best]
    distill = float(chosen.extra.get("distill_mse", math.nan))
    record = {
        "samples": len(heldout),
        "chosen": name,
        "mse": scores[best],
        "distill_mse": distill,
        "gap": scores[best] / distill if distill > 0 else math.nan,
        "evaluations": heldout_evaluations([s.nfe for _, s in candidates]),
        "candidates": [
            {"name": n, "distill_mse": float(s.extra.get("distill_mse", math.nan)), "heldout_mse": v}
            for (n, s), v in zip(candidates, scores)
        ],
    }
    return chosen.with_meta(extra={"heldout": record})
