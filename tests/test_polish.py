"""The continuous polish (docs/algorithms.md §8) against closed forms: the single-Gaussian PF-ODE solution as the
teacher, exact gradients against central differences, exact forward/backward counts, equal gradients with
micro-batches and per-evaluation checkpointing, the never-worse guarantee, and networks differentiable in t."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optsteps.core.baselines import baseline  # noqa: E402
from optsteps.core.denoisers import differentiable_networks  # noqa: E402
from optsteps.core.noise_schedules import RectifiedFlow, VPDiscrete  # noqa: E402
from optsteps.core.schedule import initial_state  # noqa: E402
from optsteps.core.solvers import SolverSpec, sample  # noqa: E402
from optsteps.errors import OptstepsError  # noqa: E402
from optsteps.models.gmm import GaussianMixture, GMMDenoiser  # noqa: E402
from optsteps.optimizers.polish import (
    PolishOptions,
    Split,
    evaluations,
    logits_of_times,
    polish_schedule,  # noqa: E402
    split_sum_squares,
    times_of_logits,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPECS = [SolverSpec("ddim"), SolverSpec("dpmpp2m"), SolverSpec("unipc", 2), SolverSpec("unipc", 3)]


def problem(family, n=48, dim=3, seed=0):
    """A single Gaussian: exact denoiser and the exact ODE endpoint x̄_N of each noise (the teacher in closed form)."""
    ns = VPDiscrete() if family == "vp" else RectifiedFlow()
    gmm = GaussianMixture(
        torch.ones(1), torch.tensor([[1.5, -0.5, 0.8][:dim]]), torch.tensor([[0.05, 0.2, 0.02][:dim]])
    )
    den = GMMDenoiser(gmm, ns)
    eps = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t0, t1 = ns.default_t_start(), ns.default_t_end()
    x0 = eps * float(ns.sigma(t0))
    if family == "flow":  # exact_flow divides by v_s; at t = 1 it is σ² = 1, fine
        pass
    target = gmm.exact_flow(x0, ns, t0, t1)
    return ns, den, eps, target


def bad_start(ns, spec, nfe=5):
    """Uniform in t: far from good for the VP model (most steps at low SNR)."""
    return baseline("uniform-t", ns, nfe).with_solver(spec)


def test_parametrisation_round_trip_and_monotone():
    t = torch.tensor([1.0, 0.7, 0.31, 0.05, 0.001], dtype=torch.float64)
    back = torch.stack(times_of_logits(logits_of_times(t), 1.0, 0.001))
    assert torch.allclose(back, t, rtol=0, atol=1e-14)
    for seed in range(5):
        theta = 4 * torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ts = [float(v) for v in times_of_logits(theta, 0.9, 0.002)]
        assert ts[0] == 0.9 and ts[-1] == 0.002 and all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("family", ["vp", "flow"])
def test_tensor_times_run_the_same_sampler(family, spec):
    """``sample(..., times=)`` at the schedule's own times is the float sampler (the polish differentiates it)."""
    ns, den, eps, _ = problem(family)
    s = bad_start(ns, spec)
    x = initial_state(eps, s)
    plain = sample(den, x, s, spec)
    ts = [torch.tensor(v, dtype=torch.float64, requires_grad=0 < i < s.nfe) for i, v in enumerate(s.t)]
    assert torch.allclose(sample(den, x, s, spec, times=ts), plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("family", ["vp", "flow"])
def test_gradient_matches_central_differences(family, spec):
    ns, den, eps, target = problem(family, n=8)
    s = bad_start(ns, spec)
    split = Split(eps, target)
    theta = logits_of_times(s.t).requires_grad_(True)
    split_sum_squares(lambda lab: den, s, split, times=times_of_logits(theta, s.t[0], s.t[-1]), backward=True)
    grad = theta.grad.clone()

    def loss(th):
        with torch.no_grad():
            return split_sum_squares(lambda lab: den, s, split, times=times_of_logits(th, s.t[0], s.t[-1]))

    h = 1e-6
    fd = (
        torch.tensor(
            [
                (loss(theta.detach() + h * e) - loss(theta.detach() - h * e)) / (2 * h)
                for e in torch.eye(len(theta), dtype=torch.float64)
            ],
            dtype=torch.float64,
        )
        / target.numel()
    )
    assert grad.abs().max() > 1e-6  # the loss does depend on the times
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-9), (grad, fd)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("family", ["vp", "flow"])
def test_polish_lowers_the_final_error_and_stays_monotone(family, spec):
    ns, den, eps, target = problem(family, n=64)
    s = bad_start(ns, spec).with_meta(extra={"start_state": "raw"} if family == "vp" else {})
    r = polish_schedule(
        s,
        lambda lab: den,
        ns,
        (eps[:40], target[:40]),
        (eps[40:], target[40:]),
        PolishOptions(iterations=25, lr=0.1, patience=5),
    )
    assert r.improved and r.heldout_after < 0.8 * r.heldout_before
    assert r.distill_after < r.distill_before
    t = r.schedule.t
    assert t[0] == s.t[0] and t[-1] == s.t[-1] and all(a > b for a, b in zip(t, t[1:]))
    assert r.schedule.start_state == s.start_state and r.schedule.solver_spec == spec
    # the reported held-out error is the returned schedule's, through the plain sampler
    out = sample(den, initial_state(eps[40:], r.schedule), r.schedule, spec)
    assert (out - target[40:]).pow(2).mean().item() == pytest.approx(r.heldout_after, rel=1e-12)


