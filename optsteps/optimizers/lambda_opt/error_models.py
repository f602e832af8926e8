"""Error models ε(λ) of the λ-optimizer (docs/algorithms.md §2.2): the analytic ε = σ^p/α of the VP-equivalent
α, σ, and an empirical one measured on teacher shards (with a fitted exponent p)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optsteps.errors import OptstepsError

ERROR_MODELS = ("analytic", "empirical")


def analytic_eps(lambdas, p: float = 1.0) -> np.ndarray:
    """ε(λ) = σ^p/α with α = (1 + e^{−2λ})^{−1/2}, σ = (1 + e^{2λ})^{−1/2} (docs/algorithms.md §2.2).

    log ε = −(p/2) log(1 + e^{2λ}) + ½ log(1 + e^{−2λ}); for p = 1 this is e^{−λ}.
    """
    lam = np.asarray(lambdas, dtype=np.float64)
    return np.exp(-0.5 * p * np.logaddexp(0.0, 2 * lam) + 0.5 * np.logaddexp(0.0, -2 * lam))


def analytic_eps_dlog(lambdas, p: float = 1.0) -> np.ndarray:
    """d log ε/dλ = −p·S(2λ) − S(−2λ), S the logistic function (−1 for p = 1)."""
    lam = np.asarray(lambdas, dtype=np.float64)
    s_pos = 0.5 * (1 + np.tanh(lam))  # S(2λ)
    return -p * s_pos - (1 - s_pos)


class EmpiricalEps:
    """ε(λ) interpolated log-linearly in λ through measured per-time errors; constant beyond the data.

    log ε(λ) = piecewise-linear interpolation of (λ_i, log e_i), λ_i sorted increasing; ``dlog`` is the
    slope of that interpolant (0 outside [λ_min, λ_max]). Built by ``empirical_eps``.
    """

    def __init__(self, lambdas: np.ndarray, errors: np.ndarray):
        self.lambdas = lambdas
        self.log_errors = np.log(errors)
        self.slopes = np.diff(self.log_errors) / np.diff(self.lambdas)

    def __call__(self, lambdas) -> np.ndarray:
        return np.exp(np.interp(np.asarray(lambdas, dtype=np.float64), self.lambdas, self.log_errors))

    def dlog(self, lambdas) -> np.ndarray:
        lam = np.asarray(lambdas, dtype=np.float64)
        idx = np.searchsorted(self.lambdas, lam, side="right") - 1
        inside = (lam >= self.lambdas[0]) & (lam < self.lambdas[-1])
        return np.where(inside, self.slopes[np.clip(idx, 0, self.slopes.size - 1)], 0.0)


def _clean_measurements(lambdas_teacher, errors, what: str):
    lam = np.asarray(lambdas_teacher, dtype=np.float64).ravel()
    err = np.asarray(errors, dtype=np.float64).ravel()
    if lam.shape != err.shape:
        raise OptstepsError(f"{what}: {lam.size} λ values but {err.size} errors; pass one mean error per teacher time.")
    keep = np.isfinite(lam)  # teacher grids of flow models include t = 1 and t = 0 where λ = ∓∞
    lam, err = lam[keep], err[keep]
    if lam.size < 2:
        raise OptstepsError(f"{what} needs at least 2 teacher times with finite λ; measure errors at more times.")
    if not np.all(np.isfinite(err)) or np.any(err <= 0):
        raise OptstepsError(
            f"{what}: errors must be finite and > 0 (they are interpolated in log space); "
            "drop the times with zero or NaN error."
        )
    order = np.argsort(lam)
    lam, err = lam[order], err[order]
    if np.any(np.diff(lam) <= 0):
        raise OptstepsError(f"{what}: duplicate λ values; average the errors of equal teacher times first.")
    return lam, err


def empirical_eps(lambdas_teacher, errors) -> EmpiricalEps:
    """The measured error model λ ↦ ε: log-linear interpolation in λ of per-teacher-time mean errors
    e_i = mean over samples of ‖x_θ(x^T_{t_i}, t_i) − x^T_final‖ (constant extrapolation beyond the data).

    Non-finite λ (flow endpoints) are dropped. Pass the result as ``eps_fn`` to ``optimize_lambdas`` or
    with ``error_model="empirical"`` to ``lambda_opt_schedule``.
    """
    lam, err = _clean_measurements(lambdas_teacher, errors, "empirical_eps")
    return EmpiricalEps(lam, err)


@dataclass(frozen=True)
class PFit:
    """Least-squares fit log e ≈ log c + p log σ(λ) − log α(λ); ``rms`` is the log-space residual."""

    p: float
    scale: float
    rms: float

    def __float__(self) -> float:
        return self.p


def fit_p(lambdas_teacher, errors) -> PFit:
    """Fit p (and a scale c) of the error model c·σ^p/α to measured errors, least squares in log space:

    min_{p, log c} Σ_i (log e_i + log α(λ_i) − log c − p log σ(λ_i))², α, σ the VP-equivalent ones of §2.2.
    The scale does not change the optimizer's argmin (F is linear in ε); p can come out < 0 for data
    that do not follow the model, in which case ``optimize_lambdas`` refuses it.
    """
    lam, err = _clean_measurements(lambdas_teacher, errors, "fit_p")
    log_sigma = -0.5 * np.logaddexp(0.0, 2 * lam)
    log_alpha = -0.5 * np.logaddexp(0.0, -2 * lam)
    target = np.log(err) + log_alpha
    A = np.stack([np.ones_like(lam), log_sigma], axis=1)
    if np.ptp(log_sigma) < 1e-12:
        raise OptstepsError("fit_p: all teacher times have the same σ; measure errors over a range of times.")
    coef, *_ = np.linalg.lstsq(A, target, rcond=None)
    resid = target - A @ coef
    return PFit(p=float(coef[1]), scale=float(np.exp(coef[0])), rms=float(np.sqrt(np.mean(resid**2))))


def eps_and_dlog(lam: np.ndarray, p: float, eps):
    """ε at every node and d log ε/dλ. ``eps``: None (σ^p/α), an array of per-node values (held fixed),
    or a callable λ ↦ ε (with an optional ``.dlog``; otherwise a central difference of log ε)."""
    if eps is None:
        return analytic_eps(lam, p), analytic_eps_dlog(lam, p)
    if callable(eps):
        e = np.asarray(eps(lam), dtype=np.float64)
        if hasattr(eps, "dlog"):
            dl = np.asarray(eps.dlog(lam), dtype=np.float64)
        else:
            step = 1e-6 * np.maximum(1.0, np.abs(lam))
            with np.errstate(divide="ignore", invalid="ignore"):
                dl = (
                    np.log(np.asarray(eps(lam + step), dtype=np.float64))
                    - np.log(np.asarray(eps(lam - step), dtype=np.float64))
                ) / (2 * step)
    else:
        e = np.asarray(eps, dtype=np.float64).ravel()
        dl = np.zeros_like(e)
    if e.shape != lam.shape:
        raise OptstepsError(
            f"the error model gave {e.size} values for {lam.size} nodes; it must map λ arrays elementwise."
        )
    if not np.all(np.isfinite(e)) or np.any(e < 0) or not np.all(np.isfinite(dl)):
        raise OptstepsError(
            "the error model returned negative or non-finite ε; use positive finite errors "
            "(e.g. empirical_eps of measured mean errors)."
        )
    return e, dl
