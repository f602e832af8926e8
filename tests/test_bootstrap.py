"""The paired bootstrap (docs/algorithms.md §7): coverage of the interval of a mean, exact zero for a row paired with
itself, the resampled FID/KID against closed forms and clean-fid, the champion gate, and the speedup interpolation."""

import math

import numpy as np
import pytest
from scipy import linalg

from optsteps.errors import OptstepsError
from optsteps.evaluate import bootstrap as bs
from optsteps.evaluate.champion import Entry, Standing, standings
from optsteps.evaluate.fid import fid_from_features, kid_from_features
from optsteps.evaluate.speedup import best_baseline, equivalent_nfe, speedup_table


def test_interval_of_a_gaussian_mean_covers_the_true_mean_at_the_nominal_rate():
    g = np.random.default_rng(12345)
    mu, reps, n = 1.3, 200, 200
    hits = 0
    for rep in range(reps):
        x = g.normal(mu, 2.0, size=n)
        idx = bs.resample_indices(n, 1000, seed=rep)
        lo, hi = bs.centred_interval(x.mean(), bs.resample_means(x, idx))
        hits += lo <= mu <= hi
    assert 0.91 <= hits / reps <= 0.99, hits / reps  # 95 ± 4 % of 200 seeded repetitions


def test_stratified_resamples_keep_the_design_and_cover_its_mean():
    """Labels are a design (sample i asks for class i mod C): resampling within each label keeps the counts, and the
    interval covers the design's mean at the nominal rate; an unstratified one adds the spread of random counts."""
    g = np.random.default_rng(7)
    n, reps = 200, 200
    lab = np.arange(n) % 4
    means = np.array([0.0, 5.0, 10.0, 15.0])[lab]
    idx = bs.resample_indices(n, 1000, 3, strata=lab)
    assert all((np.bincount(lab[row], minlength=4) == 50).all() for row in idx)
    hits, ratio = 0, []
    for _ in range(reps):
        x = means + g.normal(0, 1.0, n)
        lo, hi = bs.centred_interval(x.mean(), bs.resample_means(x, idx))
        hits += lo <= means.mean() <= hi
        ulo, uhi = bs.centred_interval(x.mean(), bs.resample_means(x, bs.resample_indices(n, 1000, 3)))
        ratio.append((uhi - ulo) / (hi - lo))
    assert 0.91 <= hits / reps <= 0.99, hits / reps
    assert np.mean(ratio) > 4  # between-class spread (sd 5.6) against within-class (sd 1)
    with pytest.raises(OptstepsError, match="strata"):
        bs.resample_indices(n, 10, 0, strata=lab[:-1])


def test_interval_width_matches_the_standard_error():
    g = np.random.default_rng(0)
    x = g.normal(0.0, 1.0, size=400)
    lo, hi = bs.centred_interval(x.mean(), bs.resample_means(x, bs.resample_indices(400, 4000, 1)))
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std(ddof=1) / math.sqrt(400), rel=0.08)
    assert lo < x.mean() < hi


def test_a_row_paired_with_itself_differs_by_exactly_zero():
    g = np.random.default_rng(1)
    feats = g.normal(size=(300, 16)) @ g.normal(size=(16, 16))
    ref = g.normal(size=(500, 16))
    idx = bs.resample_indices(300, 200, 7)
    fr, kr = bs.frechet_reference(ref), bs.kernel_reference(ref)
    for point, res in (
        (fid_from_features(feats, ref), bs.frechet_resamples(feats, fr, idx)),
        (kid_from_features(feats, ref, 0, 3), bs.kid_resamples(feats, kr, idx)),
        (1.5, bs.resample_means(g.normal(size=300), idx)),
    ):
        diff, (lo, hi) = bs.paired_difference(point, res, point, res.copy())
        assert diff == 0.0 and lo == 0.0 and hi == 0.0
        assert not bs.excludes_zero((lo, hi))


def test_paired_differences_see_what_unpaired_intervals_cannot():
    """Two rows sharing per-sample noise: their intervals overlap, their paired difference is clearly non-zero."""
    g = np.random.default_rng(2)
    common = g.normal(0, 1.0, size=500)
    a, b = common + 0.05 + g.normal(0, 0.05, 500), common + g.normal(0, 0.05, 500)
    idx = bs.resample_indices(500, 1000, 3)
    ra, rb = bs.resample_means(a, idx), bs.resample_means(b, idx)
    ia, ib = bs.centred_interval(a.mean(), ra), bs.centred_interval(b.mean(), rb)
    assert ia[0] < ib[1] and ib[0] < ia[1]  # overlapping
    diff, ci = bs.paired_difference(a.mean(), ra, b.mean(), rb)
    assert diff == pytest.approx(a.mean() - b.mean()) and ci[0] > 0.03 and ci[1] < 0.07


