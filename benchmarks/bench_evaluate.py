"""Wall time of the evaluate stage with and without the paired bootstrap intervals, as a ratio (goal ≤ 1.5).

Runs ``optsteps.pipeline.stages.evaluate`` on the params' grid (default ``params.yaml``: digits, the baselines at
``evaluate.baseline_nfe``, every optimized schedule on disk, 1,000 samples) in this process, first with
``evaluate.bootstrap = 0`` into a temporary results folder, then with the params' bootstrap (or ``--bootstrap``)
into the params' results folder (those are the stage's real outputs). The caches (reference features, the
teacher's endpoints on the evaluation seeds) are warmed first and are warm for both timed runs, so the ratio is
the cost of the intervals alone. ``--old-code DIR`` also times the stage of another checkout (e.g. the commit
before the intervals, ``git archive``d to DIR) in a subprocess on the same artifacts, cold (that code caches no
teacher), to compare the whole stage before and after.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_evaluate.py
    PYTHONPATH=. .venv/bin/python benchmarks/bench_evaluate.py --old-code /tmp/optsteps-before
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--bootstrap", type=int, default=None, help="resamples of the timed run with intervals "
                    "(default: evaluate.bootstrap of --params)")
    ap.add_argument("--old-code", default=None, help="a checkout whose evaluate stage is timed too (subprocess)")
    args = ap.parse_args(argv)

    from optsteps.evaluate.run import teacher_endpoints
    from optsteps.models import load_model
    from optsteps.pipeline import stages
    from optsteps.pipeline.config import load_params

    p = load_params(args.params)
    boot = p.evaluate.bootstrap if args.bootstrap is None else args.bootstrap
    if boot < 1:
        raise SystemExit("the run with intervals needs bootstrap ≥ 1")
    ev = p.evaluate
    t0 = time.perf_counter()
    teacher_endpoints(load_model(args.model, p.artifacts), p.teacher, ev.n, ev.seed, 0, ev.guidance,
                      cache_dir=ev.cache_dir)  # warm: both timed runs read the teacher from the cache
    warm = time.perf_counter() - t0
    print(f"warm-up (teacher endpoints into {ev.cache_dir}, 0 if they were cached already): {warm:.1f} s", flush=True)
    rows = len(stages.evaluation_schedules(p, args.model))
    times = {}
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        shutil.copytree(Path(p.results) / "schedules", Path(tmp) / "schedules")  # the optimized rows of the grid
        for label, bootstrap, results in (("without intervals", 0, tmp), ("with intervals", boot, p.results)):
            q = dataclasses.replace(p, results=results, evaluate=dataclasses.replace(ev, bootstrap=bootstrap))
            t0 = time.perf_counter()
            stages.evaluate(q, args.model)
            times[label] = time.perf_counter() - t0
            print(f"evaluate {args.model}, {rows} rows + teacher × {ev.n} samples, {label} (bootstrap {bootstrap}): "
                  f"{times[label]:.1f} s", flush=True)
    print(f"ratio with / without intervals: {times['with intervals'] / times['without intervals']:.3f}")
    if args.old_code:
        old = Path(args.old_code).resolve()
        with tempfile.TemporaryDirectory(prefix="bench-evaluate-old-") as tmp:
            shutil.copytree(Path(p.results) / "schedules", Path(tmp) / "results" / "schedules")
            os.symlink(Path(p.artifacts).resolve(), Path(tmp) / "artifacts")
            shutil.copy(old / "params.yaml", Path(tmp) / "params.yaml")
            env = {**os.environ, "PYTHONPATH": str(old)}
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "optsteps.cli.main", "stage", "evaluate", "--model", args.model],
                           cwd=tmp, env=env, check=True)
            old_s = time.perf_counter() - t0
        print(f"old code ({old}), its own params.yaml, cold teacher: {old_s:.1f} s; this code with intervals / old: "
              f"{times['with intervals'] / old_s:.3f} with the teacher cached, "
              f"{(times['with intervals'] + warm) / old_s:.3f} with the warm-up's teacher time added")


if __name__ == "__main__":
    main()
