"""Bounds of configuration values, shared by the option dataclasses of every layer (their field metadata;
the rules' conventions are in ``optsteps.pipeline.config.check_fields``)."""

MAX_SAMPLES = 10_000_000  # counts: samples, shards, threads, epochs (typos must not allocate terabytes)
MAX_STEPS = 100_000  # teacher steps and NFE: more than any sampler takes
MAX_GUIDANCE = 1e4  # classifier-free guidance scales


def baseline_kind_rule(kinds) -> str | None:
    """The rule text when a baseline kind (or any of a list of kinds) is not ``KIND[@start=T][,state=…]`` of a
    known kind (``core.baselines.parse_kind``); None when all are."""
    from optsteps.core.baselines import BASELINES, parse_kind
    from optsteps.errors import OptstepsError

    for kind in kinds if isinstance(kinds, list) else [kinds]:
        try:
            ok = isinstance(kind, str) and parse_kind(kind)[0] in BASELINES
        except OptstepsError as e:
            return str(e).rstrip(".")
        if not ok:
            return f"{kind!r} is not a baseline; use {', '.join(BASELINES)} (optionally KIND@start=T,state=raw)"
    return None


__all__ = ["MAX_GUIDANCE", "MAX_SAMPLES", "MAX_STEPS", "baseline_kind_rule"]
