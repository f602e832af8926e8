"""``polish_schedule``: move a schedule's interior times continuously, by gradient descent of the student's final
error to the teacher endpoints, with early stopping on held-out samples (docs/algorithms.md §8)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from optsteps.core.denoisers import differentiable_networks
from optsteps.core.noise_schedules import NoiseSchedule
from optsteps.core.schedule import Schedule, initial_state
from optsteps.core.solvers import Denoiser, sample
from optsteps.errors import OptstepsError
from optsteps.optimizers.polish.options import PolishOptions
from optsteps.optimizers.polish.times import logits_of_times, times_of_logits

DenoiserFor = Callable[[torch.Tensor | None], Denoiser]  # a micro-batch's labels (None: unconditional) → x̂_0(x, t)


@dataclass(frozen=True)
class Split:
    """Samples of one split: unit noise ε [S, ...] (the student starts from ``initial_state(ε, schedule)``), the
    teacher's endpoints x̄_N [S, ...] from the same noise, and per-sample labels [S] or None."""

    noise: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor | None = None

    @classmethod
    def of(cls, split) -> Split:
        if isinstance(split, Split):
            return split
        if not isinstance(split, (tuple, list)) or len(split) not in (2, 3):
            raise OptstepsError("a polish split is (noise [S, ...], teacher endpoints [S, ...][, labels [S]]).")
        noise, target, labels = (*split, None)[:3]
        if noise.shape != target.shape or noise.shape[0] < 1 or (labels is not None and len(labels) != len(noise)):
            raise OptstepsError(
                f"polish split: noise {tuple(noise.shape)}, endpoints {tuple(target.shape)} and labels "
                f"must hold the same S ≥ 1 samples."
            )
        return cls(noise, target, labels)

    def __len__(self) -> int:
        return self.noise.shape[0]

    def chunks(self, size: int):
        """(noise, target, labels) micro-batches of ``size`` samples (0: one batch)."""
        size = size or len(self)
        for a in range(0, len(self), size):
            yield (
                self.noise[a : a + size],
                self.target[a : a + size],
                None if self.labels is None else self.labels[a : a + size],
            )


@dataclass
class PolishResult:
    schedule: Schedule  # the polished schedule, or the start itself when no iterate beat it on the held-out split
    improved: bool
    iterations: int  # Adam steps taken
    forwards: int  # model evaluations, counted per sample (rows through the network), recomputations included
    backwards: int  # rows back-propagated through the network
    distill_before: float  # MSE per element to the teacher endpoints on the distillation split
    distill_after: float
    heldout_before: float  # the same on the held-out split
    heldout_after: float
    heldout_history: list = field(default_factory=list)  # held-out MSE after each step

    def info(self) -> dict:
        """The ``polish`` record of the schedule JSON."""
        return {
            "improved": self.improved,
            "iterations": self.iterations,
            "forwards": self.forwards,
            "backwards": self.backwards,
            "distill_before": self.distill_before,
            "distill_after": self.distill_after,
            "heldout_before": self.heldout_before,
            "heldout_after": self.heldout_after,
        }


def split_sum_squares(
    denoiser_for: DenoiserFor,
    schedule: Schedule,
    split: Split,
    micro_batch: int = 0,
    times=None,
    grad_checkpoint: bool = False,
    backward: bool = False,
) -> float:
    """Σ over samples and elements of (x_K − x̄_N)², x_K the student's final state from ``initial_state(ε)``
    (``solvers.sample`` with the schedule's solver spec, at ``times`` if given). With ``backward`` the sum divided
    by ``split.target.numel()`` is back-propagated micro-batch by micro-batch (gradients accumulate in the leaves
    of ``times``), each model evaluation optionally under ``torch.utils.checkpoint``."""
    spec = schedule.solver_spec
    total = 0.0
    scale = 1.0 / split.target.numel()
    # each micro-batch back-propagates into detached copies of the times; their summed gradients then go once
    # through the shared graph θ → times (gradient accumulation without keeping that graph alive)
    leaves = None if times is None else [v.detach().requires_grad_(v.requires_grad) for v in times]
    for noise, target, labels in split.chunks(micro_batch):
        den = denoiser_for(labels)
        if grad_checkpoint:
            den = (lambda d: lambda x, t: checkpoint(d, x, t, use_reentrant=False))(den)
        with torch.set_grad_enabled(backward):
            out = sample(den, initial_state(noise, schedule), schedule, spec, times=leaves)
            sq = (out - target).pow(2).sum()
        if backward:
            (sq * scale).backward()
        total += float(sq.detach())
    pairs = [(v, leaf.grad) for v, leaf in zip(times or [], leaves or []) if v.requires_grad and leaf.grad is not None]
    if backward and pairs:
        torch.autograd.backward([v for v, _ in pairs], [g for _, g in pairs])
    return total


