"""The Prefect flow's cache: keyed on inputs and task source, and never answering for a file that is gone."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytestmark = pytest.mark.integration  # loads the Prefect flow module (imports prefect)

ROOT = Path(__file__).resolve().parent.parent


def load_flow_module():
    spec = importlib.util.spec_from_file_location("optimize_schedules_flow", ROOT / "flows" / "optimize_schedules.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_schedule_cache_key_is_none_while_the_schedule_file_is_missing(tmp_path):
    flow = load_flow_module()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"artifacts": str(tmp_path / "a"), "results": str(tmp_path / "r")}))

    def task_fn(params_path, digest, model, solver, nfe):  # stands in for the task body
        return None

    ctx = SimpleNamespace(task=SimpleNamespace(fn=task_fn))
    key = flow.SCHEDULE.cache_key_fn
    args = {"params_path": str(params), "digest": "d1", "model": "digits", "solver": "unipc", "nfe": 5}
    assert key(ctx, args) is None
    out = tmp_path / "r" / "schedules" / "digits" / "lambda-opt" / "unipc-nfe5.json"
    out.parent.mkdir(parents=True)
    out.write_text("{}")
    k1 = key(ctx, args)
    assert isinstance(k1, str) and key(ctx, args) == k1
    assert key(ctx, {**args, "digest": "d2"}) != k1
    oss = {**args, "method": "oss"}
    assert key(ctx, oss) is None  # a different file: results/schedules/digits/oss/unipc-nfe5.json
    out.unlink()
    assert key(ctx, args) is None
