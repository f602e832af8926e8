"""The solver specification (one rule for the step orders) and the two forms of each update."""

import math
import random

import pytest
import torch

from optsteps.core.baselines import baseline
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete
from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import SolverSpec, finite_order, step_orders
from optsteps.core.solvers import sample
from optsteps.core.solvers.updates import (
    ddim_coefficients,
    ddim_step,
    dpmpp2m_coefficients,
    dpmpp2m_step,
    unipc_corrector_coefficients,
    unipc_predictor_coefficients,
    unipc_rhos,
    unipc_update,
)
from optsteps.errors import OptstepsError


@pytest.mark.parametrize(
    "spec,nfe,want",
    [
        (SolverSpec("ddim"), 5, [1, 1, 1, 1, 1]),
        (SolverSpec("dpmpp2m"), 5, [1, 2, 2, 2, 1]),
        (SolverSpec("dpmpp2m"), 15, [1] + [2] * 14),  # diffusers: lower final only for K < 15
        (SolverSpec("dpmpp2m", lower_order_final=False), 5, [1, 2, 2, 2, 2]),
        (SolverSpec("dpmpp2m", 1), 4, [1, 1, 1, 1]),
        (SolverSpec("unipc"), 7, [1, 2, 3, 3, 3, 2, 1]),
        (SolverSpec("unipc"), 2, [1, 1]),
        (SolverSpec("unipc", 2), 5, [1, 2, 2, 2, 1]),
        (SolverSpec("unipc", lower_order_final=False), 5, [1, 2, 3, 3, 3]),
    ],
)
def test_step_orders(spec, nfe, want):
    assert step_orders(spec, nfe) == want == spec.step_orders(nfe)


def test_spec_defaults_validation_and_json_fields():
    assert SolverSpec("unipc").order == 3 and SolverSpec("dpmpp2m").order == 2 and SolverSpec("ddim").order == 1
    assert SolverSpec("unipc").json_fields() == {} and SolverSpec("dpmpp2m", 2).json_fields() == {}
    assert SolverSpec("unipc", 2, False, False).json_fields() == {
        "order": 2,
        "lower_order_final": False,
        "corrector": False,
    }
    for bad in [("heun", None), ("dpmpp2m", 3), ("unipc", 0), ("unipc", 2.0), ("ddim", True)]:
        with pytest.raises(OptstepsError):
            SolverSpec(*bad)


def test_schedule_carries_its_spec_through_json():
    s = baseline("uniform-t", VPDiscrete(), 6).with_solver(SolverSpec("unipc", 2))
    assert s.solver == "unipc" and s.extra["order"] == 2
    back = Schedule.from_json(s.to_json())
    assert back.solver_spec == SolverSpec("unipc", 2)
    assert back.with_solver(SolverSpec("unipc")).to_dict().get("order") is None  # default order: no field
    assert baseline("uniform-t", VPDiscrete(), 6).solver_spec is None
    with pytest.raises(OptstepsError, match="order"):
        Schedule.from_dict(dict(s.to_dict(), order=7))


def test_finite_order_drops_where_lambda_is_infinite():
    lam = [-math.inf, -1.0, 0.0, 1.0, math.inf]
    assert finite_order(2, lam, 1) == 1 and finite_order(3, lam, 2) == 2 and finite_order(2, lam, 3) == 1


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def test_coefficient_forms_equal_the_scalar_steps():
    """The batched coefficient forms the OSS engine costs with give the samplers' steps."""
    gen = torch.Generator().manual_seed(0)
    rnd = random.Random(0)
    ns = VPDiscrete()
    for _ in range(20):
        tp, ts, tt = sorted(rnd.uniform(0.01, 1.0) for _ in range(3))[::-1]
        (ap, as_, at), (sp, ss, st), (lp, ls, lt) = (
            f(torch.tensor([tp, ts, tt], dtype=torch.float64)).tolist() for f in (ns.alpha, ns.sigma, ns.lambda_)
        )
        x, m, mp, xp, mpp = (_rand(gen, 4, 3) for _ in range(5))
        a, b = ddim_coefficients(as_, ss, at, st)
        torch.testing.assert_close(a * x + b * m, ddim_step(x, m, as_, ss, at, st), rtol=1e-12, atol=1e-12)
        b2, c2 = dpmpp2m_coefficients(at, *(torch.tensor(v, dtype=torch.float64) for v in (lp, ls, lt)))
        torch.testing.assert_close(
            a * x + b2 * m + c2 * mp, dpmpp2m_step(x, m, mp, at, ss, st, lt - ls, ls - lp), rtol=1e-10, atol=1e-10
        )
        b1, b2, c2 = unipc_predictor_coefficients(at, *(torch.tensor(v, dtype=torch.float64) for v in (lp, ls, lt)))
        h = lt - ls
        torch.testing.assert_close(
            a * x + b1 * m, unipc_update(x, [m], [ls, lt], at, ss, st, None), rtol=1e-10, atol=1e-10
        )
        rhos = unipc_rhos(h, [(lp - ls) / h], 2, False)
        torch.testing.assert_close(
            a * x + b2 * m + c2 * mp, unipc_update(x, [m, mp], [ls, lp, lt], at, ss, st, rhos), rtol=1e-10, atol=1e-10
        )
        # corrector of a step s → t (predecessor p of s), orders 1 and 2, as coefficients on (y, x_p, m_p, m_pp, m)
        for o in (1, 2):
            lam = [ls, lp][:o] + [lt]
            hh = lam[-1] - lam[0]
            rks = [(lam[r] - lam[0]) / hh for r in range(1, o)]
            rh = unipc_rhos(hh, rks, o, True)
            want = unipc_update(xp, [mp, mpp][:o], lam, at, ss, st, rh, x0_new=m)
            c = unipc_corrector_coefficients(at, ss, st, hh, rks, rh)
            got = c[0] * x + c[1] * xp + c[2] * mp + c[3] * mpp + c[4] * m
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ns", [VPDiscrete(), RectifiedFlow()], ids=["vp", "flow"])
def test_sample_takes_a_spec_or_a_name(ns):
    s = baseline("uniform-lambda", ns, 6)
    x = _rand(torch.Generator().manual_seed(1), 3, 2)

    def den(y, t):
        return 0.7 * y

    assert torch.equal(sample(den, x, s, SolverSpec("unipc", 2)), sample(den, x, s, "unipc", order=2))
    assert torch.equal(
        sample(den, x, s, SolverSpec("dpmpp2m", lower_order_final=False)),
        sample(den, x, s, "dpmpp2m", lower_order_final=False),
    )