def evaluations(schedule: Schedule, samples: int, grad: bool = False, grad_checkpoint: bool = False) -> tuple:
    """(forwards, backwards) in rows of one ``split_sum_squares`` run on ``samples`` samples: K forwards per sample;
    with gradients, K − 1 backwards (the first evaluation, at the fixed start from the fixed noise, has no input
    that depends on the times) and, under checkpointing, K − 1 recomputed forwards."""
    k = schedule.nfe
    if not grad:
        return samples * k, 0
    return samples * (k + (k - 1 if grad_checkpoint else 0)), samples * (k - 1)


def polish_schedule(
    schedule: Schedule,
    denoiser_for: DenoiserFor,
    noise_schedule: NoiseSchedule,
    distill,
    heldout,
    options: PolishOptions | None = None,
) -> PolishResult:
    """Polish ``schedule``'s interior times (docs/algorithms.md §8): Adam on the log-gap logits θ
    (``times.times_of_logits``; t_0, t_K and the start-state rule stay), loss = MSE per element of the student's
    final state to the teacher endpoints of ``distill``, the held-out MSE on ``heldout`` measured after every step
    through the plain (float) sampler, stop after ``options.patience`` steps without a held-out gain; returns the
    best held-out iterate if it is strictly better than the start, else the start itself (never worse).

    denoiser_for: labels of a micro-batch (or None) → denoiser (x, t) → x̂_0, differentiable in x and t inside
    ``core.denoisers.differentiable_networks()`` (entered here); distill/heldout: ``Split`` or (noise, endpoints[,
    labels]) with unit noise ε."""
    if schedule.noise_schedule != noise_schedule:
        raise OptstepsError("the schedule's noise schedule differs from the model's; polish a schedule of this model.")
    if not schedule.solver:
        raise OptstepsError('polish needs the schedule\'s solver (its "solver" field) to run the student.')
    distill, heldout = Split.of(distill), Split.of(heldout)
    opt = PolishOptions() if options is None else options
    k = schedule.nfe
    n_el_d, n_el_h = distill.target.numel(), heldout.target.numel()
    fwd = bwd = 0

    def heldout_mse(s: Schedule) -> float:
        nonlocal fwd
        fwd += evaluations(s, len(heldout))[0]
        return split_sum_squares(denoiser_for, s, heldout, opt.micro_batch) / n_el_h

    h_start = heldout_mse(schedule)
    if k < 2:  # no interior time to move
        return PolishResult(schedule, False, 0, fwd, 0, math.nan, math.nan, h_start, h_start)
    t0, t_end = schedule.t[0], schedule.t[-1]
    theta = logits_of_times(schedule.t).clone().requires_grad_(True)
    adam = torch.optim.Adam([theta], lr=opt.lr)
    best_h, best_t, history = h_start, None, []
    d_start = math.nan
    since_best = steps = 0
    with differentiable_networks():
        for steps in range(1, opt.iterations + 1):
            adam.zero_grad()
            times = times_of_logits(theta, t0, t_end)
            d = (
                split_sum_squares(denoiser_for, schedule, distill, opt.micro_batch, times, opt.checkpoint, True)
                / n_el_d
            )
            f, b = evaluations(schedule, len(distill), True, opt.checkpoint)
            fwd, bwd = fwd + f, bwd + b
            if steps == 1:
                d_start = d  # the start's distillation MSE (θ_0 reproduces its times to rounding)
            if not (math.isfinite(d) and bool(torch.isfinite(theta.grad).all())):
                break
            adam.step()
            with torch.no_grad():
                cand = [float(v) for v in times_of_logits(theta, t0, t_end)]
            if not all(a > b for a, b in zip(cand, cand[1:])):  # a gap underflowed: not a schedule
                break
            h = heldout_mse(
                Schedule(
                    cand, schedule.noise_schedule, schedule.model, schedule.method, schedule.solver, schedule.extra
                )
            )
            history.append(h)
            if h < best_h:
                best_h, best_t, since_best = h, cand, 0
            else:
                since_best += 1
                if since_best >= opt.patience:
                    break
    if best_t is None:
        return PolishResult(schedule, False, steps, fwd, bwd, d_start, d_start, h_start, h_start, history)
    extra = {k: v for k, v in schedule.extra.items() if k != "teacher_indices"}  # its times left the teacher grid
    out = Schedule(best_t, schedule.noise_schedule, schedule.model, schedule.method, schedule.solver, extra)
    fwd += evaluations(out, len(distill))[0]
    d_after = split_sum_squares(denoiser_for, out, distill, opt.micro_batch) / n_el_d
    return PolishResult(out, True, steps, fwd, bwd, d_start, d_after, h_start, best_h, history)
