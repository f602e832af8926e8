import json

import pytest
import torch

from optsteps.pipeline.config import TeacherConfig
from optsteps.errors import OptstepsError
from optsteps.models import gmm_model
from optsteps.models.sampling import generate
from optsteps.teacher.trajectories import generate_trajectories, iter_shards, teacher_schedule

CFG = TeacherConfig(solver="unipc", steps=20, schedule="uniform-lambda", seed=3)


def test_shards_hold_the_teacher_trajectory(tmp_path):
    m = gmm_model()
    man = generate_trajectories(m, CFG, tmp_path, samples=10, shard_size=4, progress=False)
    assert [(e["start"], e["count"]) for e in man["shards"]] == [(0, 4), (4, 4), (8, 2)]
    shards = list(iter_shards(tmp_path, m, CFG))
    states = torch.cat([s["states"] for s in shards], dim=1)
    assert states.shape == (21, 10, 16) and torch.cat([s["x0"] for s in shards], 1).shape == (20, 10, 16)
    direct = generate(m, teacher_schedule(m, CFG), "unipc", 10, seed=3)
    assert torch.allclose(states[-1], direct.float(), atol=1e-6)  # endpoint = the same seeded sampler run
    assert torch.allclose(shards[0]["t"], teacher_schedule(m, CFG).timesteps_t)


def test_rerun_skips_good_shards_and_redoes_bad_ones(tmp_path):
    m = gmm_model()
    man = generate_trajectories(m, CFG, tmp_path, samples=8, shard_size=4, progress=False)
    first = {e["file"]: (tmp_path / e["file"]).stat().st_mtime_ns for e in man["shards"]}
    victim = tmp_path / man["shards"][1]["file"]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated, as by a crash or a bad copy
    with pytest.raises(OptstepsError, match="does not match its manifest hash"):
        list(iter_shards(tmp_path, m, CFG))
    man2 = generate_trajectories(m, CFG, tmp_path, samples=8, shard_size=4, progress=False)
    assert (tmp_path / man["shards"][0]["file"]).stat().st_mtime_ns == first[man["shards"][0]["file"]]
    assert man2["shards"][1]["sha256"] == man["shards"][1]["sha256"]  # deterministic regeneration
    assert len(list(iter_shards(tmp_path, m, CFG))) == 2


def test_other_model_or_teacher_is_refused(tmp_path):
    m = gmm_model()
    generate_trajectories(m, CFG, tmp_path, samples=4, shard_size=4, progress=False)
    other = TeacherConfig(solver="ddim", steps=20, seed=3)
    with pytest.raises(OptstepsError, match="another model or teacher config"):
        generate_trajectories(m, other, tmp_path, samples=4, shard_size=4, progress=False)
    with pytest.raises(OptstepsError, match="was made with teacher"):
        list(iter_shards(tmp_path, m, other))
    m2 = gmm_model(seed=1)
    m2.identity["sha256"] = "different"
    with pytest.raises(OptstepsError, match="regenerate them for this model"):
        list(iter_shards(tmp_path, m2, CFG))
    with pytest.raises(OptstepsError, match="manifest.json missing"):
        list(iter_shards(tmp_path / "none"))
    assert json.loads((tmp_path / "manifest.json").read_text())["format"] == "optsteps-trajectories/1"
