"""Servers and long work, through the real CLI.

- A tracking server that answers ``/health`` but fails its API (HTTP 503, or accepts the request and never answers)
  gives one ``error:`` line naming the server (credentials redacted) within ``mlflow.timeout_s``, exit 2, for
  ``stage register``, ``evaluate --register`` and ``registry list`` (not MLflow's minutes of retries and a
  traceback); a server that fails later, inside a registration, gives the same one line.
- The local Ray of ``trajectories --ray`` listens on 127.0.0.1 only.
- Long work is bounded (λ-opt NFE) and reports its progress on stderr.
"""

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from optsteps.errors import OptstepsError

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 2  # mlflow.timeout_s of these workspaces


def within(elapsed: float, timeout_s: float = TIMEOUT_S) -> bool:
    """A correctness bound, not a performance target: the timeout plus slack for a loaded machine."""
    return elapsed < timeout_s * 3 + 20


class FakeTracking:
    """A local HTTP server: ``/health`` answers 200; the MLflow API answers per ``mode``: "503" (Service
    Unavailable), "hang" (accepts and never answers), or "later" (answers the first ``ok`` API requests with an
    empty MLflow answer, then 503)."""

    def __init__(self, mode: str, ok: int = 0):
        self.mode, self.ok, self.api_calls = mode, ok, 0
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code: int, body: bytes, kind: str = "text/plain"):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _any(self):
                if self.path.split("?")[0].rstrip("/") == "/health":
                    return self._reply(200, b"OK")
                fake.api_calls += 1
                if fake.mode == "hang":
                    fake.release.wait(600)
                    return None
                if fake.mode == "later" and fake.api_calls <= fake.ok:
                    return self._reply(200, b'{"experiments": []}', "application/json")
                return self._reply(503, b"Service Unavailable")

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["503", "hang"])
def server(request):
    with FakeTracking(request.param) as s:
        yield s


@pytest.fixture
def ws(tmp_path, server):
    (tmp_path / "params.yaml").write_text(
        f"mlflow:\n  tracking_uri: http://127.0.0.1:{server.port}\n  timeout_s: {TIMEOUT_S}\n"
    )
    return tmp_path


def run_main(ws, monkeypatch, capsys, args):
    """The CLI's ``main`` in this process (what the ``optsteps`` script runs): (exit code, stdout, stderr, seconds)."""
    from optsteps.cli.main import main

    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", ["optsteps", *args])
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as ex:
        main()
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr()
    return ex.value.code, out.out, out.err, elapsed


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["stage", "register"],
        ["registry", "list", "--tracking-uri", "http://alice:s3cret@127.0.0.1:{port}"],
        ["evaluate", "--model", "gmm", "--schedule", "uniform-t", "--nfe", "5", "--n", "8", "--inception-n", "0"]
        + ["--register", "--tracking-uri", "http://alice:s3cret@127.0.0.1:{port}/"],
    ],
    ids=["stage-register", "registry-list", "evaluate-register"],
)
def test_a_server_that_fails_after_health_is_one_line_within_the_timeout(ws, server, monkeypatch, capsys, args):
    args = [a.format(port=server.port) for a in args]
    code, _, err, elapsed = run_main(ws, monkeypatch, capsys, args)
    line = one_error_line(err)
    assert code == 2
    assert f"127.0.0.1:{server.port}" in line and "answers /health but its API" in line, line
    assert "s3cret" not in err and "alice" not in err
    if "alice" in " ".join(args):
        assert f"http://***@127.0.0.1:{server.port}" in line
    assert ("HTTP 503" in line) if server.mode == "503" else (f"within {TIMEOUT_S} s (mlflow.timeout_s)" in line)
    assert server.api_calls >= 1  # /health passed: the API is what failed
    assert within(elapsed), elapsed
    assert not (ws / "mlruns.db").exists() and not (ws / "results").exists()


@pytest.mark.integration
def test_the_real_cli_gives_one_line_within_the_timeout(tmp_path):
    """The installed entry point in a subprocess (its own MLflow settings): a hanging server, `stage register`."""
    with FakeTracking("hang") as srv:
        (tmp_path / "params.yaml").write_text(
            f"mlflow:\n  tracking_uri: http://127.0.0.1:{srv.port}\n  timeout_s: {TIMEOUT_S}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_")}
        env["PYTHONPATH"] = str(ROOT)
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "optsteps.cli.main", "stage", "register"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        elapsed = time.perf_counter() - t0
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = one_error_line(r.stderr)
    assert f"http://127.0.0.1:{srv.port} answers /health but its API did not answer" in line, line
    assert within(elapsed, TIMEOUT_S + 10), elapsed  # + the Python, torch and MLflow imports


