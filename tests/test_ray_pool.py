"""Teacher shards on real Ray actors (a local instance): same bytes as in-process generation, and a killed
actor's shard is redone with nothing duplicated or lost."""
import os

import pytest

from optsteps.pipeline.config import RayConfig, TeacherConfig
from optsteps.models import gmm_model
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

    man = generate_trajectories(gmm_model(), TEACHER, tmp_path / "ray", samples=48, shard_size=8, progress=False,
                                runner=killing_runner)
    assert killed
    ranges = [(e["start"], e["count"]) for e in man["shards"]]
    assert ranges == [(s, 8) for s in range(0, 48, 8)]  # every shard exactly once, in order
    assert [e["sha256"] for e in man["shards"]] == [e["sha256"] for e in local["shards"]]
    assert all(e["node"] for e in man["shards"])
    assert len(list(iter_shards(tmp_path / "ray", gmm_model(), TEACHER))) == 6
