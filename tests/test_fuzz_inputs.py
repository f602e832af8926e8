"""Fuzzing user-written schedule JSON: every input either loads into a valid schedule or raises OptstepsError —
never another exception (a bounded, seeded run)."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_subnormal=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=6), c, max_size=5)),
    max_leaves=12,
)
families = st.one_of(st.sampled_from(["vp", "edm", "flow"]), st.text(max_size=4), st.none(), st.integers())
noise_schedules = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"family": families},
        optional={"num_train_timesteps": scalars, "beta_schedule": scalars, "sigma_min": scalars, "sigma_max": scalars},
    ),
)
times = st.one_of(
    json_values,
    st.lists(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), max_size=6),
    st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=2, max_size=6).map(lambda v: sorted(v, reverse=True)),
)
schedule_dicts = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"noise_schedule": noise_schedules, "t": times},
        optional={
            "solver": st.one_of(st.sampled_from(["ddim", "dpmpp2m", "unipc", ""]), scalars),
            "order": scalars,
            "nfe": scalars,
            "lower_order_final": scalars,
            "method": scalars,
        },
    ),
)


@SETTINGS
@given(schedule_dicts)
def test_schedule_json_loads_or_raises_optsteps_error(d):
    try:
        s = Schedule.from_dict(d) if isinstance(d, dict) else Schedule.from_json(repr(d))
    except OptstepsError:
        return
    assert s.nfe >= 1 and all(math.isfinite(v) for v in s.t)
    assert all(a > b for a, b in zip(s.t, s.t[1:]))
    assert Schedule.from_json(s.to_json()).t == s.t  # what loads also round-trips


# ---- params.yaml mappings ----------------------------------------------------------------------------------------


def _section_values():
    """A section's settings: its real keys (and a few others) with values of any JSON type, or real-looking ones."""
    from optsteps.pipeline.config import SECTIONS

    keys = sorted({f for cls in SECTIONS.values() for f in cls.__dataclass_fields__}) + ["typo"]
    return st.dictionaries(
        st.sampled_from(keys),
        st.one_of(
            json_values,
            st.lists(st.integers(-3, 300), max_size=4),
            st.sampled_from(["ddim", "unipc", "karras", "nan", ""]),
        ),
        max_size=5,
    )


def _params_dicts():
    from optsteps.pipeline.config import SECTIONS

    sections = st.fixed_dictionaries(
        {},
        optional={
            **{name: st.one_of(_section_values(), json_values) for name in SECTIONS},
            "artifacts": st.one_of(scalars, st.just("artifacts")),
            "results": scalars,
            "train": st.one_of(
                json_values,
                st.dictionaries(
                    st.sampled_from(["digits", "digits-flow", "x y"]),
                    st.one_of(_section_values(), json_values),
                    max_size=2,
                ),
            ),
            "models": st.one_of(
                json_values,
                st.dictionaries(
                    st.sampled_from(["digits", "digits-flow", "gmm", "Bad Name", "classifier", "mine"]),
                    st.one_of(
                        st.none(),
                        json_values,
                        st.fixed_dictionaries(
                            {}, optional={"pipeline": scalars, "guidance": scalars, "overrides": json_values}
                        ),
                    ),
                    max_size=2,
                ),
            ),
        },
    )
    return st.one_of(json_values, sections)


@SETTINGS
@given(_params_dicts())
def test_params_load_or_raise_optsteps_error(d):
    """Any mapping (or non-mapping) as params.yaml: a valid ``Params`` or an ``OptstepsError``, never another
    exception; what loads passes its own checks again."""
    from optsteps.pipeline.config import params_from_dict

    try:
        p = params_from_dict(d)
    except OptstepsError:
        return
    assert p.evaluate.seed != p.teacher.seed and p.teacher.steps >= 2 and p.oss.samples >= 1
    assert (
        isinstance(p.artifacts, str)
        and p.artifacts
        and all(math.isfinite(v) for v in (p.teacher.guidance, p.evaluate.guidance))
    )