def test_a_server_that_fails_inside_a_registration_is_one_server_error(tmp_path):
    """/health and the first API request answer, a later request gets 503: ``ServerError`` (an OptstepsError, one
    line naming the server), not MLflow's exception; MLflow's own answers (e.g. "no such version") stay MLflow's."""
    from optsteps.integrations.mlflow_registry import Registry
    from optsteps.integrations.tracking_server import ServerError, server_error

    with FakeTracking("later", ok=1) as srv:
        reg = Registry(f"http://127.0.0.1:{srv.port}", timeout_s=TIMEOUT_S)
        t0 = time.perf_counter()
        expected = rf"127\.0\.0\.1:{srv.port} answers /health but its API answered HTTP 503"
        with pytest.raises(ServerError, match=expected):
            reg.list_schedules("digits")
        assert within(time.perf_counter() - t0)
    assert issubclass(ServerError, OptstepsError)
    from mlflow.exceptions import MlflowException, RestException

    assert server_error(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"})) is None
    assert server_error(MlflowException("Run 'x' not found")) is None
    assert server_error(ValueError("API request to http://h/x failed with exception boom")) is None
    err = server_error(MlflowException("API request to http://u:pw@h:5000/api/2.0/x failed with exception boom"))
    assert err is not None and "http://***@h:5000" in str(err) and "pw" not in str(err)
    assert server_error(RestException({"error_code": "INTERNAL_ERROR", "message": "db down"})) is not None


def test_the_mlflow_request_bounds_follow_the_timeout_and_keep_the_users(monkeypatch):
    from optsteps.integrations import tracking_server as mr

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setattr(mr, "_HTTP_ENV", {})
    mr.bound_requests(2.5)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    mr.bound_requests(0.2)  # ours: replaced
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")  # the user's: kept
    mr.bound_requests(7)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_health_check_sends_userinfo_as_basic_auth_not_as_the_host():
    from optsteps.integrations.tracking_server import _health_request

    req = _health_request("http://alice:s%3Acret@127.0.0.1:5000/")
    assert req.full_url == "http://127.0.0.1:5000/health"
    import base64

    assert req.get_header("Authorization") == "Basic " + base64.b64encode(b"alice:s:cret").decode()
    assert _health_request("https://mlflow.example.com").get_header("Authorization") is None


# ---- bounds and progress on long work ------------------------------------------------------------------------


@pytest.fixture
def adhoc(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def test_lambda_opt_nfe_is_a_work_limit_refused_up_front_with_how_to_raise_it(adhoc, monkeypatch, capsys):
    """`schedule lambda-opt --nfe 5000` used to run for minutes without a word: refused before any work, naming the
    limit and OPTSTEPS_MAX_LAMBDA_OPT_NFE; raising that variable lifts the limit (params rule and library alike)."""
    from optsteps.optimizers.lambda_opt import lambda_opt_schedule
    from optsteps.optimizers.lambda_opt.orders import check_nfe
    from optsteps.pipeline.config import load_params, override

    monkeypatch.delenv("OPTSTEPS_MAX_LAMBDA_OPT_NFE", raising=False)
    code, out, err, elapsed = run_main(
        adhoc, monkeypatch, capsys, ["schedule", "lambda-opt", "--model", "gmm"] + ["--nfe", "5000"]
    )
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert "--nfe 5000" in line and "≤ 200" in line and "OPTSTEPS_MAX_LAMBDA_OPT_NFE=5000" in line, line
    assert elapsed < 60
    p = load_params(adhoc / "params.yaml")
    with pytest.raises(OptstepsError, match="MAX_LAMBDA_OPT_NFE"):
        check_nfe(201)
    from optsteps.models import gmm_model

    with pytest.raises(OptstepsError, match="OPTSTEPS_MAX_LAMBDA_OPT_NFE=5000"):
        lambda_opt_schedule(gmm_model().noise_schedule, 5000, "unipc")  # the library refuses it too, before solving
    monkeypatch.setenv("OPTSTEPS_MAX_LAMBDA_OPT_NFE", "6000")
    assert check_nfe(5000) == 5000
    assert override(p, {"lambda_opt.nfe": ("--nfe", [5000])}).lambda_opt.nfe == [5000]


def test_progress_lines_are_throttled_with_elapsed_and_eta():
    from optsteps.pipeline.progress import Progress

    now, lines = [0.0], []
    prog = Progress("teacher m", lines.append, "shard", every_s=10, clock=lambda: now[0])
    for i, t in enumerate([3, 6, 9], 1):  # under 10 s in all: nothing said, not even at the end
        now[0] = t
        prog(i, 3)
    assert lines == []
    prog = Progress("teacher m", lines.append, "shard", every_s=10, clock=lambda: now[0])
    for i in range(1, 11):
        now[0] += 4.0
        prog(i, 10)
    prog(10, 10)  # a repeated end says nothing more
    assert lines == [
        "teacher m: shard 3/10 (30%), 12.0 s elapsed, ETA 28.0 s",
        "teacher m: shard 6/10 (60%), 24.0 s elapsed, ETA 16.0 s",
        "teacher m: shard 9/10 (90%), 36.0 s elapsed, ETA 4.0 s",
        "teacher m: shard 10/10 (100%), 40.0 s elapsed, done",
    ]
    bound = Progress("opt", lines.append, "iteration", every_s=0, bound=True, clock=lambda: now[0])
    now[0] += 5
    bound(5, 20)
    assert lines[-1].endswith("ETA ≤ 15.0 s")


def test_trajectories_says_its_size_and_reports_shards_on_stderr(adhoc, monkeypatch, capsys):
    """`trajectories` says up front how much it will compute, then shard i/n with the elapsed time and an ETA on
    stderr (the Ray path reports the same way); stdout keeps the one result line."""
    import optsteps.pipeline.progress as progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # every shard
    args = ["trajectories", "--model", "gmm", "--samples", "48", "--shard-size", "8", "--teacher-steps", "50"]
    code, out, err, _ = run_main(adhoc, monkeypatch, capsys, args + ["--out", "shards"])
    assert code in (0, None), err
    lines = err.splitlines()
    assert lines[0].startswith("teacher gmm: 6 of 6 shards to compute (48 samples in shards of 8; "), err
    assert "network forwards in" in lines[0]
    shards = [ln for ln in lines if ln.startswith("teacher gmm: shard ")]
    assert [ln.split()[3] for ln in shards] == [f"{i}/6" for i in range(1, 7)], err
    assert all("ETA" in ln for ln in shards[:-1]) and shards[-1].endswith("done")
    assert out.strip().startswith("6 shards, 48 samples") and "shard 1/6" not in out
    code, out, err, _ = run_main(adhoc, monkeypatch, capsys, args + ["--out", "shards"])  # all there: nothing to say
    assert code in (0, None) and "teacher gmm" not in err, err


def test_lambda_opt_reports_its_iterations_through_a_callback(adhoc, monkeypatch, capsys):
    """The optimiser reports (iterations so far, budget) to a callback it is handed, never prints; the CLI turns
    that into progress lines on stderr for a long run (every line here: EVERY_S = 0)."""
    from optsteps.models import gmm_model
    from optsteps.optimizers.lambda_opt import lambda_opt_schedule

    calls = []
    lambda_opt_schedule(gmm_model().noise_schedule, 6, "unipc", progress=lambda d, t: calls.append((d, t)))
    assert capsys.readouterr() == ("", "")
    assert len(calls) > 3 and all(b >= a for (a, _), (b, _) in zip(calls, calls[1:]))
    assert all(d <= t for d, t in calls) and calls[-1][0] == calls[-1][1] == calls[-2][0]

    import optsteps.pipeline.progress as progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    code, out, err, _ = run_main(adhoc, monkeypatch, capsys, ["schedule", "lambda-opt", "--model", "gmm", "--nfe", "6"])
    assert code in (0, None), err
    lines = [ln for ln in err.splitlines() if ln.startswith("lambda-opt gmm unipc NFE 6: iteration ")]
    assert len(lines) > 3 and "ETA ≤" in lines[0] and lines[-1].endswith("done"), err
    assert "iteration" not in out and out.startswith("lambda-opt NFE 6")
