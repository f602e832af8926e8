import json

import pytest
import torch

from optsteps.errors import OptstepsError
from optsteps.models import gmm_model
from optsteps.models.sampling import generate
from optsteps.pipeline.config import TeacherConfig
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


def test_the_stage_replaces_stale_shards_in_its_own_folder_only(tmp_path):
    """New weights or another teacher: the trajectories stage regenerates its own folder
    (artifacts/trajectories/<model>); a folder given with --out is still refused."""
    import optsteps.pipeline.stages as stages
    from optsteps.pipeline.config import params_from_dict

    base = {
        "artifacts": str(tmp_path / "a"),
        "models": {"gmm": {}},
        "teacher": {"solver": "unipc", "steps": 6, "seed": 0},
        "trajectories": {"samples": 4, "shard_size": 2},
        "oss": {"nfe": [3]},
    }
    first = stages.trajectories(params_from_dict(base), "gmm")
    p = params_from_dict({**base, "teacher": {"solver": "unipc", "steps": 8, "seed": 0}})
    second = stages.trajectories(p, "gmm")
    assert second["teacher"]["steps"] == 8 and first["teacher"]["steps"] == 6
    folder = tmp_path / "a" / "trajectories" / "gmm"
    assert sorted(f.name for f in folder.iterdir()) == sorted(["manifest.json"] + [e["file"] for e in second["shards"]])
    assert len(list(iter_shards(folder, gmm_model(), p.teacher))) == 2
    stages.trajectories(params_from_dict(base), "gmm", out=tmp_path / "mine")
    with pytest.raises(OptstepsError, match="another model or teacher config"):
        stages.trajectories(p, "gmm", out=tmp_path / "mine")


def test_identify_and_prepare_record_the_identity_and_rewrite_only_on_change(tmp_path):
    import optsteps.pipeline.stages as stages
    from optsteps.pipeline.config import params_from_dict

    p = params_from_dict({"artifacts": str(tmp_path / "a"), "models": {"gmm": {}, "digits": {}}})
    path = stages.identify(p, "gmm")
    assert path == tmp_path / "a" / "identity" / "gmm.json"
    ident = json.loads(path.read_text())
    assert ident == {
        "name": "gmm",
        "kind": "builtin",
        "sha256": gmm_model().identity["sha256"],
        "noise_schedule": gmm_model().noise_schedule.to_dict(),
    }
    mtime = path.stat().st_mtime_ns
    assert stages.identify(p, "gmm") == path and path.stat().st_mtime_ns == mtime  # unchanged: not rewritten
    record = stages.prepare(p, "gmm") / "optsteps_model.json"
    assert json.loads(record.read_text()) == ident and len(stages.model_identity(p, "gmm")) == 64
    digits = json.loads(stages.identify(p, "digits").read_text())  # the training recipe, no weights needed
    assert digits["kind"] == "embedded" and digits["train"]["steps"] == 1500 and len(digits["data_sha256"]) == 64
    q = params_from_dict(
        {"artifacts": str(tmp_path / "a"), "models": {"digits": {}}, "train": {"digits": {"steps": 7}}}
    )
    assert json.loads(stages.identify(q, "digits").read_text())["train"]["steps"] == 7  # a new recipe, a new identity


def test_weight_digests_persist_across_processes_by_path_size_and_mtime(tmp_path):
    import optsteps.io.hashing as hashing

    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights")
    cache = tmp_path / "digests.json"
    with hashing.persistent_digests(cache):
        real = hashing.file_digest(f)
    assert real == hashing.sha256_file(f)
    rows = json.loads(cache.read_text())
    assert [r[3] for r in rows if r[0] == str(f.resolve())] == [real]
    hashing._HASH_CACHE.clear()  # a new process
    for r in rows:
        r[3] = "0" * 64 if r[0] == str(f.resolve()) else r[3]
    cache.write_text(json.dumps(rows))
    with hashing.persistent_digests(cache):
        assert hashing.file_digest(f) == "0" * 64  # answered from the file: the weights are not read again
        f.write_bytes(b"new weights")  # another size (and mtime): hashed again
        assert hashing.file_digest(f) == hashing.sha256_file(f)
    hashing._HASH_CACHE.clear()


def test_oss_reads_the_teacher_from_the_shards_it_is_given(tmp_path):
    """`optsteps trajectories --teacher-steps 8 --out DIR` then `optsteps schedule oss --trajectories DIR`: the
    shards' manifest names their teacher, which OSS uses (params.yaml says 100 steps); shards of another model are
    still refused."""
    import dataclasses

    import optsteps.pipeline.stages as stages
    from optsteps.errors import OptstepsError
    from optsteps.pipeline.config import params_from_dict

    p = params_from_dict(
        {
            "artifacts": str(tmp_path / "a"),
            "results": str(tmp_path / "r"),
            "models": {"gmm": {}},
            "oss": {"nfe": [3], "samples": 4, "refine": False},
        }
    )
    q = dataclasses.replace(
        p,
        teacher=dataclasses.replace(p.teacher, steps=8),
        trajectories=dataclasses.replace(p.trajectories, samples=4, shard_size=4),
    )
    stages.trajectories(q, "gmm", out=tmp_path / "shards")
    s = stages.oss(p, "gmm", "ddim", 3, traj_dir=tmp_path / "shards")
    assert s.nfe == 3 and len(s.t) == 4 and s.extra["teacher_samples"] == 4
    emp = dataclasses.replace(p, lambda_opt=dataclasses.replace(p.lambda_opt, error_model="empirical"))
    lam = stages.lambda_opt(emp, "gmm", "unipc", 3, traj_dir=tmp_path / "shards")
    assert lam.nfe == 3
    man = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    man["model_sha256"] = "0" * 64
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(OptstepsError):
        stages.oss(p, "gmm", "ddim", 3, traj_dir=tmp_path / "shards")


def test_register_reads_the_recorded_identity(tmp_path):
    """`register` keys versions by the digest `identify` (or training) recorded; without it, one clear error."""
    import optsteps.pipeline.stages as stages
    from optsteps.errors import OptstepsError
    from optsteps.models import describe_model
    from optsteps.pipeline.config import params_from_dict

    p = params_from_dict({"artifacts": str(tmp_path / "a"), "results": str(tmp_path / "r"), "models": {"gmm": {}}})
    with pytest.raises(OptstepsError, match="run `optsteps stage identify --model gmm` first"):
        stages.recorded_model_sha(p, "gmm")
    stages.identify(p, "gmm")
    assert stages.recorded_model_sha(p, "gmm") == describe_model("gmm").identity["sha256"]
    with pytest.raises(OptstepsError, match="run `optsteps stage model --model digits` first"):
        stages.recorded_model_sha(p, "digits")  # an embedded model: its training record
