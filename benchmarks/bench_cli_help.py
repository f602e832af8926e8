"""`optsteps --help` wall time against `python -c pass` (the interpreter's own start), median of repeats.

.venv/bin/python benchmarks/bench_cli_help.py [--repeats 7]
"""

import argparse
import statistics
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--repeats", type=int, default=7)
a = ap.parse_args()


def wall(cmd):
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


base = wall([sys.executable, "-c", "pass"])
cli = wall([sys.executable, "-m", "optsteps.cli.main", "--help"])
print(
    f"python -c pass {base:.3f} s | optsteps --help {cli:.3f} s | ratio {cli / base:.1f}x | "
    f"goal --help < 0.5 s: {'met' if cli < 0.5 else 'missed'}"
)
