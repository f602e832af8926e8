"""Issue 28: one reader boundary, limits, paths inside their folders, redacted URIs, the machine (disk full,
read-only) and the shared CLI checks. The bad-input table runs the real entry point (``optsteps.cli.main.main``)
in-process (argv, cwd and stderr as a subprocess would see them); tests/test_cli_errors.py runs a subprocess subset
for the no-traceback property."""

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optsteps.errors import OptstepsError
from optsteps.io import atomic, readers
from optsteps.io.limits import SEED_MAX
from optsteps.io.paths import has_credentials, inside, redact

ROOT = Path(__file__).resolve().parents[1]


# ---- readers: fuzz over file bytes ----------------------------------------------------------------------

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
GOOD = {"noise_schedule": {"family": "vp"}, "t": [1.0, 0.5, 0.001], "shards": [{"file": "a", "start": 0}]}
GOOD_BYTES = json.dumps(GOOD).encode()
ENCODINGS = ["utf-8", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "utf-8-sig"]

file_bytes = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.text(max_size=60), st.sampled_from(ENCODINGS)).map(lambda p: p[0].encode(p[1], errors="replace")),
    st.integers(0, len(GOOD_BYTES)).map(lambda k: GOOD_BYTES[:k]),  # truncations
    st.tuples(st.integers(1, 3000), st.sampled_from("[{"))
    .map(  # nesting
        lambda p: (p[1] + ('"a":' if p[1] == "{" else "")) * p[0] + "1" + ("}" if p[1] == "{" else "]") * p[0]
    )
    .map(str.encode),
    st.tuples(st.text(max_size=40), st.sampled_from(ENCODINGS)).map(
        lambda p: json.dumps(GOOD | {"x": p[0]}).encode(p[1])
    ),
)


@pytest.mark.parametrize("reader", ["text", "json", "yaml"])
@FUZZ
@given(data=file_bytes)
def test_each_reader_returns_or_raises_one_optsteps_error(tmp_path_factory, reader, data):
    p = tmp_path_factory.mktemp("f") / "f.json"
    p.write_bytes(data)
    try:
        if reader == "text":
            out = readers.read_text(p, "file", max_bytes=10_000)
            assert isinstance(out, str)
        elif reader == "json":
            out = readers.read_json(p, "file", max_depth=32)
            assert isinstance(out, dict) and readers.depth(out, 99) <= 32
            readers.require(out, {"t": list}, p)
        else:
            out = readers.read_yaml(p, "file", max_depth=32)
            assert isinstance(out, dict) and readers.depth(out, 99) <= 32
    except OptstepsError as e:
        assert str(p) in str(e) and "\n" not in str(e)


def test_reader_messages_name_the_file_the_key_and_the_fix(tmp_path):
    p = tmp_path / "m.json"
    p.write_bytes('{"x": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(
        OptstepsError, match=r"m\.json: the manifest is not UTF-8 \(byte 0xe9.*; save it as UTF-8 \(FIX\)"
    ):
        readers.read_json(p, "manifest", fix="FIX")
    p.write_text('{"shards": [{"file": 3}]}')
    with pytest.raises(OptstepsError, match=r"key shards\[0\]\.file must be a string, got 3; FIX"):
        readers.require(readers.read_json(p, "m")["shards"][0], {"file": str}, p, where="shards[0].", fix="FIX")
    p.write_text("[" * 100 + "]" * 100)
    with pytest.raises(OptstepsError, match="nested deeper than 64 levels"):
        readers.read_json(p, "m", top=None)
    p.write_text('{"a": NaN}')
    with pytest.raises(OptstepsError, match="not valid JSON"):
        readers.read_json(p, "m")
    p.write_text("x" * 2000)
    with pytest.raises(OptstepsError, match="over the limit of 1,000 bytes .*OPTSTEPS_MAX_FILE_BYTES=2000"):
        readers.read_text(p, "m", max_bytes=1000)


# ---- paths and secrets ------------------------------------------------------------------------------------


def test_inside_refuses_every_way_out(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "d", "a.json", "x") == (tmp_path / "d" / "a.json").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x", "link/x", "", ".", "a\x00b"):
        with pytest.raises(OptstepsError, match="points outside"):
            inside(tmp_path / "d", bad, "name")


