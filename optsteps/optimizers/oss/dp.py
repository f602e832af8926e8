"""The layered "exactly k steps" dynamic program over teacher indices (docs/algorithms.md §3): layers,
one shard or several (re-run from the noise along the decisions), trace-back, the per-sample median path,
and the brute-force path enumeration the tests compare with.

Layer 0 holds the start candidates (``starts.start_candidates``: index 0, and with a start window w the
indices 1 … w under both start-state rules); a decision of layer 0 keeps the candidate's row, since two rules
share one index. Objective "l2": batch-mode layer costs are Σ_samples ‖y − x̄_j‖ (per-sample norms) instead of
Σ_samples ‖y − x̄_j‖², and the last layer's by the final per-sample L2 norms."""

from __future__ import annotations

from itertools import combinations

import torch

from optsteps.errors import OptstepsError
from optsteps.optimizers.oss.costs import state_cost_sums, state_cost_sums_tracked, x0_cost_sums
from optsteps.optimizers.oss.engine import Engine, Nodes
from optsteps.optimizers.oss.problem import F64
from optsteps.optimizers.oss.shards import Shards


def layer_nodes(k: int, n: int, nfe) -> torch.Tensor:
    """Teacher indices of layer k (exactly k steps taken). ``nfe``: K, or the K set of a shared DP (ascending):
    layer k then serves every K > k and holds j = k … N − K_k + k, K_k the smallest K above k (room left for
    the remaining steps of the shortest student that goes on from it); a K-step student ends at layer K."""
    if k == 0:
        return torch.zeros(1, dtype=torch.long)
    if isinstance(nfe, int):
        if k == nfe:
            return torch.tensor([n])
        nfes = [nfe]
    else:
        nfes = nfe
    k_next = min(v for v in nfes if v > k)
    return torch.arange(k, n - k_next + k + 1)


def _objective_sums(sums: torch.Tensor, objective: str, per_sample: bool) -> torch.Tensor:
    """Batch-mode "l2": per-sample squared sums [..., S] → Σ_samples of their square roots [..., 1]."""
    if per_sample or objective == "mse":
        return sums
    return sums.clamp(min=0).sqrt().sum(-1, keepdim=True)


def layer_costs(engine, ev, s, targets, shard, distance, per_sample, x0_cache):
    if distance == "state" and engine.xall is not None and not per_sample:
        return state_cost_sums_tracked(engine, ev, s, targets)
    if distance == "state":  # targets are a contiguous range: pass a view of the teacher states
        return state_cost_sums(engine, ev, s, targets, shard[int(targets[0]) : int(targets[-1]) + 1], per_sample)
    key = id(shard)
    if key not in x0_cache:  # teacher x̂_0 at every index 1..N−1 of this shard (N − 1 evaluations)
        x0_cache.clear()
        idx = torch.arange(1, engine.N)
        S = shard.shape[1]
        feat = shard.shape[2:]
        x0 = engine.evaluate(shard[1 : engine.N].reshape((engine.N - 1) * S, *feat), idx.repeat_interleave(S))
        x0_cache[key] = torch.cat([torch.zeros_like(shard[:1]), x0.reshape(engine.N - 1, S, *feat)])
    return x0_cost_sums(engine, ev, s, targets, x0_cache[key][targets], per_sample)


def dp_one_shard(
    engine: Engine, shard: torch.Tensor, distance: str, per_sample: bool, starts=None, objective: str = "mse", nfes=None
):
    """Full DP on one shard for every K of ``nfes`` (ascending, max = the engine's K; default: the engine's K),
    keeping the layer states. Layers 0 … K − 2 of a K-step student are those of every longer one (its
    decisions at a target j compare the same predecessors), so one pass to max K serves all; the last step of
    each K goes from layer K − 1 to N with that student's last order. Returns (decisions, finals):
    decisions[k] = (targets, best index [J, G], best row [J, G]) for layers 1 … max K − 1, finals[K] = (final
    per-sample squared sums [n, S], the indices of layer K − 1)."""
    S = shard.shape[1]
    n = engine.N
    nfes = sorted(nfes or [engine.K])
    if engine.track and not per_sample and distance == "state" and engine.calibration is None and objective == "mse":
        engine.xall = shard.reshape(n + 1, -1).to(F64)
        engine.xall_sq = engine.xall.pow(2).sum(1)
    nodes = engine.root(shard[0], starts)
    decisions, finals = [], {}
    x0_cache: dict = {}
    per_sample_costs = per_sample or objective == "l2"
    for s in range(nfes[-1]):
        ev = engine.process(nodes)
        if s + 1 in nfes:
            finals[s + 1] = engine.final_errors(ev, s, shard[n], s + 1), ev.idx
        if s == nfes[-1] - 1:
            return decisions, finals
        targets = layer_nodes(s + 1, n, nfes)
        sums = layer_costs(engine, ev, s, targets, shard, distance, per_sample_costs, x0_cache)  # [n, J, G]
        rows = _objective_sums(sums, objective, per_sample).argmin(0)  # [J, G]
        best = ev.idx[rows]
        decisions.append((targets, best, rows))
        nodes = engine.materialize(ev, s, targets, best.expand(-1, S), rows.expand(-1, S) if s == 0 else None)
        del ev
    raise AssertionError("unreachable")


