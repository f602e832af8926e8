"""Student runs along an index path (from a start candidate: its index and start-state rule), their true final
error (memoised, with prefix reuse; MSE and mean per-sample L2 from one run), and the refinement of a DP path by
single and paired index moves — and, with a start window, moves of the start index and of the start rule —
judged by that error (the search's objective)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule
from optsteps.core.solvers import sample
from optsteps.optimizers.oss.calibration import AmplitudeCalibration
from optsteps.optimizers.oss.engine import Engine
from optsteps.optimizers.oss.options import OSS_SOLVERS
from optsteps.optimizers.oss.problem import F64, check_choice, student_spec
from optsteps.optimizers.oss.starts import Start, start_factor, start_rule


def run_student(
    denoiser,
    noise: torch.Tensor,
    teacher_t,
    path,
    noise_schedule: NoiseSchedule,
    solver: str = "ddim",
    calibration: AmplitudeCalibration | None = None,
    lower_order_final: bool = True,
    start_state: str = "scaled",
) -> torch.Tensor:
    """The student's final state along teacher indices ``path`` (``solvers.sample``; UniPC is order 2 with
    corrector), started at t[path[0]] from f·``noise`` (``noise`` = the teacher's first state x̄_0 = σ_{t_0} ε;
    f = ``starts.start_factor`` of ``start_state``: the sampler's own start, ``core.schedule.initial_state``).
    With ``calibration`` the same steps with amplitude calibration before every evaluation."""
    check_choice(solver, OSS_SOLVERS, "student solver")
    t = torch.as_tensor(teacher_t, dtype=F64)
    path = [int(v) for v in path]
    f = start_factor(noise_schedule, t, path[0], start_rule(noise_schedule, t, path[0], start_state))
    if calibration is None:
        sched = Schedule(t[path], noise_schedule)
        return sample(denoiser, noise if f == 1.0 else noise * f, sched, student_spec(solver, lower_order_final))
    engine = Engine(denoiser, noise_schedule, t, len(path) - 1, solver, lower_order_final, calibration, None)
    S = noise.shape[0]
    nodes = engine.root(noise, [Start(path[0], start_state, f)])
    for s in range(len(path) - 1):
        ev = engine.process(nodes)
        nodes = engine.materialize(ev, s, torch.tensor([path[s + 1]]), torch.full((1, S), path[s]))
    return nodes.y[0]


class TrueError:
    """The true final error at N of the student along a path from a start rule, over all shards; cached per
    (rule, path). One run gives both distances: "mse" (batch-mean squared error per element) and "l2" (mean
    over samples of ‖x_K − x̄_N‖₂); ``error(path, rule)`` returns the ``objective``'s.

    Prefix cache: the student's i-th model input depends only on the start rule and path[: i + 1] (the state
    there is the solver's deterministic function of the earlier outputs; steps before the last have the same
    order for every K), so the model output of every (shard, rule, index prefix) already run is kept and any
    later run — another move, another K — takes it from memory; an entry is used only when the stored input
    equals the new one exactly. The cache holds at most ``cache_bytes`` of inputs and outputs (least recently
    used first out, never the prefixes of the anchor, the refinement's current best). ``evals`` counts the
    evaluations actually spent (per sample), ``reused`` those taken from the cache."""

    def __init__(
        self,
        denoiser,
        shards,
        t,
        noise_schedule,
        solver,
        calibration,
        lower_order_final,
        reuse_prefixes: bool = True,
        objective: str = "mse",
        cache_bytes: int = 2 << 30,
    ):
        self.denoiser, self.t, self.noise_schedule = denoiser, t, noise_schedule
        self.solver, self.calibration, self.lower_order_final = solver, calibration, lower_order_final
        self.shards, self.cache, self.runs, self.rows, self.reused_rows = shards, {}, 0, 0, 0
        self.reuse, self.memo, self.anchor = reuse_prefixes, OrderedDict(), ("scaled", ())
        self.memo_bytes, self.cache_bytes = 0, cache_bytes
        self.objective = objective

    @property
    def evals(self) -> int:
        return self.rows // max(self.shards.total, 1)

    @property
    def reused(self) -> int:
        return self.reused_rows // max(self.shards.total, 1)

    def _key(self, path, rule):
        key = tuple(int(v) for v in path)
        return start_rule(self.noise_schedule, self.t, key[0], rule), key

    def set_anchor(self, path, rule: str = "scaled") -> None:
        """The path most later runs branch from: its prefixes stay in the cache."""
        self.anchor = self._key(path, rule)

    def record(self, path, rule: str = "scaled", **values) -> None:
        """Known distances of a path (the DP's own final cost), so that no run repeats them."""
        self.cache.setdefault(self._key(path, rule), {}).update(values)

    def _denoiser(self, number: int, rule: str, key: tuple):
        calls = 0

        def memo_denoiser(x, t):
            nonlocal calls
            calls += 1
            slot = (number, rule, key[:calls])
            hit = self.memo.get(slot) if self.reuse else None
            if hit is not None and torch.equal(hit[0], x):  # False for another shape too
                self.memo.move_to_end(slot)
                self.reused_rows += x.shape[0]
                return hit[1]
            out = self.denoiser(x, t)
            self.rows += x.shape[0]
            if self.reuse:
                if hit is not None:
                    self.memo_bytes -= _nbytes(hit)
                self.memo[slot] = (x, out)
                self.memo_bytes += _nbytes(self.memo[slot])
            return out

        return memo_denoiser

    def _evict(self) -> None:
        a_rule, a_key = self.anchor
        keep = {(a_rule, a_key[:i]) for i in range(1, len(a_key) + 1)}
        for slot in list(self.memo):
            if self.memo_bytes <= self.cache_bytes:
                break
            if slot[1:] not in keep:
                self.memo_bytes -= _nbytes(self.memo.pop(slot))

    def value(self, path, rule: str = "scaled", kind: str | None = None) -> float:
        """The distance ``kind`` ("mse" | "l2"; None: the objective) of the student along ``path`` from ``rule``."""
        kind = kind or self.objective
        rule, key = self._key(path, rule)
        got = self.cache.get((rule, key), {})
        if kind not in got:
            tot, count, norms, samples = 0.0, 0, 0.0, 0
            for number, shard in enumerate(self.shards):
                out = run_student(
                    self._denoiser(number, rule, key),
                    shard[0],
                    self.t,
                    key,
                    self.noise_schedule,
                    self.solver,
                    self.calibration,
                    self.lower_order_final,
                    rule,
                )
                diff = out.to(F64) - shard[-1].to(F64)
                tot += float(diff.pow(2).sum())
                count += out.numel()
                norms += float(diff.reshape(diff.shape[0], -1).norm(dim=1).sum())
                samples += diff.shape[0]
            got = dict(got, mse=tot / count, l2=norms / samples)
            self.cache[(rule, key)] = got
            self.runs += 1
            self._evict()
        return got[kind]

    def __call__(self, path, rule: str = "scaled") -> float:
        return self.value(path, rule)


def refine_path(
    path, error, radius: int | None = None, pair_moves: bool = True, max_sweeps: int = 100
) -> tuple[list[int], float]:
    """Local search from ``path`` judged by ``error(path)`` (the true final error of a student run).

    Moves of single interior indices (±1, ±2, … up to ``radius``, always strictly between the neighbours;
    first improvement in order of distance) are repeated until none improves. With ``pair_moves`` (an
    extension beyond single moves), two adjacent interior indices shifted by ±1 each are then tried, and
    single moves resume after any improvement; this lifts the brute-force hit rate of multistep students
    on small cases from about 90-95 % to about 99 %. ``refine_start`` also moves the start.
    """
    set_anchor = getattr(error, "set_anchor", None)
    best, err, _ = refine_start(
        path,
        "scaled",
        lambda p, r: error(p),
        0,
        ("scaled",),
        radius,
        pair_moves,
        max_sweeps,
        anchor=(lambda p, r: set_anchor(p)) if set_anchor is not None else None,
    )
    return best, err


def refine_start(
    path,
    rule: str,
    error,
    window: int,
    rules=("scaled", "raw"),
    radius: int | None = None,
    pair_moves: bool = True,
    max_sweeps: int = 100,
    anchor=None,
    max_evals: int = 0,
) -> tuple[list[int], float, str]:
    """``refine_path`` over (start rule, path) judged by ``error(path, rule)``; with ``window`` > 0 the start
    index path[0] moves too (within 0 … min(window, path[1] − 1), under every rule of ``rules``), and where
    single moves fail every other rule is tried at the current path before pair moves (a pair may include the
    start). Returns
    (path, error, rule). ``anchor(path, rule)``: told the current best (a memoizing error keeps its outputs).
    ``max_evals`` > 0: a hard cap on the per-sample model evaluations the moves spend (``error.evals``, a
    ``TrueError``): a move is tried only while a full student run (K evaluations) still fits under the cap, and
    the best path found so far is returned when it does not."""
    best, cur = [int(v) for v in path], rule
    anchor = anchor or getattr(error, "set_anchor", None) or (lambda p, r: None)
    anchor(best, cur)
    spent_at = getattr(error, "evals", 0)
    k = len(path) - 1
    best_err = error(best, cur)
    first = 0 if window > 0 else 1
    order = list(range(1, len(path) - 1)) + ([0] if window > 0 else [])  # the interior first, then the start

    class _Spent(Exception):
        pass

    def better(trial, r):
        if max_evals and getattr(error, "evals", 0) - spent_at + k > max_evals:
            raise _Spent
        e = error(trial, r)
        return (e < best_err - 1e-12 * abs(best_err)), e

    try:
        for _ in range(max_sweeps):
            improved = False
            for m in order:
                lo, hi = (0, min(window, best[1] - 1)) if m == 0 else (best[m - 1] + 1, best[m + 1] - 1)
                if radius is not None:
                    lo, hi = max(lo, best[m] - radius), min(hi, best[m] + radius)
                moves = [(v, cur) for v in range(lo, hi + 1) if v != best[m]]
                if m == 0:  # the start moves with every rule (a new start may pay off only with the other rule)
                    moves = [(v, r) for v in range(lo, hi + 1) for r in rules if (v, r) != (best[0], cur)]
                for v, r in sorted(moves, key=lambda vr: (abs(vr[0] - best[m]), vr[0], vr[1] != cur)):
                    trial = best[:m] + [v] + best[m + 1 :]
                    ok, e = better(trial, r)
                    if ok:
                        best, best_err, cur, improved = trial, e, r, True
                        anchor(best, cur)
                        break
            if improved:
                continue
            for r in rules:
                if r != cur:
                    ok, e = better(best, r)
                    if ok:
                        cur, best_err, improved = r, e, True
                        anchor(best, cur)
                        break
            if improved:
                continue
            if pair_moves:
                for m in range(first, len(best) - 2):
                    for d1 in (-1, 1):
                        for d2 in (-1, 1):
                            trial = list(best)
                            trial[m] += d1
                            trial[m + 1] += d2
                            if (
                                any(trial[q] >= trial[q + 1] for q in range(len(trial) - 1))
                                or not 0 <= trial[0] <= window
                            ):
                                continue
                            ok, e = better(trial, cur)
                            if ok:
                                best, best_err, improved = trial, e, True
                                anchor(best, cur)
                                break
                        if improved:
                            break
                    if improved:
                        break
            if not improved:
                break
    except _Spent:  # the cap: the best path so far
        pass
    return best, best_err, cur


def _nbytes(entry) -> int:
    return sum(v.numel() * v.element_size() for v in entry)
