"""Paired bootstrap over sample indices (docs/algorithms.md §7).

Every row of an evaluation grid samples the same noises and asks for the same labels (sample i starts from
noise (seed, start + i) and asks for label (start + i) mod C), so rows are compared *paired*: one seeded index
matrix I [B, n] resamples the samples of every row alike, each metric is recomputed on every resample, and the
difference of two rows is taken resample by resample (``paired_difference``). The labels are a fixed design,
not random draws, so the resampling is stratified by label: each resample keeps exactly the design's count per
class (or prompt). An unstratified bootstrap would add the variance of random class counts, which no redraw of
the noises has: measured on the digits, it made FID intervals 3.3× and KID intervals 3× as wide as the spread of
the statistic over 12 fresh seeds (docs/algorithms.md §7.2).

- means of per-sample values (L2 and PSNR to the teacher, the adherence indicator): ``resample_means``;
- FID against a fixed reference (the real data, a reference folder, or the teacher's own samples):
  ``frechet_resamples`` recomputes the Fréchet distance of the resampled feature rows, exactly (no
  projection: the trace term is a symmetric eigenvalue problem of size min(D, n));
- KID against a fixed reference: ``kid_resamples``, the unbiased MMD² (cubic kernel, as clean-fid) on the
  resample, from kernel matrices computed once per row.

Intervals are *centred percentile* intervals: the 2.5 % and 97.5 % quantiles of the resampled values,
shifted so that the bootstrap distribution is centred on the point estimate. Resampling with replacement
duplicates rows, which inflates a resampled FID/KID (fewer distinct samples: larger covariance noise); the
shift removes that offset from the interval, and in a paired difference the two rows are inflated alike on
the same indices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from optsteps.errors import OptstepsError

CI_LEVEL = 0.95
HIGHER_IS_BETTER = ("psnr", "adherence", "accuracy", "confident_accuracy", "precision", "geneval")


def higher_is_better(metric: str) -> bool:
    """PSNR, adherence and its parts, GenEval: higher is better; FID, KID, L2: lower."""
    return metric.startswith(HIGHER_IS_BETTER)


def resample_indices(n: int, resamples: int, seed: int, strata=None) -> np.ndarray:
    """The shared index matrix of a grid, [resamples, n]. ``strata``: one label per sample (the requested class or
    prompt); each stratum is then resampled within itself, so every resample keeps the design's exact counts per
    label (sample i always asks for label (start + i) mod C, it is not drawn at random)."""
    # I_bj ~ Uniform{0, …, n − 1} (no strata), or I_bj ~ Uniform(G_s) for the stratum G_s of sample j; PCG64(seed)
    if n < 2 or resamples < 1:
        raise OptstepsError(f"a bootstrap needs n ≥ 2 samples and ≥ 1 resample, got n = {n}, {resamples} resamples.")
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    lab = np.asarray(strata).reshape(-1)
    if len(lab) != n:
        raise OptstepsError(f"{len(lab)} strata labels for {n} samples; pass one label per sample.")
    idx = np.empty((resamples, n), dtype=np.int64)
    for value in np.unique(lab):
        members = np.flatnonzero(lab == value)
        idx[:, members] = members[rng.integers(0, len(members), size=(resamples, len(members)))]
    return idx


def resample_means(values, idx: np.ndarray) -> np.ndarray:
    """θ*_b of a mean of per-sample values (the first ``idx.max() + 1`` values are the samples)."""
    # θ*_b = (1/n) Σ_j v[I_bj]
    v = np.asarray(values, dtype=np.float64)
    return v[idx].mean(axis=1)


def centred_interval(point: float, resampled, level: float = CI_LEVEL) -> tuple[float, float]:
    """The ``level`` interval of a statistic from its resampled values."""
    # [θ̂ + q_{α/2}(θ*) − mean(θ*), θ̂ + q_{1−α/2}(θ*) − mean(θ*)], α = 1 − level
    r = np.asarray(resampled, dtype=np.float64)
    if r.ndim != 1 or len(r) == 0 or not np.isfinite(r).all():
        raise OptstepsError("the resampled values must be a non-empty finite 1-d array.")
    a = (1.0 - level) / 2
    lo, hi = np.quantile(r, [a, 1.0 - a])
    shift = float(point) - float(r.mean())
    return float(lo + shift), float(hi + shift)


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric's true value can take: FID, KID (MMD² ≥ 0), L2 ≥ 0; rates in [0, 1]; PSNR unbounded."""
    if metric.startswith(("fid", "kid", "l2")):
        return 0.0, float("inf")
    if metric.startswith(("adherence", "accuracy", "confident_accuracy", "precision", "geneval")):
        return 0.0, 1.0
    return float("-inf"), float("inf")


