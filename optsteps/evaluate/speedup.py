"""The speedup figure (docs/algorithms.md §7.4): at which NFE does a baseline schedule reach the quality an
optimized schedule has at NFE K?

For a lower-is-better metric v (L2 or FID to the teacher) a baseline's curve is known at NFE N_1 < … < N_m.
Between two measured points it is interpolated linearly in (log N, log v), so a power law v = c·N^(−p) is
reproduced exactly; the equivalent NFE is the first crossing of the optimized value v* along increasing N,
and speedup = N*/K. Where the baseline is already at least as good at its smallest NFE, or never gets there
by its largest, the answer is censored: N* is that end of the range and ``censored`` says "<=" or ">".
"""

from __future__ import annotations

import math

from optsteps.core.baselines import BASELINES
from optsteps.errors import OptstepsError

SPEEDUP_METRICS = ("l2_to_teacher", "fid_teacher_inception", "fid_teacher_digitsnet")


def equivalent_nfe(nfes, values, target: float) -> tuple[float, str | None]:
    """(N*, censored) for a lower-is-better metric: the NFE at which the curve (nfes, values) first reaches
    ``target``; censored is None (interpolated), "<=" (reached at the smallest NFE already) or ">" (not
    reached by the largest)."""
    # log N* = log N₁ + (log v* − log v₁)(log N₂ − log N₁)/(log v₂ − log v₁) on the first segment with v₁ > v* ≥ v₂
    pts = sorted(zip((float(n) for n in nfes), (float(v) for v in values)))
    if not pts:
        raise OptstepsError("no baseline points to interpolate.")
    if len({n for n, _ in pts}) != len(pts):
        raise OptstepsError("a baseline curve has two values at one NFE.")
    if not (target > 0 and all(n > 0 and v > 0 and math.isfinite(v) for n, v in pts)):
        raise OptstepsError(
            "the speedup interpolates in log NFE and log value: NFEs and values must be positive and "
            f"finite (target {target}, curve {pts})."
        )
    if pts[0][1] <= target:
        return pts[0][0], "<="
    for (n1, v1), (n2, v2) in zip(pts, pts[1:]):
        if v1 > target >= v2:
            ln = math.log(n1) + (math.log(target) - math.log(v1)) * (math.log(n2) - math.log(n1)) / (
                math.log(v2) - math.log(v1)
            )
            return math.exp(ln), None
    return pts[-1][0], ">"


def speedup_table(rows: list[dict], metrics=SPEEDUP_METRICS, baselines=None) -> list[dict]:
    """One entry per (optimized method, solver, K, metric, baseline): ``{"method", "solver", "nfe", "metric",
    "value", "baseline", "baseline_nfe", "speedup", "censored"}``. ``baselines``: the baseline method names
    (default: the rows whose method is a baseline kind of ``optsteps.core.baselines``, i.e. those of
    ``evaluate.baselines``); the rows are those of ``evaluate_grid`` (the teacher row is ignored). Values that are
    not positive are left out (no logarithm): a row with one gets no entry, a baseline point with one is skipped."""
    rows = [r for r in rows if r.get("method") != "teacher"]
    base = set(baselines) if baselines is not None else {r["method"] for r in rows if r["method"] in BASELINES}
    out = []
    for metric in metrics:
        curves: dict = {}
        for r in rows:
            if r["method"] in base and metric in r:
                curves.setdefault((r["solver"], r["method"]), {})[int(r["nfe"])] = float(r[metric])
        for r in rows:
            if r["method"] in base or metric not in r or not (float(r[metric]) > 0 and math.isfinite(r[metric])):
                continue  # a value ≤ 0 (e.g. an FID of ~0 at tiny n) has no log: no entry
            for (solver, b), curve in sorted(curves.items()):
                curve = {k: v for k, v in curve.items() if v > 0 and math.isfinite(v)}
                if solver != r["solver"] or len(curve) < 2:
                    continue
                n_star, cens = equivalent_nfe(list(curve), list(curve.values()), float(r[metric]))
                out.append(
                    {
                        "method": r["method"],
                        "solver": solver,
                        "nfe": int(r["nfe"]),
                        "metric": metric,
                        "value": float(r[metric]),
                        "baseline": b,
                        "baseline_nfe": round(n_star, 3),
                        "speedup": round(n_star / int(r["nfe"]), 3),
                        "censored": cens,
                    }
                )
    return out


def best_baseline(entries: list[dict]) -> list[dict]:
    """Per (method, solver, K, metric) the entry of the baseline that needs the fewest NFE to match: the best
    baseline. A censored "<=" counts as its bound, ">" as above every interpolated value."""
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["method"], e["solver"], e["nfe"], e["metric"]), []).append(e)

    def key(e):
        return (e["censored"] == ">", e["baseline_nfe"])

    return [min(g, key=key) for _, g in sorted(groups.items())]


__all__ = ["SPEEDUP_METRICS", "equivalent_nfe", "speedup_table", "best_baseline"]
