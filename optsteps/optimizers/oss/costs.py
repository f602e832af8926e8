"""Layer costs of the DP: the squared error of every candidate step (node i → teacher index j) against the
teacher state x̄_j (or x̂_0 for ``distance="x0"``), from inner products |a x + b m + c p − x̄_j|² expanded."""

from __future__ import annotations

import torch

from optsteps.optimizers.oss.engine import Engine, Evaluated, previous_lambdas
from optsteps.optimizers.oss.problem import F64


def state_cost_sums(
    engine: Engine, ev: Evaluated, s: int, targets: torch.Tensor, x_tgt: torch.Tensor, per_sample: bool
) -> torch.Tensor:
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
    lam_p = previous_lambdas(engine, ev, per_sample)
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


def state_cost_sums_tracked(engine: Engine, ev: Evaluated, s: int, targets: torch.Tensor) -> torch.Tensor:
    """Batch-mode ``state_cost_sums`` with inner products carried from layer to layer (``Engine.xall``):
    one matrix product per layer, for the new model outputs only; also fills ev.cm and ev.cx."""
    xall = engine.xall
    n = len(ev.idx)
    nodes = ev.nodes
    mflat = ev.m.reshape(n, -1).to(F64)
    cm = torch.zeros(n, xall.shape[0], dtype=F64)
    chunk = max(16, -(-n // 8))
    for a0 in range(0, n, chunk):
        lo = int(ev.idx[a0]) + 1
        cm[a0 : a0 + chunk, lo:] = mflat[a0 : a0 + chunk] @ xall[lo:].T
    ev.cm = cm
    c = ev.x_coef
    cx = c[:, :1] * nodes.cy + c[:, 4:5] * cm
    for col, part in ((1, nodes.cxp), (2, nodes.cmp), (3, nodes.cmpp)):
        if part is not None and bool((c[:, col] != 0).any()):
            cx = cx + c[:, col : col + 1] * part
    ev.cx = cx
    vecs = [ev.x.reshape(n, -1).to(F64), mflat] + ([ev.m_p.reshape(n, -1).to(F64)] if ev.m_p is not None else [])
    crosses = [cx, cm] + ([nodes.cmp] if ev.m_p is not None else [])
    nv = len(vecs)
    gram = torch.empty(n, nv, nv, dtype=F64)
    for u in range(nv):
        for w in range(u, nv):
            gram[:, u, w] = gram[:, w, u] = torch.einsum("nk,nk->n", vecs[u], vecs[w])
    coef = torch.stack(
        engine.coefficients(s, ev.idx, previous_lambdas(engine, ev, False), targets)[:nv], -1
    )  # [n, J, 1, nv]
    cross = torch.stack([cr[:, targets] for cr in crosses], -1)[:, :, None, :]  # [n, J, 1, nv]
    tsq = engine.xall_sq[targets][None, :, None]
    cost = torch.einsum("njgu,nuv,njgv->njg", coef, gram, coef) - 2 * (coef * cross).sum(-1) + tsq
    valid = (targets[None, :] > ev.idx[:, None])[..., None]
    return torch.where(valid, cost.clamp(min=0), torch.full_like(cost, float("inf")))


def x0_cost_sums(
    engine: Engine, ev: Evaluated, s: int, targets: torch.Tensor, x0_tgt: torch.Tensor, per_sample: bool
) -> torch.Tensor:
    """Σ squared error [n, J, G] of the candidates' data predictions x̂_0(y, t_j) against the teacher's."""
    n, S = ev.x.shape[:2]
    J = len(targets)
    feat = ev.x.shape[2:]
    lam_p = previous_lambdas(engine, ev, per_sample)
    out = torch.full((n, J, S if per_sample else 1), float("inf"), dtype=F64)
    bshape = (-1, S if per_sample else 1) + (1,) * len(feat)
    for a in range(n):
        i = int(ev.idx[a])
        jsel = torch.nonzero(targets > i).flatten()
        if jsel.numel() == 0:
            continue
        tj = targets[jsel]
        ca, cb, cc = (c[0] for c in engine.coefficients(s, ev.idx[a : a + 1], lam_p[a : a + 1], tj))
        y = ca.reshape(bshape) * ev.x[a].to(F64) + cb.reshape(bshape) * ev.m[a].to(F64)
        if ev.m_p is not None:
            y = y + cc.reshape(bshape) * ev.m_p[a].to(F64)
        rows = tj.repeat_interleave(S)
        y = engine.calibrate(y.to(ev.x.dtype).reshape(len(tj) * S, *feat), rows)
        x0 = engine.evaluate(y, rows).reshape(len(tj), S, -1).to(F64)
        err = (x0 - x0_tgt[jsel].reshape(len(tj), S, -1).to(F64)).pow(2).sum(2)  # [jn, S]
        out[a, jsel] = err if per_sample else err.sum(1, keepdim=True)
    return out
