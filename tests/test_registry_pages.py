"""The registry's pages: version and registered-model markdown (intervals, paired differences, how to run it), the
experiment's kind tag (MLflow's training view), the runs' params (seeds, order, times, sigmas), the labelled sample
grid at one common artifact path, the summary's table and figures, and ``registry list`` (sorted, intervals, dates)."""

import json
import os
import re

import numpy as np
import pytest
import torch

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from optsteps.core.baselines import baseline  # noqa: E402
from optsteps.integrations import registry_pages as pages  # noqa: E402
from optsteps.models.digits import noise_schedule_for  # noqa: E402

REG = dict(metric="fid_digitsnet", git="0123abc", params_digest="p" * 8, dvc_hash="d" * 8)


def sched(kind, nfe=4, model="pages"):
    return baseline(kind, noise_schedule_for("digits"), nfe, model=model).with_meta(solver="unipc")


# ---- plain functions -----------------------------------------------------------------------------------------


def test_number_list_rounds_and_fits_the_param_limit():
    vals = [1 / 3, 2 / 3, 0.1234567891]
    assert json.loads(pages.number_list(vals)) == [0.333333, 0.666667, 0.123457]
    long = np.linspace(1, 1e-3, 2000).tolist()
    text = pages.number_list(long)
    assert len(text) <= pages.PARAM_LIMIT and json.loads(text)[0] == 1.0
    huge = np.linspace(1, 1e-3, 5000).tolist()
    text = pages.number_list(huge)
    assert len(text) <= pages.PARAM_LIMIT and "more" in json.loads(text)[-1]


def test_version_description_explains_the_schedule_and_its_standing():
    tags = {
        "method": "oss",
        "solver": "unipc",
        "nfe": "5",
        "order": "2",
        "model": "digits",
        "metric": "fid_digitsnet",
        "champion_decision": "best",
        "rank": "1/3",
        "compared_with": "digits-unipc-schedules/26",
        "paired_diff": "-0.4",
        "paired_ci95": "[-0.7, -0.1]",
    }
    params = {"times": "[1.0, 0.5, 0.2, 0.1, 0.05, 0.001]", "sigmas": "[80.0, 2.0, 0.5, 0.2, 0.1, 0.01]"}
    params.update(start_state="scaled", eval_seed="1234", teacher_seed="0", n="1000")
    metrics = {"fid_digitsnet": 1.051, "fid_digitsnet_ci95_lo": 0.81, "fid_digitsnet_ci95_hi": 1.32, "l2": 3.0}
    run_tags = {
        "model_sha256": "ab" * 32,
        "vs_best_baseline": json.dumps(
            {"fid_digitsnet": {"baseline": "uniform-lambda", "diff": -2.5, "ci95": [-3.1, -1.9], "significant": True}}
        ),
        "speedup": json.dumps(
            [{"metric": "fid_digitsnet", "baseline": "karras", "baseline_nfe": 9.2, "speedup": 1.84}]
        ),
    }
    text = pages.version_description(
        "digits-unipc-schedules", 27, tags, params, metrics, run_tags, "time-quadratic", ["fid_digitsnet"]
    )
    assert "## oss · unipc order 2 · NFE 5" in text
    assert "| 1.051 [0.81, 1.32] |" in text  # the metric with its interval
    assert "time-quadratic (digits-unipc-schedules/26)" in text and "-0.4 [-0.7, -0.1]" in text
    assert "uniform-lambda" in text and "-2.5 [-3.1, -1.9]" in text and "significant" in text
    assert "×1.84" in text and "karras" in text
    assert "seed 1234" in text and "teacher seed 0" in text and "abababab" in text
    assert "1, 0.5, 0.2 … 0.05, 0.001 (6 values)" in text
    assert "optsteps apply --pipeline" in text and "digits-unipc-schedules/27" in text
    assert "OptstepsScheduler.from_schedule" in text and "--format comfyui" in text
    behind = pages.version_description(
        "n", 1, {**tags, "champion_decision": "behind", "paired_ci95": "[-0.1, 0.3]"}, {}, {}
    )
    assert "vs the champion" in behind and "includes 0" in behind


def test_model_description_is_a_champion_table_per_nfe():
    champs = [
        {"nfe": "8", "version": "3", "method": "karras", "metric": "l2", "value": 0.5, "ci95": [0.4, 0.6]},
        {"nfe": "4", "version": "9", "method": "oss", "metric": "l2", "value": 1.5, "ci95": None, "rank": "1/5"},
    ]
    text = pages.model_description("digits-unipc-schedules", champs)
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [ln.split("|")[1].strip() for ln in lines] == ["4", "8"]  # by NFE
    assert "0.5 [0.4, 0.6]" in lines[1] and "oss" in lines[0] and "| 5 |" in lines[0]
    assert "**digits**" in text and "**unipc**" in text


def test_nfe_table_sorts_best_first_within_solver_and_nfe():
    rows = [{"method": "teacher", "solver": "unipc", "nfe": 100, "l2": 0.0}]
    rows += [
        {"method": m, "solver": "unipc", "nfe": k, "l2": v, "ci95": {"l2": [v - 0.1, v + 0.1]}}
        for m, k, v in (("a", 6, 2.0), ("b", 4, 3.0), ("c", 4, 1.0), ("d", 6, 0.5))
    ]
    rows[3]["vs_best_baseline"] = {"l2": {"baseline": "b", "diff": -2.0, "ci95": [-2.5, -1.5]}}
    csv, md = pages.nfe_table(rows, "l2")
    assert [ln.split(",")[2] for ln in csv.splitlines()[1:]] == ["c", "b", "d", "a"]
    assert "1 [0.9, 1.1]" in md and "-2 [-2.5, -1.5] vs b" in md and "| teacher" not in md


