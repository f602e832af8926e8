"""Exact model evaluations per sample of the OSS and GITS searches (docs/algorithms.md §3), as pure functions
of the settings, so that a plan can show the bill before any work. The searches report the same numbers
(``OSSResult.model_evals``), and tests compare both with a wrapper that counts the rows given to the model.

Notation: N teacher steps, K student steps (NFE), w the start window, w' = min(w, N − K) its clipped value,
R the start candidates of layer 0. What is exact and what is data-dependent:

- the DP with ``distance="state"`` on one shard (the pipeline's case) or in per-sample mode: exact;
- ``distance="x0"``: exact on one shard or per sample (one evaluation per candidate pair + N − 1 teacher x̂₀);
- batch mode over several shards re-runs the shards from the noise along the decisions taken so far, through
  the ancestors of the current layer only: data-dependent; ``dp_evaluations_max`` is the hard cap and the
  search reports the count it spent;
- refinement: data-dependent (it stops when no move improves); reported after the run (``refine_evals``); with
  ``refine_max_evals`` its cap is ``refine_evaluations_max``;
- GITS: exact (its cost matrix and the start candidates' first jumps), plus K for measuring its path.
"""

from __future__ import annotations

from optsteps.errors import OptstepsError


def clipped_window(n_steps: int, nfe: int, start_window) -> int:
    """w' = min(w, N − K): the start must leave room for K steps; w = "full": N − K."""
    return n_steps - nfe if start_window == "full" else min(start_window, n_steps - nfe)


def start_count(n_steps: int, nfe: int, start_window: int = 0, starts_at_t_max: bool = True) -> int:
    """R = 1 + 2w' start candidates (index 0 and, for j = 1 … w', the scaled and the raw noise); 2 + 2w' on a
    teacher grid whose t_0 is below t_max (index 0 then has a raw start distinct from the scaled one)."""
    return (1 if starts_at_t_max else 2) + 2 * clipped_window(n_steps, nfe, start_window)


def layer_width(n_steps: int, nfe: int) -> int:
    """Nodes of a DP layer 1 ≤ k ≤ K − 1: j = k … N − K + k."""
    return n_steps - nfe + 1


def _x0_pairs(n_steps: int, nfe: int, start_window: int, starts_at_t_max: bool) -> int:
    """Candidate pairs (i → j) of layers 0 … K − 2 with j in the next layer and j > i (one x̂₀ evaluation each)."""
    if nfe == 1:
        return 0
    width = layer_width(n_steps, nfe)
    w = clipped_window(n_steps, nfe, start_window)
    # layer 0: index 0 reaches every node of layer 1 (j = 1 … N − K + 1); index j ≥ 1 reaches N − K + 1 − j of them
    first = width * (1 if starts_at_t_max else 2) + 2 * sum(width - j for j in range(1, w + 1))
    # layer k ≥ 1: node i = k + c (c = 0 … N − K) reaches N − K + 1 − c targets: Σ = width (width + 1) / 2
    return first + (nfe - 2) * width * (width + 1) // 2


def _check(n_steps, nfe, start_window, distance, mode, shards):
    if not 1 <= nfe < n_steps:
        raise OptstepsError(f"nfe = {nfe}; the count needs 1 ≤ nfe < N = {n_steps}.")
    if (start_window != "full" and start_window < 0) or shards < 1:
        raise OptstepsError(f"start_window = {start_window}, shards = {shards}; use start_window ≥ 0, shards ≥ 1.")
    if distance not in ("state", "x0") or mode not in ("batch", "per_sample"):
        raise OptstepsError(f"distance {distance!r} / mode {mode!r}; use state | x0 and batch | per_sample.")


def dp_evaluations(
    n_steps: int,
    nfe: int,
    start_window: int = 0,
    distance: str = "state",
    shards: int = 1,
    mode: str = "batch",
    starts_at_t_max: bool = True,
) -> int:
    """Exact model evaluations per sample of one OSS DP (``oss_search``'s ``model_evals``):
    R + (K − 1)(N − K + 1) for the state distance (every node of layers 0 … K − 1 evaluated once), plus, for the
    x0 distance, one per candidate pair and N − 1 for the teacher's x̂₀. Batch mode over several shards is
    data-dependent: this raises and ``dp_evaluations_max`` gives its cap."""
    _check(n_steps, nfe, start_window, distance, mode, shards)
    if shards > 1 and mode == "batch":
        raise OptstepsError(
            "batch mode over several shards re-runs ancestors only (data-dependent); use "
            "dp_evaluations_max for its cap, the search reports the exact count."
        )
    nodes = start_count(n_steps, nfe, start_window, starts_at_t_max) + (nfe - 1) * layer_width(n_steps, nfe)
    if distance == "x0":
        nodes += _x0_pairs(n_steps, nfe, start_window, starts_at_t_max) + (n_steps - 1 if nfe > 1 else 0)
    return nodes


