"""Teacher-trajectory throughput on Ray actors: 1 actor vs 2 actors on one local Ray instance.

    .venv/bin/python benchmarks/bench_actors.py [--model digits] [--samples 64] [--shard-size 16] [--cpus 2]

Each actor runs ``torch.set_num_threads(1)`` (``OMP_NUM_THREADS=1``) and computes whole shards with the
teacher of params.yaml (``teacher.steps`` steps of ``teacher.solver``); the driver writes the safetensors
shards and the manifest, exactly as ``optsteps trajectories`` with ``ray.enabled: true`` does
(``optsteps.integrations.ray_pool.ray_runner``). Reported per actor count:

- ``ready_s``: actor start (process, imports, model load), timed by waiting on one call to every actor;
- ``gen_s``: from all actors ready to the last shard written (steady-state throughput = samples / gen_s);
- ``end_to_end``: samples / (ready_s + gen_s).

The model: ``artifacts/models/<model>`` if it exists; otherwise ``digits`` is trained tiny (60 steps) into a
temp dir (throughput depends on the network's size, not on how well it is trained). ``--model gmm`` uses
the analytic Gaussian mixture (no network). Also prints the bytes each trajectory occupies in a shard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
for k, v in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_SCHEDULER_EVENTS": "0"}.items():
    os.environ.setdefault(k, v)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def model_artifacts(name: str, work: Path, params) -> str:
    """The artifacts folder holding ``name`` (trained tiny into ``work`` if the repo has none)."""
    from optsteps.models import model_record

    if name == "gmm" or model_record(params.artifacts, name).is_file():
        return str(Path(params.artifacts).resolve())
    from optsteps.models.digits import train_digits
    from optsteps.pipeline.config import TrainConfig

    art = work / "artifacts"
    print(f"no trained {name} under {params.artifacts}; training a tiny one (60 steps) in {art}", flush=True)
    train_digits(name, TrainConfig(steps=60, batch_size=64, warmup_steps=5, threads=1), art / "models" / name)
    return str(art)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--model", default="digits")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray instance")
    ap.add_argument("--steps", type=int, default=0, help="teacher steps (0: teacher.steps of params.yaml)")
    ap.add_argument("--json", default="", help="also write the results to this file")
    a = ap.parse_args(argv)

    import ray

    from optsteps.integrations.ray_pool import ray_runner
    from optsteps.models import load_model
    from optsteps.pipeline.config import RayConfig, load_params
    from optsteps.teacher.trajectories import generate_trajectories

    p = load_params(a.params)
    teacher = p.teacher if not a.steps else replace(p.teacher, steps=a.steps)
    work = Path(tempfile.mkdtemp(prefix="bench_actors_"))
    art = model_artifacts(a.model, work, p)
    model = load_model(a.model, art)
    ray.init(
        num_cpus=a.cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 2**20,
        _temp_dir=tempfile.mkdtemp(prefix="rb", dir="/tmp"),
    )
    print(
        f"model {a.model} ({art}), teacher {teacher.solver} {teacher.steps} steps "
        f"(guidance {teacher.guidance}: {1 if teacher.guidance == 1.0 else 2} model evals/step), "
        f"{a.samples} samples in shards of {a.shard_size}, Ray num_cpus={a.cpus}, 1 torch thread per actor; "
        f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other work skews the ratio)",
        flush=True,
    )
    results = {}
    try:
        for n in (1, 2):
            cfg = RayConfig(enabled=True, actors=n, max_restarts=0, task_timeout_s=1800)
            out = work / f"traj-{n}"
            marks = {}

            def on_actors(actors, marks=marks):
                marks["created"] = time.perf_counter()
                ray.get([x.pid.remote() for x in actors])  # every actor has imported torch and loaded the model
                marks["ready"] = time.perf_counter()

            t0 = time.perf_counter()
            man = generate_trajectories(
                model,
                teacher,
                out,
                a.samples,
                a.shard_size,
                progress=False,
                runner=ray_runner(a.model, art, teacher, out, cfg, on_actors=on_actors),
            )
            t1 = time.perf_counter()
            ready, gen = marks["ready"] - t0, t1 - marks["ready"]
            size = sum((out / e["file"]).stat().st_size for e in man["shards"])
            results[n] = {
                "actors": n,
                "ready_s": round(ready, 2),
                "gen_s": round(gen, 2),
                "samples_per_s": round(a.samples / gen, 3),
                "end_to_end_samples_per_s": round(a.samples / (t1 - t0), 3),
                "shard_bytes_per_sample": round(size / a.samples),
                "nodes": sorted({e["node"][:8] for e in man["shards"]}),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
            print(json.dumps(results[n]), flush=True)
    finally:
        ray.shutdown()
    ratio = results[2]["samples_per_s"] / results[1]["samples_per_s"]
    ratio_e2e = results[2]["end_to_end_samples_per_s"] / results[1]["end_to_end_samples_per_s"]
    print(
        f"2 actors / 1 actor: {ratio:.2f}x steady-state ({results[1]['samples_per_s']:.2f} -> "
        f"{results[2]['samples_per_s']:.2f} samples/s), {ratio_e2e:.2f}x end to end incl. actor start"
    )
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "results": results,
                    "ratio": ratio,
                    "ratio_end_to_end": ratio_e2e,
                    "teacher": teacher.__dict__,
                    "model": a.model,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
