"""Teacher shards on real Ray actors (a local instance): same bytes as in-process generation, and a killed
actor's shard is redone with nothing duplicated or lost."""

import ipaddress
import os
from pathlib import Path

import pytest
import torch

from optsteps.models import gmm_model
from optsteps.pipeline.config import RayConfig, TeacherConfig
from optsteps.teacher.trajectories import generate_trajectories, iter_shards

pytestmark = pytest.mark.integration  # real Ray actors on a local instance

TEACHER = TeacherConfig(solver="unipc", steps=300, schedule="uniform-lambda", seed=5)


@pytest.fixture(scope="module")
def ray_cfg(tmp_path_factory):
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_SCHEDULER_EVENTS="0")
    import ray

    cfg = RayConfig(enabled=True, actors=2, num_cpus=2, max_restarts=2, object_store_mb=256, task_timeout_s=600)
    from optsteps.integrations.ray_pool import init_ray

    init_ray(cfg)
    yield cfg
    ray.shutdown()


def test_actor_killed_mid_generation_loses_and_duplicates_nothing(ray_cfg, tmp_path):
    import ray

    from optsteps.integrations.ray_pool import gpus_per_actor, ray_runner

    assert gpus_per_actor(ray_cfg) == 0.0  # no GPU here: never ask for one
    local = generate_trajectories(gmm_model(), TEACHER, tmp_path / "local", samples=48, shard_size=8, progress=False)

    actors, killed = [], []
    run = ray_runner("gmm", "artifacts", TEACHER, tmp_path / "ray", ray_cfg, on_actors=actors.extend)

    def killing_runner(pending):
        for i, entry in enumerate(run(pending)):
            if i == 0:
                ray.kill(actors[0], no_restart=False)  # its in-flight shard must be retried on the restarted actor
                killed.append(True)
            yield entry

    man = generate_trajectories(
        gmm_model(), TEACHER, tmp_path / "ray", samples=48, shard_size=8, progress=False, runner=killing_runner
    )
    assert killed
    ranges = [(e["start"], e["count"]) for e in man["shards"]]
    assert ranges == [(s, 8) for s in range(0, 48, 8)]  # every shard exactly once, in order
    assert [e["sha256"] for e in man["shards"]] == [e["sha256"] for e in local["shards"]]
    assert all(e["node"] for e in man["shards"])
    assert len(list(iter_shards(tmp_path / "ray", gmm_model(), TEACHER))) == 6


def test_pipeline_models_on_actors_give_the_in_process_shards_byte_for_byte(ray_cfg, tmp_path):
    """A tiny DDPM and a tiny Stable Diffusion pipeline from their ``ModelEntry`` (prompts, guidance): every actor
    loads the pipeline once and computes whole seed ranges; the driver loads no network (``describe_model``) and
    writes each shard once; the shards are the in-process ones, byte for byte."""
    from tiny_pipelines import build_ddpm, build_sd

    from optsteps.integrations.ray_pool import ray_runner
    from optsteps.models import ModelEntry, describe_model, load_model

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\ntwo blue balls\na green tree\n")
    entries = [
        ModelEntry("tiny-ddpm", pipeline=str(build_ddpm(tmp_path / "ddpm")), device="cpu"),
        ModelEntry(
            "tiny-sd",
            pipeline=str(build_sd(tmp_path / "sd", tmp_path)),
            prompts=str(prompts),
            guidance=3.0,
            device="cpu",
        ),
    ]
    teacher = TeacherConfig(solver="unipc", steps=6, schedule="uniform-lambda", guidance=3.0, seed=3)
    for e in entries:
        cfg = teacher if e.guidance else TeacherConfig(solver="unipc", steps=6, schedule="uniform-lambda", seed=3)
        model = load_model(e)
        assert describe_model(e).identity == model.identity  # what the driver writes into the manifest
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each actor: CPU kernels reduce in a thread-count-dependent order
        try:
            local = generate_trajectories(
                model, cfg, tmp_path / e.name / "local", samples=6, shard_size=2, progress=False
            )
        finally:
            torch.set_num_threads(threads)
        actors = []
        run = ray_runner(e, "artifacts", cfg, tmp_path / e.name / "ray", ray_cfg, on_actors=actors.extend)
        man = generate_trajectories(
            describe_model(e), cfg, tmp_path / e.name / "ray", samples=6, shard_size=2, progress=False, runner=run
        )
        assert len(actors) == 2  # min(ray.actors, shards): each loaded the pipeline once for its seed ranges
        assert [(s["start"], s["count"]) for s in man["shards"]] == [(0, 2), (2, 2), (4, 2)]
        assert [s["sha256"] for s in man["shards"]] == [s["sha256"] for s in local["shards"]], e.name
        assert {k: v for k, v in man.items() if k != "shards"} == {k: v for k, v in local.items() if k != "shards"}
        for s in man["shards"]:
            assert (tmp_path / e.name / "ray" / s["file"]).read_bytes() == (
                tmp_path / e.name / "local" / s["file"]
            ).read_bytes()


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (the Ray processes this driver started: GCS, raylet, agents, workers)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _listening_sockets(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket (IPv4 and IPv6) held by ``pids``."""
    listening = {}  # inode → address
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # TCP_LISTEN
                continue
            hexip, port = f[1].split(":")
            raw = bytes.fromhex(hexip)
            if v6:  # four little-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addr = str(ipaddress.IPv6Address(raw))
            else:
                addr = str(ipaddress.IPv4Address(raw[::-1]))
            listening[f[9]] = f"{addr}:{int(port, 16)}"
    out = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listening:
                out.append((pid, listening[target[8:-1]]))
    return out


def _loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_the_local_instance_listens_on_loopback_only(ray_cfg):
    """`trajectories --ray` without ray.address: the GCS, raylet, agents and workers listen on 127.0.0.1 (or ::1)
    only, never on 0.0.0.0, :: or the machine's own address (Ray's Linux default); a running worker too."""
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()  # a worker process is up
    sockets = _listening_sockets(_descendants(os.getpid()))
    assert len(sockets) >= 3, sockets  # at least the GCS, the raylet and a worker: the check saw Ray's processes
    exposed = [(pid, addr) for pid, addr in sockets if not _loopback(addr)]
    assert not exposed, exposed
