"""The bill before the work: per model and stage, the model forwards, network calls, samples, shard bytes and an
ETA, from the same count functions that the stages run by (docs/costs.md).

Units:
- *forwards*: per-sample model forwards, i.e. (sample, time) pairs that go through the model (one sample at one
  step is one forward, whatever the batch; the issue-25 table's unit);
- *calls*: network calls: a denoiser call of B samples sends B rows, 2B with classifier-free guidance (the
  conditional and null halves in one batch, ``PredictionDenoiser``), and a diffusers text pipeline splits the
  rows into chunks of ``max_batch`` (``pipelines.batched_net``); embedded models take every row in one call.
- *ETA*: forwards × the forward time per sample (measured at the stage's batch, dtype and device, or given).

Every count is exact except OSS refinement (it stops when no move improves): the plan gives its cap where the OSS
counts give one, and the count a finished run reports (its schedule JSONs) once it exists.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field

from optsteps.errors import OptstepsError
from optsteps.pipeline.config import Params

STAGES = ("teacher", "oss", "gits", "lambda-opt", "evaluate", "register")


# ---- how a denoiser call becomes network calls ------------------------------------------------------------------


@dataclass(frozen=True)
class Batching:
    """Rows per sample (2 with classifier-free guidance) and rows per network call (None: one call)."""

    cfg_rows: int = 1
    chunk: int | None = None

    def calls(self, samples: int) -> int:
        """Network calls of one denoiser call on ``samples`` samples."""
        rows = samples * self.cfg_rows
        return 1 if self.chunk is None else math.ceil(rows / self.chunk)


def batching(card, entry, guidance: float) -> Batching:
    """The ``Batching`` of a model at a guidance scale: CFG doubles the rows where guidance ≠ 1 and the model has a
    null condition, except FLUX.1 (guidance is an embedding; rows double only with ``true_cfg_scale`` > 1); a
    diffusers text pipeline chunks at the entry's ``max_batch``."""
    kind = (getattr(card, "extra", None) or {}).get("kind") or getattr(card, "kind", None)
    if kind == "flux":
        cfg = 2 if float(entry.options.get("true_cfg_scale", 1.0)) > 1.0 else 1
    else:
        cfg = 2 if guidance != 1.0 and card.null_label is not None else 1
    return Batching(cfg, entry.max_batch if kind in ("sd", "sdxl", "sd3", "flux", "wan") else None)


# ---- one count function per stage (the stages use them) ---------------------------------------------------------


@dataclass
class Cost:
    """What a stage spends: per-sample forwards, network calls, samples, bytes written. ``bound``: the forwards
    (and calls) are a cap, not an exact count (``note`` says why)."""

    forwards: int = 0
    calls: int = 0
    samples: int = 0
    shard_bytes: int = 0
    bound: bool = False
    note: str = ""
    batch: int = 0  # samples per denoiser call (what the forward time is measured at)
    uncounted: bool = False  # some data-dependent work (refinement without a cap) is not in the counts

    def __iadd__(self, other: Cost) -> Cost:
        self.forwards += other.forwards
        self.calls += other.calls
        self.shard_bytes += other.shard_bytes
        self.bound = self.bound or other.bound
        self.uncounted = self.uncounted or other.uncounted
        return self


def run_cost(nfe: int, samples: int, batch: Batching, per_call: int | None = None) -> Cost:
    """``nfe`` denoiser calls over ``samples`` samples, ``per_call`` samples at a time (None: all at once)."""
    per_call = per_call or samples
    full, rest = divmod(samples, per_call)
    calls = nfe * (full * batch.calls(per_call) + (batch.calls(rest) if rest else 0))
    return Cost(nfe * samples, calls, samples, batch=per_call)


def teacher_cost(steps: int, ranges, batch: Batching) -> Cost:
    """The trajectories stage: every shard (start, count) of ``teacher.shard_ranges`` runs the teacher's
    ``steps`` evaluations on its ``count`` samples."""
    out = Cost()
    for _, count in ranges:
        out += run_cost(steps, count, batch)
        out.samples += count
        out.batch = max(out.batch, count)
    return out