def dp_evaluations_max(
    n_steps: int,
    nfe: int,
    start_window: int = 0,
    distance: str = "state",
    shards: int = 1,
    mode: str = "batch",
    starts_at_t_max: bool = True,
) -> int:
    """Hard cap of the DP's evaluations per sample; equal to ``dp_evaluations`` where that is exact. Batch mode
    over several shards: layer s re-runs every shard through all R starts and at most all nodes of layers
    1 … s − 1 before evaluating its own N − K + 1 nodes: Σ_s [R + s(N − K + 1)] = K·R + (N − K + 1) K(K − 1)/2,
    and with x0 the teacher's x̂₀ again for every layer before the last ((K − 1)(N − 1))."""
    _check(n_steps, nfe, start_window, distance, mode, shards)
    if shards == 1 or mode == "per_sample":
        return dp_evaluations(n_steps, nfe, start_window, distance, 1, mode, starts_at_t_max)
    r = start_count(n_steps, nfe, start_window, starts_at_t_max)
    total = nfe * r + layer_width(n_steps, nfe) * nfe * (nfe - 1) // 2
    if distance == "x0":
        total += _x0_pairs(n_steps, nfe, start_window, starts_at_t_max) + (nfe - 1) * (n_steps - 1)
    return total


def dp_evaluations_all(
    n_steps: int,
    nfes,
    start_window: int = 0,
    distance: str = "state",
    shards: int = 1,
    mode: str = "batch",
    starts_at_t_max: bool = True,
) -> int:
    """Exact model evaluations per sample of ``oss_search_all`` for the K of ``nfes`` (one solver): one DP to
    max K whose layer k (1 ≤ k ≤ max K − 1) holds N − K_k + 1 nodes, K_k the smallest K above k, and layer 0 the
    R starts of the smallest K's window: R + Σ_k (N − K_k + 1). The x0 distance runs one DP per K (their sum).
    Batch mode over several shards: data-dependent, as for ``dp_evaluations``."""
    nfes = sorted(set(nfes))
    if distance == "x0":
        return sum(dp_evaluations(n_steps, k, start_window, distance, shards, mode, starts_at_t_max) for k in nfes)
    for k in nfes:
        _check(n_steps, k, start_window, distance, mode, shards)
    if shards > 1 and mode == "batch":
        raise OptstepsError(
            "batch mode over several shards re-runs ancestors only (data-dependent); the search "
            "reports the exact count."
        )
    total = start_count(n_steps, nfes[0], start_window, starts_at_t_max)
    for k in range(1, nfes[-1]):
        total += n_steps - min(v for v in nfes if v > k) + 1
    return total


def gits_cost_evaluations(n_steps: int) -> int:
    """The GITS one-jump cost matrix: one evaluation per teacher node 0 … N − 1 (shared by solvers and K)."""
    return n_steps


def gits_start_evaluations(n_steps: int, nfe: int, start_window: int = 0, starts_at_t_max: bool = True) -> int:
    """First-jump costs of the start candidates other than (0, scaled): R − 1."""
    return start_count(n_steps, nfe, start_window, starts_at_t_max) - 1


def gits_evaluations(n_steps: int, nfe: int, start_window: int = 0, starts_at_t_max: bool = True) -> int:
    """``gits_search``'s ``model_evals`` (cost matrix + start candidates): N + R − 1."""
    return gits_cost_evaluations(n_steps) + gits_start_evaluations(n_steps, nfe, start_window, starts_at_t_max)


def refine_evaluations_max(nfe: int, max_evals: int, mode: str = "batch") -> int | None:
    """The cap of one K's refinement (``refine_evals``) under ``oss.refine_max_evals`` = M > 0 (None for M = 0:
    data-dependent): the moves stop before a run (K evaluations) would pass M, plus at most the runs outside the
    moves — the path's own error and its MSE under the l2 objective (2K), and in per-sample mode the median path
    under each start rule (2K)."""
    if not max_evals:
        return None
    return max_evals + 2 * nfe + (2 * nfe if mode == "per_sample" else 0)


def student_run_evaluations(nfe: int) -> int:
    """One student run along a path (GITS's measurement of ``distill_mse``; one refinement try without reuse): K."""
    return nfe