def metric_interval(metric: str, point: float, resampled, level: float = CI_LEVEL) -> tuple[float, float]:
    """The reported interval of ``metric``: the centred interval intersected with the metric's range. The true value
    lies in the range, so the intersection covers it whenever the centred interval does; without it a small FID's
    centred interval reaches below 0. (A plain percentile interval stays in the range too, but resampling with
    replacement inflates a resampled FID, on 40 paired digits by +5 to +38 over a point value of 35: it missed the
    point itself; the centring removes that offset.)"""
    # [max(a, lo), min(b, hi)] ∩ [a, b] for the centred [lo, hi] and the range [a, b]
    r = np.asarray(resampled, dtype=np.float64)
    r = r[np.isfinite(r)]  # resamples where the statistic is undefined (a KID resample of one distinct pair)
    if len(r) == 0:
        return float("nan"), float("nan")
    lo, hi = centred_interval(point, r, level)
    a, b = metric_range(metric)
    return float(min(max(lo, a), b)), float(min(max(hi, a), b))


def paired_difference(
    point_a: float, resampled_a, point_b: float, resampled_b, level: float = CI_LEVEL
) -> tuple[float, tuple[float, float]]:
    """(Δ̂, interval) of row A minus row B, both resampled on the same index matrix."""
    # Δ̂ = θ̂_A − θ̂_B, Δ*_b = θ*_{A,b} − θ*_{B,b}; interval = centred_interval(Δ̂, Δ*)
    ra, rb = np.asarray(resampled_a, dtype=np.float64), np.asarray(resampled_b, dtype=np.float64)
    if ra.shape != rb.shape:
        raise OptstepsError(
            f"paired resamples differ in length ({ra.shape} vs {rb.shape}); compare rows of one "
            "evaluation (same n, bootstrap count and seed)."
        )
    diff = float(point_a) - float(point_b)
    return diff, centred_interval(diff, ra - rb, level)


def excludes_zero(interval) -> bool:
    lo, hi = interval
    return lo > 0 or hi < 0


# ---- FID -------------------------------------------------------------------------------------------