def shard_bytes(steps: int, ranges, sample_shape) -> int:
    """Tensor bytes of the shards (``teacher.trajectories``: states [N+1, S, ...] and x0 [N, S, ...] float32,
    labels [S] int64, t [N+1] float64 per shard; headers and the manifest excluded)."""
    numel = math.prod(sample_shape)
    return sum(4 * numel * count * (2 * steps + 1) + 8 * count + 8 * (steps + 1) for _, count in ranges)


def evaluation_rows(p: Params, e) -> list[tuple[str, str, int]]:
    """(method, solver, NFE) of every row the evaluation runs after the teacher row: the baselines at
    ``evaluate.nfe`` ∪ ``evaluate.baseline_nfe`` and the optimized methods where their stage makes a schedule for
    an evaluated solver and NFE (``stages.evaluation_schedules`` reads exactly these)."""
    ev = p.evaluate
    base_nfe = sorted(set(ev.nfe) | set(ev.baseline_nfe))
    rows = [(kind, solver, nfe) for solver in ev.solvers for kind in ev.baselines for nfe in base_nfe]
    made = {"lambda-opt": (p.lambda_opt.solvers, p.lambda_opt.nfe), "oss": (p.oss.solvers, p.oss.nfe)}
    if p.oss.gits:
        made["gits"] = (p.oss.solvers, p.oss.nfe)
    for method, (solvers, nfes) in made.items():
        rows += [(method, s, k) for s in ev.solvers for k in ev.nfe if s in solvers and k in nfes]
    return rows


EVAL_BATCH = 500  # samples per ``generate`` batch of the evaluate stage (it passes this to ``evaluate_grid``)


def evaluation_cost(rows, n: int, teacher_steps: int, batch: Batching, teacher_cached: bool = False) -> Cost:
    """The evaluation: the teacher reference row (``teacher_steps`` × n, none when its endpoints are cached) and
    Σ nfe × n over the rows, in batches of ``evaluation_batch_size``."""
    size = EVAL_BATCH
    out = Cost(samples=n, batch=min(size, n))
    if not teacher_cached:
        out += run_cost(teacher_steps, n, batch, size)
    for _, _, nfe in rows:
        out += run_cost(nfe, n, batch, size)
    return out


def heldout_samples(p: Params) -> int:
    """H: the teacher samples after the first ``oss.samples`` that ``stages.compute_oss_nfes`` scores the candidates
    on (``oss.heldout_samples``, as many as the shards hold)."""
    return max(0, min(p.oss.heldout_samples, p.trajectories.samples - p.oss.samples))


def search_windows(p: Params) -> list:
    """The start windows the OSS/GITS searches run with: ``oss.start_window``, and 0 (from t_max) as a second
    candidate search where the held-out split chooses (``oss.t_max_candidate``)."""
    windows = [p.oss.start_window]
    if heldout_samples(p) and p.oss.start_window != 0 and p.oss.t_max_candidate:
        windows.append(0)
    return windows


def heldout_cost(p: Params, per_k: int, batch: Batching) -> Cost:
    """The held-out choice (``optimizers.select.choose_by_heldout``): each of ``per_k`` candidates per K is one
    student run of K on the H held-out samples in one batch."""
    h = heldout_samples(p)
    out = Cost()
    if not h:
        return out
    for k in p.oss.nfe:
        for _ in range(per_k):
            out += run_cost(k, h, batch)
    return out