def _replay(engine: Engine, noise: torch.Tensor, decisions, starts=None) -> Nodes:
    """Re-run one shard along fixed decisions to the nodes of layer len(decisions); only ancestors are evaluated
    (layer 0: every start candidate)."""
    k = len(decisions)
    S = noise.shape[0]
    need = [None] * (k + 1)
    need[k] = decisions[k - 1][0]
    for layer in range(k - 1, 0, -1):
        targets, best, _ = decisions[layer]
        pos = torch.searchsorted(targets, need[layer + 1])
        need[layer] = torch.unique(best[pos, 0])
    nodes = engine.root(noise, starts)
    for layer in range(k):
        ev = engine.process(nodes)
        targets, best, rows = decisions[layer]
        pos = torch.searchsorted(targets, need[layer + 1])
        nodes = engine.materialize(
            ev, layer, need[layer + 1], best[pos].expand(-1, S), rows[pos].expand(-1, S) if layer == 0 else None
        )
    return nodes


def dp_batch_shards(engine: Engine, shards: Shards, distance: str, starts=None, objective: str = "mse", nfes=None):
    """Batch-mean DP over several shards for every K of ``nfes`` (as ``dp_one_shard``): per layer, every shard is
    replayed and its cost sums accumulated. Returns (decisions, finals[K] = (the summed objective of layer
    K − 1's nodes [n_nodes], their indices))."""
    n = engine.N
    nfes = sorted(nfes or [engine.K])
    decisions, finals = [], {}
    x0_cache: dict = {}
    for s in range(nfes[-1]):
        acc, fin_acc = None, None
        last = s == nfes[-1] - 1
        for shard in shards:
            nodes = engine.root(shard[0], starts) if s == 0 else _replay(engine, shard[0], decisions, starts)
            ev = engine.process(nodes)
            if s + 1 in nfes:
                fin = engine.final_errors(ev, s, shard[n], s + 1)  # [n_nodes, S]
                fin = fin.sum(1) if objective == "mse" else fin.clamp(min=0).sqrt().sum(1)
                fin_acc = fin if fin_acc is None else fin_acc + fin
            if not last:
                sums = layer_costs(
                    engine, ev, s, layer_nodes(s + 1, n, nfes), shard, distance, objective == "l2", x0_cache
                )
                sums = _objective_sums(sums, objective, False)[..., 0]
                acc = sums if acc is None else acc + sums
            idx = ev.idx
            del ev, nodes
            x0_cache.clear()
        if s + 1 in nfes:
            finals[s + 1] = fin_acc, idx
        if last:
            return decisions, finals
        rows = acc.argmin(0)[:, None]
        decisions.append((layer_nodes(s + 1, n, nfes), idx[rows], rows))
    raise AssertionError("unreachable")


def trace_paths(decisions, last_pred: torch.Tensor, n: int) -> torch.Tensor:
    """Index paths [G, K + 1] from per-layer decisions and the chosen predecessors of N ([G])."""
    g = last_pred.shape[0]
    cols = [torch.full((g,), n, dtype=torch.long), last_pred]
    cur = last_pred
    for targets, best, _ in reversed(decisions):
        pos = torch.searchsorted(targets, cur)
        cur = best[pos, torch.arange(g) if best.shape[1] > 1 else 0]
        cols.append(cur)
    return torch.stack(cols[::-1], 1)


def start_rows(decisions, last_row: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """The layer-0 rows (start candidates) [G] of traced ``paths`` [G, K + 1]; ``last_row`` [G]: the chosen rows of
    the last layer (the start rows themselves when K = 1)."""
    if not decisions:
        return last_row
    targets, _, rows = decisions[0]
    g = paths.shape[0]
    pos = torch.searchsorted(targets, paths[:, 1].contiguous())
    return rows[pos, torch.arange(g) if rows.shape[1] > 1 else 0]


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


def all_paths(n: int, nfe: int):
    """Every index path 0 < i_1 < … < i_{K−1} < N (C(N − 1, K − 1) of them), for brute-force checks."""
    for mid in combinations(range(1, n), nfe - 1):
        yield [0, *mid, n]