def test_resample_indices_are_seeded_and_in_range():
    a, b = bs.resample_indices(50, 30, 4), bs.resample_indices(50, 30, 4)
    assert a.shape == (30, 50) and np.array_equal(a, b) and a.min() >= 0 and a.max() < 50
    assert not np.array_equal(a, bs.resample_indices(50, 30, 5))
    w = bs.counts(a, 50)
    assert w.shape == (30, 50) and (w.sum(1) == 50).all() and w[0, a[0, 0]] >= 1
    with pytest.raises(OptstepsError):
        bs.resample_indices(1, 10, 0)


@pytest.mark.parametrize("n,d", [(400, 12), (30, 64)])  # D ≤ n (D×D eigenproblem) and D > n (n×n Gram)
def test_resampled_frechet_distance_equals_clean_fid(n, d):
    g = np.random.default_rng(n)
    ref = np.maximum(g.normal(size=(n + 50, d)), 0)  # ReLU-like, singular-ish covariance
    x = np.maximum(g.normal(size=(n, d)) + 0.3, 0)
    fr = bs.frechet_reference(ref)
    assert bs.frechet_from_features(x, fr) == pytest.approx(fid_from_features(x, ref), rel=1e-6, abs=1e-8)
    idx = bs.resample_indices(n, 5, 0)
    res = bs.frechet_resamples(x, fr, idx)
    for b in range(5):
        assert res[b] == pytest.approx(fid_from_features(x[idx[b]], ref), rel=1e-6, abs=1e-8)


def test_resampled_kid_is_the_unbiased_mmd_on_the_resample():
    g = np.random.default_rng(3)
    x, y = g.normal(size=(60, 8)), g.normal(size=(60, 8)) + 0.2
    k = lambda a, b: (a @ b.T / 8 + 1) ** 3  # noqa: E731

    def mmd(a, b):  # the unbiased estimator over index positions (duplicates are distinct positions)
        kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
        n, m = len(a), len(b)
        return (
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        )

    ref = bs.kernel_reference(y)
    assert bs.kid_full(x, ref) == pytest.approx(mmd(x, y), rel=1e-10)
    # equal sizes: clean-fid's subset estimator draws the whole sets, so it is the same number
    assert bs.kid_full(x, ref) == pytest.approx(kid_from_features(x, y, seed=0, subsets=1), rel=1e-10)
    idx = bs.resample_indices(60, 4, 1)
    res = bs.kid_resamples(x, ref, idx)
    for b in range(4):
        assert res[b] == pytest.approx(mmd(x[idx[b]], y), rel=1e-9)


def test_frechet_reference_root_squares_to_the_covariance():
    g = np.random.default_rng(4)
    f = g.normal(size=(200, 6)) @ g.normal(size=(6, 6))
    r = bs.frechet_reference(f)
    np.testing.assert_allclose(r.sqrt_cov @ r.sqrt_cov, np.cov(f, rowvar=False), atol=1e-10)
    np.testing.assert_allclose(r.sqrt_cov, linalg.sqrtm(np.cov(f, rowvar=False)).real, atol=1e-8)


# ---- champions: the standings of one evaluation --------------------------------------------------------


def test_the_best_value_is_champion_and_its_lead_is_paired():
    g = np.random.default_rng(5)
    base = 5.0 + g.normal(0, 0.2, 200)
    entries = [
        Entry("a", 5.0, base),
        Entry("b", 4.0, base - 1.0 + g.normal(0, 0.05, 200)),
        Entry("c", 4.9, base - 0.1 + g.normal(0, 0.05, 200)),
    ]
    st = standings("fid_digitsnet", entries)
    assert [s.key for s in st] == ["b", "c", "a"] and st[0].champion and (st[0].rank, st[0].of) == (1, 3)
    lead = st[0]  # champion − runner-up, a significant lead
    assert lead.compared_with == "c" and lead.diff == pytest.approx(-0.9) and lead.ci95[1] < 0
    assert lead.significance == "significant"
    assert st[1].compared_with == "b" and st[1].diff == pytest.approx(0.9) and st[1].ci95[0] > 0
    for perm in ([2, 0, 1], [1, 2, 0], [0, 2, 1]):  # the order the versions come in does not matter
        assert standings("fid_digitsnet", [entries[i] for i in perm]) == st
    noisy = standings("fid_digitsnet", [Entry("a", 5.0, base), Entry("n", 4.9, base - 0.1 + g.normal(0, 1.0, 200))])
    assert noisy[0].key == "n" and noisy[0].ci95[0] < 0 < noisy[0].ci95[1]  # best, but its lead is within the noise
    assert noisy[0].significance == noisy[1].significance == "not_significant"


