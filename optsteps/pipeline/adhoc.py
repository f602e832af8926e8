"""What the ad-hoc commands run (``optsteps schedule baseline``, ``optsteps sample``): they return a result for the
CLI to print, or write only the file they are given; they never write the pipeline's outputs (only the stages in
``stages`` do)."""

from __future__ import annotations

from optsteps.core.schedule import Schedule, check_noise_schedule
from optsteps.errors import OptstepsError


def baseline_schedule(
    kind: str, model: str, nfe: int, solver: str = "", table: str | None = None, params=None
) -> Schedule:
    """The baseline ``kind`` at ``nfe`` steps for ``model``; a built-in model's noise schedule needs no weights, so
    no params either (``params``: a callable returning the ``Params``, called only for another model)."""
    from optsteps.core.baselines import baseline
    from optsteps.models import BUILTIN, noise_schedule_for

    if model in BUILTIN:
        ns, name = noise_schedule_for(model), model
    else:
        p = params()
        e = p.entry(model)
        ns, name = noise_schedule_for(e, p.artifacts), e.name
    opts = {"table": table} if table else {}
    return baseline(kind, ns, nfe, model=name, **opts).with_meta(solver=solver)


def schedule_for(kind_or_ref: str, model, nfe: int, solver: str | None, resolved: Schedule | None = None) -> Schedule:
    """``resolved`` (a schedule file or registry reference, checked against the loaded ``model``'s noise schedule),
    else the baseline ``kind_or_ref`` for ``model`` (run with ``solver``, default unipc)."""
    from optsteps.core.baselines import baseline_for

    if resolved is not None:
        check_noise_schedule(
            resolved, model.noise_schedule, f"model {model.name!r}", "compute a schedule for this model"
        )
        return resolved
    return baseline_for(kind_or_ref, model, nfe).with_meta(solver=solver or "unipc")


def sample_grid(
    p,
    model: str,
    schedule: str,
    nfe: int,
    solver: str | None,
    n: int,
    seed: int,
    guidance: float,
    out,
    resolved: Schedule | None = None,
):
    """Sample ``n`` images of ``model`` along ``schedule`` (a baseline kind, or ``resolved``) and write them as one
    PNG grid to ``out``; returns (the schedule, the solver spec that ran)."""
    from optsteps.core.solver_spec import SolverSpec
    from optsteps.io.images import save_grid
    from optsteps.models import EMBEDDED, load_model
    from optsteps.models.sampling import generate

    spec = SolverSpec(solver) if solver else None
    m = load_model(p.entry(model), p.artifacts)
    if len(m.sample_shape) != 3:
        raise OptstepsError(f"model {model!r} does not produce images; sample an image model ({', '.join(EMBEDDED)}).")
    s = schedule_for(schedule, m, nfe, solver, resolved)
    spec = spec or s.solver_spec or SolverSpec("unipc")
    x = generate(m, s, spec, n, seed, guidance=guidance)
    save_grid(x, out)
    return s, spec
