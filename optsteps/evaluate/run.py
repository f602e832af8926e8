"""Evaluate schedules: sample with a solver, then FID/KID (digitsnet, inception), gated class adherence,
L2 to the teacher endpoint on held-out seeds, and GenEval when it applies and is installed.

Metric names say which network: ``fid_digitsnet``, ``kid_digitsnet``, ``adherence_digitsnet`` (plus its
parts ``accuracy_digitsnet``, ``confident_accuracy_digitsnet``, ``precision_digitsnet``), ``fid_inception``,
``kid_inception``, ``l2_to_teacher``. Everything is deterministic given the seeds: sample i uses noise
(seed, start + i) and requests class (start + i) mod C; KID subsets use ``kid_seed``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from optsteps.errors import OptstepsError
from optsteps.models.base import DiffusionModel
from optsteps.core.schedule import Schedule
from optsteps.core.solver_spec import SolverSpec
from optsteps.evaluate.adherence import CONFIDENCE, K_NEAREST, adherence_from_logits, geneval_metrics, knn_radii
from optsteps.evaluate.fid import clean_features, digitsnet, fid_from_features, inception, kid_from_features, reference_features

log = logging.getLogger("optsteps.evaluate")

NOISE_SEED_STRIDE = 1_000_003  # DiffusionModel.noise: generator seed = seed · stride + index


def check_heldout(seed: int, start: int, n: int, distill_seed: int, distill_samples: int | None = None,
                  distill_start: int = 0) -> None:
    """Raise if evaluation noise (seed, start..start+n) overlaps the distillation noise
    (distill_seed, distill_start..distill_start+distill_samples; all indices when distill_samples is None)."""
    a0 = seed * NOISE_SEED_STRIDE + start
    a1 = a0 + n
    b0 = distill_seed * NOISE_SEED_STRIDE + distill_start
    b1 = b0 + distill_samples if distill_samples is not None else (distill_seed + 1) * NOISE_SEED_STRIDE
    if a0 < b1 and b0 < a1:
        raise OptstepsError(
            f"evaluation seeds (seed {seed}, samples {start}..{start + n - 1}) overlap the distillation seeds "
            f"(seed {distill_seed}{'' if distill_samples is None else f', samples {distill_start}..{distill_start + distill_samples - 1}'}); "
            "evaluate on held-out noise: pass another --seed or a start past the distillation samples.")


class Evaluator:
    """Feature nets, cached reference features and k-NN radii, shared across the rows of a grid.

    ``classifier``: a DigitsCNN or its folder (None: no digitsnet metrics, e.g. for non-digit models).
    ``cache_dir``: where reference features are cached (None: no cache).
    ``inception_n``: how many of the samples go through Inception (0: no Inception metrics).
    ``kid_subsets``: KID subsets per estimate. The caller passes these (params.yaml ``evaluate``).
    """

    def __init__(self, classifier, cache_dir, inception_n: int, kid_subsets: int, device="cpu",
                 k: int = K_NEAREST, confidence: float = CONFIDENCE, kid_seed: int = 0,
                 real_images: torch.Tensor | None = None, progress: bool = False):
        if inception_n < 0:
            raise OptstepsError(f"inception_n must be ≥ 0 (0 disables Inception FID), got {inception_n}.")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.inception_n, self.device, self.k, self.confidence = inception_n, device, k, confidence
        self.kid_seed, self.kid_subsets, self.progress = kid_seed, kid_subsets, progress
        self.real_images = real_images
        self.digits = digitsnet(classifier) if classifier is not None else None
        self._inception = None
        self._ref: dict = {}
        self._radii = None

    def _reference(self, net):
        if net.name not in self._ref:
            self._ref[net.name] = reference_features(net, self.real_images, self.cache_dir, self.progress)
        return self._ref[net.name]

    @property
    def inception_net(self):
        if self._inception is None:
            self._inception = inception(self.device)
        return self._inception

    def metrics(self, x: torch.Tensor, labels: torch.Tensor | None, teacher: torch.Tensor | None = None) -> dict:
        """All metrics of samples ``x`` (requested ``labels``) against the real data (and the teacher)."""
        out: dict = {"n": len(x)}
        if not torch.isfinite(x).all():
            raise OptstepsError(f"{int((~torch.isfinite(x)).flatten(1).any(1).sum())} of {len(x)} samples are "
                                "not finite; the solver diverged on this schedule (check its first steps).")
        if self.digits is not None:
            ref = self._reference(self.digits)
            feats = clean_features(x, self.digits, self.progress, "features digitsnet")
            out["fid_digitsnet"] = fid_from_features(feats, ref)
            out["kid_digitsnet"] = kid_from_features(feats, ref, self.kid_seed, self.kid_subsets)
            if self._radii is None:
                self._radii = knn_radii(ref, self.k)
            adh = adherence_from_logits(self.digits.head(feats), labels, feats, ref, self._radii, self.k,
                                        self.confidence)
            out.update({f"{k}_digitsnet": v for k, v in adh.items()})
        if self.inception_n:
            net = self.inception_net
            m = min(self.inception_n, len(x))
            ref = self._reference(net)
            feats = clean_features(x[:m], net, self.progress, "features inception")
            out["fid_inception"] = fid_from_features(feats, ref)
            out["kid_inception"] = kid_from_features(feats, ref, self.kid_seed, self.kid_subsets)
            out["n_inception"] = m
        if teacher is not None:
            if teacher.shape != x.shape:
                raise OptstepsError(f"teacher endpoints {tuple(teacher.shape)} do not match samples {tuple(x.shape)}; "
                                    "generate them on the same seeds and count.")
            out["l2_to_teacher"] = (x - teacher).flatten(1).norm(dim=1).mean().item()
        return out


def _evaluator(evaluator, classifier, cache_dir, inception_n, kid_subsets, progress) -> Evaluator:
    if evaluator is not None:
        return evaluator
    if inception_n is None or kid_subsets is None:
        raise OptstepsError("pass evaluator= or inception_n= and kid_subsets= (params.yaml evaluate.inception_n, "
                            "evaluate.kid_subsets).")
    return Evaluator(classifier, cache_dir, inception_n, kid_subsets, progress=progress)


def run_spec(schedule: Schedule, solver: str) -> SolverSpec:
    """The solver a schedule is evaluated with: its own spec, or ``solver`` at its default order if another."""
    return SolverSpec.from_fields(solver, schedule.extra) if solver == schedule.solver else SolverSpec(solver)


def teacher_endpoints(model: DiffusionModel, teacher_cfg, n: int, seed: int, start: int = 0,
                      guidance: float | None = None, batch_size: int = 500) -> tuple[Schedule, torch.Tensor]:
    """The teacher (``TeacherConfig``: solver × steps on a baseline grid) run on the evaluation seeds."""
    from optsteps.models.sampling import generate
    from optsteps.teacher.trajectories import teacher_schedule

    sched = teacher_schedule(model, teacher_cfg)
    g = teacher_cfg.guidance if guidance is None else guidance
    return sched, generate(model, sched, teacher_cfg.solver, n, seed, start, g, batch_size)


def evaluate_schedule(model: DiffusionModel, schedule: Schedule, solver: str | None, n: int, seed: int,
                      start: int = 0, guidance: float = 1.0, classifier=None, teacher: torch.Tensor | None = None,
                      inception_n: int | None = None, kid_subsets: int | None = None, cache_dir=None,
                      evaluator: Evaluator | None = None, batch_size: int = 500, geneval_prompts=None,
                      prompt_sampler=None, progress: bool = False, return_samples: bool = False):
    """Sample ``n`` seeded samples along ``schedule`` with ``solver`` (None: the schedule's) and return a dict
    of metrics. Pass an ``evaluator`` or the ``Evaluator`` settings (``classifier``, ``cache_dir``,
    ``inception_n``, ``kid_subsets``).

    ``teacher``: the teacher's endpoints for the same (seed, start, n) (see ``teacher_endpoints``) to get
    ``l2_to_teacher``. With ``return_samples`` the result is (metrics, samples).
    """
    from optsteps.models.sampling import generate

    solver = solver or schedule.solver
    if not solver:
        raise OptstepsError("no solver given and the schedule names none; pass solver= (ddim, dpmpp2m, unipc).")
    if n < 2:
        raise OptstepsError(f"need n ≥ 2 samples to evaluate, got {n}.")
    if schedule.noise_schedule != model.noise_schedule:
        raise OptstepsError(f"the schedule was made for {schedule.noise_schedule.to_dict()}, but model {model.name!r} "
                            f"uses {model.noise_schedule.to_dict()}; compute a schedule for this model.")
    ev = _evaluator(evaluator, classifier, cache_dir, inception_n, kid_subsets, progress)
    t0 = time.perf_counter()
    x = generate(model, schedule, run_spec(schedule, solver), n, seed, start, guidance, batch_size)
    t1 = time.perf_counter()
    out = ev.metrics(x, model.labels(n, start), teacher)
    if geneval_prompts is not None:
        out.update(geneval_metrics(geneval_prompts, prompt_sampler, schedule, seed=seed))
    out.update(seconds_sampling=round(t1 - t0, 3), seconds_metrics=round(time.perf_counter() - t1, 3))
    return (out, x) if return_samples else out


def evaluate_grid(model: DiffusionModel, schedules: list[Schedule], teacher_cfg, n: int, seed: int, start: int = 0,
                  guidance: float | None = None, solver: str | None = None, classifier=None,
                  inception_n: int | None = None, kid_subsets: int | None = None, cache_dir=None,
                  evaluator: Evaluator | None = None, distill_samples: int | None = None, batch_size: int = 500,
                  progress: bool = True) -> list[dict]:
    """Evaluate every schedule on the same held-out seeds; the first row is the teacher itself (the reference,
    ``l2_to_teacher`` = 0). Each row: model, method, solver, nfe, the metrics and timings.

    ``teacher_cfg.seed`` is the distillation seed: the evaluation seeds must not overlap it
    (``distill_samples`` bounds the distillation indices; None: the whole seed is reserved).
    """
    from optsteps.models.sampling import generate

    check_heldout(seed, start, n, teacher_cfg.seed, distill_samples)
    g = teacher_cfg.guidance if guidance is None else guidance
    ev = _evaluator(evaluator, classifier, cache_dir, inception_n, kid_subsets, progress)
    labels = model.labels(n, start)
    t0 = time.perf_counter()
    tsched, teacher = teacher_endpoints(model, teacher_cfg, n, seed, start, g, batch_size)
    t1 = time.perf_counter()
    row = {"model": model.name, "method": "teacher", "solver": teacher_cfg.solver, "nfe": tsched.nfe,
           "teacher_schedule": teacher_cfg.schedule, "guidance": g, "seed": seed, "start": start}
    row.update(ev.metrics(teacher, labels, teacher))
    row.update(seconds_sampling=round(t1 - t0, 3), seconds_metrics=round(time.perf_counter() - t1, 3))
    rows = [row]
    it = schedules
    if progress:
        from tqdm import tqdm

        it = tqdm(schedules, desc=f"evaluate {model.name}", mininterval=2.0)
    for s in it:
        sv = s.solver or solver
        if not sv:
            raise OptstepsError(f"schedule {s.method!r} NFE {s.nfe} names no solver; pass solver= to evaluate_grid.")
        if s.noise_schedule != model.noise_schedule:
            raise OptstepsError(f"schedule {s.method!r} NFE {s.nfe} was made for another noise schedule than model "
                                f"{model.name!r}; compute it for this model.")
        t0 = time.perf_counter()
        x = generate(model, s, run_spec(s, sv), n, seed, start, g, batch_size)
        t1 = time.perf_counter()
        row = {"model": model.name, "method": s.method, "solver": sv, "nfe": s.nfe, "guidance": g, "seed": seed,
               "start": start}
        row.update(ev.metrics(x, labels, teacher))
        row.update(seconds_sampling=round(t1 - t0, 3), seconds_metrics=round(time.perf_counter() - t1, 3))
        rows.append(row)
    return rows


def metric_columns(rows: list[dict]) -> list[str]:
    """Metric names present in rows, in a stable display order."""
    order = ["fid_digitsnet", "kid_digitsnet", "adherence_digitsnet", "accuracy_digitsnet", "precision_digitsnet",
             "fid_inception", "kid_inception", "l2_to_teacher", "geneval_overall"]
    present = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [k for k in order if k in present]


def markdown_table(rows: list[dict], metrics=("fid_digitsnet", "adherence_digitsnet", "l2_to_teacher")) -> str:
    """Rows of ``evaluate_grid`` as a markdown table: one line per (method, NFE), one column per
    (solver, metric), the teacher first; the best value per (solver, metric, NFE) in bold (lowest, except
    adherence/accuracy/precision: highest)."""
    metrics = [m for m in metrics if any(m in r for r in rows)]
    teacher = [r for r in rows if r["method"] == "teacher"]
    rest = [r for r in rows if r["method"] != "teacher"]
    solvers = sorted({r["solver"] for r in rest})
    cell = {(r["method"], r["nfe"], r["solver"]): r for r in rest}
    higher = ("adherence", "accuracy", "precision")

    def best(solver, metric, nfe):
        vals = [r[metric] for (_, k, sv), r in cell.items() if k == nfe and sv == solver and metric in r]
        return (max if metric.startswith(higher) else min)(vals) if vals else None

    head = ["method", "NFE"] + [f"{m} {sv}" for sv in solvers for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in teacher:
        lines.append("| " + " | ".join([f"teacher ({r['solver']}-{r['nfe']})", str(r["nfe"])]
                                       + [f"{r[m]:.4g}" if m in r else "" for _ in solvers for m in metrics]) + " |")
    for method, nfe in sorted({(m, k) for m, k, _ in cell}, key=lambda mk: (mk[1], mk[0])):
        vals = []
        for sv in solvers:
            for m in metrics:
                r = cell.get((method, nfe, sv))
                v = r.get(m) if r else None
                vals.append("" if v is None else (f"**{v:.4g}**" if v == best(sv, m, nfe) else f"{v:.4g}"))
        lines.append("| " + " | ".join([method, str(nfe)] + vals) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["Evaluator", "evaluate_schedule", "evaluate_grid", "teacher_endpoints", "check_heldout", "metric_columns",
           "markdown_table"]