def test_a_tie_is_not_significant_and_ties_break_by_key():
    r = np.linspace(4, 6, 50)
    st = standings("fid_digitsnet", [Entry("z", 5.0, r), Entry("y", 5.0, r.copy())])
    assert [s.key for s in st] == ["y", "z"] and st[0].diff == 0.0 and st[0].ci95 == (0.0, 0.0)
    assert st[0].significance == st[1].significance == "not_significant"


def test_standings_without_resamples_alone_and_higher_is_better():
    assert standings("l2_to_teacher", [Entry("a", 1.0)]) == [Standing("a", 1, 1)]
    assert standings("l2_to_teacher", [Entry("a", 1.0)])[0].significance == "alone"
    st = standings("l2_to_teacher", [Entry("a", 1.0), Entry("b", 0.9)])
    assert st[0].key == "b" and st[0].significance == "point_only" and st[0].diff == pytest.approx(-0.1)
    champ = np.full(50, 30.0) + np.linspace(-1, 1, 50)
    up = standings("psnr_to_teacher", [Entry("a", 30.0, champ), Entry("b", 32.0, champ + 2.0)])
    assert up[0].key == "b" and up[0].diff == 2.0 and up[0].significance == "significant"
    assert standings("fid_digitsnet", []) == []


# ---- the speedup interpolation --------------------------------------------------------------------------

NFES = [4, 5, 6, 8, 10, 12, 15, 20]


@pytest.mark.parametrize("c,p", [(3.0, 1.7), (0.5, 0.6), (12.0, 2.4)])
def test_equivalent_nfe_is_exact_on_a_power_law(c, p):
    vals = [c * n**-p for n in NFES]
    for n_true in (4.0, 4.37, 7.3, 11.99, 13.0, 19.5, 20.0):
        n_star, cens = equivalent_nfe(NFES, vals, c * n_true**-p)
        assert cens is None or (cens == "<=" and n_true == 4.0)
        assert n_star == pytest.approx(n_true, rel=1e-12)


def test_equivalent_nfe_censors_outside_the_range_and_takes_the_first_crossing():
    vals = [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1]
    assert equivalent_nfe(NFES, vals, 2.0) == (4.0, "<=")
    assert equivalent_nfe(NFES, vals, 0.05) == (20.0, ">")
    bumpy = [1.0, 0.5, 0.7, 0.45, 0.3, 0.2, 0.15, 0.1]  # reaches 0.6 between 4 and 5 first
    n_star, cens = equivalent_nfe(NFES, bumpy, 0.6)
    assert cens is None and 4 < n_star < 5
    with pytest.raises(OptstepsError, match="positive"):
        equivalent_nfe(NFES, [1.0] * 7 + [-0.1], 0.5)


def test_speedup_table_on_synthetic_rows():
    rows = [{"method": "teacher", "solver": "unipc", "nfe": 100, "l2_to_teacher": 0.0}]
    for b, c in (("uniform-t", 8.0), ("karras", 4.0)):
        rows += [{"method": b, "solver": "unipc", "nfe": n, "l2_to_teacher": c * n**-1.5} for n in NFES]
    rows.append({"method": "oss", "solver": "unipc", "nfe": 5, "l2_to_teacher": 4.0 * 7.5**-1.5})
    entries = speedup_table(rows, metrics=("l2_to_teacher",))
    assert {e["baseline"] for e in entries} == {"uniform-t", "karras"} and len(entries) == 2
    k = next(e for e in entries if e["baseline"] == "karras")
    assert k["baseline_nfe"] == pytest.approx(7.5) and k["speedup"] == pytest.approx(1.5) and k["censored"] is None
    u = next(e for e in entries if e["baseline"] == "uniform-t")
    assert u["baseline_nfe"] == pytest.approx(7.5 * 2 ** (1 / 1.5), rel=1e-3)
    (best,) = best_baseline(entries)
    assert best["baseline"] == "karras"
    assert set(best) >= {"method", "solver", "nfe", "metric", "baseline", "baseline_nfe", "speedup"}


# ---- paired (teacher-referenced) FID and KID ----------------------------------------------------------------


