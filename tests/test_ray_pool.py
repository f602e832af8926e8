"""Teacher shards on real Ray actors (a local instance): same bytes as in-process generation, and a killed
actor's shard is redone with nothing duplicated or lost."""

import os

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
