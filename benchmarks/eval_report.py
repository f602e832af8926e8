"""The README's evaluation tables from the evaluate stage's outputs (results/eval/<model>.json, -bootstrap.npz and
-summary.json): per solver, chosen metrics at chosen NFEs with their 95 % intervals (bold: the best of a column,
only where its paired difference to the runner-up excludes 0), the paired differences of the optimized methods
to the best baseline, and the speedup rows against the best baseline.

    PYTHONPATH=. .venv/bin/python benchmarks/eval_report.py --model digits --solver unipc --nfe 5 10
"""

from __future__ import annotations

import argparse
import json

NAMES = {
    "uniform-t": "uniform-t",
    "uniform-lambda": "uniform-λ",
    "karras": "Karras",
    "time-quadratic": "time-quadratic",
    "lambda-opt": "λ-optimizer",
    "gits": "GITS",
    "oss": "OSS",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--solver", nargs="+", default=["unipc"])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--metrics", nargs="+", default=["fid_digitsnet", "fid_teacher_digitsnet", "l2_to_teacher"])
    args = ap.parse_args(argv)

    from optsteps.evaluate.run import best_if_significant
    from optsteps.evaluate.speedup import best_baseline
    from optsteps.pipeline import layout, stages
    from optsteps.pipeline.config import load_params

    p = load_params(args.params)
    rows = json.loads(layout.eval_path(p, args.model).read_text())
    res = stages.load_resamples(p, args.model, len(rows))
    summary = json.loads(layout.summary_path(p, args.model).read_text())
    t = rows[0]
    print(
        f"{args.model}: {t['n']} held-out samples (seed {t['seed']}), teacher {t['solver']}-{t['nfe']}, "
        f"evaluation {t['evaluation_id']}, bootstrap {t.get('bootstrap')}"
    )
    for solver in args.solver:
        cells = {
            (r["method"], r["nfe"]): (r, x)
            for r, x in zip(rows, res)
            if r["solver"] == solver and r["method"] != "teacher"
        }
        head = ["schedule"] + [f"NFE {k} {m}" for k in args.nfe for m in args.metrics]
        print(f"\n{solver}; teacher: " + ", ".join(f"{m} {t[m]:.4g}" for m in args.metrics if m in t) + "\n")
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        best = {
            (k, m): best_if_significant([c for (_, kk), c in cells.items() if kk == k], m)
            for k in args.nfe
            for m in args.metrics
        }
        for method in NAMES:
            if not any((method, k) in cells for k in args.nfe):
                continue
            vals = []
            for k in args.nfe:
                for m in args.metrics:
                    r = cells.get((method, k), (None,))[0]
                    if r is None or m not in r:
                        vals.append("")
                        continue
                    v = f"{r[m]:.3g}" if abs(r[m]) < 1 else f"{r[m]:.2f}"
                    lo, hi = r["ci95"][m]
                    bound = lambda z: f"{z:.3g}" if abs(r[m]) < 1 else f"{z:.2f}"
                    vals.append((f"**{v}**" if best[(k, m)] is r else v) + f" [{bound(lo)}, {bound(hi)}]")
            print("| " + " | ".join([NAMES[method]] + vals) + " |")
        print(f"\n{solver}: paired difference to the best baseline (Δ [95 % interval], * = excludes 0)")
        for method in ("lambda-opt", "gits", "oss"):
            for k in args.nfe:
                r = cells.get((method, k), (None,))[0]
                if r is None:
                    continue
                parts = [
                    f"{m} vs {d['baseline']}: {d['diff']:+.3g} [{d['ci95'][0]:+.3g}, {d['ci95'][1]:+.3g}]"
                    + ("*" if d["significant"] else "")
                    for m, d in r.get("vs_best_baseline", {}).items()
                    if m in args.metrics
                ]
                print(f"  {NAMES[method]} NFE {k}: " + "; ".join(parts))
        print(f"\n{solver}: speedup against the best baseline (results/eval/{args.model}-summary.json)")
        for e in best_baseline([e for e in summary if e["solver"] == solver]):
            cens = {
                None: "",
                "<=": " (censored: ≤, reached at the smallest baseline NFE)",
                ">": " (censored: >, not reached by the largest baseline NFE)",
            }[e["censored"]]
            print(
                f"  {NAMES.get(e['method'], e['method'])} at NFE {e['nfe']} ({e['metric']} {e['value']:.4g}) = "
                f"{NAMES.get(e['baseline'], e['baseline'])} at NFE {e['baseline_nfe']:.1f}: speedup {e['speedup']:.2f}"
                + cens
            )


if __name__ == "__main__":
    main()
