"""OSS: Optimal Stepsize Distillation (Pei, Hu, Gu 2025) as a dynamic program over a teacher trajectory,
with a refinement by true final errors, and the GITS-type additive DP (docs/algorithms.md §3).

Setting. A teacher took N fine steps on its grid t_0 = t_max > t_1 > … > t_N and left the states
x̄_0 (the noise) … x̄_N for S samples. A student that spends K model evaluations must step along K + 1 of
these grid points, 0 = i_0 < i_1 < … < i_K = N, with its own solver (``ddim``, ``dpmpp2m`` or ``unipc``
order 2 with the corrector — exactly the samplers of ``optsteps.core.solvers``). We look for the index path
whose student lands closest to the teacher.

The DP ("our formulation").
- A node (k, j) is "the student has taken exactly k steps and stands at teacher index j". Layer 0 is the
  single node (0, 0) holding the noise. Layer k (1 ≤ k ≤ K − 1) holds j = k … N − K + k (room is left for
  the remaining steps); layer K is the single node (K, N).
- Every node of a layer k ≤ K − 1 costs exactly one model evaluation at its stored student state; all
  nodes of the layer go through the model in one batch (node states concatenated, per-sample t). So the
  search spends 1 + (K − 1)(N − K + 1) ≤ K·N evaluations per sample.
- From each evaluated node i, the student's step to every reachable j > i is a cheap linear combination
  y = a·x_i + b·x̂_0(i) + c·x̂_0(prev) (multistep solvers carry the previous model output and its λ; UniPC
  also carries what its corrector needs: it corrects a node's state after that node's evaluation, as the
  sampler does). The cost at (k + 1, j) is the distance of y to the teacher state x̄_j; per (k + 1, j) we
  keep the cheapest candidate: its cost, its predecessor and its state (computed with the library's step
  functions, so the stored trajectory is the sampler's own). Costs of all (i, j) pairs come from inner
  products, |a x + b m + c p − x̄_j|² expanded (one matrix product per layer); the states of the winners
  only are materialised. In batch mode without calibration the inner products of node states with every
  teacher state are carried from layer to layer (a node state is a known linear combination of earlier
  vectors), so each layer's matrix product involves only its new model outputs.
- The last layer ends at N, where the cost is the final error itself: the reported cost is the
  batch-mean squared error (per element) of the student along the traced path against x̄_N, exactly.
- ``distance="x0"`` measures intermediate candidates by the MSE of their data predictions x̂_0(y, t_j)
  against the teacher's x̂_0(x̄_j, t_j). A candidate's x̂_0 needs a model evaluation of that candidate, so
  this option spends one evaluation per (i, j) candidate pair (O(K·N²/2) per sample) — it is not bounded by
  K·N; the final layer is always judged by the state error at N (what the student delivers).
- ``mode="batch"`` (default) minimises the batch-mean cost and yields one schedule. ``mode="per_sample"``
  runs the DP per sample (as the reference does) and takes the position-wise true median of the index
  lists (middle value; for an even count the floor of the mean of the two middle values); the median of
  strictly increasing lists is strictly increasing.
- The recurrence is a heuristic for the final error (the best state at (k, j) need not lead to the best
  final state). ``refine_path`` therefore moves single interior indices (±1, ±2, … within the neighbours)
  judged by the true final error of a full student run (``solvers.sample``) until no move improves; by
  default it then also tries shifting two adjacent interior indices by ±1 each (``pair_moves``), which
  escapes the local optima that single moves leave for multistep students.

GITS variant (``gits_search``): one-jump costs c(i → j) = MSE(first-order step from the teacher state x̄_i
to t_j, x̄_j), one evaluation per teacher node, and V(j, k) = min_{i > j} [c(j → i) + γ·V(i, k − 1)],
V(N, 0) = 0, γ = 1.15: additive, hence exact (it equals the brute-force minimum of Σ_m γ^m c(i_m → i_{m+1})).

Amplitude calibration (``AmplitudeCalibration``): per teacher index, the mean over teacher samples of the
per-sample 5 % / 95 % quantiles; the student maps each sample's quantiles of its state affinely onto the
table entry of the current index right before every model evaluation (for UniPC, whose corrector then
recomputes the node state from the previous one, the calibrated state is the model's input).

Memory and shards. ``teacher`` is either one tensor [N + 1, S, ...] or several shards [N + 1, S_s, ...]
given as a list/tuple or as a zero-argument callable returning a fresh iterable (e.g. loading files
lazily). In batch mode every layer's decision needs the costs of *all* samples, so with more than one
shard each layer re-runs every shard from the noise along the decisions taken so far (only the ancestors
of the current layer's nodes are evaluated); memory stays at one shard's trajectory plus one layer of node
states plus the DP table, at the price of more evaluations (at most Σ_k (nodes of layers < k) per sample,
reported in ``model_evals``). With one shard nothing is re-run. Per-sample mode handles shards one by one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
import torch

from optsteps.errors import OptstepsError
from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule
from optsteps.core.solvers import ddim_step, dpmpp2m_step, node_coefficients, sample, unipc_rhos, unipc_update

OSS_SOLVERS = ("ddim", "dpmpp2m", "unipc")
DISTANCES = ("state", "x0")
MODES = ("batch", "per_sample")
GITS_GAMMA = 1.15
F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------
# input checks and shards
# ---------------------------------------------------------------------------------------------------------
def _check_grid(teacher_t, noise_schedule: NoiseSchedule) -> torch.Tensor:
    try:
        t = torch.as_tensor(teacher_t, dtype=F64).flatten()
    except (TypeError, ValueError):
        raise OptstepsError(f"teacher grid must be a list of numbers, got {teacher_t!r}.") from None
    if t.numel() < 3:
        raise OptstepsError(f"the teacher grid has {t.numel()} times; OSS needs N ≥ 2 teacher steps (N + 1 times).")
    if not torch.isfinite(t).all():
        raise OptstepsError("the teacher grid contains NaN or inf; pass finite times.")
    bad = torch.nonzero(t[:-1] <= t[1:]).flatten()
    if bad.numel():
        i = int(bad[0])
        raise OptstepsError(
            f"the teacher grid must be strictly descending (t_0 = t_max … t_N), but t[{i}] = {t[i].item():.6g} ≤ "
            f"t[{i + 1}] = {t[i + 1].item():.6g}; pass the teacher's own times from noise to data."
        )
    noise_schedule.check_t(t, "teacher grid")
    return t


def _check_nfe(nfe, n: int) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise OptstepsError(f"nfe must be an integer, got {nfe!r}.")
    if nfe < 1:
        raise OptstepsError(f"nfe = {nfe}; the student needs at least 1 step (1 ≤ nfe < N = {n}).")
    if nfe >= n:
        raise OptstepsError(
            f"nfe = {nfe} but the teacher has only N = {n} steps; choosing {nfe} of them is no search. "
            f"Use nfe < {n} or a finer teacher grid."
        )
    return nfe


def _check_choice(value, options, what):
    if value not in options:
        raise OptstepsError(f"unknown {what} {value!r}; use one of {', '.join(options)}.")


class _Shards:
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
                raise OptstepsError(f"teacher shard {count - 1} is a {type(shard).__name__}, not a tensor [N + 1, S, ...].")
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


def _numel(shape) -> int:
    return int(math.prod(shape)) if shape else 1


# ---------------------------------------------------------------------------------------------------------
# amplitude calibration
# ---------------------------------------------------------------------------------------------------------
@dataclass
class AmplitudeCalibration:
    """Per teacher index: mean over teacher samples of the per-sample low/high quantiles of the state."""

    low: torch.Tensor  # [N + 1]
    high: torch.Tensor  # [N + 1]
    q: tuple = (0.05, 0.95)

    @classmethod
    def from_teacher(cls, teacher, q=(0.05, 0.95)) -> "AmplitudeCalibration":
        """Tables from teacher states (tensor [N + 1, S, ...], list of shards, or callable), shard by shard."""
        if not 0 <= q[0] < q[1] <= 1:
            raise OptstepsError(f"calibration quantiles {q} must satisfy 0 ≤ low < high ≤ 1.")
        if isinstance(teacher, torch.Tensor):
            shards = [teacher]
        elif isinstance(teacher, (list, tuple, _Shards)):
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
        scale = torch.where(span > 0, (t_hi - t_lo) / torch.where(span > 0, span, torch.ones_like(span)),
                            torch.ones_like(span))
        shift = t_lo - scale * lo
        shape = (b,) + (1,) * (x.dim() - 1)
        return (scale.reshape(shape) * x.to(F64) + shift.reshape(shape)).to(x.dtype)


def _quantiles(flat: torch.Tensor, q) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise quantiles of a [B, F] tensor, chunked below torch.quantile's size limit."""
    qs = torch.tensor(q, dtype=F64)
    rows = max(1, (1 << 23) // max(1, flat.shape[1]))
    out = [torch.quantile(flat[a:a + rows].to(F64), qs, dim=1) for a in range(0, flat.shape[0], rows)]
    out = torch.cat(out, dim=1)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------------
# the student engine: nodes, model evaluations, transitions (identical to optsteps.core.solvers)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Nodes:
    """Student states of one DP layer before their model evaluation (n nodes × S samples)."""

    step: int  # steps taken to reach these nodes
    idx: torch.Tensor  # [n] teacher indices, ascending
    y: torch.Tensor  # [n, S, ...]
    pred: torch.Tensor  # [n, S] predecessor index (−1 at the root)
    m_p: torch.Tensor | None = None  # x̂_0 at the predecessor (multistep)
    x_p: torch.Tensor | None = None  # state the step started from (UniPC corrector)
    m_pp: torch.Tensor | None = None  # x̂_0 at the predecessor's predecessor (UniPC order-2 corrector)
    pp: torch.Tensor | None = None  # [n, S]
    po: torch.Tensor | None = None  # [n, S] order of the step into the node
    # batch mode: inner products with every teacher state x̄_l, [n, N + 1] (see _Engine.xall)
    cy: torch.Tensor | None = None  # <y, x̄_l>
    cxp: torch.Tensor | None = None  # <x_p, x̄_l>
    cmp: torch.Tensor | None = None  # <m_p, x̄_l>
    cmpp: torch.Tensor | None = None  # <m_pp, x̄_l>


@dataclass
class _Evaluated:
    idx: torch.Tensor  # [n]
    x: torch.Tensor  # [n, S, ...] state the next step starts from
    m: torch.Tensor  # [n, S, ...] x̂_0 at the node
    m_p: torch.Tensor | None  # [n, S, ...] x̂_0 at the predecessor (multistep)
    pred: torch.Tensor  # [n, S]
    nodes: _Nodes | None = None  # the layer it came from (its inner products)
    x_coef: torch.Tensor | None = None  # [n, 5]: x = Σ coef · (y, x_p, m_p, m_pp, m) (UniPC corrector)
    cx: torch.Tensor | None = None  # <x, x̄_l> [n, N + 1]
    cm: torch.Tensor | None = None  # <m, x̄_l>


def _combos(*rows: torch.Tensor):
    """Distinct columns of the stacked [S] rows, with the boolean sample mask of each (slice if only one)."""
    first = [r[0] for r in rows]
    if all(bool((r == f).all()) for r, f in zip(rows, first)):
        return [(tuple(int(f) for f in first), slice(None))]
    stack = torch.stack(rows)
    uniq = torch.unique(stack, dim=1)
    out = []
    for col in uniq.T:
        mask = (stack == col[:, None]).all(0)
        out.append((tuple(int(v) for v in col), mask))
    return out


class _Engine:
    def __init__(self, denoiser, noise_schedule, t: torch.Tensor, nfe: int, solver: str, lower_order_final: bool,
                 calibration: AmplitudeCalibration | None, eval_batch_size: int | None):
        self.den, self.ns, self.t = denoiser, noise_schedule, t
        self.N, self.K = len(t) - 1, nfe
        self.solver, self.lof = solver, bool(lower_order_final)
        self.cal, self.ebs = calibration, eval_batch_size
        self.al, self.si, self.la = node_coefficients(noise_schedule, t)
        self.al_t, self.si_t, self.la_t = (torch.tensor(v, dtype=F64) for v in (self.al, self.si, self.la))
        self.evaluated = 0  # samples pushed through the model
        # Batch mode without calibration: the teacher states as rows [N + 1, S·F] (float64). Node states are
        # linear combinations of earlier states and model outputs, so their inner products with every x̄_l
        # follow from earlier ones; only the new model outputs need a matrix product per layer.
        self.xall: torch.Tensor | None = None
        self.track = True
        if calibration is not None and calibration.low.numel() != self.N + 1:
            raise OptstepsError(
                f"the calibration tables have {calibration.low.numel()} entries but the teacher grid has {self.N + 1} "
                "times; compute them from the same teacher (AmplitudeCalibration.from_teacher)."
            )

    # ---- the samplers' order rules -------------------------------------------------------------------
    def structural_order2(self, s: int) -> bool:
        k = self.K
        if self.solver == "ddim" or s == 0:
            return False
        if self.solver == "dpmpp2m":
            return not (s == k - 1 and self.lof and k < 15)
        return min(2, s + 1, k - s if self.lof else 2) == 2

    def order(self, s: int, p: int, i: int, j: int) -> int:
        if not self.structural_order2(s):
            return 1
        return 2 if all(math.isfinite(self.la[q]) for q in (p, i, j)) else 1

    def step(self, s, p, i, j, x, m, mp):
        """The sampler's step s from node i (predecessor p) to teacher index j, via the library's functions."""
        o = self.order(s, p, i, j)
        al, si, la = self.al, self.si, self.la
        if self.solver == "unipc":
            lam = [la[i]] + ([la[p]] if o == 2 else []) + [la[j]]
            h = lam[-1] - lam[0]
            rhos = unipc_rhos(h, [(lam[r] - lam[0]) / h for r in range(1, o)], o, False) if o > 1 else None
            return unipc_update(x, [m, mp][:o], lam, al[j], si[i], si[j], rhos), o
        if o == 1:
            return ddim_step(x, m, al[i], si[i], al[j], si[j]), o
        return dpmpp2m_step(x, m, mp, al[j], si[i], si[j], la[j] - la[i], la[i] - la[p]), o

    def coefficients(self, s: int, i_idx: torch.Tensor, lam_p: torch.Tensor, j_idx: torch.Tensor):
        """Vectorised step coefficients: y = a·x + b·x̂_0 + c·x̂_0^{prev}, each [n, J, G] (same formulas as step)."""
        ai, si, li = (v[i_idx][:, None, None] for v in (self.al_t, self.si_t, self.la_t))
        aj, sj, lj = (v[j_idx][None, :, None] for v in (self.al_t, self.si_t, self.la_t))
        lp = lam_p[:, None, :]
        shape = (len(i_idx), len(j_idx), lam_p.shape[1])
        a = (sj / si).expand(shape)
        zero = torch.zeros(shape, dtype=F64)
        if self.solver == "ddim":
            return a, (aj - ai * sj / si).expand(shape), zero
        o2 = torch.isfinite(lp) & torch.isfinite(li) & torch.isfinite(lj) & self.structural_order2(s)
        h = lj - li
        phi = torch.expm1(-h)
        if self.solver == "dpmpp2m":
            b1 = aj - ai * sj / si
            r = (li - lp) / h
            b2 = -aj * phi * (1 + 1 / (2 * r))
            c2 = aj * phi / (2 * r)
        else:  # unipc, predictor ρ = ½ at order 2
            b1 = -aj * phi
            r1 = (lp - li) / h
            b2 = -aj * phi * (1 - 0.5 / r1)
            c2 = -aj * phi * 0.5 / r1
        b = torch.where(o2, b2, b1.expand(shape))
        c = torch.where(o2, c2, zero)
        return a, b, c

    # ---- model evaluations ---------------------------------------------------------------------------
    def evaluate(self, x: torch.Tensor, rows_idx: torch.Tensor) -> torch.Tensor:
        """x̂_0 for rows x [B, ...] at teacher indices rows_idx [B]: batched, per-sample t (a scalar t where a
        chunk has one time, as the samplers pass it)."""
        b = x.shape[0]
        chunk = self.ebs or b
        outs = []
        for a in range(0, b, chunk):
            ii = rows_idx[a:a + chunk]
            tt = self.t[ii[0]] if bool((ii == ii[0]).all()) else self.t[ii]
            outs.append(self.den(x[a:a + chunk], tt))
        self.evaluated += b
        return torch.cat(outs)

    def calibrate(self, y: torch.Tensor, rows_idx: torch.Tensor) -> torch.Tensor:
        return y if self.cal is None else self.cal.apply(y, rows_idx)

    def root(self, noise: torch.Tensor) -> _Nodes:
        s = noise.shape[0]
        node = _Nodes(0, torch.zeros(1, dtype=torch.long), noise[None], torch.full((1, s), -1, dtype=torch.long))
        if self.xall is not None:
            node.cy = (self.xall @ noise.reshape(-1).to(F64))[None]
        return node

    def process(self, nodes: _Nodes) -> _Evaluated:
        """One model evaluation per node (all nodes in one batch), then the UniPC corrector where it applies."""
        n, s = nodes.y.shape[:2]
        feat = nodes.y.shape[2:]
        rows = nodes.idx.repeat_interleave(s)
        y = self.calibrate(nodes.y.reshape(n * s, *feat), rows).reshape(n, s, *feat)
        m = self.evaluate(y.reshape(n * s, *feat), rows).reshape(n, s, *feat)
        x = y
        x_coef = torch.zeros(n, 5, dtype=F64)
        x_coef[:, 0] = 1
        if self.solver == "unipc" and nodes.step >= 1:
            x = y.clone()
            al, si, la = self.al, self.si, self.la
            for a in range(n):
                i = int(nodes.idx[a])
                for (p, q, o), sel in _combos(nodes.pred[a], nodes.pp[a], nodes.po[a]):
                    lam = [la[p]] + ([la[q]] if o == 2 else []) + [la[i]]
                    if not all(math.isfinite(v) for v in lam):
                        continue
                    h = lam[-1] - lam[0]
                    rks = [(lam[r] - lam[0]) / h for r in range(1, o)]
                    rhos = unipc_rhos(h, rks, o, True)
                    hist = [nodes.m_p[a, sel]] + ([nodes.m_pp[a, sel]] if o == 2 else [])
                    x[a, sel] = unipc_update(nodes.x_p[a, sel], hist, lam, al[i], si[p], si[i], rhos, x0_new=m[a, sel])
                    # the same update as coefficients on (y, x_p, m_p, m_pp, m): unipc_update's formula
                    w = -al[i] * math.expm1(-h)
                    rho = [float(v) for v in rhos]
                    x_coef[a] = torch.tensor([0.0, si[i] / si[p],
                                              w * (1 - sum(rk_rho / rk for rk_rho, rk in zip(rho[:-1], rks)) - rho[-1]),
                                              w * rho[0] / rks[0] if o == 2 else 0.0, w * rho[-1]], dtype=F64)
        return _Evaluated(nodes.idx, x, m, nodes.m_p if self.solver != "ddim" else None, nodes.pred, nodes, x_coef)

    def materialize(self, ev: _Evaluated, s: int, targets: torch.Tensor, pred: torch.Tensor) -> _Nodes:
        """States of the nodes ``targets`` [J] reached by step s from the chosen predecessors ``pred`` [J, S]."""
        lut = torch.full((self.N + 1,), -1, dtype=torch.long)
        lut[ev.idx] = torch.arange(len(ev.idx))
        pos = lut[pred]
        if (pos < 0).any():
            raise RuntimeError("internal: a chosen predecessor was not evaluated")
        po = torch.ones_like(pred)
        tracked = None
        if bool((pred == pred[:, :1]).all()) and bool((ev.pred == ev.pred[:, :1]).all()):
            # one schedule for all samples (batch mode): step from the node tensors directly, gather by row
            p0 = pos[:, 0]
            y = torch.empty((len(targets),) + tuple(ev.x.shape[1:]), dtype=ev.x.dtype)
            for jj in range(len(targets)):
                a = int(p0[jj])
                y[jj], po[jj] = self.step(s, int(ev.pred[a, 0]), int(ev.idx[a]), int(targets[jj]), ev.x[a], ev.m[a],
                                          ev.m_p[a] if ev.m_p is not None else None)
            x_src = ev.x.index_select(0, p0) if self.solver == "unipc" else None
            m_src = ev.m.index_select(0, p0) if self.solver != "ddim" else None
            mp_src = ev.m_p.index_select(0, p0) if self.solver == "unipc" and ev.m_p is not None else None
            pp = ev.pred.index_select(0, p0)
            if ev.cx is not None:
                lam_p = _lam_prev(self, ev, False).index_select(0, p0)  # [J, 1]
                ca, cb, cc = (torch.diagonal(c[..., 0]) for c in self.coefficients(s, ev.idx[p0], lam_p, targets))
                cmp_src = ev.nodes.cmp.index_select(0, p0) if ev.nodes.cmp is not None else None
                cy = ca[:, None] * ev.cx[p0] + cb[:, None] * ev.cm[p0]
                if cmp_src is not None:
                    cy = cy + cc[:, None] * cmp_src
                tracked = dict(cy=cy, cxp=ev.cx[p0], cmp=ev.cm[p0], cmpp=cmp_src)
        else:
            ar = torch.arange(pred.shape[1])
            x_src, m_src = ev.x[pos, ar], ev.m[pos, ar]
            mp_src = ev.m_p[pos, ar] if ev.m_p is not None else None
            pp = ev.pred[pos, ar]
            y = torch.empty_like(x_src)
            for jj in range(len(targets)):
                j = int(targets[jj])
                for (i, p), sel in _combos(pred[jj], pp[jj]):
                    y[jj, sel], po[jj, sel] = self.step(s, p, i, j, x_src[jj, sel], m_src[jj, sel],
                                                        mp_src[jj, sel] if mp_src is not None else None)
        node = _Nodes(s + 1, targets.clone(), y, pred.clone())
        if self.solver != "ddim":
            node.m_p = m_src
        if self.solver == "unipc":
            node.x_p, node.m_pp, node.pp, node.po = x_src, mp_src, pp, po
        if tracked is not None:
            node.cy, node.cmp = tracked["cy"], tracked["cmp"] if self.solver != "ddim" else None
            if self.solver == "unipc":
                node.cxp, node.cmpp = tracked["cxp"], tracked["cmpp"]
        return node

    def final_errors(self, ev: _Evaluated, s: int, x_end: torch.Tensor) -> torch.Tensor:
        """Exact per-sample squared-error sums [n, S] of the last step from every node to N."""
        n, S = ev.x.shape[:2]
        out = torch.empty(n, S, dtype=F64)
        for a in range(n):
            i = int(ev.idx[a])
            for (p,), sel in _combos(ev.pred[a]):
                mp = ev.m_p[a, sel] if ev.m_p is not None else None
                y, _ = self.step(s, p, i, self.N, ev.x[a, sel], ev.m[a, sel], mp)
                out[a, sel] = (y.to(F64) - x_end[sel].to(F64)).reshape(y.shape[0], -1).pow(2).sum(1)
        return out


# ---------------------------------------------------------------------------------------------------------
# layer costs
# ---------------------------------------------------------------------------------------------------------
def _lam_prev(engine: _Engine, ev: _Evaluated, per_sample: bool) -> torch.Tensor:
    pred = ev.pred if per_sample else ev.pred[:, :1]
    lam = engine.la_t[pred.clamp(min=0)]
    return torch.where(pred >= 0, lam, torch.full_like(lam, float("nan")))


def _state_cost_sums(engine: _Engine, ev: _Evaluated, s: int, targets: torch.Tensor, x_tgt: torch.Tensor,
                     per_sample: bool) -> torch.Tensor:
    """Σ squared error [n, J, G] of every candidate (node i → target j), from inner products:
    |a x + b m + c p − x̄_j|² = Σ c_u c_v <v_u, v_v> − 2 Σ c_u <v_u, x̄_j> + |x̄_j|².

    ``targets`` are ascending teacher indices, ``x_tgt`` [J, S, ...] their teacher states (ideally a view).
    Node chunks only meet the targets beyond their first node (about half the products of a full GEMM)."""
    n, S = ev.x.shape[:2]
    J = len(targets)
    G = S if per_sample else 1
    vecs = [ev.x, ev.m] + ([ev.m_p] if ev.m_p is not None else [])
    nv = len(vecs)
    xt = x_tgt.reshape(J, S, -1).to(F64)
    f = xt.shape[2]
    lam_p = _lam_prev(engine, ev, per_sample)
    out = torch.full((n, J, G), float("inf"), dtype=F64)
    if per_sample:
        chunk = max(1, min(n, (1 << 22) // max(1, J * G * nv * nv), (1 << 25) // max(1, nv * S * f)))
    else:
        chunk = max(1, min(max(16, -(-n // 8)), (1 << 22) // max(1, J * nv * nv)))
    for a0 in range(0, n, chunk):
        a1 = min(n, a0 + chunk)
        idx = ev.idx[a0:a1]
        j0 = int(torch.searchsorted(targets, idx[0], right=True))
        if j0 >= J:
            continue
        tj = targets[j0:]
        nc, jn = a1 - a0, J - j0
        xs = xt[j0:]
        coef = torch.stack(engine.coefficients(s, idx, lam_p[a0:a1], tj)[:nv], -1)  # [nc, jn, G, nv]
        if per_sample:
            V = torch.stack([v[a0:a1].reshape(nc, S, -1).to(F64) for v in vecs], 1)  # [nc, nv, S, f]
            gram = torch.einsum("nusf,nvsf->nsuv", V, V)  # [nc, S, nv, nv]
            cross = torch.bmm(V.permute(2, 0, 1, 3).reshape(S, nc * nv, f), xs.permute(1, 2, 0))
            cross = cross.reshape(S, nc, nv, jn).permute(1, 3, 0, 2)  # [nc, jn, S, nv]
            quad = torch.einsum("njsu,nsuv,njsv->njs", coef, gram, coef)
            tsq = xs.pow(2).sum(2)[None]  # [1, jn, S]
        else:
            flats = [v[a0:a1].reshape(nc, -1).to(F64) for v in vecs]  # views when already float64
            xflat = xs.reshape(jn, -1)
            gram = torch.empty(nc, nv, nv, dtype=F64)
            for u in range(nv):
                for w in range(u, nv):
                    gram[:, u, w] = gram[:, w, u] = torch.einsum("nk,nk->n", flats[u], flats[w])
            cross = torch.stack([fl @ xflat.T for fl in flats], -1)[:, :, None, :]  # [nc, jn, 1, nv]
            quad = torch.einsum("njgu,nuv,njgv->njg", coef, gram, coef)
            tsq = xflat.pow(2).sum(1)[None, :, None]  # [1, jn, 1]
        cost = quad - 2 * (coef * cross).sum(-1) + tsq
        valid = (tj[None, :] > idx[:, None])[..., None]
        out[a0:a1, j0:] = torch.where(valid, cost.clamp(min=0), torch.full_like(cost, float("inf")))
    return out


def _state_cost_sums_tracked(engine: _Engine, ev: _Evaluated, s: int, targets: torch.Tensor) -> torch.Tensor:
    """Batch-mode ``_state_cost_sums`` with inner products carried from layer to layer (``_Engine.xall``):
    one matrix product per layer, for the new model outputs only; also fills ev.cm and ev.cx."""
    xall = engine.xall
    n = len(ev.idx)
    nodes = ev.nodes
    mflat = ev.m.reshape(n, -1).to(F64)
    cm = torch.zeros(n, xall.shape[0], dtype=F64)
    chunk = max(16, -(-n // 8))
    for a0 in range(0, n, chunk):
        lo = int(ev.idx[a0]) + 1
        cm[a0:a0 + chunk, lo:] = mflat[a0:a0 + chunk] @ xall[lo:].T
    ev.cm = cm
    c = ev.x_coef
    cx = c[:, :1] * nodes.cy + c[:, 4:5] * cm
    for col, part in ((1, nodes.cxp), (2, nodes.cmp), (3, nodes.cmpp)):
        if part is not None and bool((c[:, col] != 0).any()):
            cx = cx + c[:, col:col + 1] * part
    ev.cx = cx
    vecs = [ev.x.reshape(n, -1).to(F64), mflat] + ([ev.m_p.reshape(n, -1).to(F64)] if ev.m_p is not None else [])
    crosses = [cx, cm] + ([nodes.cmp] if ev.m_p is not None else [])
    nv = len(vecs)
    gram = torch.empty(n, nv, nv, dtype=F64)
    for u in range(nv):
        for w in range(u, nv):
            gram[:, u, w] = gram[:, w, u] = torch.einsum("nk,nk->n", vecs[u], vecs[w])
    coef = torch.stack(engine.coefficients(s, ev.idx, _lam_prev(engine, ev, False), targets)[:nv], -1)  # [n, J, 1, nv]
    cross = torch.stack([cr[:, targets] for cr in crosses], -1)[:, :, None, :]  # [n, J, 1, nv]
    tsq = engine.xall_sq[targets][None, :, None]
    cost = torch.einsum("njgu,nuv,njgv->njg", coef, gram, coef) - 2 * (coef * cross).sum(-1) + tsq
    valid = (targets[None, :] > ev.idx[:, None])[..., None]
    return torch.where(valid, cost.clamp(min=0), torch.full_like(cost, float("inf")))


def _x0_cost_sums(engine: _Engine, ev: _Evaluated, s: int, targets: torch.Tensor, x0_tgt: torch.Tensor,
                  per_sample: bool) -> torch.Tensor:
    """Σ squared error [n, J, G] of the candidates' data predictions x̂_0(y, t_j) against the teacher's."""
    n, S = ev.x.shape[:2]
    J = len(targets)
    feat = ev.x.shape[2:]
    lam_p = _lam_prev(engine, ev, per_sample)
    out = torch.full((n, J, S if per_sample else 1), float("inf"), dtype=F64)
    bshape = (-1, S if per_sample else 1) + (1,) * len(feat)
    for a in range(n):
        i = int(ev.idx[a])
        jsel = torch.nonzero(targets > i).flatten()
        if jsel.numel() == 0:
            continue
        tj = targets[jsel]
        ca, cb, cc = (c[0] for c in engine.coefficients(s, ev.idx[a:a + 1], lam_p[a:a + 1], tj))
        y = ca.reshape(bshape) * ev.x[a].to(F64) + cb.reshape(bshape) * ev.m[a].to(F64)
        if ev.m_p is not None:
            y = y + cc.reshape(bshape) * ev.m_p[a].to(F64)
        rows = tj.repeat_interleave(S)
        y = engine.calibrate(y.to(ev.x.dtype).reshape(len(tj) * S, *feat), rows)
        x0 = engine.evaluate(y, rows).reshape(len(tj), S, -1).to(F64)
        err = (x0 - x0_tgt[jsel].reshape(len(tj), S, -1).to(F64)).pow(2).sum(2)  # [jn, S]
        out[a, jsel] = err if per_sample else err.sum(1, keepdim=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# the DP
# ---------------------------------------------------------------------------------------------------------
def _layer_nodes(k: int, n: int, nfe: int) -> torch.Tensor:
    """Teacher indices of layer k (exactly k steps taken, room left for nfe − k more)."""
    if k == 0:
        return torch.zeros(1, dtype=torch.long)
    if k == nfe:
        return torch.tensor([n])
    return torch.arange(k, n - nfe + k + 1)


def _layer_costs(engine, ev, s, targets, shard, distance, per_sample, x0_cache):
    if distance == "state" and engine.xall is not None and not per_sample:
        return _state_cost_sums_tracked(engine, ev, s, targets)
    if distance == "state":  # targets are a contiguous range: pass a view of the teacher states
        return _state_cost_sums(engine, ev, s, targets, shard[int(targets[0]):int(targets[-1]) + 1], per_sample)
    key = id(shard)
    if key not in x0_cache:  # teacher x̂_0 at every index 1..N−1 of this shard (N − 1 evaluations)
        x0_cache.clear()
        idx = torch.arange(1, engine.N)
        S = shard.shape[1]
        feat = shard.shape[2:]
        x0 = engine.evaluate(shard[1:engine.N].reshape((engine.N - 1) * S, *feat), idx.repeat_interleave(S))
        x0_cache[key] = torch.cat([torch.zeros_like(shard[:1]), x0.reshape(engine.N - 1, S, *feat)])
    return _x0_cost_sums(engine, ev, s, targets, x0_cache[key][targets], per_sample)


def _dp_one_shard(engine: _Engine, shard: torch.Tensor, distance: str, per_sample: bool):
    """Full DP on one shard, keeping the layer states. Returns (decisions, final sums [n, S], final ev idx)."""
    S = shard.shape[1]
    n, nfe = engine.N, engine.K
    if engine.track and not per_sample and distance == "state" and engine.cal is None:
        engine.xall = shard.reshape(n + 1, -1).to(F64)
        engine.xall_sq = engine.xall.pow(2).sum(1)
    nodes = engine.root(shard[0])
    decisions = []
    x0_cache: dict = {}
    for s in range(nfe):
        ev = engine.process(nodes)
        if s == nfe - 1:
            return decisions, engine.final_errors(ev, s, shard[n]), ev.idx
        targets = _layer_nodes(s + 1, n, nfe)
        sums = _layer_costs(engine, ev, s, targets, shard, distance, per_sample, x0_cache)  # [n, J, G]
        best = ev.idx[sums.argmin(0)]  # [J, G]
        decisions.append((targets, best))
        nodes = engine.materialize(ev, s, targets, best.expand(-1, S))
        del ev
    raise AssertionError("unreachable")


def _replay(engine: _Engine, noise: torch.Tensor, decisions) -> _Nodes:
    """Re-run one shard along fixed decisions to the nodes of layer len(decisions); only ancestors are evaluated."""
    k = len(decisions)
    S = noise.shape[0]
    need = [None] * (k + 1)
    need[k] = decisions[k - 1][0]
    for layer in range(k - 1, 0, -1):
        targets, best = decisions[layer]
        pos = torch.searchsorted(targets, need[layer + 1])
        need[layer] = torch.unique(best[pos, 0])
    nodes = engine.root(noise)
    for layer in range(k):
        ev = engine.process(nodes)
        targets, best = decisions[layer]
        pos = torch.searchsorted(targets, need[layer + 1])
        nodes = engine.materialize(ev, layer, need[layer + 1], best[pos].expand(-1, S))
    return nodes


def _dp_batch_shards(engine: _Engine, shards: _Shards, distance: str):
    """Batch-mean DP over several shards: per layer, every shard is replayed and its cost sums accumulated."""
    n, nfe = engine.N, engine.K
    decisions = []
    x0_cache: dict = {}
    for s in range(nfe):
        acc = None
        for shard in shards:
            nodes = engine.root(shard[0]) if s == 0 else _replay(engine, shard[0], decisions)
            ev = engine.process(nodes)
            if s == nfe - 1:
                sums = engine.final_errors(ev, s, shard[n]).sum(1)  # [n_nodes]
            else:
                sums = _layer_costs(engine, ev, s, _layer_nodes(s + 1, n, nfe), shard, distance, False, x0_cache)[..., 0]
            acc = sums if acc is None else acc + sums
            idx = ev.idx
            del ev, nodes
            x0_cache.clear()
        if s == nfe - 1:
            return decisions, acc, idx
        decisions.append((_layer_nodes(s + 1, n, nfe), idx[acc.argmin(0)][:, None]))
    raise AssertionError("unreachable")


def _trace(decisions, last_pred: torch.Tensor, n: int) -> torch.Tensor:
    """Index paths [G, K + 1] from per-layer decisions and the chosen predecessors of N ([G])."""
    g = last_pred.shape[0]
    cols = [torch.full((g,), n, dtype=torch.long), last_pred]
    cur = last_pred
    for targets, best in reversed(decisions):
        pos = torch.searchsorted(targets, cur)
        cur = best[pos, torch.arange(g) if best.shape[1] > 1 else 0]
        cols.append(cur)
    return torch.stack(cols[::-1], 1)


def median_path(paths) -> list[int]:
    """Position-wise true median of strictly increasing index lists [P, K + 1] (for an even count: the floor
    of the mean of the two middle values). The result is strictly increasing."""
    p = torch.as_tensor(paths, dtype=torch.long)
    if p.dim() != 2 or p.shape[0] == 0:
        raise OptstepsError("median_path needs a non-empty list of equally long index lists.")
    srt = p.sort(0).values
    c = p.shape[0]
    med = srt[c // 2] if c % 2 else torch.div(srt[c // 2 - 1] + srt[c // 2], 2, rounding_mode="floor")
    return [int(v) for v in med]


# ---------------------------------------------------------------------------------------------------------
# student runs, true errors, refinement
# ---------------------------------------------------------------------------------------------------------
def run_student(denoiser, noise: torch.Tensor, teacher_t, path, noise_schedule: NoiseSchedule, solver: str = "ddim",
                calibration: AmplitudeCalibration | None = None, lower_order_final: bool = True) -> torch.Tensor:
    """The student's final state along teacher indices ``path`` (``solvers.sample``; UniPC is order 2 with
    corrector). With ``calibration`` the same steps with amplitude calibration before every evaluation."""
    _check_choice(solver, OSS_SOLVERS, "student solver")
    t = torch.as_tensor(teacher_t, dtype=F64)
    path = [int(v) for v in path]
    if calibration is None:
        sched = Schedule(t[path], noise_schedule)
        return sample(denoiser, noise, sched, solver, order=2 if solver == "unipc" else None,
                      lower_order_final=lower_order_final)
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


# ---------------------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------------------
@dataclass
class OSSResult:
    path: list  # teacher indices 0 = i_0 < … < i_K = N
    schedule: Schedule
    cost: float  # batch-mean squared error per element at N of the student along ``path`` (GITS: its objective)
    model_evals: int  # model evaluations per sample spent by the search (DP or GITS cost matrix)
    dp_path: list = field(default_factory=list)  # the DP's own path (before refinement / median)
    dp_cost: float = float("nan")  # its true final error
    refine_evals: int = 0  # per-sample evaluations of the student runs for refinement / verification
    refine_runs: int = 0


def oss_search(teacher_t, teacher, denoiser, noise_schedule: NoiseSchedule, nfe: int, solver: str = "ddim",
               distance: str = "state", mode: str = "batch", refine: bool = True, refine_radius: int | None = None,
               pair_moves: bool = True,
               calibration: AmplitudeCalibration | bool | None = None, lower_order_final: bool = True,
               eval_batch_size: int | None = None, model: str = "") -> OSSResult:
    """Optimal Stepsize Distillation on a teacher trajectory (see the module docstring).

    teacher_t: the teacher grid t_0 = t_max > … > t_N; teacher: states [N + 1, S, ...] (x̄_0 = noise), a list of
    such shards, or a callable returning a fresh iterable of shards; denoiser: (x [B, ...], t scalar or [B]) →
    x̂_0; nfe: K, 1 ≤ K < N; solver: the student ("ddim" | "dpmpp2m" | "unipc" order 2); distance: "state" |
    "x0"; mode: "batch" | "per_sample"; calibration: None, True (tables from the teacher) or an
    ``AmplitudeCalibration``; eval_batch_size: rows per model call (None: a whole layer at once);
    refine / refine_radius / pair_moves: see ``refine_path``; lower_order_final: as in ``solvers.sample``.

    Returns an ``OSSResult``: the index path, the ``Schedule`` (method "oss", extra ``l2_to_teacher`` = the
    batch-mean squared error per element at N, ``model_evals`` = DP evaluations per sample), the cost and
    the evaluation count; ``dp_path``/``dp_cost`` are the DP's own answer before refinement.
    """
    _check_choice(solver, OSS_SOLVERS, "student solver")
    _check_choice(distance, DISTANCES, "distance")
    _check_choice(mode, MODES, "mode")
    t = _check_grid(teacher_t, noise_schedule)
    n = len(t) - 1
    nfe = _check_nfe(nfe, n)
    if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
        raise OptstepsError(f"eval_batch_size = {eval_batch_size!r}; use a positive integer or None.")
    shards = _Shards(teacher, n + 1)
    if calibration is True:
        calibration = AmplitudeCalibration.from_teacher(shards)
    elif calibration is False:
        calibration = None
    engine = _Engine(denoiser, noise_schedule, t, nfe, solver, lower_order_final, calibration, eval_batch_size)
    error = _TrueError(denoiser, shards, t, noise_schedule, solver, calibration, lower_order_final)
    per_sample = mode == "per_sample"

    if per_sample:
        paths = []
        for shard in shards:
            decisions, fin, idx = _dp_one_shard(engine, shard, distance, True)
            paths.append(_trace(decisions, idx[fin.argmin(0)], n))
        dp_path = median_path(torch.cat(paths))
        dp_cost = error(dp_path)
    else:
        if shards.single:
            (shard,) = list(shards)
            decisions, fin, idx = _dp_one_shard(engine, shard, distance, False)
            fin = fin.sum(1)
        else:
            decisions, fin, idx = _dp_batch_shards(engine, shards, distance)
        dp_path = [int(v) for v in _trace(decisions, idx[fin.argmin()].reshape(1), n)[0]]
        dp_cost = float(fin.min()) / (shards.total * _numel(shards.feature_shape))
        error.cache[tuple(dp_path)] = dp_cost
    dp_evals = engine.evaluated // shards.total

    path, cost = (refine_path(dp_path, error, refine_radius, pair_moves) if refine else (dp_path, dp_cost))
    sched = Schedule(
        t[path], noise_schedule, model=model, method="oss", solver=solver,
        extra={
            "l2_to_teacher": float(cost), "model_evals": int(dp_evals), "teacher_indices": list(path),
            "teacher_steps": n, "dp_indices": list(dp_path), "dp_l2_to_teacher": float(dp_cost),
            **({"order": 2} if solver == "unipc" else {}),
            "distance": distance, "mode": mode, "refined": bool(refine), "calibrated": calibration is not None,
            "refine_model_evals": int(error.evals),
        },
    )
    return OSSResult(list(path), sched, float(cost), int(dp_evals), list(dp_path), float(dp_cost),
                     int(error.evals), int(error.runs))


# ---------------------------------------------------------------------------------------------------------
# GITS-type additive DP
# ---------------------------------------------------------------------------------------------------------
def gits_costs(teacher_t, teacher, denoiser, noise_schedule: NoiseSchedule,
               eval_batch_size: int | None = None) -> tuple[torch.Tensor, int]:
    """One-jump costs C [N + 1, N + 1]: C[i, j] = batch-mean squared error (per element) of the first-order
    step from the teacher state x̄_i to t_j against x̄_j (inf where j ≤ i), and the evaluations per sample (N)."""
    t = _check_grid(teacher_t, noise_schedule)
    n = len(t) - 1
    shards = _Shards(teacher, n + 1)
    engine = _Engine(denoiser, noise_schedule, t, 1, "ddim", True, None, eval_batch_size)
    sums = torch.zeros(n + 1, n + 1, dtype=F64)
    for shard in shards:
        S = shard.shape[1]
        feat = shard.shape[2:]
        idx = torch.arange(n)
        m = engine.evaluate(shard[:n].reshape(n * S, *feat), idx.repeat_interleave(S)).reshape(n, S, *feat)
        for i in range(n):
            j = torch.arange(i + 1, n + 1)
            shape = (-1,) + (1,) * (shard.dim() - 1)
            y = ddim_step(shard[i].to(F64), m[i].to(F64), engine.al_t[i], engine.si_t[i],
                          engine.al_t[j].reshape(shape), engine.si_t[j].reshape(shape))
            sums[i, i + 1:] += (y - shard[i + 1:].to(F64)).reshape(len(j), -1).pow(2).sum(1)
    cost = sums / (shards.total * _numel(shards.feature_shape))
    cost[torch.ones(n + 1, n + 1, dtype=torch.bool).tril()] = float("inf")
    return cost, engine.evaluated // shards.total


def gits_dp(cost: torch.Tensor, nfe: int, gamma: float = GITS_GAMMA) -> tuple[float, list[int]]:
    """V(j, k) = min_{i > j} [c(j → i) + γ·V(i, k − 1)], V(N, 0) = 0; returns (V(0, K), its index path)."""
    n = cost.shape[0] - 1
    nfe = _check_nfe(nfe, n)
    c = cost.to(F64)
    inf = float("inf")
    value = torch.full((nfe + 1, n + 1), inf, dtype=F64)
    choice = torch.full((nfe + 1, n + 1), -1, dtype=torch.long)
    value[0, n] = 0.0
    for k in range(1, nfe + 1):
        total = c + gamma * value[k - 1][None, :]  # [j, i]
        best, arg = total.min(1)
        value[k], choice[k] = best, arg
    if not math.isfinite(float(value[nfe, 0])):
        raise OptstepsError(f"no path of {nfe} steps through the cost matrix; check that it has finite entries above the diagonal.")
    path = [0]
    for k in range(nfe, 0, -1):
        path.append(int(choice[k, path[-1]]))
    return float(value[nfe, 0]), path


def gits_objective(cost: torch.Tensor, path, gamma: float = GITS_GAMMA) -> float:
    """Σ_m γ^m c(i_m → i_{m+1}) — what ``gits_dp`` minimises."""
    return float(sum(gamma ** m * float(cost[path[m], path[m + 1]]) for m in range(len(path) - 1)))


def gits_search(teacher_t, teacher, denoiser, noise_schedule: NoiseSchedule, nfe: int, solver: str = "ddim",
                gamma: float = GITS_GAMMA, eval_batch_size: int | None = None, measure: bool = True,
                model: str = "", costs: tuple[torch.Tensor, int] | None = None) -> OSSResult:
    """GITS-type schedule from the teacher's one-jump costs; ``measure`` also runs the student along the path
    to record its true final error (``l2_to_teacher``). ``costs``: the (C, evaluations) that ``gits_costs``
    returns for this teacher, to share one cost matrix between solvers and NFEs (it depends on neither)."""
    _check_choice(solver, OSS_SOLVERS, "student solver")
    t = _check_grid(teacher_t, noise_schedule)
    nfe = _check_nfe(nfe, len(t) - 1)
    if not gamma > 0:
        raise OptstepsError(f"gamma = {gamma}; the GITS discount must be positive (default {GITS_GAMMA}).")
    cost, evals = costs if costs is not None else gits_costs(t, teacher, denoiser, noise_schedule, eval_batch_size)
    if cost.shape != (len(t), len(t)):
        raise OptstepsError(f"the GITS cost matrix is {tuple(cost.shape)} but the teacher grid has {len(t)} times; "
                            "compute it with gits_costs on this teacher.")
    value, path = gits_dp(cost, nfe, gamma)
    extra = {"gits_objective": value, "gamma": gamma, "model_evals": int(evals), "teacher_indices": path,
             "teacher_steps": len(t) - 1, **({"order": 2} if solver == "unipc" else {})}
    runs = 0
    if measure:
        err = _TrueError(denoiser, _Shards(teacher, len(t)), t, noise_schedule, solver, None, True)
        extra["l2_to_teacher"] = err(path)
        runs = err.runs
    sched = Schedule(t[path], noise_schedule, model=model, method="gits", solver=solver, extra=extra)
    return OSSResult(path, sched, value, int(evals), list(path), extra.get("l2_to_teacher", float("nan")),
                     nfe * runs, runs)


def all_paths(n: int, nfe: int):
    """Every index path 0 < i_1 < … < i_{K−1} < N (C(N − 1, K − 1) of them), for brute-force checks."""
    for mid in combinations(range(1, n), nfe - 1):
        yield [0, *mid, n]