def _reference_features(feats) -> np.ndarray:
    """A fixed reference feature set as float64 [N ≥ 2, D]."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise OptstepsError(f"need a [N ≥ 2, D] reference feature array, got shape {f.shape}.")
    return f


@dataclass(frozen=True)
class FrechetReference:
    """μ_r, S_r^{1/2} (symmetric root) and tr S_r of a fixed reference feature set."""

    mu: np.ndarray
    sqrt_cov: np.ndarray
    trace_cov: float


def frechet_reference(feats) -> FrechetReference:
    # S_r = V diag(w) Vᵀ (eigh, w clipped at 0) → S_r^{1/2} = V diag(√w) Vᵀ
    f = _reference_features(feats)
    cov = np.cov(f, rowvar=False)
    w, v = np.linalg.eigh(cov)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return FrechetReference(f.mean(0), root, float(np.trace(cov)))


def frechet_distance(mu: np.ndarray, trace_cov: float, sqrt_eigs_sum: float, ref: FrechetReference) -> float:
    # FID = ‖μ − μ_r‖² + tr S + tr S_r − 2 tr (S_r^{1/2} S S_r^{1/2})^{1/2}
    return float(((mu - ref.mu) ** 2).sum() + trace_cov + ref.trace_cov - 2.0 * sqrt_eigs_sum)


def _trace_sqrt(zc: np.ndarray) -> float:
    """tr (Zcᵀ Zc / (n − 1))^{1/2} from the centred rows Zc [n, D], via the smaller of the D×D and n×n Grams
    (same non-zero eigenvalues)."""
    n, d = zc.shape
    m = (zc.T @ zc) if d <= n else (zc @ zc.T)
    lam = np.linalg.eigvalsh(m / (n - 1))
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_from_features(feats, ref: FrechetReference) -> float:
    """FID of ``feats`` against the reference (equals clean-fid's ``frechet_distance`` to rounding)."""
    f = np.asarray(feats, dtype=np.float64)
    return float(frechet_resamples(f, ref, np.arange(len(f))[None])[0])


def frechet_resamples(feats, ref: FrechetReference, idx: np.ndarray) -> np.ndarray:
    """FID of the resampled rows ``feats[idx[b]]`` against the fixed reference, for every b."""
    # Z = X S_r^{1/2}: cov(Z[I_b]) = S_r^{1/2} S_b S_r^{1/2}, whose eigenvalues are those of S_b S_r
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(ref.mu):
        raise OptstepsError(f"features {x.shape} do not match the reference dimension {len(ref.mu)}.")
    z = x @ ref.sqrt_cov
    out = np.empty(len(idx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, rows in enumerate(idx):
            xb = x[rows]
            mu = xb.mean(0)
            tr = float(((xb - mu) ** 2).sum()) / (len(rows) - 1)
            zb = z[rows]
            out[b] = frechet_distance(mu, tr, _trace_sqrt(zb - zb.mean(0)), ref)
    return out


# ---- KID -------------------------------------------------------------------------------------------


def _cubic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # k(x, y) = (xᵀy / d + 1)³, clean-fid's polynomial kernel
    return (a @ b.T / a.shape[1] + 1.0) ** 3


@dataclass(frozen=True)
class KernelReference:
    """A fixed reference set for KID and its mean off-diagonal kernel value k̄_yy."""

    feats: np.ndarray
    mean_yy: float


def kernel_reference(feats) -> KernelReference:
    # k̄_yy = Σ_{i≠j} k(y_i, y_j) / (m (m − 1))
    y = _reference_features(feats)
    k = _cubic(y, y)
    m = len(y)
    return KernelReference(y, float((k.sum() - np.trace(k)) / (m * (m - 1))))


def counts(idx: np.ndarray, n: int) -> np.ndarray:
    """w[b, i] = how often sample i occurs in resample b."""
    w = np.zeros((len(idx), n))
    np.add.at(w, (np.repeat(np.arange(len(idx)), idx.shape[1]), idx.ravel()), 1.0)
    return w


def kid_resamples(feats, ref: KernelReference, idx: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of each resample ``feats[idx[b]]`` against the whole fixed reference."""
    # MMD²_b = (wᵀK_xx w − w·diag K_xx) / (n(n − 1)) + k̄_yy − 2 wᵀ(K_xy 1) / (n m), w = counts of resample b
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != ref.feats.shape[1]:
        raise OptstepsError(f"features {x.shape} do not match the reference dimension {ref.feats.shape[1]}.")
    kxx = _cubic(x, x)
    kxy = _cubic(x, ref.feats).sum(axis=1)
    n, m = idx.shape[1], len(ref.feats)
    w = counts(idx, len(x))
    quad = np.einsum("bi,bi->b", w @ kxx, w) - w @ np.diag(kxx)
    return quad / (n * (n - 1)) + ref.mean_yy - 2.0 * (w @ kxy) / (n * m)


def paired_kid_resamples(feats, ref_feats, idx: np.ndarray) -> np.ndarray:
    """MMD² of paired sets (x_i, y_i share a seed: the student's and the teacher's sample of one noise) on each
    resample of the *pairs*, without the paired diagonal: the U-statistic over distinct pairs i ≠ j."""
    # h_ij = k(x_i,x_j) + k(y_i,y_j) − k(x_i,y_j) − k(x_j,y_i);  MMD²_b = Σ_{i≠j} w_i w_j h_ij / Σ_{i≠j} w_i w_j
    # (Gretton et al. 2012, eq. 3, on the pairs; i = j is left out: k(x_i, y_i) of a shared seed is not a draw from
    # two independent sets, and including it biases MMD² below 0 for a student close to the teacher)
    x, y = np.asarray(feats, dtype=np.float64), np.asarray(ref_feats, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise OptstepsError(f"paired features must have one shape, got {x.shape} and {y.shape}.")
    kxy = _cubic(x, y)
    h = _cubic(x, x) + _cubic(y, y) - kxy - kxy.T
    w = counts(idx, len(x))
    num = np.einsum("bi,bi->b", w @ h, w) - (w * w) @ np.diag(h)
    den = w.sum(1) ** 2 - (w * w).sum(1)
    # a resample that drew one pair every time has no i ≠ j: MMD² is undefined there (NaN, left out of intervals)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def paired_kid(feats, ref_feats) -> float:
    """``paired_kid_resamples`` on the samples themselves: 0 exactly when x = y."""
    f = np.asarray(feats, dtype=np.float64)
    return float(paired_kid_resamples(f, ref_feats, np.arange(len(f))[None])[0])


def _sym_root(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def paired_frechet_resamples(feats, ref_feats, idx: np.ndarray) -> np.ndarray:
    """FID between x[I_b] and y[I_b] for every resample of the pairs (both sets resampled on the same indices, so
    each resample keeps the pairing), clipped at 0 (rounding)."""
    # FID_b = ‖μ_x − μ_y‖² + tr S_x + tr S_y − 2 Σ σ_k(R_y R_x), R = S^{1/2} (D ≤ n) or Σ σ_k(Yc Xcᵀ)/(n − 1) (n < D):
    # the eigenvalues of S_x S_y are the squared singular values of either factorisation
    x, y = np.asarray(feats, dtype=np.float64), np.asarray(ref_feats, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise OptstepsError(f"paired features must have one shape, got {x.shape} and {y.shape}.")
    out = np.empty(len(idx))
    for b, rows in enumerate(idx):
        xb, yb = x[rows], y[rows]
        xc, yc = xb - xb.mean(0), yb - yb.mean(0)
        n, d = xc.shape
        if d <= n:
            sx, sy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1)
            nuc = np.linalg.svd(_sym_root(sy) @ _sym_root(sx), compute_uv=False).sum()
            tr = np.trace(sx) + np.trace(sy)
        else:
            nuc = np.linalg.svd(yc @ xc.T / (n - 1), compute_uv=False).sum()
            tr = ((xc**2).sum() + (yc**2).sum()) / (n - 1)
        out[b] = max(0.0, float(((xb.mean(0) - yb.mean(0)) ** 2).sum() + tr - 2.0 * nuc))
    return out


def paired_frechet(feats, ref_feats) -> float:
    f = np.asarray(feats, dtype=np.float64)
    return float(paired_frechet_resamples(f, ref_feats, np.arange(len(f))[None])[0])


def kid_full(feats, ref: KernelReference) -> float:
    """The same estimator on the samples themselves (no resampling)."""
    f = np.asarray(feats, dtype=np.float64)
    return float(kid_resamples(f, ref, np.arange(len(f))[None])[0])


__all__ = [
    "CI_LEVEL",
    "higher_is_better",
    "resample_indices",
    "resample_means",
    "centred_interval",
    "paired_difference",
    "excludes_zero",
    "metric_range",
    "metric_interval",
    "paired_kid_resamples",
    "paired_kid",
    "paired_frechet_resamples",
    "paired_frechet",
    "FrechetReference",
    "frechet_reference",
    "frechet_from_features",
    "frechet_resamples",
    "KernelReference",
    "kernel_reference",
    "kid_resamples",
    "kid_full",
    "counts",
]