@pytest.mark.parametrize(
    "uri,shown",
    [
        ("http://alice:s3cret@host:5000/", "http://***@host:5000/"),
        ("alice:s3cret@host:5000", "***@host:5000"),
        ("https://h/?token=abc&x=1", "https://h/?token=***&x=1"),
        ("https://h/api?api_key=K;sig=S", "https://h/api?api_key=***;sig=***"),
        ("error: cannot reach http://u:p@h:1 (x)", "error: cannot reach http://***@h:1 (x)"),
        ("sqlite:///mlruns.db", "sqlite:///mlruns.db"),
    ],
)
def test_redact_hides_credentials_and_keeps_the_rest(uri, shown):
    assert redact(uri) == shown
    assert not has_credentials(redact(uri)) or "***" in redact(uri)


# ---- the machine: disk full and read-only -----------------------------------------------------------------


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "the file system is read-only")])
def test_atomic_writer_on_a_full_or_read_only_disk_keeps_the_old_file(tmp_path, monkeypatch, code, words):
    target = tmp_path / "res" / "a.json"
    atomic.write_text_atomic(target, "old\n")
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: Failing(real_fdopen(fd, mode)))
    with pytest.raises(
        OptstepsError, match=f"cannot write a.json in {tmp_path / 'res'}: {words}.*previous a.json is kept"
    ):
        atomic.write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def _tmpfs(folder: Path, opts: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def test_disk_full_and_read_only_folders_on_tmpfs_or_monkeypatched(tmp_path, monkeypatch):
    """A real 64 KiB tmpfs filled up, and a read-only tmpfs, where mount works (CI runs as root); else the writer
    is made to fail the same way. Either way: one line naming the folder, nothing half-written."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    mounted = _tmpfs(full, "size=64k") and _tmpfs(ro, "ro,size=64k")
    try:
        if mounted:
            with open(full / "filler", "wb") as f:
                try:
                    f.write(b"\0" * 200_000)
                except OSError:
                    pass
        else:
            ro.mkdir(exist_ok=True)
            full.mkdir(exist_ok=True)

            def fake_mkstemp(dir, prefix, suffix):
                raise OSError(errno.EROFS if Path(dir).is_relative_to(ro) else errno.ENOSPC, "injected")

            monkeypatch.setattr(atomic.tempfile, "mkstemp", fake_mkstemp)
        with pytest.raises(OptstepsError, match=f"cannot write g.png in {full}: no space left on the device"):
            atomic.write_bytes_atomic(full / "g.png", b"\x89PNG" * 10_000)
        with pytest.raises(OptstepsError, match=f"cannot write g.png in {ro}: the file system is read-only"):
            atomic.write_bytes_atomic(ro / "g.png", b"x")
        assert not any(p.name.endswith(".tmp") for p in full.iterdir())
    finally:
        if mounted:
            subprocess.run(["umount", str(full)], capture_output=True)
            subprocess.run(["umount", str(ro)], capture_output=True)


# ---- the bad-input table through the real entry point (in-process) --------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from optsteps.models.digits import train_digits
    from optsteps.pipeline.config import TrainConfig

    d = tmp_path_factory.mktemp("ws")
    train_digits(
        "digits",
        TrainConfig(steps=2, batch_size=8, warmup_steps=1, threads=1),
        d / "artifacts" / "models" / "digits",
        progress=False,
    )
    __import__("torch").set_flush_denormal(False)  # training turns it on for the process; a CLI run never trains here
    (d / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    w = lambda name, data: (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    w("latin1.yaml", b"teacher:\n  solver: caf\xe9\n")
    w("utf16.json", "{}".encode("utf-16"))
    w("binary.json", bytes(range(256)))
    w("list.json", "[1, 2]")
    w("deep.json", "[" * 100_000 + "]" * 100_000)
    vp = {"family": "vp"}
    w("huge_ns.json", json.dumps({"noise_schedule": {"family": "vp", "num_train_timesteps": 10**12}, "t": [1.0, 0.5]}))
    w("many.json", json.dumps({"noise_schedule": vp, "t": [1 - i * 9e-6 for i in range(100_001)]}))
    w("close.json", json.dumps({"noise_schedule": vp, "t": [0.5, 0.5 - 1e-13, 0.01]}))
    w("good.json", json.dumps({"noise_schedule": vp, "t": [1.0, 0.5, 0.01]}))
    w("denormal.json", json.dumps({"noise_schedule": vp, "t": [1e-310, 5e-311]}))
    w("big.json", " " * (17 * 2**20) + "{}")
    traj = d / "artifacts" / "trajectories" / "digits"
    traj.mkdir(parents=True)
    (d / "outside.txt").write_text("keep\n")
    w(
        "artifacts/trajectories/digits/manifest.json",
        json.dumps(
            {
                "model": "digits",
                "model_sha256": "old",
                "teacher": {"steps": 3},
                "shards": [{"file": "../../../outside.txt", "start": 0, "count": 1, "sha256": "x"}],
            }
        ),
    )
    (d / "data" / "digits").mkdir(parents=True)
    w(
        "data/digits/model_index.json",
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "unet": ["diffusers", "UNet2DModel"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        ),
    )
    return d


def snapshot(d: Path) -> dict:
    return {
        p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


S = ["sample", "--model", "digits", "--out", "g.png", "--schedule"]
A = ["apply", "--pipeline", "data/digits", "--schedule", "good.json", "--out", "x.png"]
TABLE = [
    (
        ["stage", "lambda-opt", "--model", "digits", "--params", "latin1.yaml"],
        "latin1.yaml: the params file is not UTF-8",
    ),
    (S + ["latin1.yaml"], "latin1.yaml: the schedule is not UTF-8"),
    (S + ["utf16.json"], "utf16.json: the schedule is UTF-16 text"),
    (S + ["binary.json"], "binary.json: the schedule holds NUL bytes"),
    (S + ["list.json"], "list.json: the schedule must be a mapping at the top level, got list"),
    (S + ["deep.json"], "deep.json: the schedule is nested too deeply"),
    (S + ["big.json"], "over the limit of 16,777,216 bytes (MAX_FILE_BYTES)"),
    (S + ["huge_ns.json"], "num_train_timesteps = 1000000000000 exceeds the limit 1000000 (MAX_TRAIN_TIMESTEPS)"),
    (S + ["many.json"], "schedule times = 100001 exceeds the limit 10000 (MAX_SCHEDULE_POINTS)"),
    (S + ["close.json"], "closer than the model's time resolution"),
    (S + ["denormal.json"], "subnormal numbers"),
    (S + ["uniform-t", "--seed", str(SEED_MAX + 1)], f"--seed {SEED_MAX + 1} is out of range"),
    (S + ["uniform-t", "--seed", "9223372036854775808"], "--seed 9223372036854775808 is out of range"),
    (
        ["schedule", "lambda-opt", "--model", "digits", "--nfe", "5000"],
        "lambda_opt.nfe = [5000] (given as --nfe 5000): use integers ≤ 200 (the work limit MAX_LAMBDA_OPT_NFE; "
        "raise it for one run with OPTSTEPS_MAX_LAMBDA_OPT_NFE=5000)",
    ),
    (["trajectories", "--model", "digits", "--samples", "100000000"], "OPTSTEPS_MAX_TEACHER_SAMPLES=100000000"),
    (
        ["trajectories", "--model", "digits", "--samples", "4", "--teacher-steps", "8"],
        "shards[0].file '../../../outside.txt' points outside",
    ),
    (["evaluate", "--model", "digits", "--schedule", "uniform-t", "--n", "0"], "evaluate.n = 0 (given as --n 0)"),
    (["evaluate", "--model", "digits", "--schedule", "uniform-t", "--seed", "-1"], "--seed -1 is out of range"),
    (["stage", "model", "--model", "data/digits"], "its name 'digits' (from the folder's name) is a built-in model"),
    (["trajectories", "--model", "./data/digits"], "is a built-in model, whose outputs it would overwrite"),
    (
        ["registry", "list", "--tracking-uri", "http://alice:s3cret@127.0.0.1:1/?token=abc"],
        "http://***@127.0.0.1:1/?token=*** within",
    ),
    (A + ["--guidance", "inf"], "--guidance inf is not a finite number"),
    (A + ["--guidance", "nan"], "--guidance nan is not a finite number"),
    (A + ["--device", "bogus"], "--device 'bogus' is not a device"),
    (A + ["--seed", "9223372036854775808"], "--seed 9223372036854775808 is out of range"),
    (A + ["--num-frames", "4"], "--num-frames is for video pipelines (Wan); data/digits is a DDPMPipeline"),
    (A + ["--height", "-16"], "--height -16: pass a positive size"),
    (A + ["--height", "32"], "generates at its UNet's own size; drop --height/--width"),
    (
        A[:4] + ["close.json", "--out", "x.png"],
        "close.json: schedule times t[0] = 0.5 and t[1] = 0.4999999999999 are closer",
    ),
    (A, "data/digits: component 'unet' is listed in model_index.json but its folder is missing"),
]
if not __import__("torch").cuda.is_available():
    TABLE.append((A + ["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"))


def run_main(ws, monkeypatch, capsys, args):
    from optsteps.cli.main import main

    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", ["optsteps", *args])
    with pytest.raises(SystemExit) as ex:
        main()
    return ex.value.code, capsys.readouterr()


def test_bad_input_table_in_process(ws, monkeypatch, capsys):
    """Every case: exit 2, exactly one `error:` line with the expected words, nothing in the workspace changed."""
    before = snapshot(ws)
    failures = []
    for args, words in TABLE:
        code, out = run_main(ws, monkeypatch, capsys, args)
        lines = [ln for ln in out.err.splitlines() if ln.strip()]
        if code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or words not in lines[0]:
            failures.append((args, code, out.err[-400:]))
    assert not failures, failures
    assert snapshot(ws) == before
    assert (ws / "outside.txt").read_text() == "keep\n"


def test_apply_geometry_checks_on_a_latent_pipeline(tmp_path):
    """The VAE factor (× patch) is read from the folder's configs, before anything loads."""
    from optsteps.cli.checks import check_pipeline_call

    (tmp_path / "vae").mkdir()
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [1, 2, 3, 4]}))
    (tmp_path / "unet" / "config.json").write_text(json.dumps({}))
    check_pipeline_call(tmp_path, 64, 512, None)
    with pytest.raises(OptstepsError, match="--height 17 is not a multiple of 8.*use e.g. --height 16"):
        check_pipeline_call(tmp_path, 17, None, None)
    with pytest.raises(OptstepsError, match="--width 0: pass a positive size"):
        check_pipeline_call(tmp_path, None, 0, None)


