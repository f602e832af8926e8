"""One error type for bad input: every message names the problem and the fix."""


class OptstepsError(ValueError):
    """Raised for invalid schedules, configs, models or files. The message says how to fix it."""