def test_labelled_grid_is_large_and_shows_the_teacher_beside():
    from optsteps.io.images import labelled_grid

    x = torch.rand(16, 1, 8, 8) * 2 - 1
    img = labelled_grid([("teacher", x), ("oss", -x)], [str(i % 10) for i in range(16)])
    assert img.width >= 768 and img.height > 2 * 8 * 8
    a = np.asarray(img)
    half = img.width // 2
    assert not np.array_equal(a[:, :half], a[:, half : 2 * half])  # two different panels


def test_curves_have_interval_bars_and_speedup_legend_names_censored_points():
    from optsteps.evaluate.plots import curves_figure, speedup_figure

    rows = [
        {"model": "m", "method": k, "solver": "unipc", "nfe": n, "l2": v, "ci95": {"l2": [v * 0.9, v * 1.1]}}
        for k, n, v in (("a", 4, 2.0), ("a", 6, 1.0), ("b", 4, 1.5), ("b", 6, 0.8))
    ]
    ax = curves_figure(rows, "l2", "l2").axes[0]
    assert len(ax.containers) == 2  # one errorbar container per method
    entries = [
        {"method": "oss", "solver": "unipc", "nfe": 4, "metric": "l2", "baseline": "u", "baseline_nfe": 6.0}
        | {"speedup": 1.5, "censored": None},
        {"method": "oss", "solver": "unipc", "nfe": 6, "metric": "l2", "baseline": "u", "baseline_nfe": 12.0}
        | {"speedup": 2.0, "censored": ">"},
    ]
    fig = speedup_figure(entries)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("censored" in t for t in labels) and fig.get_figwidth() >= 7


# ---- on a sqlite registry -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_registry_pages_on_mlflow(tmp_path):
    from typer.testing import CliRunner

    from optsteps.cli.registry import registry_app
    from optsteps.integrations.mlflow_registry import EXPERIMENT_KIND, GRID_PATH, Registry

    reg = Registry(f"sqlite:///{tmp_path}/mlruns.db")
    g = np.random.default_rng(0)
    base = 5.0 + g.normal(0, 0.3, 100)
    rows = {"uniform-t": (5.0, base), "karras": (4.0, base - 1 + g.normal(0, 0.05, 100)), "oss": (3.0, base - 2)}
    rids = {}
    for method, (fid, res) in rows.items():
        s = sched("uniform-t" if method == "uniform-t" else "karras" if method == "karras" else "uniform-lambda")
        s = s.with_meta(method=method)
        vs = {"fid_digitsnet": {"baseline": "karras", "diff": -1.0, "ci95": [-1.2, -0.8]}} if method == "oss" else None
        rids[method] = reg.log_schedule_run(
            s,
            {"fid_digitsnet": fid, "ci95": {"fid_digitsnet": [fid - 0.25, fid + 0.25]}, "seed": 1234, "n": 100},
            resamples={"fid_digitsnet": res},
            evaluation_id="eval-1",
            samples=torch.rand(12, 1, 8, 8) * 2 - 1,
            vs_best_baseline=vs,
            model_sha="f" * 64,
            teacher_seed=7,
        )
        reg.register_schedule(rids[method], **REG)
    exp = reg.client.get_experiment_by_name(reg.experiment)
    assert exp.tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"] == "custom_model_development"
    run = reg.client.get_run(rids["oss"])
    p = run.data.params
    assert (
        p["order"] == str(sched("karras").solver_spec.order)
        and p["eval_seed"] == "1234"
        and p["teacher_seed"] == "7"
        and p["start_state"] == "scaled"
    )
    assert len(json.loads(p["times"])) == 5 and len(json.loads(p["sigmas"])) == 5
    for rid in rids.values():  # one common path: MLflow's compare view shows it side by side
        assert GRID_PATH == "samples.png" and GRID_PATH in {f.path for f in reg.client.list_artifacts(rid)}
    name = "pages-unipc-schedules"
    mvs = {mv.tags["method"]: mv for mv in reg.client.search_model_versions(f"name = '{name}'")}
    champ = mvs["oss"]
    assert champ.aliases or reg.client.get_model_version_by_alias(name, "champion-nfe4").version == champ.version
    d = reg.client.get_model_version(name, champ.version).description
    assert "3 [2.75, 3.25]" in d  # the metric and its interval
    assert f"karras ({name}/{mvs['karras'].version})" in d  # the runner-up by method, not only name/version
    assert "vs the best baseline (karras)" in d and "-1 [-1.2, -0.8]" in d
    assert "optsteps apply" in d and "OptstepsScheduler" in d and "--format comfyui" in d and "ffffffff" in d
    behind = reg.client.get_model_version(name, mvs["uniform-t"].version).description
    assert f"vs the champion oss ({name}/{champ.version})" in behind
    assert mvs["uniform-t"].tags["compared_with_method"] == "oss"
    rm = reg.client.get_registered_model(name).description
    assert re.search(r"\| 4 \| oss \| \[\d+\]", rm) and "3 [2.75, 3.25]" in rm
    # registry list: best first within (name, NFE), with intervals and ISO dates
    out = CliRunner().invoke(registry_app, ["list", "--model", "pages", "--tracking-uri", reg.tracking_uri])
    assert out.exit_code == 0, out.output
    body = [ln for ln in out.output.splitlines() if ln.startswith(name)]
    assert [ln.split()[3] for ln in body] == [  # name, version, aliases, method
        "oss",
        "karras",
        "uniform-t",
    ]
    assert "3 [2.75, 3.25]" in body[0] and re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", body[0])
    assert not re.search(r"\b1\d{12}\b", out.output)  # no epoch milliseconds