def test_never_worse_returns_the_start():
    """Held-out endpoints that the start reproduces exactly: no iterate can beat it, so the start comes back."""
    ns, den, eps, target = problem("vp", n=48)
    s = bad_start(ns, SolverSpec("unipc", 2))
    own = sample(den, initial_state(eps[32:], s), s, s.solver_spec)
    r = polish_schedule(s, lambda lab: den, ns, (eps[:32], target[:32]), (eps[32:], own), PolishOptions(iterations=6))
    assert not r.improved and r.schedule is s and r.heldout_after == r.heldout_before == 0.0
    assert len(r.heldout_history) == r.iterations and all(h > 0 for h in r.heldout_history)


class CountingBackward(torch.autograd.Function):
    """Identity whose backward counts the rows that back-propagate through the model."""

    counter = None

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        CountingBackward.counter["backward"] += g.shape[0]
        return g


def counting(den, counter):
    def f(x, t):
        counter["forward"] += x.shape[0]
        CountingBackward.counter = counter
        return CountingBackward.apply(den(x, t))

    return f


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("micro_batch", [0, 7])
def test_forward_and_backward_counts_are_exact(checkpoint, micro_batch):
    ns, den, eps, target = problem("vp", n=30)
    s = bad_start(ns, SolverSpec("dpmpp2m"))
    counter = {"forward": 0, "backward": 0}
    r = polish_schedule(
        s,
        lambda lab: counting(den, counter),
        ns,
        (eps[:20], target[:20]),
        (eps[20:], target[20:]),
        PolishOptions(iterations=3, micro_batch=micro_batch, checkpoint=checkpoint),
    )
    assert r.iterations == 3 and r.improved
    k = s.nfe
    per_step = 20 * (k + (k - 1) * checkpoint) + 10 * k
    assert r.forwards == counter["forward"] == 10 * k + 3 * per_step + 20 * k  # start, steps, the winner's distill MSE
    assert r.backwards == counter["backward"] == 3 * 20 * (k - 1)
    assert evaluations(s, 20, True, checkpoint) == (20 * (k + (k - 1) * checkpoint), 20 * (k - 1))


