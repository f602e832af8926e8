"""Compare the outputs of two runs of the pipeline (two checkouts, each after `optsteps trajectories`,
`optsteps stage lambda-opt`, `optsteps stage oss` and optionally `optsteps stage evaluate` for digits):
schedules field by field (all but wall-clock timings) with their exact times, teacher shard hashes, the
model hash and the evaluation rows.

    .venv/bin/python benchmarks/compare_runs.py RUN_A RUN_B
"""

import hashlib
import json
import sys
from pathlib import Path

TIMING = {"wall_time_s", "seconds_sampling", "seconds_metrics"}


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
same_bytes = same_content = 0
for r in sch_a:
    if r not in sch_b:
        continue
    da, db = json.loads((a / r).read_text()), json.loads((b / r).read_text())
    if sha(a / r) == sha(b / r):
        same_bytes += 1
    if strip(da) == strip(db) and da["t"] == db["t"]:
        same_content += 1
    else:
        ok = False
        print("DIFF", r, {k for k in set(da) | set(db) if da.get(k) != db.get(k)})
print(f"schedules: {len(sch_a)} files; identical bytes {same_bytes}; identical but for wall_time_s {same_content}")
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
