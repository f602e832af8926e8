"""The student engine of the DP: the nodes of a layer (student states × samples), one batched model
evaluation per layer, UniPC's corrector after it, and the student's transitions to every candidate index —
the samplers' own steps and their batched coefficient forms (``optsteps.core.solvers.updates``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from optsteps.core.solvers import node_coefficients
from optsteps.core.solvers.updates import (
    ddim_coefficients,
    ddim_step,
    dpmpp2m_coefficients,
    dpmpp2m_step,
    unipc_corrector_coefficients,
    unipc_predictor_coefficients,
    unipc_rhos,
    unipc_update,
)
from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.calibration import AmplitudeCalibration
from optsteps.optimizers.oss.problem import F64, student_spec


@dataclass
class Nodes:
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
    # batch mode: inner products with every teacher state x̄_l, [n, N + 1] (see Engine.xall)
    cy: torch.Tensor | None = None  # <y, x̄_l>
    cxp: torch.Tensor | None = None  # <x_p, x̄_l>
    cmp: torch.Tensor | None = None  # <m_p, x̄_l>
    cmpp: torch.Tensor | None = None  # <m_pp, x̄_l>


@dataclass
class Evaluated:
    idx: torch.Tensor  # [n]
    x: torch.Tensor  # [n, S, ...] state the next step starts from
    m: torch.Tensor  # [n, S, ...] x̂_0 at the node
    m_p: torch.Tensor | None  # [n, S, ...] x̂_0 at the predecessor (multistep)
    pred: torch.Tensor  # [n, S]
    nodes: Nodes | None = None  # the layer it came from (its inner products)
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


class Engine:
    def __init__(
        self,
        denoiser,
        noise_schedule,
        t: torch.Tensor,
        nfe: int,
        solver: str,
        lower_order_final: bool,
        calibration: AmplitudeCalibration | None,
        eval_batch_size: int | None,
    ):
        self.denoiser, self.noise_schedule, self.t = denoiser, noise_schedule, t
        self.N, self.K = len(t) - 1, nfe
        self.solver, self.lower_order_final = solver, bool(lower_order_final)
        self.orders = student_spec(solver, lower_order_final).step_orders(nfe)
        self.final = {nfe: self.orders[nfe - 1]}  # order of the last step of a K-step student (``final_order``)
        self.calibration, self.eval_batch_size = calibration, eval_batch_size
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
    def final_order(self, nfe: int) -> int:
        """Order of the last step s = K − 1 of a K-step student. Steps s ≤ K − 2 have the orders of any longer
        student (order ≤ 2: only the last step is lowered), so one engine serves every K ≤ its own."""
        if nfe not in self.final:
            orders = student_spec(self.solver, self.lower_order_final).step_orders(nfe)
            if nfe > self.K or orders[: nfe - 1] != self.orders[: nfe - 1]:
                raise RuntimeError(f"internal: a {nfe}-step student does not share the steps of a {self.K}-step one")
            self.final[nfe] = orders[nfe - 1]
        return self.final[nfe]

    def structural_order2(self, s: int) -> bool:
        """Step s runs at order 2 where its stencil is finite (the student's ``step_orders``)."""
        return self.orders[s] == 2

    def order(self, s: int, p: int, i: int, j: int, nfe: int | None = None) -> int:
        """The order of step s (of a ``nfe``-step student if it is its last step; default: the engine's K)."""
        structural = self.final_order(nfe) if nfe is not None and s == nfe - 1 else self.orders[s]
        if structural != 2:
            return 1
        return 2 if all(math.isfinite(self.la[q]) for q in (p, i, j)) else 1

    def step(self, s, p, i, j, x, m, mp, nfe: int | None = None):
        """The sampler's step s from node i (predecessor p) to teacher index j, via the library's functions."""
        o = self.order(s, p, i, j, nfe)
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
        a, b_ddim = ddim_coefficients(ai, si, aj, sj)
        a = a.expand(shape)
        zero = torch.zeros(shape, dtype=F64)
        if self.solver == "ddim":
            return a, b_ddim.expand(shape), zero
        o2 = torch.isfinite(lp) & torch.isfinite(li) & torch.isfinite(lj) & self.structural_order2(s)
        if self.solver == "dpmpp2m":
            b1 = b_ddim
            b2, c2 = dpmpp2m_coefficients(aj, lp, li, lj)
        else:  # unipc, predictor ρ = ½ at order 2
            b1, b2, c2 = unipc_predictor_coefficients(aj, lp, li, lj)
        b = torch.where(o2, b2, b1.expand(shape))
        c = torch.where(o2, c2, zero)
        return a, b, c

    # ---- model evaluations ---------------------------------------------------------------------------
    def evaluate(self, x: torch.Tensor, rows_idx: torch.Tensor) -> torch.Tensor:
        """x̂_0 for rows x [B, ...] at teacher indices rows_idx [B]: batched, per-sample t (a scalar t where a
        chunk has one time, as the samplers pass it)."""
        b = x.shape[0]
        chunk = self.eval_batch_size or b
        outs = []
        for a in range(0, b, chunk):
            ii = rows_idx[a : a + chunk]
            tt = self.t[ii[0]] if bool((ii == ii[0]).all()) else self.t[ii]
            outs.append(self.denoiser(x[a : a + chunk], tt))
        self.evaluated += b
        return torch.cat(outs)

    def calibrate(self, y: torch.Tensor, rows_idx: torch.Tensor) -> torch.Tensor:
        return y if self.calibration is None else self.calibration.apply(y, rows_idx)

    def root(self, noise: torch.Tensor, starts=None) -> Nodes:
        """Layer 0: the start candidates (``starts.Start``, ascending by index; None: (0, scaled)), each holding
        f·x̄_0 for the teacher's first state x̄_0 = ``noise``. Indices may repeat (two rules at one index)."""
        s = noise.shape[0]
        if starts is None or (len(starts) == 1 and starts[0].index == 0 and starts[0].factor == 1.0):
            node = Nodes(0, torch.zeros(1, dtype=torch.long), noise[None], torch.full((1, s), -1, dtype=torch.long))
            if self.xall is not None:
                node.cy = (self.xall @ noise.reshape(-1).to(F64))[None]
            return node
        idx = torch.tensor([st.index for st in starts], dtype=torch.long)
        if bool((idx[1:] < idx[:-1]).any()):
            raise RuntimeError("internal: start candidates must be ascending by index")
        y = torch.stack([noise if st.factor == 1.0 else noise * st.factor for st in starts])
        node = Nodes(0, idx, y, torch.full((len(starts), s), -1, dtype=torch.long))
        if self.xall is not None:
            node.cy = torch.stack([self.xall @ v.reshape(-1).to(F64) for v in y])
        return node

    def process(self, nodes: Nodes) -> Evaluated:
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
                    # the same update as coefficients on (y, x_p, m_p, m_pp, m)
                    x_coef[a] = torch.tensor(unipc_corrector_coefficients(al[i], si[p], si[i], h, rks, rhos), dtype=F64)
        return Evaluated(nodes.idx, x, m, nodes.m_p if self.solver != "ddim" else None, nodes.pred, nodes, x_coef)

    def materialize(
        self, ev: Evaluated, s: int, targets: torch.Tensor, pred: torch.Tensor, rows: torch.Tensor | None = None
    ) -> Nodes:
        """States of the nodes ``targets`` [J] reached by step s from the chosen predecessors ``pred`` [J, S]
        (teacher indices); ``rows`` [J, S]: the predecessors' rows in ``ev`` where indices repeat (layer 0)."""
        if rows is None:
            lut = torch.full((self.N + 1,), -1, dtype=torch.long)
            lut[ev.idx] = torch.arange(len(ev.idx))
            pos = lut[pred]
        else:
            pos = rows
        if (pos < 0).any():
            raise RuntimeError("internal: a chosen predecessor was not evaluated")
        po = torch.ones_like(pred)
        tracked = None
        if bool((pos == pos[:, :1]).all()) and bool((ev.pred == ev.pred[:, :1]).all()):
            # one schedule for all samples (batch mode): step from the node tensors directly, gather by row
            p0 = pos[:, 0]
            y = torch.empty((len(targets),) + tuple(ev.x.shape[1:]), dtype=ev.x.dtype)
            for jj in range(len(targets)):
                a = int(p0[jj])
                y[jj], po[jj] = self.step(
                    s,
                    int(ev.pred[a, 0]),
                    int(ev.idx[a]),
                    int(targets[jj]),
                    ev.x[a],
                    ev.m[a],
                    ev.m_p[a] if ev.m_p is not None else None,
                )
            x_src = ev.x.index_select(0, p0) if self.solver == "unipc" else None
            m_src = ev.m.index_select(0, p0) if self.solver != "ddim" else None
            mp_src = ev.m_p.index_select(0, p0) if self.solver == "unipc" and ev.m_p is not None else None
            pp = ev.pred.index_select(0, p0)
            if ev.cx is not None:
                lam_p = previous_lambdas(self, ev, False).index_select(0, p0)  # [J, 1]
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
                    y[jj, sel], po[jj, sel] = self.step(
                        s, p, i, j, x_src[jj, sel], m_src[jj, sel], mp_src[jj, sel] if mp_src is not None else None
                    )
        node = Nodes(s + 1, targets.clone(), y, pred.clone())
        if self.solver != "ddim":
            node.m_p = m_src
        if self.solver == "unipc":
            node.x_p, node.m_pp, node.pp, node.po = x_src, mp_src, pp, po
        if tracked is not None:
            node.cy, node.cmp = tracked["cy"], tracked["cmp"] if self.solver != "ddim" else None
            if self.solver == "unipc":
                node.cxp, node.cmpp = tracked["cxp"], tracked["cmpp"]
        return node

    def final_errors(self, ev: Evaluated, s: int, x_end: torch.Tensor, nfe: int | None = None) -> torch.Tensor:
        """Exact per-sample squared-error sums [n, S] of the last step (s = K − 1 of a K = ``nfe``-step student)
        from every node to N."""
        n, S = ev.x.shape[:2]
        out = torch.empty(n, S, dtype=F64)
        for a in range(n):
            i = int(ev.idx[a])
            for (p,), sel in _combos(ev.pred[a]):
                mp = ev.m_p[a, sel] if ev.m_p is not None else None
                y, _ = self.step(s, p, i, self.N, ev.x[a, sel], ev.m[a, sel], mp, nfe or self.K)
                out[a, sel] = (y.to(F64) - x_end[sel].to(F64)).reshape(y.shape[0], -1).pow(2).sum(1)
        return out


def previous_lambdas(engine: Engine, ev: Evaluated, per_sample: bool) -> torch.Tensor:
    pred = ev.pred if per_sample else ev.pred[:, :1]
    lam = engine.la_t[pred.clamp(min=0)]
    return torch.where(pred >= 0, lam, torch.full_like(lam, float("nan")))
