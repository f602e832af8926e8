"""Compare the outputs of two runs of the pipeline (two checkouts, each after `optsteps trajectories`,
`optsteps stage lambda-opt`, `optsteps stage oss` and optionally `optsteps stage evaluate` for digits):
schedules field by field (all but wall-clock timings) with their exact times, teacher shard hashes, the
model hash and the evaluation rows. The search's evaluation counters (``COUNTERS``: what a saving changes, e.g.
one DP for every K, the refinement's prefix cache) are compared apart: a run whose schedules differ only there
is identical in its results, and the counters' totals are printed for both runs.

    .venv/bin/python benchmarks/compare_runs.py RUN_A RUN_B
"""

import hashlib
import json
import sys
from pathlib import Path

TIMING = {"wall_time_s", "seconds_sampling", "seconds_metrics"}
COUNTERS = {"model_evals", "refine_model_evals", "refine_reused_evals", "dp_nfe"}


def counters(d: dict) -> dict:
    return {k: d[k] for k in COUNTERS if k in d}


def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in TIMING}
    if isinstance(o, list):
        return [strip(v) for v in o]
    return o


def sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


a, b = Path(sys.argv[1]), Path(sys.argv[2])
ok = True
sch_a = sorted(p.relative_to(a) for p in (a / "results/schedules").rglob("*.json"))
sch_b = sorted(p.relative_to(b) for p in (b / "results/schedules").rglob("*.json"))
if sch_a != sch_b:
    print("schedule file lists differ:", set(sch_a) ^ set(sch_b))
    ok = False
same_bytes = same_content = same_results = 0
spent = {"a": {}, "b": {}}  # (method, solver) → {counter: per-sample evaluations} (a shared DP counted once)
for r in sch_a:
    if r not in sch_b:
        continue
    da, db = json.loads((a / r).read_text()), json.loads((b / r).read_text())
    if sha(a / r) == sha(b / r):
        same_bytes += 1
    if strip(da) == strip(db) and da["t"] == db["t"]:
        same_content += 1
    elif {k: v for k, v in strip(da).items() if k not in COUNTERS} == {
        k: v for k, v in strip(db).items() if k not in COUNTERS
    } and da["t"] == db["t"]:
        same_results += 1
    else:
        ok = False
        print("DIFF", r, {k for k in set(da) | set(db) if da.get(k) != db.get(k)})
    for side, d in (("a", da), ("b", db)):
        key = (d.get("method"), d.get("solver"))
        tot = spent[side].setdefault(key, {"dp": {}, "refine": 0})
        tot["dp"][tuple(d.get("dp_nfe") or [d.get("nfe", len(d["t"]) - 1)])] = d.get("model_evals", 0)
        tot["refine"] += d.get("refine_model_evals", 0)
print(
    f"schedules: {len(sch_a)} files; identical bytes {same_bytes}; identical but for wall_time_s {same_content}; "
    f"identical but for wall_time_s and the evaluation counters {same_results}"
)
for key in sorted(spent["a"], key=str):
    ta, tb = spent["a"][key], spent["b"].get(key, {"dp": {}, "refine": 0})
    print(
        f"  {key[0]} {key[1]}: DP evaluations per sample {sum(ta['dp'].values())} → {sum(tb['dp'].values())}, "
        f"refinement {ta['refine']} → {tb['refine']}"
    )
for m in ("results/eval/digits.json",):
    if (a / m).is_file() and (b / m).is_file():
        ra, rb = strip(json.loads((a / m).read_text())), strip(json.loads((b / m).read_text()))
        print(f"{m}: {len(ra)} rows, identical but for timings: {ra == rb}")
        ok &= ra == rb
ma = json.loads((a / "artifacts/trajectories/digits/manifest.json").read_text())
mb = json.loads((b / "artifacts/trajectories/digits/manifest.json").read_text())
print(
    "shards: sha256 equal:",
    [e["sha256"] for e in ma["shards"]] == [e["sha256"] for e in mb["shards"]],
    "model_sha256 equal:",
    ma["model_sha256"] == mb["model_sha256"],
)
ok &= [e["sha256"] for e in ma["shards"]] == [e["sha256"] for e in mb["shards"]]
print("ALL IDENTICAL" if ok else "DIFFERENCES FOUND")
