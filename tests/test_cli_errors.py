"""Bad input through the real CLI: one line `error: …` naming the argument and the fix, exit 2, no traceback,
and no file in the workspace changed (nothing half-written, no registry database created)."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optsteps.models.digits import train_digits
from optsteps.pipeline.config import TrainConfig

pytestmark = pytest.mark.integration  # the CLI in subprocesses

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws")
    train_digits("digits", TrainConfig(steps=2, batch_size=8, warmup_steps=1, threads=1), d / "artifacts" / "models" / "digits",
                 progress=False)
    (d / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (d / "bad_ns.json").write_text('{"noise_schedule": "vp", "t": [1.0, 0.5, 0.001]}')
    (d / "bad_t.json").write_text('{"noise_schedule": {"family": "edm"}, "t": "10"}')
    return d


def snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


CASES = [
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--guidance", "nan", "--out", "g.png"], "--guidance"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--guidance", "inf", "--out", "g.png"], "--guidance"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--n", "0", "--out", "g.png"], "--n 0"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--nfe", "1000000000000", "--out", "g.png"], "--nfe"),
    (["sample", "--model", "digits", "--schedule", "uniform-t", "--out", "grid.txt"], "--out"),
    (["sample", "--model", "digits", "--schedule", "nosuch@champion-nfe5", "--out", "g.png"], "no schedule registry"),
    (["sample", "--model", "digits", "--schedule", "bad_ns.json", "--out", "g.png"], "noise_schedule"),
    (["sample", "--model", "digits", "--schedule", "bad_t.json", "--out", "g.png"], "schedule times"),
    (["sample", "--model", "digits", "--schedule", "missing.json", "--out", "g.png"], "does not exist"),
    (["sample", "--model", "nosuch", "--schedule", "uniform-t", "--out", "g.png"], "unknown model"),
    (["sample", "--model", "digits", "--schedule", "karras", "--solver", "heun", "--out", "g.png"], "unknown solver"),
    (["schedule", "baseline", "karras", "--model", "digits", "--nfe", "0"], "nfe must be"),
]


@pytest.mark.parametrize("args,names", CASES, ids=[" ".join(a[:1] + a[3:6]) for a, _ in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(ws, args, names):
    before = snapshot(ws)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "optsteps.cli.main", *args], cwd=ws, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and names in lines[0], lines[0]
    assert snapshot(ws) == before