def oss_cost(p: Params, solver: str, batch: Batching, done: dict | None = None) -> Cost:
    """OSS for one student solver over ``oss.nfe``: per search window (``search_windows``) the one DP for every K
    (exact, ``optimizers.oss.counts``) and the refinement (data-dependent: its cap where the counts give one; with
    ``done`` — NFE → the finished schedule's extra — the count the run reported), then the held-out choice."""
    from optsteps.optimizers.oss import counts

    s, n = p.oss.samples, p.teacher.steps
    out = Cost(samples=s, batch=s)
    notes = []
    windows = search_windows(p)
    for w in windows:
        # one DP for every K of oss.nfe (stages.oss_nfes → oss_search_all)
        out += run_cost(counts.dp_evaluations_all(n, p.oss.nfe, w, p.oss.distance, 1, p.oss.mode), s, batch)
        for k in p.oss.nfe:
            if not p.oss.refine:
                continue
            rec = (done or {}).get(k)
            if w != windows[0] and rec is not None:
                rec = rec.get("t_max_search")
            if rec is not None and "refine_model_evals" in rec:
                out += run_cost(int(rec["refine_model_evals"]), s, batch)
                notes.append(f"K={k} refinement as run")
                continue
            cap = refine_cap(n, k, p, w)
            if cap is None:
                out.uncounted = True
                notes.append(f"K={k} refinement not counted (data-dependent, no cap)")
            else:
                out += run_cost(cap, s, batch)
                out.bound = True
    out += heldout_cost(p, len(windows) * (2 if p.oss.refine else 1), batch)
    if p.oss.refine and not notes:
        out.note = "refinement at most (data-dependent)"
    elif notes:
        out.note = "; ".join(dict.fromkeys(n.split(" ", 1)[1] if n.startswith("K=") else n for n in notes))
    return out


def refine_cap(n_steps: int, nfe: int, p: Params, start_window=None) -> int | None:
    """The refinement's cap of evaluations per sample (``optimizers.oss.counts.refine_evaluations_max`` under
    ``oss.refine_max_evals``; None without a cap)."""
    from optsteps.optimizers.oss import counts

    return counts.refine_evaluations_max(nfe, p.oss.refine_max_evals, p.oss.mode)


def gits_cost(p: Params, batch: Batching) -> Cost:
    """GITS: the one-jump cost matrix (N evaluations per sample) and the start candidates' first jumps of the widest
    window (2w' for w' of the smallest K), both shared by every solver and K in one process; per search window one
    student run of K per (solver, K) to measure its path; then the held-out choice."""
    from optsteps.optimizers.oss import counts

    s, n = p.oss.samples, p.teacher.steps
    out = Cost(samples=s, batch=s)
    if not p.oss.gits:
        return out
    out += run_cost(counts.gits_cost_evaluations(n), s, batch)
    windows = search_windows(p)
    for w in windows:  # the start candidates' first jumps: shared like the matrix (stages._shared_gits_start_costs)
        out += run_cost(counts.gits_start_evaluations(n, min(p.oss.nfe), w), s, batch)
    for _solver in p.oss.solvers:
        for _w in windows:
            for k in p.oss.nfe:
                out += run_cost(counts.student_run_evaluations(k), s, batch)
        out += heldout_cost(p, len(windows), batch)
    return out


# ---- the plan ---------------------------------------------------------------------------------------------------


@dataclass
class StagePlan:
    model: str
    stage: str
    cost: Cost
    forward_ms: float | None = None  # per-sample forward time at the stage's batch
    source: str = ""  # "measured" | "given" | ""

    @property
    def eta_s(self) -> float | None:
        return None if self.forward_ms is None else self.cost.forwards * self.forward_ms / 1000.0

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "stage": self.stage,
            **dataclasses.asdict(self.cost),
            "forward_ms": self.forward_ms,
            "forward_ms_source": self.source,
            "eta_s": self.eta_s,
        }


