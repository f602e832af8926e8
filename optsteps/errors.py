"""One error type for bad input: every message names the problem and the fix."""


class OptstepsError(ValueError):
    """Raised for invalid schedules, configs, models or files. The message says how to fix it."""


class NonFiniteError(OptstepsError):
    """A model output or a sampler state became NaN or ±inf; nothing computed from it is written."""
