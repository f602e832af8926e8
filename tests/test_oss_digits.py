"""OSS on the real embedded network (a briefly trained digits UNet, VP-ε and rectified flow): at NFE 5 its
final error to the teacher is at most that of every baseline snapped to the teacher grid, and of the
λ-optimizer's schedule snapped likewise (issue: OSS ≤ baselines and λ-opt on digits)."""

import pytest
import torch

import optsteps.optimizers.oss as oss
from optsteps.core.baselines import baseline
from optsteps.models import load_model
from optsteps.models.digits import train_digits
from optsteps.optimizers.lambda_opt import lambda_opt_schedule
from optsteps.pipeline.config import TeacherConfig, TrainConfig
from optsteps.teacher.load import LabelledDenoiser
from optsteps.teacher.trajectories import run_teacher

TINY = TrainConfig(steps=30, batch_size=32, warmup_steps=5, threads=1)


def snapped(t, schedule):
    """Teacher indices nearest to ``schedule``'s times (None if two collide)."""
    idx = [int((t - v).abs().argmin()) for v in schedule.t]
    idx[0], idx[-1] = 0, len(t) - 1
    return idx if all(a < b for a, b in zip(idx, idx[1:])) else None


@pytest.mark.parametrize("name", ["digits", "digits-flow"])
def test_oss_is_no_worse_than_baselines_and_lambda_opt_on_digits(tmp_path, name):
    torch.set_num_threads(1)
    train_digits(name, TINY, tmp_path / "models" / name, progress=False)
    m = load_model(name, tmp_path)
    teacher = run_teacher(m, TeacherConfig(steps=40, seed=0), 0, 8)
    t, states = teacher["t"], teacher["states"]
    den = LabelledDenoiser(m, teacher["labels"])
    ns, solver, k = m.noise_schedule, "unipc", 5
    res = oss.oss_search(
        t, states, den, ns, k, solver, oss.OSSOptions(refine_radius=10**6, start_window=0), eval_batch_size=8
    )
    others = {kind: baseline(kind, ns, k) for kind in ("uniform-t", "uniform-lambda", "karras", "time-quadratic")}
    others["lambda-opt"] = lambda_opt_schedule(ns, k, solver)
    compared = 0
    for kind, s in others.items():
        path = snapped(t, s)
        if path is None:
            continue
        out = oss.run_student(den, states[0], t, path, ns, solver)
        err = ((out - states[-1]) ** 2).mean().item()
        assert res.cost <= err * (1 + 1e-9), (kind, res.cost, err)
        compared += 1
    assert compared >= 4
