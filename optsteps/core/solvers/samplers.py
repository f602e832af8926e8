"""ODE solvers for the probability-flow ODE on arbitrary schedules, in data-prediction form.

Exact solution between s and t (DPM-Solver++, Lu et al. 2022, eq. 9):
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x_θ(x_λ, λ) dλ.

- ``ddim``: order 1, x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x_θ(x_s)   (DDIM; Euler for flow models).
- ``dpmpp2m``: DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), D = (1 + 1/2r) x_θ^{(i)} − (1/2r) x_θ^{(i−1)}.
- ``unipc``: UniPC (Zhao et al. 2023, Alg. 2/3) with B(h) = e^{h} − 1 (``bh2``), predictor UniP-p and
  corrector UniC that reuses the next model evaluation (no extra NFE, none after the last step).

Every sampler spends exactly K model evaluations for a K-interval schedule. The ``denoiser`` is any
callable (x, t) → x̂_0 with t a float64 scalar tensor. Where λ is infinite at a node (α = 0 at the start
of a flow model, σ = 0 at a clean end), the steps touching it drop to order 1, as diffusers does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from optsteps.core.noise_schedules import NoiseSchedule, as_tensor
from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import SolverSpec, finite, finite_order, step_orders
from optsteps.core.solvers.updates import ddim_step, dpmpp2m_step, unipc_rhos, unipc_update
from optsteps.errors import NonFiniteError, OptstepsError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def node_coefficients(noise_schedule: NoiseSchedule, t) -> tuple[list, list, list]:
    """α, σ, λ at the schedule's times as Python floats (float64)."""
    t = as_tensor(t)
    return (noise_schedule.alpha(t).tolist(), noise_schedule.sigma(t).tolist(), noise_schedule.lambda_(t).tolist())


