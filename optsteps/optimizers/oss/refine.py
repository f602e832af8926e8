"""Student runs along an index path, their true final error (memoised, with prefix reuse), and the
refinement of a DP path by single and paired index moves judged by that error."""
from __future__ import annotations

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule
from optsteps.core.solvers import sample
from optsteps.optimizers.oss.calibration import AmplitudeCalibration
from optsteps.optimizers.oss.engine import _Engine
from optsteps.optimizers.oss.inputs import F64, OSS_SOLVERS, _check_choice, student_spec


def run_student(denoiser, noise: torch.Tensor, teacher_t, path, noise_schedule: NoiseSchedule, solver: str = "ddim",
                calibration: AmplitudeCalibration | None = None, lower_order_final: bool = True) -> torch.Tensor:
    """The student's final state along teacher indices ``path`` (``solvers.sample``; UniPC is order 2 with
    corrector). With ``calibration`` the same steps with amplitude calibration before every evaluation."""
    _check_choice(solver, OSS_SOLVERS, "student solver")
    t = torch.as_tensor(teacher_t, dtype=F64)
    path = [int(v) for v in path]
    if calibration is None:
        sched = Schedule(t[path], noise_schedule)
        return sample(denoiser, noise, sched, student_spec(solver, lower_order_final))
    engine = _Engine(denoiser, noise_schedule, t, len(path) - 1, solver, lower_order_final, calibration, None)
    S = noise.shape[0]
    nodes = engine.root(noise)
    for s in range(len(path) - 1):
        ev = engine.process(nodes)
        nodes = engine.materialize(ev, s, torch.tensor([path[s + 1]]), torch.full((1, S), path[s]))
    return nodes.y[0]


class _TrueError:
    """Batch-mean squared error (per element) at N of the student along a path, over all shards; cached.

    Prefix reuse: the student's i-th model input depends only on path[: i + 1] (the state there is the solver's
    deterministic function of the earlier outputs), so a run along a path that shares its first indices with
    the anchor (the refinement's current best) or with the previous run takes those model outputs from memory
    instead of re-evaluating them; an entry is used only when the stored input equals the new one exactly.
    ``evals`` counts the evaluations actually spent (per sample)."""

    def __init__(self, denoiser, shards, t, ns, solver, calibration, lower_order_final, reuse_prefixes: bool = True):
        self.args = (denoiser, t, ns, solver, calibration, lower_order_final)
        self.shards, self.cache, self.runs, self.rows = shards, {}, 0, 0
        self.reuse, self.memo, self.anchor = reuse_prefixes, {}, ()

    @property
    def evals(self) -> int:
        return self.rows // max(self.shards.total, 1)

    def set_anchor(self, path) -> None:
        """Keep the model outputs along ``path``'s prefixes (the path most later runs branch from)."""
        self.anchor = tuple(int(v) for v in path)

    def _denoiser(self, number: int, key: tuple):
        den = self.args[0]
        calls = 0

        def memo_denoiser(x, t):
            nonlocal calls
            calls += 1
            slot = (number, key[:calls])
            hit = self.memo.get(slot) if self.reuse else None
            if hit is not None and torch.equal(hit[0], x):  # False for another shape too
                return hit[1]
            out = den(x, t)
            self.rows += x.shape[0]
            if self.reuse:
                self.memo[slot] = (x, out)
            return out
        return memo_denoiser

    def __call__(self, path) -> float:
        key = tuple(int(v) for v in path)
        if key not in self.cache:
            _, t, ns, solver, cal, lof = self.args
            tot, count = 0.0, 0
            for number, shard in enumerate(self.shards):
                out = run_student(self._denoiser(number, key), shard[0], t, key, ns, solver, cal, lof)
                tot += float((out.to(F64) - shard[-1].to(F64)).pow(2).sum())
                count += out.numel()
            self.cache[key] = tot / count
            self.runs += 1
            keep = {self.anchor[:i] for i in range(1, len(self.anchor) + 1)} | {key[:i] for i in range(1, len(key) + 1)}
            self.memo = {slot: v for slot, v in self.memo.items() if slot[1] in keep}
        return self.cache[key]


def refine_path(path, error, radius: int | None = None, pair_moves: bool = True,
                max_sweeps: int = 100) -> tuple[list[int], float]:
    """Local search from ``path`` judged by ``error(path)`` (the true final error of a student run).

    Moves of single interior indices (±1, ±2, … up to ``radius``, always strictly between the neighbours;
    first improvement in order of distance) are repeated until none improves. With ``pair_moves`` (an
    extension beyond single moves), two adjacent interior indices shifted by ±1 each are then tried, and
    single moves resume after any improvement; this lifts the brute-force hit rate of multistep students
    on small cases from about 90-95 % to about 99 %.
    """
    best = [int(v) for v in path]
    anchor = getattr(error, "set_anchor", lambda p: None)  # lets a memoizing error keep the best path's outputs
    anchor(best)
    best_err = error(best)

    def better(trial):
        e = error(trial)
        return (e < best_err - 1e-12 * abs(best_err)), e

    for _ in range(max_sweeps):
        improved = False
        for m in range(1, len(best) - 1):
            lo, hi = best[m - 1] + 1, best[m + 1] - 1
            if radius is not None:
                lo, hi = max(lo, best[m] - radius), min(hi, best[m] + radius)
            for v in sorted((v for v in range(lo, hi + 1) if v != best[m]), key=lambda v: (abs(v - best[m]), v)):
                trial = best[:m] + [v] + best[m + 1:]
                ok, e = better(trial)
                if ok:
                    best, best_err, improved = trial, e, True
                    anchor(best)
                    break
        if improved:
            continue
        if pair_moves:
            for m in range(1, len(best) - 2):
                for d1 in (-1, 1):
                    for d2 in (-1, 1):
                        trial = list(best)
                        trial[m] += d1
                        trial[m + 1] += d2
                        if any(trial[q] >= trial[q + 1] for q in range(len(trial) - 1)):
                            continue
                        ok, e = better(trial)
                        if ok:
                            best, best_err, improved = trial, e, True
                            anchor(best)
                            break
                    if improved:
                        break
                if improved:
                    break
        if not improved:
            break
    return best, best_err