@dataclass
class Plan:
    stages: list = field(default_factory=list)  # [StagePlan]
    budget: dict = field(default_factory=dict)  # model → what the budget chose

    def total(self, model: str | None = None) -> int:
        return sum(s.cost.forwards for s in self.stages if model is None or s.model == model)

    def stage(self, model: str, stage: str) -> StagePlan:
        return next(s for s in self.stages if s.model == model and s.stage == stage)

    def to_dict(self) -> dict:
        return {"stages": [s.to_dict() for s in self.stages], "total_forwards": self.total(), "budget": self.budget}

    def table(self) -> str:
        head = (
            f"{'model':<14} {'stage':<16} {'forwards':>12} {'calls':>10} {'samples':>8} {'shard MB':>9} "
            f"{'ms/fwd':>8} {'ETA':>9}  note"
        )
        lines = [head, "-" * len(head)]
        for model in dict.fromkeys(s.model for s in self.stages):
            rows = [s for s in self.stages if s.model == model]
            for s in rows:
                c = s.cost
                fw = ("≤ " if c.bound else "") + f"{c.forwards:,}" + (" + ?" if c.uncounted else "")
                ms = "" if s.forward_ms is None else f"{s.forward_ms:.3g}"
                mb = f"{c.shard_bytes / 1e6:.2f}" if c.shard_bytes else ""
                lines.append(
                    f"{model:<14} {s.stage:<16} {fw:>12} {c.calls:>10,} {c.samples:>8,} {mb:>9} {ms:>8} "
                    f"{_eta(s.eta_s):>9}  {c.note}"
                )
            eta = [s.eta_s for s in rows if s.eta_s is not None]
            bound = any(s.cost.bound for s in rows)
            more = " + ?" if any(s.cost.uncounted for s in rows) else ""
            lines.append(
                f"{model:<14} {'total':<16} {('≤ ' if bound else '') + f'{self.total(model):,}' + more:>12} "
                f"{sum(s.cost.calls for s in rows):>10,} {'':>8} {'':>9} {'':>8} "
                f"{_eta(sum(eta)) if eta else '':>9}"
            )
            if model in self.budget:
                lines.append(f"{model:<14} budget: {self.budget[model]}")
        return "\n".join(lines)