def check_finite(x: torch.Tensor, i: int, schedule: Schedule, what: str = "the model output") -> None:
    """Raise ``NonFiniteError`` naming the step, its time and the likely causes if ``x`` holds NaN or ±inf."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = int((~finite).reshape(x.shape[0], -1).any(1).sum()) if x.dim() else 1
    raise NonFiniteError(
        f"{what} is not finite (NaN/inf) in {bad} of {x.shape[0] if x.dim() else 1} samples at step {i + 1} of "
        f"{schedule.nfe} (t = {schedule.t[min(i, schedule.nfe)]:.6g}); likely causes: a NaN/inf guidance scale, "
        "NaN weights (retrain or re-download the model), or a schedule outside the model's time range; nothing "
        "was written from this batch."
    )


def _prepare(schedule: Schedule, denoiser: Denoiser, times=None):
    """(α, σ, λ per node, the counted model). ``times``: the K + 1 times as 0-dim float64 tensors that may carry
    gradients (the polish, docs/algorithms.md §8); the coefficients are then tensors on the autograd graph."""
    if times is None:
        alphas, sigmas, lambdas = node_coefficients(schedule.noise_schedule, schedule.t)
        ts = schedule.timesteps_t
    else:
        ts = [torch.as_tensor(v, dtype=torch.float64) for v in times]
        if len(ts) != schedule.nfe + 1:
            raise OptstepsError(
                f"times has {len(ts)} entries but the schedule has {schedule.nfe + 1}; pass one per node."
            )
        ns = schedule.noise_schedule
        alphas, sigmas, lambdas = ([f(v) for v in ts] for f in (ns.alpha, ns.sigma, ns.lambda_))

    def model(x, i):
        x0 = denoiser(x, ts[i])
        check_finite(x0, i, schedule)
        return x0

    return alphas, sigmas, lambdas, model


class SolverRun:
    """One solver's state along a schedule between model evaluations: ``x_{i+1} = run.step(i, x_i, x̂_0(x_i, t_i))``.

    The one loop body of every sampler below and of the diffusers scheduler that runs a schedule in a user's
    pipeline (``optsteps.integrations.diffusers.scheduler``); steps must come in order i = 0 … K−1.
    """

    def __init__(self, schedule: Schedule, spec: SolverSpec, coefficients=None):
        """``coefficients``: (α, σ, λ) per node, default ``node_coefficients`` of the schedule's times (tensors on
        the autograd graph when the times carry gradients: ``_prepare``)."""
        self.spec, self.nfe = spec, schedule.nfe
        self.alphas, self.sigmas, self.lambdas = coefficients or node_coefficients(schedule.noise_schedule, schedule.t)
        self.orders = step_orders(spec, schedule.nfe)
        self.history: list[torch.Tensor] = []  # x̂_0 at nodes i, i−1, … (UniPC)
        self.x0_prev = None  # x̂_0 at node i−1 (DPM-Solver++(2M))
        self.x_prev = None  # the predictor's input x_{i−1} (UniPC's corrector)
        self.prev_order = 0

    def step(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a, s, lam = self.alphas, self.sigmas, self.lambdas
        if self.spec.name == "ddim":
            return ddim_step(x, x0, a[i], s[i], a[i + 1], s[i + 1])
        if self.spec.name == "dpmpp2m":
            order = finite_order(self.orders[i], lam, i)
            if order == 1:
                out = ddim_step(x, x0, a[i], s[i], a[i + 1], s[i + 1])
            else:
                out = dpmpp2m_step(
                    x, x0, self.x0_prev, a[i + 1], s[i], s[i + 1], lam[i + 1] - lam[i], lam[i] - lam[i - 1]
                )
            self.x0_prev = x0
            return out
        return self._unipc(i, x, x0)

    def _unipc(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """UniPC-p (bh2): the corrector of step i−1 (reusing x̂_0 at t_i, same order as its predictor), then the
        predictor of step i at order ``finite_order(step_orders[i])``."""
        a, s, lambdas, order = self.alphas, self.sigmas, self.lambdas, self.spec.order
        if self.spec.corrector and self.x_prev is not None:
            po = self.prev_order
            lam = [lambdas[i - 1 - j] for j in range(po)] + [lambdas[i]]
            if all(finite(v) for v in lam):
                rhos = unipc_rhos(
                    lam[-1] - lam[0], [(lam[j] - lam[0]) / (lam[-1] - lam[0]) for j in range(1, po)], po, True
                )
                x = unipc_update(self.x_prev, self.history[:po], lam, a[i], s[i - 1], s[i], rhos, x0_new=x0)
        self.history = [x0] + self.history[: order - 1]
        this_order = finite_order(self.orders[i], lambdas, i)
        lam = [lambdas[i - j] for j in range(this_order)] + [lambdas[i + 1]]
        h = lam[-1] - lam[0]
        rhos = (
            unipc_rhos(h, [(lam[j] - lam[0]) / h for j in range(1, this_order)], this_order, False)
            if this_order > 1
            else None
        )
        self.x_prev = x
        self.prev_order = this_order
        return unipc_update(x, self.history[:this_order], lam, a[i + 1], s[i], s[i + 1], rhos)


def _run(
    denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, spec: SolverSpec, callback=None, times=None
) -> torch.Tensor:
    alphas, sigmas, lambdas, model = _prepare(schedule, denoiser, times)
    run = SolverRun(schedule, spec, (alphas, sigmas, lambdas))
    for i in range(schedule.nfe):
        x0 = model(x, i)
        if callback is not None:
            callback(i, x, x0)
        x = run.step(i, x, x0)
    return x


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, callback=None, times=None) -> torch.Tensor:
    """DDIM / Euler: K first-order steps, K evaluations."""
    return _run(denoiser, x, schedule, SolverSpec("ddim"), callback, times)


def sample_dpmpp2m(
    denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, lower_order_final: bool = True, callback=None, times=None
) -> torch.Tensor:
    """DPM-Solver++(2M). First step order 1; the last step is order 1 when ``lower_order_final`` and K < 15
    (diffusers' rule) or when the schedule ends at σ = 0 (``step_orders``, ``finite_order``)."""
    return _run(denoiser, x, schedule, SolverSpec("dpmpp2m", lower_order_final=lower_order_final), callback, times)


def sample_unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    order: int = 3,
    lower_order_final: bool = True,
    corrector: bool = True,
    callback=None,
    times=None,
) -> torch.Tensor:
    """UniPC-p with the UniC corrector (bh2, data prediction), exactly K evaluations.

    Step i uses order min(order, i + 1) (warm-up) and, with ``lower_order_final``, min(·, K − i)
    (``step_orders``). The corrector of step i runs after the evaluation at t_{i+1} with the same order as
    its predictor.
    """
    return _run(denoiser, x, schedule, SolverSpec("unipc", order, lower_order_final, corrector), callback, times)


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    solver: str | SolverSpec = "unipc",
    order: int | None = None,
    lower_order_final: bool = True,
    callback=None,
    times=None,
) -> torch.Tensor:
    """Integrate from t_0 to t_K; exactly K model evaluations.

    Args:
        denoiser: (x, t) → x̂_0, t a float64 scalar tensor.
        x: the state at t_0 (``DiffusionModel.initial_state`` of the noise).
        schedule: the K + 1 times.
        solver: a ``SolverSpec``, or a solver name ∈ {ddim, dpmpp2m, unipc} completed by ``order`` and
            ``lower_order_final`` (order ``None``: the solver's default).
        callback: ``callback(i, x_i, x̂_0_i)`` after each model evaluation.
        times: None, or the K + 1 times as 0-dim float64 tensors (equal in value to ``schedule.t``, or moved off
            it) that may require gradients: the run is then differentiable in them (the polish).
    """
    spec = solver if isinstance(solver, SolverSpec) else SolverSpec(solver, order, lower_order_final)
    check_finite(x, 0, schedule, "the initial state")
    out = _run(denoiser, x, schedule, spec, callback, times)
    check_finite(out, schedule.nfe, schedule, "the final state")
    return out
