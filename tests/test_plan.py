"""The plan's counts equal the forwards the stages spend (a counting wrapper around the network), on a small digits
config and on a tiny random-weight Stable Diffusion pipeline (CFG rows, max_batch chunks); the budget knob scales
the settings along the ladder or refuses with one line; the unit counts against brute force."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optsteps.pipeline.stages as stages
from optsteps.errors import OptstepsError
from optsteps.pipeline import plan as planmod
from optsteps.pipeline.config import params_from_dict
from optsteps.pipeline.plan import Batching, evaluation_rows, plan, run_cost

ROOT = Path(__file__).resolve().parent.parent


# ---- units --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "samples,per_call,cfg,chunk", [(10, None, 1, None), (10, 4, 2, 3), (7, 3, 2, None), (500, 128, 2, 16), (5, 5, 1, 2)]
)
def test_run_cost_equals_a_brute_force_of_the_calls(samples, per_call, cfg, chunk):
    calls = 0
    for a in range(0, samples, per_call or samples):  # one denoiser call per batch, then max_batch chunks of rows
        rows = min(per_call or samples, samples - a) * cfg
        calls += len(range(0, rows, chunk or rows))
    c = run_cost(3, samples, Batching(cfg, chunk), per_call)
    assert (c.forwards, c.calls) == (3 * samples, 3 * calls)


def test_default_plan_of_digits_counts_the_issue_table():
    p = params_from_dict({})
    got = plan(p, "digits", measure=False)
    assert got.stage("digits", "teacher").cost.forwards == 256 * 100
    ev = got.stage("digits", "evaluate").cost
    rows = evaluation_rows(p.for_model("digits"), None)
    assert len(rows) == 94 and ev.forwards == 1000 * (100 + sum(k for _, _, k in rows)) == 938_000
    assert got.stage("digits", "lambda-opt").cost.forwards == 0 == got.stage("digits", "register").cost.forwards


def small(tmp: Path, **over) -> dict:
    d = {
        "artifacts": str(tmp / "artifacts"),
        "results": str(tmp / "results"),
        "train": {"digits": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "threads": 1}},
        "classifier": {"epochs": 1, "threads": 1},
        "teacher": {"solver": "unipc", "steps": 10, "schedule": "uniform-lambda", "seed": 0, "guidance": 2.0},
        "trajectories": {"samples": 7, "shard_size": 3},
        "oss": {"nfe": [2, 3], "solvers": ["ddim", "unipc"], "samples": 5, "refine_radius": 1, "gits": True},
        "lambda_opt": {"nfe": [2, 3], "solvers": ["unipc"]},
        "evaluate": {
            "baselines": ["uniform-lambda", "karras"],
            "solvers": ["ddim", "unipc"],
            "nfe": [2, 3],
            "baseline_nfe": [4],
            "n": 6,
            "kid_subsets": 2,
            "seed": 99,
            "bootstrap": 0,
            "guidance": 2.0,
            "grid_samples": 0,
            "pipeline_teacher_inception_n": 0,
            "cache_dir": str(tmp / "cache"),
        },
        "models": {"digits": {}},
    }
    for k, v in over.items():
        d[k] = v
    return d


def test_budget_scales_down_the_ladder_and_says_what_it_chose(tmp_path):
    free = params_from_dict(small(tmp_path, oss={"nfe": [2, 3], "solvers": ["ddim"], "samples": 5, "refine": False}))
    need = planmod.planned_forwards(free.for_model("digits"))
    same = params_from_dict(
        small(
            tmp_path, budget={"forwards": need}, oss={"nfe": [2, 3], "solvers": ["ddim"], "samples": 5, "refine": False}
        )
    )
    q = planmod.budgeted(same, "digits")
    assert (q.oss.samples, q.teacher.steps, q.evaluate.n) == (5, 10, 6) and "≤ budget" in q._budget_choice
    big = params_from_dict({"budget": {"forwards": 60_000}})  # the default digits run plans ≈ 1.3 M
    q = planmod.budgeted(big, "digits")
    f = planmod.planned_forwards(q)
    assert f <= 60_000 and q.oss.samples < 64 and not q.oss.refine
    assert plan(big, "digits", measure=False).total("digits") == f
    assert "digits" in plan(big, "digits", measure=False).budget
    hours = params_from_dict({"budget": {"gpu_hours": 1.0, "forward_ms": 100.0}})  # 36,000 forwards
    assert planmod.planned_forwards(planmod.budgeted(hours, "digits")) <= 36_000
    assert stages.resolve(big, "digits")[0].oss.samples == q.oss.samples  # the stages run the budgeted settings
    r = stages.resolve(big, "digits")[0]
    assert r.for_model("digits") is r  # still merged for digits: a later for_model does not undo the budget


def test_a_budget_below_the_cheapest_plan_is_refused_with_one_line():
    with pytest.raises(OptstepsError, match="even the cheapest useful plan needs"):
        planmod.budgeted(params_from_dict({"budget": {"forwards": 1000}}), "digits")
    with pytest.raises(OptstepsError, match="budget must be"):
        params_from_dict({"budget": {"hours": 1}})
    with pytest.raises(OptstepsError, match="gpu_hours must be a positive"):
        params_from_dict({"budget": {"gpu_hours": -1, "forward_ms": 3}})
    with pytest.raises(OptstepsError, match="models.digits.budget"):
        params_from_dict({"models": {"digits": {"budget": {"forwards": "many"}}}})


@pytest.mark.integration  # the CLI as a subprocess
def test_cli_plan_json_and_budget_refusal(tmp_path):
    import yaml

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(small(tmp_path)))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "optsteps.cli.main",
            "plan",
            "--params",
            str(tmp_path / "p.yaml"),
            "--forward-ms",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    teacher = next(s for s in got["stages"] if s["stage"] == "teacher")
    assert teacher["forwards"] == 70 and teacher["eta_s"] == pytest.approx(0.14)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(small(tmp_path, budget={"forwards": 10})))
    r = subprocess.run(
        [sys.executable, "-m", "optsteps.cli.main", "plan", "--params", str(tmp_path / "b.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr


# ---- exactness: the plan's counts == forwards counted at the network ----------------------------------------


class Counter:
    """Counts network calls and the rows they carry (rows / CFG rows = per-sample forwards)."""

    def __init__(self):
        self.calls = self.rows = 0

    def hit(self, rows: int):
        self.calls += 1
        self.rows += rows


def counting(monkeypatch, counter: Counter):
    """Wrap every model the stages load: the digits UNet is called once per ``net`` call; a pipeline's UNet once
    per ``max_batch`` chunk (a forward pre-hook on it)."""
    real = stages.load_model

    def load(e, artifacts="artifacts"):
        m = real(e, artifacts)
        unet = getattr(getattr(m, "pipeline", None), "unet", None)
        if unet is not None:
            unet.register_forward_pre_hook(
                lambda mod, args, kw: counter.hit((args[0] if args else kw["sample"]).shape[0]), with_kwargs=True
            )
        else:
            net = m.net

            def counted(x, t, cond):
                counter.hit(x.shape[0])
                return net(x, t, cond)

            m.net = counted
        return m

    monkeypatch.setattr(stages, "load_model", load)


def run_and_count(p, model, counter, cfg_rows) -> dict:
    """Forwards and calls of each stage, counted."""
    out = {}
    stages._GITS_COSTS.clear()
    for name, fn in (
        ("teacher", lambda: stages.trajectories(p, model)),
        ("oss+gits", lambda: stages.oss_all(p, model)),
        ("lambda-opt", lambda: stages.lambda_opt_all(p, model)),
        ("evaluate", lambda: stages.evaluate(p, model)),
    ):
        before = (counter.rows, counter.calls)
        fn()
        rows, calls = counter.rows - before[0], counter.calls - before[1]
        assert rows % cfg_rows == 0
        out[name] = (rows // cfg_rows, calls)
    return out


def check_plan_equals_counted(p, model, counted):
    got = plan(p, model, measure=False)  # after the run: refinement as the schedules report it
    name = p.entry(model).name
    st = {s.stage: s.cost for s in got.stages if s.model == name}
    assert counted["teacher"] == (st["teacher"].forwards, st["teacher"].calls)
    oss = [c for k, c in st.items() if k.startswith("oss/")] + [st["gits"]]
    assert not any(c.bound or c.uncounted for c in oss)  # every refinement count is the reported one
    assert counted["oss+gits"] == (sum(c.forwards for c in oss), sum(c.calls for c in oss))
    assert counted["lambda-opt"] == (0, 0) == (st["lambda-opt"].forwards, st["lambda-opt"].calls)
    assert counted["evaluate"] == (st["evaluate"].forwards, st["evaluate"].calls)
    return got


def test_plan_equals_counted_forwards_on_digits(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    p = params_from_dict(small(tmp_path))
    stages.train(p, "digits")
    stages.train(p, "classifier")
    planned_before = {s.stage: s.cost for s in planmod.model_plan(p, "digits", measure=False, use_finished=False)}
    counter = Counter()
    counting(monkeypatch, counter)
    counted = run_and_count(p, "digits", counter, cfg_rows=2)
    check_plan_equals_counted(p, "digits", counted)
    # the stage chose each schedule on the held-out shard samples [5, 7): the lowest held-out MSE of its candidates
    # (the whole-grid start's and the t_max search's refined and DP paths; GITS: its two paths)
    q = p.for_model("digits")
    for method, names in (("oss", 4), ("gits", 2)):
        for f in sorted((tmp_path / "results" / "schedules" / "digits" / method).glob("*.json")):
            rec = json.loads(f.read_text())["heldout"]
            assert rec["samples"] == q.trajectories.samples - q.oss.samples == 2 and len(rec["candidates"]) == names
            assert rec["mse"] == min(c["heldout_mse"] for c in rec["candidates"])
            assert {c["name"] for c in rec["candidates"]} >= {"t_max" if method == "gits" else "t_max, refined"}
    # before the run every stage but the refinement was already exact
    assert counted["teacher"] == (planned_before["teacher"].forwards, planned_before["teacher"].calls) == (70, 30)
    assert counted["evaluate"][0] == planned_before["evaluate"].forwards
    # shard bytes: the tensors written
    from safetensors.torch import load_file

    files = sorted((tmp_path / "artifacts" / "trajectories" / "digits").glob("shard_*.safetensors"))
    assert sum(v.nbytes for f in files for v in load_file(f).values()) == planned_before["teacher"].shard_bytes


@pytest.mark.integration  # a real (tiny, random-weight) diffusers pipeline
def test_plan_equals_counted_forwards_on_a_tiny_sd_pipeline(tmp_path, monkeypatch):
    from tiny_pipelines import build_sd

    torch.set_num_threads(1)
    build_sd(tmp_path / "tiny-sd", tmp_path)
    (tmp_path / "prompts.txt").write_text("a red cube\ntwo blue balls\na green tree\n")
    d = small(tmp_path)
    d["models"] = {
        "tiny-sd": {
            "pipeline": str(tmp_path / "tiny-sd"),
            "prompts": str(tmp_path / "prompts.txt"),
            "guidance": 3.0,
            "device": "cpu",
            "max_batch": 4,
            "overrides": {
                "teacher": {"steps": 10},
                "trajectories": {"samples": 7, "shard_size": 3},
                "oss": {"samples": 5},
                "evaluate": {"n": 6, "baseline_nfe": [4]},
            },
        }
    }
    p = params_from_dict(d)
    q = p.for_model("tiny-sd")
    assert (q.teacher.steps, q.oss.samples, q.evaluate.n) == (10, 5, 6)  # its overrides over pipeline_defaults
    stages.identify(p, "tiny-sd")
    stages.prepare(p, "tiny-sd")
    counter = Counter()
    counting(monkeypatch, counter)
    counted = run_and_count(p, "tiny-sd", counter, cfg_rows=2)
    check_plan_equals_counted(p, "tiny-sd", counted)
    # 3 shards of 3, 3, 1 samples: 6, 6, 2 CFG rows in chunks of max_batch 4 → 2 + 2 + 1 calls per teacher step
    assert counted["teacher"] == (7 * 10, 10 * (2 + 2 + 1))