def _eta(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _finished_oss(p: Params, e, solver: str) -> dict:
    """NFE → the extra of an OSS schedule already on disk for ``solver`` (its reported refinement count)."""
    from optsteps.core.schedule import Schedule
    from optsteps.pipeline.stages import schedule_path

    out = {}
    for k in p.oss.nfe:
        path = schedule_path(p, e, "oss", solver, k)
        if path.is_file():
            try:
                s = Schedule.load(path)
            except (OptstepsError, ValueError, KeyError):
                continue
            same = (
                s.extra.get("teacher_steps") == p.teacher.steps
                and s.extra.get("teacher_samples") == p.oss.samples
                and bool(s.extra.get("refined")) == p.oss.refine
            )
            if same:
                out[k] = s.extra
    return out


def _card(e, q: Params):
    """``describe_model``; an embedded model not trained yet (the plan comes before the work) is described by its
    network's config (shape) and its noise schedule."""
    from optsteps.models import describe_model, noise_schedule_for
    from optsteps.models.base import ModelCard

    try:
        return describe_model(e, q.artifacts)
    except OptstepsError:
        if not e.is_embedded:
            raise
        from optsteps.models.digits import NULL_LABEL, build_unet

        cfg = build_unet().config
        return ModelCard(
            e.name,
            noise_schedule_for(e),
            "",
            (cfg.in_channels, cfg.sample_size, cfg.sample_size),
            10,
            NULL_LABEL,
            {"trained": False},
        )


def model_plan(
    p: Params, model, forward_ms: float | None = None, measure: bool = False, use_finished: bool = True
) -> list[StagePlan]:
    """The stages of one model (``p``: the params; the model's own settings are merged in here)."""
    from optsteps.teacher.trajectories import shard_ranges

    q = budgeted(p, model)
    e = q.entry(model)
    card = _card(e, q)
    teach, ev = batching(card, e, q.teacher.guidance), batching(card, e, q.evaluate.guidance)
    ranges = shard_ranges(q.trajectories.samples, q.trajectories.shard_size)
    t = teacher_cost(q.teacher.steps, ranges, teach)
    t.shard_bytes = shard_bytes(q.teacher.steps, ranges, card.sample_shape)
    out = [StagePlan(e.name, "teacher", t)]
    for solver in q.oss.solvers:
        out.append(
            StagePlan(
                e.name,
                f"oss/{solver}",
                oss_cost(q, solver, teach, _finished_oss(q, e, solver) if use_finished else None),
            )
        )
    out.append(StagePlan(e.name, "gits", gits_cost(q, teach)))
    lam = Cost(
        note="data-free (analytic error model)"
        if q.lambda_opt.error_model == "analytic"
        else "reads the shards' stored x̂0 (empirical error model)"
    )
    out.append(StagePlan(e.name, "lambda-opt", lam))
    evc = evaluation_cost(evaluation_rows(q, e), q.evaluate.n, q.teacher.steps, ev)
    evc.note = f"{len(evaluation_rows(q, e))} rows + teacher row (none when cached)"
    out.append(StagePlan(e.name, "evaluate", evc))
    out.append(StagePlan(e.name, "register", Cost(note="no model forwards")))
    if forward_ms is not None:
        for s in out:
            s.forward_ms, s.source = float(forward_ms), "given"
    elif measure and card.identity.get("trained", True) is not False:
        times = measure_forward_ms(
            q, e, sorted({(s.cost.batch, s.stage == "evaluate") for s in out if s.cost.forwards})
        )
        for s in out:
            if s.cost.forwards:
                s.forward_ms, s.source = times[(s.cost.batch, s.stage == "evaluate")], "measured"
    return out


def measure_forward_ms(p: Params, e, batches, calls: int = 3) -> dict:
    """Per-sample forward time (ms) of the model's own denoiser at each (batch, evaluation?) with the stage's
    guidance, dtype and device (the model loaded as the stages load it): one warm-up call, then the median of
    ``calls`` timed calls, divided by the batch."""
    import torch

    from optsteps.models import load_model
    from optsteps.teacher.trajectories import teacher_schedule

    m = load_model(e, p.artifacts)
    out = {}
    for b, is_eval in batches:
        g = p.evaluate.guidance if is_eval else p.teacher.guidance
        x = m.noise(b, 0)
        den = m.denoiser(m.labels(b), g)
        ts_teacher = teacher_schedule(m, p.teacher).timesteps_t
        t = ts_teacher[len(ts_teacher) // 2]
        den(x, t)
        dev = getattr(m, "device", "cpu")
        ts = []
        for _ in range(calls):
            if str(dev).startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            den(x, t)
            if str(dev).startswith("cuda"):
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        out[(b, is_eval)] = 1000.0 * statistics.median(ts) / b
    return out


def plan(params: Params, model=None, forward_ms: float | None = None, measure: bool = True) -> Plan:
    """The plan of ``model`` (None: every model of ``params.models``). Forward time: ``forward_ms`` (ms per
    per-sample forward) if given, else measured (``measure``), else none (no ETA)."""
    if forward_ms is not None and not (math.isfinite(forward_ms) and forward_ms > 0):
        raise OptstepsError(f"--forward-ms {forward_ms}: give the milliseconds of one per-sample forward (> 0).")
    out = Plan()
    for name in [model] if model is not None else list(params.models):
        q = budgeted(params, name)
        out.stages += model_plan(params, name, forward_ms, measure)
        if getattr(q, "_budget_choice", None):
            out.budget[q.entry(name).name] = q._budget_choice
    return out


# ---- the budget knob ----------------------------------------------------------------------------------------

# Rungs (oss.samples S, teacher.steps N, oss.refine, evaluate.n) from the most to the least expensive, along the
# measured cost-quality front (benchmarks/cost_quality.py, docs/costs.md); a rung never raises a configured value.
BUDGET_LADDER = (
    (64, 100, True, 1000),
    (32, 100, True, 500),
    (16, 50, True, 200),
    (16, 50, False, 128),
    (8, 50, False, 64),
    (8, 25, False, 32),
    (4, 25, False, 16),
)


def planned_forwards(q: Params) -> int | None:
    """The forwards of a model's merged params (counts only; None where refinement has no cap)."""
    from optsteps.teacher.trajectories import shard_ranges

    b = Batching()
    total = teacher_cost(q.teacher.steps, shard_ranges(q.trajectories.samples, q.trajectories.shard_size), b).forwards
    for solver in q.oss.solvers:
        c = oss_cost(q, solver, b)
        if q.oss.refine and refine_cap(q.teacher.steps, max(q.oss.nfe), q) is None:
            return None
        total += c.forwards
    total += gits_cost(q, b).forwards
    return total + evaluation_cost(evaluation_rows(q, None), q.evaluate.n, q.teacher.steps, b).forwards


def budget_forwards(budget: dict) -> int:
    """The budget in per-sample forwards: ``forwards``, or ``gpu_hours`` × 3.6e6 / ``forward_ms``."""
    if "forwards" in budget:
        return int(budget["forwards"])
    return int(budget["gpu_hours"] * 3.6e6 / budget["forward_ms"])


def _rung(q: Params, s: int, n: int, refine: bool, n_eval: int) -> Params:
    s, n = min(s, q.oss.samples), min(n, q.teacher.steps)
    return dataclasses.replace(
        q,
        oss=dataclasses.replace(q.oss, samples=s, refine=q.oss.refine and refine),
        teacher=dataclasses.replace(q.teacher, steps=n),
        trajectories=dataclasses.replace(q.trajectories, samples=min(q.trajectories.samples, max(s, 1))),
        evaluate=dataclasses.replace(q.evaluate, n=min(n_eval, q.evaluate.n)),
    )


def budgeted(p: Params, model) -> Params:
    """``p.for_model(model)`` scaled to the model's budget (its entry's, else the top-level one; none: as is)."""
    q = p.for_model(model)
    e = q.entry(model)
    budget = e.budget or q.budget
    return fit_budget(q, e, budget) if budget else q


def fit_budget(q: Params, e, budget: dict) -> Params:
    """``q`` scaled down the ``BUDGET_LADDER`` to the first rung (the settings as configured first) whose planned
    forwards fit ``budget``; the choice is kept as ``q._budget_choice`` (``optsteps plan`` prints it). Refuses
    with one line when even the cheapest rung does not fit. Refinement has no evaluation cap, so a budget turns it
    off unless the configured settings already fit with it counted at its cap."""
    limit = budget_forwards(budget)
    tried = []
    for rung in ((q.oss.samples, q.teacher.steps, q.oss.refine, q.evaluate.n),) + BUDGET_LADDER:
        c = _rung(q, *rung)
        f = planned_forwards(c)
        tried.append(f)
        if f is not None and f <= limit:
            for k in ("_for_model", "_base"):  # still merged for this model (for_model returns it as is)
                if hasattr(q, k):
                    setattr(c, k, getattr(q, k))
            c._budget_choice = (
                f"{f:,} forwards ≤ budget {limit:,}: oss.samples {c.oss.samples}, teacher.steps "
                f"{c.teacher.steps}, oss.refine {c.oss.refine}, evaluate.n {c.evaluate.n}, "
                f"trajectories.samples {c.trajectories.samples}"
            )
            return c
    cheapest = min(f for f in tried if f is not None)
    raise OptstepsError(
        f"models.{e.name} budget {budget} = {limit:,} forwards: even the cheapest useful plan needs "
        f"{cheapest:,} (oss.samples {BUDGET_LADDER[-1][0]}, teacher.steps {BUDGET_LADDER[-1][1]}, "
        f"evaluate.n {BUDGET_LADDER[-1][3]}); raise the budget, or drop NFEs/solvers/baselines "
        "(`optsteps plan --model` shows the bill)."
    )