def test_paired_kid_is_the_u_statistic_over_distinct_pairs():
    g = np.random.default_rng(7)
    x = g.normal(size=(30, 5))
    y = x + 0.1 * g.normal(size=(30, 5))
    k = lambda a, b: (a @ b.T / a.shape[1] + 1.0) ** 3  # noqa: E731
    n = len(x)
    brute = sum(
        k(x[i : i + 1], x[j : j + 1])[0, 0]
        + k(y[i : i + 1], y[j : j + 1])[0, 0]
        - k(x[i : i + 1], y[j : j + 1])[0, 0]
        - k(x[j : j + 1], y[i : i + 1])[0, 0]
        for i in range(n)
        for j in range(n)
        if i != j
    ) / (n * (n - 1))
    assert bs.paired_kid(x, y) == pytest.approx(brute, rel=1e-10)
    assert bs.paired_kid(x, x) == 0.0
    idx = bs.resample_indices(n, 5, 2)
    for b, rows in enumerate(idx):  # on a resample: the pairs of distinct original indices, with multiplicity
        w = np.bincount(rows, minlength=n).astype(float)
        num = sum(
            w[i] * w[j] * (k(x[[i]], x[[j]]) + k(y[[i]], y[[j]]) - k(x[[i]], y[[j]]) - k(x[[j]], y[[i]]))[0, 0]
            for i in range(n)
            for j in range(n)
            if i != j
        )
        den = sum(w[i] * w[j] for i in range(n) for j in range(n) if i != j)
        assert bs.paired_kid_resamples(x, y, idx)[b] == pytest.approx(num / den, rel=1e-9)
    # the estimator with the paired diagonal (y as an "independent" reference) is biased far below 0 for a student
    # close to the teacher (true MMD² ≈ 0): over 200 draws its mean is −0.6 ± 0.01; without the diagonal it is
    # 0 within its standard error
    old, new = [], []
    for _ in range(200):
        a = g.normal(size=(30, 5))
        b = a + 0.1 * g.normal(size=(30, 5))
        old.append(bs.kid_full(a, bs.kernel_reference(b)))
        new.append(bs.paired_kid(a, b))
    assert np.mean(old) < -20 * np.std(old) / np.sqrt(200)
    assert abs(np.mean(new)) < 3 * np.std(new) / np.sqrt(200) + 1e-4


def test_paired_frechet_equals_clean_fid_and_both_factorisations_agree():
    g = np.random.default_rng(8)
    x = g.normal(size=(40, 6)) @ g.normal(size=(6, 6))
    y = x + 0.3 * g.normal(size=(40, 6))
    assert bs.paired_frechet(x, y) == pytest.approx(fid_from_features(x, y), rel=1e-7)
    assert bs.paired_frechet(x, x) == pytest.approx(0.0, abs=1e-9)
    wide_x, wide_y = g.normal(size=(12, 20)), g.normal(size=(12, 20))  # n < D: the n×n factorisation
    assert bs.paired_frechet(wide_x, wide_y) == pytest.approx(fid_from_features(wide_x, wide_y), rel=1e-6)
    idx = bs.resample_indices(40, 6, 1)
    got = bs.paired_frechet_resamples(x, y, idx)
    for b, rows in enumerate(idx):
        assert got[b] == pytest.approx(fid_from_features(x[rows], y[rows]), rel=1e-6)


def test_reported_intervals_stay_in_the_metrics_range():
    g = np.random.default_rng(9)
    r = 0.05 + 0.2 * g.normal(size=200)  # a small FID with a wide spread: the centred interval would reach below 0
    assert bs.centred_interval(0.05, r)[0] < 0
    lo, hi = bs.metric_interval("fid_digitsnet", 0.05, r)
    assert lo == 0.0 < hi
    assert bs.metric_interval("kid_teacher_digitsnet", 0.0, np.zeros(10)) == (0.0, 0.0)
    assert bs.metric_interval("adherence_digitsnet", 0.99, 0.99 + 0.02 * g.normal(size=200))[1] <= 1.0
    p = 30 + g.normal(size=50)
    assert bs.metric_interval("psnr_to_teacher", 30.0, p) == bs.centred_interval(30.0, p)  # unbounded: unchanged


def test_a_kid_resample_of_one_distinct_pair_is_undefined_and_left_out_of_the_interval():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    idx = np.array([[0, 0, 0, 0], [0, 1, 2, 3], [1, 1, 2, 3]])
    r = bs.paired_kid_resamples(x, y, idx)
    assert np.isnan(r[0]) and np.isfinite(r[1:]).all()  # row 0 drew pair 0 four times: no i ≠ j
    lo, hi = bs.metric_interval("kid_teacher_inception", float(r[1]), r)
    assert np.isfinite([lo, hi]).all() and 0.0 <= lo <= hi
    assert all(np.isnan(bs.metric_interval("kid_teacher_inception", 0.0, [np.nan, np.nan])))
