"""Bounds on work and on the files we read, in one place: what one run may cost or read. (The ranges of
configuration values, which params.yaml's rules check, are ``optsteps.core.limits``.) Each limit can be raised for
one run with the environment variable ``OPTSTEPS_<NAME>`` (e.g. ``OPTSTEPS_MAX_TEACHER_SAMPLES=200000``);
``check`` refuses a value above its limit with one line that names the limit and that variable."""

from __future__ import annotations

import os

from optsteps.errors import OptstepsError

DEFAULTS = {
    "MAX_FILE_BYTES": 16 * 2**20,  # params.yaml, schedule JSON, manifests, model_index.json, prompt files
    "MAX_NESTING": 64,  # nesting depth of a JSON/YAML file we read (ours are at most 4 deep)
    "MAX_SCHEDULE_POINTS": 10_000,  # times in one schedule (NFE + 1)
    "MAX_TRAIN_TIMESTEPS": 1_000_000,  # a discrete noise schedule's num_train_timesteps (tables of that size)
    "MAX_TEACHER_SAMPLES": 100_000,  # teacher-trajectory samples (OSS needs hundreds; each is a full teacher run)
    "MAX_EVAL_SAMPLES": 1_000_000,  # samples of one evaluation or grid
    "MAX_LAMBDA_OPT_NFE": 200,  # K of the λ-optimizer (few-step schedules): K = 200 takes ≈ 40 s on one core, K³ beyond
}

# a sample's noise seed is seed·1_000_003 + index (models.base), and torch seeds are int64: seeds up to 2⁴³ − 1 keep
# every index below 2⁵⁸ in range
SEED_MIN, SEED_MAX = 0, 2**43 - 1


def limit(name: str) -> int:
    """The limit ``name`` (a key of ``DEFAULTS``), or ``$OPTSTEPS_<NAME>`` when set to an integer."""
    raw = os.environ.get(f"OPTSTEPS_{name}", "")
    if raw.strip():
        try:
            return int(raw)
        except ValueError:
            raise OptstepsError(f"OPTSTEPS_{name}={raw!r} is not an integer; unset it or set a whole number.") from None
    return DEFAULTS[name]


def check(name: str, value: int, what: str) -> int:
    """``value`` if it is within the limit ``name``, else one line naming the limit and how to raise it."""
    lim = limit(name)
    if value > lim:
        raise OptstepsError(
            f"{what} = {value} exceeds the limit {lim} ({name}); this would exhaust memory or run "
            f"for hours. Lower it, or raise the limit for this run with OPTSTEPS_{name}={value}."
        )
    return value


def check_seed(value, what: str = "--seed") -> int:
    """A seed torch accepts: an integer in [0, 2⁶³ − 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_MIN <= value <= SEED_MAX:
        raise OptstepsError(f"{what} {value} is out of range; pass an integer in {SEED_MIN} … {SEED_MAX} (2^43 − 1).")
    return value
