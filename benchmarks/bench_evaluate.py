"""Wall time of the evaluate stage with and without the paired bootstrap intervals, as a ratio (goal ≤ 1.5).

Runs ``optsteps.pipeline.stages.evaluate`` on the params' grid (default ``params.yaml``: digits, the baselines at
``evaluate.baseline_nfe``, every optimized schedule on disk, 1,000 samples) in this process, with the params'
bootstrap (or ``--bootstrap``), into the params' results folder: those are the stage's real outputs.

- default (paired, for a shared machine): in that one run every row's metrics are computed twice on the same
  samples, without intervals (timed, then discarded) and with them (the stage's output). The stage's wall time
  with intervals is the run's wall time minus the extra calls; without intervals it is that minus the rows' extra
  cost of the intervals. Both come from the same run under the same load.
- ``--two-runs``: the stage twice, first without intervals into a temporary folder, then with them.

The caches (reference features, the teacher's endpoints on the evaluation seeds) are warmed first, so the ratio is
the cost of the intervals alone; the warm-up prints the teacher's own cost. ``--old-code DIR`` also times the stage
of another checkout (e.g. ``git archive <commit> | tar -x -C DIR``) in a subprocess on the same artifacts and
schedules, with its own params.yaml (that code caches no teacher).

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
    ap.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        help="resamples of the run with intervals (default: evaluate.bootstrap of --params)",
    )
    ap.add_argument("--two-runs", action="store_true", help="two full stage runs instead of the paired timing")
    ap.add_argument("--old-code", default=None, help="a checkout whose evaluate stage is timed too (subprocess)")
    args = ap.parse_args(argv)

    from optsteps.evaluate.run import Evaluator, teacher_endpoints
    from optsteps.models import load_model
    from optsteps.pipeline import stages
    from optsteps.pipeline.config import load_params

    p = load_params(args.params)
    boot = p.evaluate.bootstrap if args.bootstrap is None else args.bootstrap
    if boot < 1:
        raise SystemExit("the run with intervals needs bootstrap ≥ 1")
    ev = p.evaluate
    t0 = time.perf_counter()
    teacher_endpoints(
        load_model(args.model, p.artifacts), p.teacher, ev.n, ev.seed, 0, ev.guidance, cache_dir=ev.cache_dir
    )  # warm: the timed runs read the teacher from the cache
    warm = time.perf_counter() - t0
    print(
        f"warm-up (model load + teacher endpoints into {ev.cache_dir}; only the load if they were cached): "
        f"{warm:.1f} s",
        flush=True,
    )
    rows = len(stages.evaluation_schedules(p, args.model))
    q = dataclasses.replace(p, evaluate=dataclasses.replace(ev, bootstrap=boot))
    what = f"evaluate {args.model}, {rows} rows + teacher × {ev.n} samples"
    if args.two_runs:
        times = {}
        with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
            shutil.copytree(Path(p.results) / "schedules", Path(tmp) / "schedules")  # the optimized rows
            for label, qq in (
                ("without", dataclasses.replace(q, results=tmp, evaluate=dataclasses.replace(ev, bootstrap=0))),
                ("with", q),
            ):
                t0 = time.perf_counter()
                stages.evaluate(qq, args.model)
                times[label] = time.perf_counter() - t0
                print(f"{what}, {label} intervals: {times[label]:.1f} s", flush=True)
        with_s, without_s = times["with"], times["without"]
    else:
        extra = {"without_calls": 0.0, "with_calls": 0.0}
        measure = Evaluator.measure

        def timed(self, x, labels, images=None, reference_row=False):
            b = self.bootstrap
            t0 = time.perf_counter()
            self.bootstrap = 0
            try:
                measure(self, x, labels, images, reference_row)  # the same metrics without intervals, discarded
            finally:
                self.bootstrap = b
            t1 = time.perf_counter()
            out = measure(self, x, labels, images, reference_row)
            extra["without_calls"] += t1 - t0
            extra["with_calls"] += time.perf_counter() - t1
            return out

        Evaluator.measure = timed
        try:
            t0 = time.perf_counter()
            stages.evaluate(q, args.model)
            wall = time.perf_counter() - t0
        finally:
            Evaluator.measure = measure
        with_s = wall - extra["without_calls"]
        without_s = with_s - (extra["with_calls"] - extra["without_calls"])
        print(
            f"{what} (one run, every row's metrics timed without and with intervals on the same samples): "
            f"wall {wall:.1f} s, of it metrics without intervals {extra['without_calls']:.1f} s (extra calls) and "
            f"with intervals {extra['with_calls']:.1f} s",
            flush=True,
        )
        print(f"{what}, without intervals: {without_s:.1f} s; with intervals (bootstrap {boot}): {with_s:.1f} s")
    print(f"ratio with / without intervals: {with_s / without_s:.3f}")
    if args.old_code:
        old = Path(args.old_code).resolve()
        with tempfile.TemporaryDirectory(prefix="bench-evaluate-old-") as tmp:
            shutil.copytree(Path(p.results) / "schedules", Path(tmp) / "results" / "schedules")
            os.symlink(Path(p.artifacts).resolve(), Path(tmp) / "artifacts")
            shutil.copy(old / "params.yaml", Path(tmp) / "params.yaml")
            env = {**os.environ, "PYTHONPATH": str(old)}
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "optsteps.cli.main", "stage", "evaluate", "--model", args.model],
                cwd=tmp,
                env=env,
                check=True,
            )
            old_s = time.perf_counter() - t0
        print(
            f"old code ({old}, its own params.yaml and grid, teacher sampled): {old_s:.1f} s; this code with "
            f"intervals / old: {with_s / old_s:.3f} with the teacher cached, {(with_s + warm) / old_s:.3f} with the "
            "warm-up added"
        )


if __name__ == "__main__":
    main()
