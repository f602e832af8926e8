"""OSS: Optimal Stepsize Distillation (Pei, Hu, Gu 2025) as a dynamic program over a teacher trajectory,
with a refinement by true final errors, and the GITS-type additive DP (docs/algorithms.md §3).

Setting. A teacher took N fine steps on its grid t_0 = t_max > t_1 > … > t_N and left the states
x̄_0 (the noise) … x̄_N for S samples. A student that spends K model evaluations must step along K + 1 of
these grid points, 0 = i_0 < i_1 < … < i_K = N, with its own solver (``ddim``, ``dpmpp2m`` or ``unipc``
order 2 with the corrector — exactly the samplers of ``optsteps.core.solvers``). We look for the index path
whose student lands closest to the teacher.

The DP ("our formulation").
- A node (k, j) is "the student has taken exactly k steps and stands at teacher index j". Layer 0 holds the
  start candidates: with ``start_window`` w = 0 (the default) the single node (0, 0) holding the noise; with
  w ≥ 1 also (j, scaled) and (j, raw) for j = 1 … min(w, N − K), holding the noise scaled to σ_{t_j} or
  unscaled (σ_{t_max} ε; ``core.schedule`` start-state rules, ``starts.start_candidates``). Layer k
  (1 ≤ k ≤ K − 1) holds j = k … N − K + k (room is left for the remaining steps); layer K is the single node
  (K, N). The traced path's start index and rule are the schedule's t_0 and ``"start_state"``.
- Every node of a layer k ≤ K − 1 costs exactly one model evaluation at its stored student state; all
  nodes of the layer go through the model in one batch (node states concatenated, per-sample t). So the
  search spends 1 + 2w' + (K − 1)(N − K + 1) evaluations per sample (w' = min(w, N − K); 1 + (K − 1)(N − K + 1)
  ≤ K·N at w = 0).
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
- One DP for every K (``oss_search_all``): layers 0 … K − 2 of a K-step student are those of every longer one
  (a decision at target j compares the same predecessors; only the last step's order and target N depend on
  K), so one pass to max K, whose layer k holds j = k … N − K_k + k (K_k the smallest K above k), serves all:
  K's last step goes from layer K − 1 to N. R + Σ_k (N − K_k + 1) evaluations per sample instead of
  Σ_K [R + (K − 1)(N − K + 1)] (``counts.dp_evaluations_all``: 851 instead of 2625 at N = 100, K = 4, 5, 6, 8,
  10); the schedules are those of one DP per K, bit for bit (tests/test_oss_all_k.py).
- The last layer ends at N, where the cost is the final error itself: the reported cost is the
  batch-mean squared error (per element) of the student along the traced path against x̄_N, exactly.
- ``objective``: "mse" (default) minimises that MSE; "l2" the mean per-sample L2 norm ‖x_K − x̄_N‖₂ (what the
  evaluation reports): batch-mode layer costs Σ_samples ‖y − x̄_j‖, the last layer and the refinement by the
  final mean L2 (docs/algorithms.md §3, "The objective").
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
  escapes the local optima that single moves leave for multistep students. With a start window
  (``refine_start``) the start index moves too, under either rule, and the rule itself is tried.

GITS variant (``gits_search``): one-jump costs c(i → j) = MSE(first-order step from the teacher state x̄_i
to t_j, x̄_j), one evaluation per teacher node, and V(j, k) = min_{i > j} [c(j → i) + γ·V(i, k − 1)],
V(N, 0) = 0, γ = 1.15: additive, hence exact (it equals the brute-force minimum of Σ_m γ^m c(i_m → i_{m+1})).
With a start window each start candidate gets its own first-jump costs (``gits_start_costs``, one evaluation
each) and ``gits_dp_starts`` minimises over (start, path), still exactly.

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

from optsteps.optimizers.oss.calibration import AmplitudeCalibration
from optsteps.optimizers.oss.dp import all_paths, median_path
from optsteps.optimizers.oss.gits import (
    GITS_GAMMA,
    gits_costs,
    gits_dp,
    gits_dp_starts,
    gits_objective,
    gits_search,
    gits_start_costs,
)
from optsteps.optimizers.oss.options import DISTANCES, MODES, OBJECTIVES, OSS_SOLVERS, OSSOptions
from optsteps.optimizers.oss.problem import STUDENT_MAX_ORDER, student_spec
from optsteps.optimizers.oss.refine import refine_path, refine_start, run_student
from optsteps.optimizers.oss.search import OSSResult, oss_search, oss_search_all
from optsteps.optimizers.oss.starts import Start, check_start_window, start_candidates

__all__ = [
    "check_start_window",
    "AmplitudeCalibration",
    "DISTANCES",
    "GITS_GAMMA",
    "MODES",
    "OBJECTIVES",
    "OSSOptions",
    "OSSResult",
    "OSS_SOLVERS",
    "STUDENT_MAX_ORDER",
    "Start",
    "all_paths",
    "gits_costs",
    "gits_dp",
    "gits_dp_starts",
    "gits_objective",
    "gits_search",
    "gits_start_costs",
    "median_path",
    "oss_search",
    "oss_search_all",
    "refine_path",
    "refine_start",
    "run_student",
    "start_candidates",
    "student_spec",
]
