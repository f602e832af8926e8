"""Published schedules as baselines: the OSS authors' FLUX/Wan tables and the AYS tables, each interpolated to any
NFE by the AYS recipe (log level linear over evenly spaced positions, K + 1 levels, the last replaced by 0)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from optsteps.core.baselines import baseline, baseline_for
from optsteps.core.noise_schedules import EDM, RectifiedFlow, VPDiscrete
from optsteps.core.published_schedules import AYS_SIGMA_MIN, OSS_TABLES, loglinear_levels
from optsteps.errors import OptstepsError

RF = RectifiedFlow()
SD = VPDiscrete("scaled_linear", 0.00085, 0.012, 1000)


def recipe(levels, steps):
    """The recipe written out with numpy on the increasing (reversed) table, as a second implementation."""
    rev = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    out = np.exp(np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, len(levels)), rev))[::-1].copy()
    out[-1] = 0.0
    return out


@pytest.mark.parametrize("table,native", [("flux", 10), ("wan", 20)])
def test_oss_tables_at_their_own_nfe_are_the_published_numbers(table, native):
    s = baseline("oss-published", RF, native, table=table, model="m")
    assert s.nfe == native and s.method == "oss-published" and s.model == "m"
    assert s.t[:-1] == pytest.approx(OSS_TABLES[table][:-1], abs=1e-12) and s.t[-1] == 0.0
    assert len(OSS_TABLES[table]) == native + 1 and OSS_TABLES[table][-1] == 0.001


@pytest.mark.parametrize("table", ["flux", "wan"])
@pytest.mark.parametrize("nfe", [1, 3, 7, 15, 28, 50])
def test_oss_tables_interpolate_log_linearly_to_any_nfe(table, nfe):
    s = baseline("oss-published", RF, nfe, table=table)
    assert s.nfe == nfe and s.t[0] == OSS_TABLES[table][0] and s.t[-1] == 0.0
    assert np.allclose(s.t, recipe(OSS_TABLES[table], nfe), rtol=1e-12, atol=0)


def test_oss_published_is_refused_for_other_families():
    with pytest.raises(OptstepsError, match="FLUX.1.*Wan"):
        baseline("oss-published", RF, 10)  # a flow model that is neither: no table
    with pytest.raises(OptstepsError, match="rectified-flow models FLUX.1 and Wan"):
        baseline("oss-published", SD, 10, table="flux")
    with pytest.raises(OptstepsError, match="rectified-flow"):
        baseline("oss-published", EDM(), 10, table="wan")
    with pytest.raises(OptstepsError, match="no published OSS table 'chroma'"):
        baseline("oss-published", RF, 10, table="chroma")
    with pytest.raises(OptstepsError, match="only table="):
        baseline("oss-published", RF, 10, table="flux", shift=3.0)


def test_ays_follows_the_recipe_and_ends_at_the_models_sigma_min():
    from diffusers.schedulers import AysSchedules

    # the AYS tables end at σ_min, which diffusers stores as 0: for SD/SDXL it is σ of the first training timestep
    sigma_first = float(SD.sigma_diffusers(SD.t_of_timestep(torch.tensor([0.0]))))
    assert sigma_first == pytest.approx(AYS_SIGMA_MIN["sd"], rel=1e-8) and AYS_SIGMA_MIN["sd"] == AYS_SIGMA_MIN["sdxl"]
    assert EDM(0.002, 700.0).sigma_min == AYS_SIGMA_MIN["svd"]
    for table, name, ns in (
        ("sd", "StableDiffusionSigmas", SD),
        ("sdxl", "StableDiffusionXLSigmas", SD),
        ("svd", "StableDiffusionVideoSigmas", EDM(0.002, 700.0)),
    ):
        levels = list(AysSchedules[name][:-1]) + [AYS_SIGMA_MIN[table]]
        for nfe in (4, 10, 25):
            s = baseline("ays", ns, nfe, table=table)
            want = recipe(levels, nfe)
            # t[0] is clamped into the domain (14.615 is σ_max = 14.6146 rounded), the rest are the recipe's σ
            assert np.allclose(s.sigmas[1:-1].numpy(), want[1:-1], rtol=1e-9), (table, nfe)
            assert s.sigmas[0] == pytest.approx(want[0], rel=1e-4) and s.t[-1] == (
                0.0 if ns.family == "vp" else ns.t_min
            )
    assert baseline("ays", SD, 10).sigmas.tolist() == baseline("ays", SD, 10, table="sd").sigmas.tolist()
    assert baseline("ays", SD, 10, table="sdxl").sigmas[1] == pytest.approx(6.315, rel=1e-9)


def test_ays_tables_are_refused_for_models_they_were_not_made_for():
    with pytest.raises(OptstepsError, match="Align-Your-Steps tables exist only"):
        baseline("ays", RF, 10)
    with pytest.raises(OptstepsError, match="Align-Your-Steps tables exist only"):
        baseline("ays", VPDiscrete(), 10)  # linear β (DDPM), not SD's scaled-linear
    with pytest.raises(OptstepsError, match="'svd' table was made for another noise schedule"):
        baseline("ays", SD, 10, table="svd")
    with pytest.raises(OptstepsError, match="'sdxl' table was made for another"):
        baseline("ays", EDM(0.002, 700.0), 10, table="sdxl")


def test_loglinear_levels_input_checks():
    assert loglinear_levels([4.0, 1.0], 3).tolist() == pytest.approx([4.0, 2.0, 1.0])
    with pytest.raises(OptstepsError, match="strictly decreasing"):
        loglinear_levels([1.0, 2.0], 4)
    with pytest.raises(OptstepsError, match="positive"):
        loglinear_levels([1.0, 0.0], 4)


def test_baseline_for_takes_the_models_own_options():
    model = SimpleNamespace(
        name="tiny-flux",
        noise_schedule=RF,
        baseline_options=lambda: {"oss-published": {"table": "flux"}, "flow-shift": {"shift": 2.0, "grid_end": 0.5}},
    )
    s = baseline_for("oss-published", model, 10)
    assert s.t[1] == OSS_TABLES["flux"][1] and s.model == "tiny-flux"
    fs = baseline_for("flow-shift", model, 2)  # uniform grid 1 → 0.5, shifted by 2, then the end point t = 0
    assert fs.t == pytest.approx((1.0, 2 * 0.75 / 1.75, 0.0))
    assert baseline_for("flow-shift", model, 2, shift=1.0, grid_end=None).t == pytest.approx((1.0, 0.5, 0.0))
    plain = SimpleNamespace(name="m", noise_schedule=RF)  # a model without options: the plain baseline
    assert baseline_for("uniform-t", plain, 2).t == (1.0, 0.5, 0.0)
    with pytest.raises(OptstepsError, match="oss-published needs the model family"):
        baseline_for("oss-published", plain, 4)


def test_schedule_baseline_command_takes_a_table():
    from typer.testing import CliRunner

    from optsteps.cli.main import app
    from optsteps.core.schedule import Schedule

    run = CliRunner().invoke
    r = run(
        app,
        ["schedule", "baseline", "oss-published", "--model", "digits-flow", "--nfe", "10", "--table", "flux", "--json"],
    )
    assert r.exit_code == 0, r.output
    s = Schedule.from_json(r.stdout)
    assert s.t[:-1] == pytest.approx(OSS_TABLES["flux"][:-1], abs=1e-12) and s.method == "oss-published"
    r = run(app, ["schedule", "baseline", "oss-published", "--model", "digits-flow", "--nfe", "10"])
    assert isinstance(r.exception, OptstepsError) and "needs the model family" in str(r.exception)
    r = run(app, ["schedule", "baseline", "oss-published", "--model", "digits", "--nfe", "10", "--table", "wan"])
    assert isinstance(r.exception, OptstepsError) and "rectified-flow models FLUX.1 and Wan" in str(r.exception)