def test_pickle_weights_truncated_and_missing_components_are_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    from optsteps.models.diffusers.hub import check_components

    root = tmp_path / "pipe"
    (root / "unet").mkdir(parents=True)
    (root / "scheduler").mkdir()
    (root / "model_index.json").write_text(
        json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "U"], "scheduler": ["diffusers", "S"]})
    )
    (root / "unet" / "config.json").write_text("{}")
    w = root / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({"w": torch.zeros(64)}, str(w))
    check_components(root)
    w.write_bytes(w.read_bytes()[:-40])
    with pytest.raises(
        OptstepsError, match="component 'unet': weights diffusion_pytorch_model.safetensors cannot be read"
    ):
        check_components(root)
    w.unlink()
    (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(OptstepsError, match="only pickle weights .*refuses.*safe_serialization=True"):
        check_components(root)


def test_schedule_file_runs_its_own_solver_unless_told(ws, monkeypatch, capsys):
    """`evaluate --schedule FILE` takes the file's solver spec and says so (stopped before sampling by --n 1)."""
    from optsteps.core.baselines import baseline
    from optsteps.models import noise_schedule_for

    s = baseline("uniform-t", noise_schedule_for("digits"), 4, model="digits").with_meta(solver="dpmpp2m")
    (ws / "dpm.json").write_text(s.to_json())
    import optsteps.evaluate.run as ev

    seen = {}

    def fake_evaluate_schedule(m, sched, *a, solver=None, **k):
        seen["solver"] = (solver, sched.solver)
        raise OptstepsError("stop")

    monkeypatch.setattr(ev, "evaluate_schedule", fake_evaluate_schedule)
    monkeypatch.setattr("optsteps.pipeline.stages.evaluator_for", lambda *a, **k: type("E", (), {"cache_dir": None})())
    for extra, want in (([], "dpmpp2m"), (["--solver", "ddim"], "ddim")):
        code, out = run_main(
            ws,
            monkeypatch,
            capsys,
            ["evaluate", "--model", "digits", "--schedule", "dpm.json", "--no-teacher", "--no-log", "--n", "4", *extra],
        )
        assert code == 2 and "error: stop" in out.err, out.err
        assert seen["solver"] == (want, want)
        assert f"with {want}-" in out.err and ("--solver" if extra else "the schedule file") in out.err


def test_every_output_has_one_file_mode(tmp_path):
    """Shards (written by safetensors), the manifest and atomic files: 0666 minus the umask; folders 0777 minus it."""
    import torch

    from optsteps.io.shards import write_manifest, write_shard

    write_shard(tmp_path / "s.safetensors", {"x": torch.zeros(3)}, {"a": 1})
    write_manifest(tmp_path, {"shards": []})
    atomic.write_bytes_atomic(tmp_path / "sub" / "g.png", b"x")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {
        "s.safetensors": atomic.file_mode(),
        "manifest.json": atomic.file_mode(),
        "g.png": atomic.file_mode(),
        "sub": atomic.file_mode() | ((atomic.file_mode() & 0o444) >> 2),
    }