@pytest.mark.parametrize("spec", [SolverSpec("unipc", 3), SolverSpec("dpmpp2m")], ids=str)
def test_micro_batches_and_checkpointing_give_the_plain_gradient(spec):
    ns, den, eps, target = problem("flow", n=13)
    s = bad_start(ns, spec, nfe=6)
    grads = {}
    for mb, ck in ((0, False), (4, False), (0, True), (5, True)):
        theta = (logits_of_times(s.t) + 0.1 * torch.arange(6.0, dtype=torch.float64)).requires_grad_(True)
        with differentiable_networks():
            val = split_sum_squares(
                lambda lab: den, s, Split(eps, target), mb, times_of_logits(theta, s.t[0], s.t[-1]), ck, True
            )
        grads[(mb, ck)] = (val, theta.grad)
    v0, g0 = grads[(0, False)]
    for key, (v, g) in grads.items():
        assert v == pytest.approx(v0, rel=1e-12) and torch.allclose(g, g0, rtol=1e-10, atol=1e-15), key


def test_options_refuse_values_outside_their_range():
    with pytest.raises(OptstepsError, match=r"polish.lr = 0.0 is outside"):
        PolishOptions(lr=0.0)
    with pytest.raises(OptstepsError, match="polish.iterations"):
        PolishOptions(iterations=2.5)
    with pytest.raises(OptstepsError, match="polish.checkpoint"):
        PolishOptions(checkpoint=1)


def test_labels_reach_the_denoiser_per_micro_batch():
    """A class-conditional denoiser sees each micro-batch's own labels."""
    ns, den, eps, target = problem("vp", n=10)
    labels = torch.arange(10) % 3
    seen = []

    def den_for(lab):
        seen.append(lab.tolist())
        return den

    split_sum_squares(den_for, bad_start(ns, SolverSpec("ddim")), Split(eps, target, labels), micro_batch=4)
    assert seen == [labels[:4].tolist(), labels[4:8].tolist(), labels[8:].tolist()]


def _directional_check(net_of, x, t, family_ns):
    """d/dt of the network's x̂_0 by autograd inside ``differentiable_networks`` vs a central difference."""
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    with differentiable_networks():
        out = net_of(x, tt)
    assert out.requires_grad
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad((out * w).sum(), tt)
    h = 1e-4  # 0.1 network timesteps: the time embedding's fastest frequency turns by 0.1 rad
    with torch.no_grad():
        fd = (
            (net_of(x, torch.tensor(t + h, dtype=torch.float64)) * w).sum()
            - (net_of(x, torch.tensor(t - h, dtype=torch.float64)) * w).sum()
        ) / (2 * h)
    assert float(g) == pytest.approx(float(fd), rel=0.02, abs=1e-2)
    assert not net_of(x, torch.tensor(t, dtype=torch.float64)).requires_grad  # outside: no graph


@pytest.mark.parametrize("name", ["digits", "digits-flow"])
def test_digits_denoiser_is_differentiable_in_t(name, tmp_path):
    from optsteps.models.digits import TrainConfig, build_unet, load_digits_model, save_digits

    torch.manual_seed(0)
    m = load_digits_model(name, save_digits(name, build_unet(), TrainConfig(), tmp_path / name, 0.0, 0.0))
    den = m.denoiser(torch.tensor([3, 7]))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _directional_check(den, x, 0.5, m.noise_schedule)


def test_tiny_sd_pipeline_is_differentiable_in_t(tmp_path):
    from tiny_pipelines import build_sd

    from optsteps.models.diffusers.pipelines import load_pipeline_model

    m = load_pipeline_model(
        build_sd(tmp_path / "sd", tmp_path), prompts=["a", "b"], guidance=2.0, device="cpu", dtype=torch.float32
    )
    den = m.denoiser(torch.tensor([0, 1]), 2.0)
    x = torch.randn((2,) + tuple(m.sample_shape), generator=torch.Generator().manual_seed(0))
    _directional_check(den, x, 0.6, m.noise_schedule)
