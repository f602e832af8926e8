"""Teacher-trajectory shards on a pool of Ray actors.

Each actor loads the model once (a diffusers pipeline from its ``ModelEntry``: folder, prompts, guidance, size,
device and dtype) and computes whole shards (seed ranges); the driver reads only the model's identity
(``describe_model``: config files and weight digests, no network) and writes every shard (atomic rename) and the
manifest, so workers need no shared file system for the shards (a pipeline's folder, or hub cache, and its prompt
file must be at the same path on every node) and a shard is written exactly once. Actors are created with
``max_restarts``/``max_task_retries``: a killed actor is restarted and its in-flight shard recomputed (shards are
deterministic given the seed range, so the retry is identical).

GPU: an actor asks for ``num_gpus_per_actor`` only when the cluster reports GPUs
(``ray.cluster_resources()["GPU"]``); asking for a GPU on a CPU-only cluster would wait forever.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, replace

from optsteps.core.limits import MAX_SAMPLES
from optsteps.errors import OptstepsError
from optsteps.teacher.config import TeacherConfig


@dataclass
class RayConfig:
    """Ray for teacher trajectories. ``address`` empty: start a local instance; else connect (ray://… or host:port)."""

    enabled: bool = False
    address: str = ""
    actors: int = field(default=2, metadata={"range": (1, MAX_SAMPLES)})
    num_cpus: int = field(default=2, metadata={"range": (1, MAX_SAMPLES)})  # local instance only
    # requested only where the cluster has GPUs
    num_gpus_per_actor: float = field(default=1.0, metadata={"range": (0.0, 1024.0)})
    max_restarts: int = field(default=2, metadata={"range": (0, MAX_SAMPLES)})
    object_store_mb: int = field(default=512, metadata={"range": (64, MAX_SAMPLES)})
    task_timeout_s: float = field(default=1800.0, metadata={"range": (0.0, 1e7), "open": "both"})


RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_SCHEDULER_EVENTS": "0"}
LOOPBACK = "127.0.0.1"
# Ray's switch between a single-machine instance on the loopback address (its default on macOS and Windows) and a
# node other machines can join (its default on Linux): read when ray is first imported, by this process and by every
# process Ray starts
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_SAVED: list = []  # [the variable's value before this process set it] while a local instance's setting holds


def _local_only(on: bool) -> None:
    """Set (``on``) Ray's node address resolution for a local instance: the loopback address, which makes the GCS,
    raylet, workers and agents listen on 127.0.0.1 only; or (connecting to a cluster) undo that, back to what the
    environment said before."""
    if on and not _SAVED:
        _SAVED.append(os.environ.get(_LOCAL_ONLY_ENV))
    elif not on and _SAVED:
        old = _SAVED.pop()
        if old is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = old
    else:
        return
    if on:
        os.environ[_LOCAL_ONLY_ENV] = "0"  # set before ray's first import where possible; its processes inherit it
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray was imported before: the driver read the variable then
        env = os.environ.get(_LOCAL_ONLY_ENV)
        constants.ENABLE_RAY_CLUSTER = (
            env.lower() in ("true", "1") if env is not None else not constants.IS_WINDOWS_OR_OSX
        )


def init_ray(cfg: RayConfig):
    """Connect to ``cfg.address`` if set, else start a local instance that listens on 127.0.0.1 only (nothing on
    another interface: not the GCS, raylet, object manager, workers or agents; the dashboard is off). Call from the
    main thread."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return sys.modules["ray"]
    _local_only(not cfg.address)
    import ray

    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
        return ray
    ray.init(
        num_cpus=cfg.num_cpus or None,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=cfg.object_store_mb * 1024 * 1024,
        _node_ip_address=LOOPBACK,
    )
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:  # a Ray whose address rules changed: never leave an instance open to the network
        ray.shutdown()
        raise OptstepsError(
            f"the local Ray instance took the address {node_ip}, not {LOOPBACK}, so it would listen on the "
            "network; set ray.address to a cluster you run (`ray start --head --node-ip-address=127.0.0.1`), "
            "or run without --ray."
        )
    return ray


def gpus_per_actor(cfg: RayConfig) -> float:
    import ray

    have = ray.cluster_resources().get("GPU", 0.0)
    return float(cfg.num_gpus_per_actor) if have >= cfg.num_gpus_per_actor > 0 else 0.0


def make_actor_class(num_gpus: float, max_restarts: int):
    import ray

    @ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=max_restarts)
    class TeacherActor:
        """Loads the model once (a pipeline on its device in its dtype: the entry's, or the GPU Ray gave this
        actor) and computes whole shards."""

        def __init__(self, entry: dict, artifacts: str, teacher: dict):
            import torch

            from optsteps.models import ModelEntry, load_model

            torch.set_num_threads(1)
            e = ModelEntry(**entry)
            if num_gpus and e.device.startswith("cuda:"):  # Ray shows this actor only its own GPU(s), as cuda:0…
                e = replace(e, device="cuda")
            self.model = load_model(e, artifacts)
            self.teacher = TeacherConfig(**teacher)

        def shard(self, start: int, count: int):
            from optsteps.teacher.trajectories import run_teacher

            data = run_teacher(self.model, self.teacher, start, count)
            return start, count, {k: v.numpy() for k, v in data.items()}, ray.get_runtime_context().get_node_id()

        def device(self) -> str:
            return str(getattr(self.model, "device", "cpu"))

        def pid(self) -> int:
            return os.getpid()

    return TeacherActor


def _portable(entry, artifacts: str):
    """The entry and artifacts folder with local paths made absolute (an actor's working directory is Ray's)."""
    from pathlib import Path

    from optsteps.models import ModelEntry, entry_for

    e = entry if isinstance(entry, ModelEntry) else entry_for(entry, {})
    absolute = {k: str(Path(v).resolve()) for k in ("pipeline", "prompts") if (v := getattr(e, k)) and Path(v).exists()}
    return replace(e, **absolute), str(Path(artifacts).resolve())


def ray_runner(model, artifacts: str, teacher: TeacherConfig, out_dir, cfg: RayConfig, on_actors=None):
    """A ``runner`` for ``trajectories.generate_trajectories``: yields manifest entries as shards finish.

    ``model``: a ``ModelEntry`` (or a built-in name). Each actor loads it once; it asks Ray for
    ``num_gpus_per_actor`` GPUs when the cluster has them and the entry's device is not ``cpu``."""
    from pathlib import Path

    import torch

    from optsteps.io.hashing import sha256_file
    from optsteps.io.shards import shard_name, write_shard
    from optsteps.models import describe_model
    from optsteps.teacher.trajectories import header

    out_dir = Path(out_dir)
    ray = init_ray(cfg)
    entry, artifacts = _portable(model, artifacts)
    gpus = 0.0 if entry.device == "cpu" else gpus_per_actor(cfg)
    actor_cls = make_actor_class(gpus, cfg.max_restarts)
    head = header(describe_model(entry, artifacts), teacher)  # the driver loads no network

    def run(pending):
        if not pending:
            return
        n = max(1, min(cfg.actors, len(pending)))
        actors = [actor_cls.remote(asdict(entry), artifacts, asdict(teacher)) for _ in range(n)]
        if on_actors is not None:
            on_actors(actors)
        queue = list(pending)
        inflight = {}
        for a in actors:
            if queue:
                start, count = queue.pop(0)
                inflight[a.shard.remote(start, count)] = a
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=cfg.task_timeout_s)
            if not done:
                raise TimeoutError(
                    f"no teacher shard finished within {cfg.task_timeout_s} s; check the Ray cluster "
                    "(a task asking for resources no node has waits forever)."
                )
            ref = done[0]
            actor = inflight.pop(ref)
            start, count, arrays, node = ray.get(ref)
            path = out_dir / shard_name(start, count)
            write_shard(
                path,
                {k: torch.from_numpy(v.copy()) for k, v in arrays.items()},
                {"start": start, "count": count, **head},
            )
            yield {"file": path.name, "start": start, "count": count, "sha256": sha256_file(path), "node": node}
            if queue:
                s, c = queue.pop(0)
                inflight[actor.shard.remote(s, c)] = actor
        for a in actors:
            ray.kill(a)

    return run
