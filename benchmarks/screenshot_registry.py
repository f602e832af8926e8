"""Screenshot of the MLflow UI's registered-models page for a temporary registry of a few schedules.

    PYTHONPATH=. .venv/bin/python benchmarks/screenshot_registry.py [--out docs/registry.png] [--artifacts artifacts]

The schedules and their metrics are real: with a trained ``digits`` model and classifier under
``--artifacts`` they are evaluated (FID/adherence on ``--n`` samples, L2 to the teacher); otherwise on the
analytic ``gmm`` model, ranked by L2 to its teacher. Then ``mlflow ui --workers 1`` serves the registry on a
free localhost port, Debian's headless chromium (``apt-get install -y chromium`` if missing) loads the
registered-models page, its first-visit dialogs are closed over the DevTools protocol (falling back to the
plain ``--screenshot`` flag), the screenshot is written, and the server is stopped.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process group we started (start_new_session=True), wait, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        t0 = time.time()
        while time.time() - t0 < grace:
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()
            time.sleep(0.5)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    print("chromium missing: apt-get update && apt-get install -y chromium", flush=True)
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("chromium")


def cdp_screenshot(
    browser: str,
    flags: list,
    url: str,
    out: Path,
    timeout: float = 90.0,
    wait_for: str = "-schedules",
    height: int = 900,
    scroll_to: str | None = None,
    clicks: tuple = (),
) -> None:
    """Load ``url`` in headless chromium over the DevTools protocol, close MLflow's first-visit dialogs
    (the "new Model Registry UI" promo and the Assistant panel: their ``aria-label="Close"`` buttons), then
    capture the page. The plain ``--screenshot`` flag cannot click, and the promo dialog covers the table.
    ``wait_for``: text the page shows once rendered; ``height``: the viewport's; ``scroll_to``: text of an element
    scrolled into view (the last element with that text; e.g. a section of the compare view); ``clicks``: texts of
    elements clicked first (e.g. a common artifact to preview)."""
    import base64
    import json

    from websockets.sync.client import connect

    dport = free_port()
    proc = subprocess.Popen(
        [browser, *flags, f"--remote-debugging-port={dport}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        t0 = time.time()
        while True:
            try:
                pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dport}/json/list", timeout=2).read())
                page = next(p for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration, ValueError) as e:
                if time.time() - t0 > 30:
                    raise RuntimeError("chromium DevTools did not answer") from e
                time.sleep(0.5)
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            ids = iter(range(1, 10**6))

            def call(method, **params):
                i = next(ids)
                ws.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=60))
                    if msg.get("id") == i:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg.get("result", {})

            def js(expr):
                return call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")

            call("Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            t0 = time.time()
            while not js(f"document.body && document.body.innerText.includes({json.dumps(wait_for)})"):
                if time.time() - t0 > timeout:
                    raise RuntimeError(f"{url} did not render {wait_for!r}")
                time.sleep(1)
            time.sleep(3)  # dialogs open after the content, images load
            for _ in range(3):
                js("document.querySelectorAll('button[aria-label=\"Close\"]').forEach(b => b.click())")
                time.sleep(1.5)
            find = (  # the last element with a text node reading exactly that
                "[...document.querySelectorAll('*')].filter(e => [...e.childNodes].some(n => n.nodeType === 3 "
                "&& n.textContent.trim() === {})).pop()"
            )
            for text in clicks:  # e.g. the common artifact to preview in the compare view
                found = js(
                    f"(() => {{ const el = {find.format(json.dumps(text))}; if (el) el.click(); return !!el; }})()"
                )
                if not found:
                    print(f"{url}: nothing to click named {text!r}", flush=True)
                time.sleep(3)
            if scroll_to:
                js(f"(() => {{ const el = {find.format(json.dumps(scroll_to))}; if (el) el.scrollIntoView(); }})()")
                time.sleep(2)
            png = call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(small_png(base64.b64decode(png)))
    finally:
        stop_group(proc)


def small_png(data: bytes, limit: int = 400_000) -> bytes:
    """A screenshot under ``limit`` bytes for the repository: as captured when small enough, else quantised to a
    256-colour palette (UI pages have few colours; the sample grids stay legible)."""
    import io

    from PIL import Image

    if len(data) <= limit:
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def populate(reg, artifacts: Path, n: int) -> None:
    import torch

    from optsteps.core.baselines import baseline
    from optsteps.evaluate.options import EvaluateOptions
    from optsteps.evaluate.run import Evaluator, evaluate_schedule, teacher_endpoints
    from optsteps.models import gmm_model, load_model, model_dir, model_record
    from optsteps.pipeline.config import TeacherConfig

    torch.set_num_threads(1)
    digits = (
        model_record(artifacts, "digits").is_file()
        and (model_dir(artifacts, "classifier") / "classifier.safetensors").is_file()
    )
    model = load_model("digits", artifacts) if digits else gmm_model()
    ev = Evaluator(model_dir(artifacts, "classifier") if digits else None, None, inception_n=0, kid_subsets=100)
    tcfg = TeacherConfig(solver="unipc", steps=100, seed=0)
    _, teacher = teacher_endpoints(model, tcfg, n, seed=1234)
    metric = "fid_digitsnet" if digits else "l2_to_teacher"
    for solver, nfe, kind in itertools.product(
        ("unipc", "dpmpp2m"), (4, 6), ("uniform-t", "time-quadratic", "uniform-lambda", "karras")
    ):
        s = baseline(kind, model.noise_schedule, nfe, model=model.name).with_meta(solver=solver)
        res = reg.publish(
            s,
            lambda s=s, sv=solver: evaluate_schedule(
                model, s, EvaluateOptions(n=n, seed=1234), solver=sv, teacher=teacher, evaluator=ev, return_samples=True
            ),
            metric=metric,
            params={"n": n},
        )
        print(
            f"{res['name']} v{res['version']} {kind} NFE {nfe}: {metric} {res[metric]:.4g}"
            f"{' (champion)' if res['champion'] else ''}",
            flush=True,
        )


def page_targets(reg) -> dict:
    """What the page screenshots show: the registered model with the most versions, the champion of its smallest
    NFE (its version page and its run's sample grid) and the compare view of the champion and its runner-up."""
    rows = reg.list_schedules()
    if not rows:
        raise SystemExit("the registry holds no schedules to show")
    counts = {}
    for r in rows:
        counts[r["name"]] = counts.get(r["name"], 0) + 1
    name = max(counts, key=lambda n: (counts[n], n))
    mine = [r for r in rows if r["name"] == name]
    nfe = min(r["nfe"] for r in mine if any(a.startswith("champion") for a in r["aliases"]))
    at = [r for r in mine if r["nfe"] == nfe]  # best first (list order)
    champ = next(r for r in at if r["aliases"])
    eid = reg.client.get_run(champ["run_id"]).info.experiment_id
    return {
        "name": name,
        "version": champ["version"],
        "run_id": champ["run_id"],
        "experiment_id": eid,
        "compare": [r["run_id"] for r in at[:2]],
        "nfe": nfe,
    }


def capture_pages(reg, base: str, folder: Path, browser: str, flags: list) -> None:
    """The four pages of issue 27 as PNGs in ``folder``: version, registered model, run (sample grid), compare."""
    import json
    from urllib.parse import quote

    from optsteps.integrations.mlflow_registry import GRID_PATH

    t = page_targets(reg)
    folder.mkdir(parents=True, exist_ok=True)
    runs = quote(json.dumps(t["compare"]))
    ml = "workflowType=machine_learning"  # MLflow 3.17's UI picks GenAI or training views by this (or its toggle)
    shots = [
        ("version.png", f"{base}/models/{t['name']}/versions/{t['version']}?{ml}", "How to run it", 1700, None),
        ("registered-model.png", f"{base}/models/{t['name']}?{ml}", "champion", 1100, None),
        (
            "run-grid.png",
            f"{base}/experiments/{t['experiment_id']}/runs/{t['run_id']}/artifacts/{GRID_PATH}?{ml}",
            GRID_PATH,
            1000,
            None,
        ),
        (
            "compare.png",
            f"{base}/compare-runs?runs={runs}&experiments={quote(json.dumps([t['experiment_id']]))}&{ml}",
            "Artifacts",
            760,
            "Artifacts",
        ),
    ]
    for fname, url, wait_for, height, scroll in shots:
        out = folder / fname
        # the compare view: fold the sections above its artifacts, then preview the common grid
        clicks = ("Visualizations", "Run details", "Parameters", "Metrics", GRID_PATH) if fname == "compare.png" else ()
        cdp_screenshot(browser, flags, url, out, wait_for=wait_for, height=height, scroll_to=scroll, clicks=clicks)
        print(f"wrote {out} ({out.stat().st_size} bytes): {url}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "registry.png"))
    ap.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--budget-ms", type=int, default=15000, help="chromium --virtual-time-budget")
    ap.add_argument(
        "--tracking-uri", default="", help="an existing registry (e.g. of `make run`) instead of a temporary one"
    )
    ap.add_argument(
        "--pages",
        default="",
        help="also capture a version, its registered model, its run's sample grid and the compare view of its NFE's "
        "runs into this folder (e.g. docs/screenshots)",
    )
    args = ap.parse_args()
    from optsteps.integrations.mlflow_registry import Registry

    work = Path(tempfile.mkdtemp(prefix="optsteps-registry-shot-"))
    uri = args.tracking_uri or f"sqlite:///{work / 'mlruns.db'}"
    reg = Registry(uri, create=not args.tracking_uri)
    if not args.tracking_uri:
        populate(reg, Path(args.artifacts), args.n)
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "ui",
            "--backend-store-uri",
            uri,
            "--default-artifact-root",
            reg.artifact_location,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(work / "server.log", "w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
        start_new_session=True,
    )
    try:
        t0 = time.time()
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() - t0 > 180:
                raise SystemExit(f"mlflow ui did not come up; log:\n{(work / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        print(f"mlflow ui healthy after {time.time() - t0:.1f} s on port {port}", flush=True)
        out = Path(args.out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}/#/models?workflowType=machine_learning"
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={work / 'chrome'}",
            "--window-size=1400,900",
        ]
        try:
            cdp_screenshot(chromium(), flags, url, out)
            if args.pages:
                capture_pages(reg, f"http://127.0.0.1:{port}/#", Path(args.pages).resolve(), chromium(), flags)
        except Exception as e:  # no DevTools connection: a plain screenshot (the promo dialog may cover it)
            print(f"DevTools route failed ({e}); plain --screenshot instead", flush=True)
            subprocess.run(
                [chromium(), *flags, f"--screenshot={out}", f"--virtual-time-budget={args.budget_ms}", url],
                check=True,
                timeout=180,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        print(f"wrote {out} ({out.stat().st_size} bytes)")
    finally:
        stop_group(server)  # the server's own session: uvicorn worker and the huey job consumers
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
