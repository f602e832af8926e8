import json

import pytest
import torch

from optsteps.core.noise_schedules import EDM, RectifiedFlow, VPDiscrete
from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError
from optsteps.io.atomic import write_text_atomic

VP = VPDiscrete()


def test_views_and_nfe():
    s = Schedule([1.0, 0.5, 0.1, 0.001], VP, model="m", method="x", solver="unipc")
    assert s.nfe == 3
    assert torch.allclose(s.sigmas, VP.sigma_diffusers(torch.tensor(s.t, dtype=torch.float64)))
    assert torch.allclose(s.lambdas, VP.lambda_(torch.tensor(s.t, dtype=torch.float64)))
    f = Schedule([1.0, 0.4, 0.0], RectifiedFlow())
    assert f.sigmas.tolist() == [1.0, 0.4, 0.0]


@pytest.mark.parametrize(
    "t,match",
    [
        ([1.0], "at least 2 times"),
        ([1.0, 0.5, 0.7, 0.1], "strictly descending"),
        ([1.0, 0.5, 0.5, 0.1], "strictly descending"),
        ([1.0, float("nan"), 0.1], "NaN"),
        ([1.2, 0.5], "clip the times"),
        ([1.0, -0.1], "clip the times"),
        ("abc", "list of numbers"),
    ],
)
def test_validation_errors_name_the_fix(t, match):
    with pytest.raises(OptstepsError, match=match):
        Schedule(t, VP)


def test_edm_range_checked():
    with pytest.raises(OptstepsError, match="domain"):
        Schedule([100.0, 1.0], EDM())


def test_json_round_trip_and_format(tmp_path):
    s = Schedule(
        [1.0, 0.6, 0.2, 0.0],
        RectifiedFlow(),
        model="digits-flow",
        method="uniform-t",
        solver="ddim",
        extra={"objective": 1.5},
    )
    d = json.loads(s.to_json())
    assert set(d) >= {"model", "noise_schedule", "method", "solver", "nfe", "t", "sigma", "lambda", "objective"}
    assert d["lambda"][0] is None and d["lambda"][-1] is None  # ±∞ as null
    s2 = Schedule.from_json(s.to_json())
    assert s2 == s and s2.t == s.t and s2.extra == {"objective": 1.5}
    path = s.save(tmp_path / "a" / "s.json")
    assert Schedule.load(path).t == s.t


def test_old_schedule_files_with_l2_to_teacher_still_load():
    """Schedules written before the rename to ``distill_mse`` carry ``l2_to_teacher``: an unknown extra field,
    kept as is (and never read as the evaluation metric of that name)."""
    s = Schedule([1.0, 0.5, 0.001], VP, model="digits", method="oss", solver="unipc")
    old = {**json.loads(s.to_json()), "l2_to_teacher": 0.0023, "dp_l2_to_teacher": 0.0031, "model_evals": 290}
    back = Schedule.from_json(json.dumps(old))
    assert back == s and back.extra == {"l2_to_teacher": 0.0023, "dp_l2_to_teacher": 0.0031, "model_evals": 290}


def test_json_errors():
    with pytest.raises(OptstepsError, match="not valid JSON"):
        Schedule.from_json("{oops")
    with pytest.raises(OptstepsError, match="nfe must be"):
        Schedule.from_dict({"noise_schedule": VP.to_dict(), "t": [1.0, 0.5], "nfe": 3})
    with pytest.raises(OptstepsError, match="needs at least"):
        Schedule.from_dict({"t": [1.0, 0.5]})
    with pytest.raises(OptstepsError, match="does not exist"):
        Schedule.load("/nonexistent/s.json")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    write_text_atomic(p, "old")

    import os

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_text_atomic(p, "new")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]  # the temp file is removed too
    monkeypatch.undo()  # and with a working rename the new text replaces the old, nothing left beside it
    assert write_text_atomic(p, "new ✓") == p
    assert p.read_text(encoding="utf-8") == "new ✓" and [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_writes_respect_the_umask(tmp_path):
    import os

    from optsteps.io.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "a.json", "{}")
        assert (p.stat().st_mode & 0o777) == 0o644  # readable by a team sharing the folder
        os.umask(0o077)
        q = write_text_atomic(tmp_path / "b.json", "{}")
        assert (q.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_start_state_rule_and_the_initial_state():
    """absent = scaled (σ_{t_0} ε, old JSONs mean what they meant); raw = σ_{t_max} ε at t_0; one function."""
    from optsteps.core.schedule import initial_state, start_sigma

    eps = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    for ns in (VP, EDM(), RectifiedFlow()):
        t0 = 0.9 * ns.default_t_start() + 0.1 * ns.default_t_end()
        times = [t0, ns.default_t_end()]
        old = Schedule(times, ns)
        raw = Schedule(times, ns, extra={"start_state": "raw"})
        assert old.start_state == "scaled" and raw.start_state == "raw"
        assert torch.equal(initial_state(eps, old), eps * float(ns.sigma(t0)))
        assert torch.equal(initial_state(eps, raw), eps * float(ns.sigma(ns.default_t_start())))
        assert start_sigma(ns, ns.default_t_start(), "raw") == start_sigma(ns, ns.default_t_start())  # same at t_max
        back = Schedule.from_json(raw.to_json())
        assert back.start_state == "raw" and json.loads(raw.to_json())["start_state"] == "raw"
        assert "start_state" not in json.loads(old.to_json())
    assert float(RectifiedFlow().sigma(1.0)) == 1.0  # flow: the raw state is the unit noise itself
    with pytest.raises(OptstepsError, match="start_state"):
        Schedule([1.0, 0.1], VP, extra={"start_state": "half"})


def test_the_samplers_start_from_the_schedules_rule():
    """models.sampling.generate (the evaluation, `optsteps sample`) starts from initial_state(noise, schedule)."""
    from optsteps.core.solvers import sample
    from optsteps.models.base import DiffusionModel
    from optsteps.models.gmm import GaussianMixture, GMMDenoiser
    from optsteps.models.sampling import generate

    ns = RectifiedFlow()
    den = GMMDenoiser(GaussianMixture.random(2, 3, seed=1), ns)
    model = DiffusionModel("gmm", ns, lambda x, t, c: den(x, t), "sample", (3,))
    for extra in ({}, {"start_state": "raw"}):
        s = Schedule([0.95, 0.6, 0.3, 0.0], ns, extra=extra)
        scale = 1.0 if extra else 0.95
        want = sample(den, model.noise(4, 7) * scale, s, "ddim")
        assert torch.allclose(generate(model, s, "ddim", 4, 7), want, rtol=0, atol=1e-12)
    assert torch.equal(model.initial_state(model.noise(2, 7), 0.95), model.noise(2, 7) * 0.95)
