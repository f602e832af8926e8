"""Evaluate schedules: sample with a solver, then the metrics of every model and the digits metrics of digits models,
with paired bootstrap intervals (docs/algorithms.md §7).

Metric names say which network and which reference:

- any model whose samples are images (pixel models; latent models through ``model.decode``, the pipeline's VAE):
  ``fid_teacher_inception`` / ``kid_teacher_inception`` against the teacher's own samples on the same held-out
  seeds (the first ``teacher_inception_n``), ``fid_inception`` / ``kid_inception`` against a reference image
  folder (``reference_images``; for digits models the real digits) on the first ``inception_n``, and
  ``psnr_to_teacher`` (dB, images in [−1, 1], peak-to-peak 2) on all n;
- any model: ``l2_to_teacher``, the mean over samples of ‖x − x_teacher‖₂ in the model's state space;
- digits models (the digits classifier): ``fid_digitsnet``, ``kid_digitsnet`` against the 1,797 real digits,
  ``fid_teacher_digitsnet``, ``kid_teacher_digitsnet`` against the teacher's samples, ``adherence_digitsnet``
  (plus its parts ``accuracy_digitsnet``, ``confident_accuracy_digitsnet``, ``precision_digitsnet``).

KID values are clean-fid's unbiased MMD² with the cubic kernel (xᵀy/d + 1)³, unscaled (×1, not ×10³); they can
be slightly negative. With ``bootstrap`` > 0 every row gets ``ci95: {metric: [lo, hi]}`` for its FID, KID, L2,
PSNR and adherence metrics, from one index matrix shared by all rows of a grid (stratified by the requested
label). Everything is deterministic given
the seeds: sample i uses noise (seed, start + i) and requests class (start + i) mod C; KID subsets use
``kid_seed``, the bootstrap ``bootstrap_seed``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from optsteps.core.baselines import BASELINES
from optsteps.core.schedule import Schedule, check_noise_schedule
from optsteps.core.solver_spec import SolverSpec
from optsteps.errors import OptstepsError
from optsteps.evaluate import bootstrap as bs
from optsteps.evaluate.adherence import CONFIDENCE, K_NEAREST, adherence_masks, geneval_metrics, knn_radii
from optsteps.evaluate.fid import (
    clean_features,
    default_real_images,
    digitsnet,
    fid_from_features,
    folder_features,
    folder_key,
    inception,
    kid_from_features,
    reference_features,
    reference_key,
)
from optsteps.evaluate.metric_names import METRICS
from optsteps.evaluate.options import EvaluateOptions
from optsteps.models.base import DiffusionModel

log = logging.getLogger("optsteps.evaluate")

NOISE_SEED_STRIDE = 1_000_003  # DiffusionModel.noise: generator seed = seed · stride + index
PSNR_PEAK = 2.0  # images in [−1, 1]
PSNR_MSE_FLOOR = 1e-10  # PSNR ≤ 10·log10(4 / 1e-10) ≈ 106 dB: bit-identical images stay finite


def check_heldout(
    seed: int, start: int, n: int, distill_seed: int, distill_samples: int | None = None, distill_start: int = 0
) -> None:
    """Raise if evaluation noise (seed, start..start+n) overlaps the distillation noise
    (distill_seed, distill_start..distill_start+distill_samples; all indices when distill_samples is None)."""
    a0 = seed * NOISE_SEED_STRIDE + start
    a1 = a0 + n
    b0 = distill_seed * NOISE_SEED_STRIDE + distill_start
    b1 = b0 + distill_samples if distill_samples is not None else (distill_seed + 1) * NOISE_SEED_STRIDE
    if a0 < b1 and b0 < a1:
        raise OptstepsError(
            f"evaluation seeds (seed {seed}, samples {start}..{start + n - 1}) overlap the distillation seeds "
            f"(seed {distill_seed}"
            f"{'' if distill_samples is None else f', samples {distill_start}..{distill_start + distill_samples - 1}'}"
            "); evaluate on held-out noise: pass another --seed or a start past the distillation samples."
        )


class Evaluator:
    """Feature nets, cached reference features and k-NN radii, the teacher of the grid and the bootstrap index
    matrix, shared across the rows of a grid.

    ``classifier``: a DigitsCNN or its folder (None: no digitsnet metrics, e.g. for non-digit models).
    ``cache_dir``: where reference features (and teacher endpoints) are cached (None: no cache).
    ``inception_n``: how many samples go through Inception for ``fid_inception`` (0: off); its reference is
    ``reference_images`` (a folder) if given, else ``real_images``, else the real digits when there is a
    classifier, else none (the metric is absent).
    ``teacher_inception_n``: samples for ``fid_teacher_inception`` / ``kid_teacher_inception`` (0: off).
    ``kid_subsets``: KID subsets per estimate. ``bootstrap``: resamples for the intervals (0: none),
    ``bootstrap_seed`` their seed. The caller passes these (params.yaml ``evaluate``).
    """

    def __init__(
        self,
        classifier,
        cache_dir,
        inception_n: int,
        kid_subsets: int,
        device="cpu",
        k: int = K_NEAREST,
        confidence: float = CONFIDENCE,
        kid_seed: int = 0,
        real_images: torch.Tensor | None = None,
        progress: bool = False,
        *,
        teacher_inception_n: int = 0,
        reference_images=None,
        bootstrap: int = 0,
        bootstrap_seed: int = 0,
    ):
        for name, v in (
            ("inception_n", inception_n),
            ("teacher_inception_n", teacher_inception_n),
            ("bootstrap", bootstrap),
        ):
            if not isinstance(v, int) or v < 0:
                raise OptstepsError(f"{name} must be an integer ≥ 0 (0 turns it off), got {v!r}.")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.inception_n, self.device, self.k, self.confidence = inception_n, device, k, confidence
        self.teacher_inception_n = teacher_inception_n
        self.kid_seed, self.kid_subsets, self.progress = kid_seed, kid_subsets, progress
        self.bootstrap, self.bootstrap_seed = bootstrap, bootstrap_seed
        self.reference_images = str(reference_images) if reference_images else None
        self.digits = digitsnet(classifier) if classifier is not None else None
        self.real_images = real_images
        if self.real_images is None and self.digits is not None:
            self.real_images = default_real_images()
        if self.reference_images is not None and not inception_n:
            raise OptstepsError(
                f"reference_images = {self.reference_images!r} is set but inception_n is 0; set "
                "evaluate.inception_n > 0 (samples compared with the folder through Inception)."
            )
        self._inception = None
        self._ref: dict = {}
        self._stats: dict = {}
        self._radii = None
        self._idx: dict = {}
        self._teacher = None
        self._teacher_images = None

    @classmethod
    def from_options(
        cls,
        classifier,
        options: EvaluateOptions,
        *,
        teacher_inception_n: int | None = None,
        progress: bool | None = None,
    ) -> Evaluator:
        """The evaluator of ``options`` (``EvaluateOptions``: cache_dir, inception_n, kid_subsets, reference_images,
        bootstrap and its seed, progress); ``teacher_inception_n`` defaults to ``options.teacher_inception_n``."""
        o = options
        return cls(
            classifier,
            o.cache_dir,
            o.inception_n,
            o.kid_subsets,
            progress=o.progress if progress is None else progress,
            teacher_inception_n=o.teacher_inception_n if teacher_inception_n is None else teacher_inception_n,
            reference_images=o.reference_images or None,
            bootstrap=o.bootstrap,
            bootstrap_seed=o.bootstrap_seed,
        )

    # -- references ---------------------------------------------------------------------------------
    def _reference(self, net):
        """The fixed real reference of ``net``: the digits for digitsnet; the folder or real images for Inception."""
        if net.name not in self._ref:
            if net.name == "inception" and self.reference_images is not None:
                self._ref[net.name] = folder_features(net, self.reference_images, self.cache_dir, self.progress)
            else:
                real = self.real_images if self.real_images is not None else default_real_images()
                self._ref[net.name] = reference_features(net, real, self.cache_dir, self.progress)
        return self._ref[net.name]

    @property
    def has_real_inception_reference(self) -> bool:
        return self.reference_images is not None or self.real_images is not None

    @property
    def inception_net(self):
        if self._inception is None:
            self._inception = inception(self.device)
        return self._inception

    def _refs(self, tag, feats):
        """(FrechetReference, KernelReference) of a fixed feature set, computed once per ``tag``."""
        if tag not in self._stats:
            self._stats[tag] = (bs.frechet_reference(feats), bs.kernel_reference(feats))
        return self._stats[tag]

    def indices(self, n: int, labels=None) -> np.ndarray:
        """The bootstrap index matrix for n samples with these labels (stratified by label; the same for every
        row of a grid: paired)."""
        lab = None if labels is None else np.asarray(torch.as_tensor(labels)[:n]).reshape(-1)
        key = (n, None if lab is None else lab.tobytes())
        if key not in self._idx:
            self._idx[key] = bs.resample_indices(n, self.bootstrap, self.bootstrap_seed, lab)
        return self._idx[key]

    def set_teacher(self, states: torch.Tensor | None, images: torch.Tensor | None = None) -> None:
        """The teacher's endpoints (and their images) on the grid's seeds: the reference of the teacher metrics."""
        if states is self._teacher and images is self._teacher_images:
            return
        self._teacher, self._teacher_images = states, images
        self._stats = {k: v for k, v in self._stats.items() if not k[0] == "teacher"}
        self._ref = {k: v for k, v in self._ref.items() if not isinstance(k, tuple)}

    def _teacher_features(self, net, m: int):
        key = ("teacher", net.name, m)
        if key not in self._ref:
            self._ref[key] = reference_features(net, self._teacher_images[:m], self.cache_dir, self.progress)
        return self._ref[key]

    def identity(self) -> dict:
        """What decides whether two evaluations' numbers (and resamples) are comparable, besides the model,
        teacher and seeds: feature nets, references and settings."""
        out = {
            "digitsnet": self.digits.identity if self.digits is not None else None,
            "inception_n": self.inception_n,
            "teacher_inception_n": self.teacher_inception_n,
            "kid_subsets": self.kid_subsets,
            "kid_seed": self.kid_seed,
            "k": self.k,
            "confidence": self.confidence,
            "bootstrap": self.bootstrap,
            "bootstrap_seed": self.bootstrap_seed,
        }
        if self.digits is not None:
            out["digits_reference"] = reference_key(self.digits, self.real_images)[1]
        if self.inception_n or self.teacher_inception_n:
            out["inception"] = self.inception_net.identity
            if self.inception_n and self.reference_images is not None:
                out["inception_reference"] = folder_key(self.inception_net, self.reference_images)[0]
            elif self.inception_n and self.real_images is not None:
                out["inception_reference"] = reference_key(self.inception_net, self.real_images)[1]
        return out

    # -- metrics ------------------------------------------------------------------------------------
    def _fid_kid(self, out, res, name, feats, ref_feats, tag, idx):
        if tag[0] == "teacher":  # paired sets (shared seeds): pairs resampled jointly, no paired diagonal (§7.2)
            out[f"fid_{name}"] = bs.paired_frechet(feats, ref_feats)
            out[f"kid_{name}"] = bs.paired_kid(feats, ref_feats)
            if idx is not None:
                res[f"fid_{name}"] = bs.paired_frechet_resamples(feats, ref_feats, idx)
                res[f"kid_{name}"] = bs.paired_kid_resamples(feats, ref_feats, idx)
            return
        out[f"fid_{name}"] = fid_from_features(feats, ref_feats)
        out[f"kid_{name}"] = kid_from_features(feats, ref_feats, self.kid_seed, self.kid_subsets)
        if idx is not None:
            fref, kref = self._refs(tag, ref_feats)
            res[f"fid_{name}"] = bs.frechet_resamples(feats, fref, idx)
            res[f"kid_{name}"] = bs.kid_resamples(feats, kref, idx)

    def measure(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        images: torch.Tensor | None = None,
        reference_row: bool = False,
    ) -> tuple[dict, dict]:
        """(metrics, resamples) of samples ``x`` (requested ``labels``; ``images``: their decoded images, None
        for pixel models = ``x`` itself, or for states that are no images) against the references and the
        teacher (``set_teacher``). ``reference_row``: x are the teacher's own samples (no metric against itself
        but ``l2_to_teacher`` = 0). ``resamples``: metric → the values on the bootstrap resamples."""
        out: dict = {"n": len(x)}
        if not torch.isfinite(x).all():
            raise OptstepsError(
                f"{int((~torch.isfinite(x)).flatten(1).any(1).sum())} of {len(x)} samples are "
                "not finite; the solver diverged on this schedule (check its first steps)."
            )
        imgs = images if images is not None else (x if x.dim() == 4 else None)
        res: dict = {}
        n = len(x)
        idx = self.indices(n, labels) if self.bootstrap else None
        teacher = None if reference_row else self._teacher
        if self.digits is not None and imgs is not None:
            ref = self._reference(self.digits)
            feats = clean_features(imgs, self.digits, self.progress, "features digitsnet")
            self._fid_kid(out, res, "digitsnet", feats, ref, ("real", "digitsnet"), idx)
            if self._radii is None:
                self._radii = knn_radii(ref, self.k)
            masks = adherence_masks(self.digits.head(feats), labels, feats, ref, self._radii, self.k, self.confidence)
            for name, mask in masks.items():
                out[f"{name}_digitsnet"] = float(np.asarray(mask, dtype=np.float64).mean())
                if idx is not None and name in ("adherence", "precision"):
                    res[f"{name}_digitsnet"] = bs.resample_means(mask, idx)
            if teacher is not None and self._teacher_images is not None:
                tf = self._teacher_features(self.digits, n)
                self._fid_kid(out, res, "teacher_digitsnet", feats, tf, ("teacher", "digitsnet", n), idx)
        m_real = min(self.inception_n, n) if self.inception_n and self.has_real_inception_reference else 0
        m_teacher = (
            min(self.teacher_inception_n, n)
            if self.teacher_inception_n and teacher is not None and self._teacher_images is not None
            else 0
        )
        if imgs is not None and (m_real or m_teacher):
            net = self.inception_net
            feats = clean_features(imgs[: max(m_real, m_teacher)], net, self.progress, "features inception")
            if m_real:
                self._fid_kid(
                    out,
                    res,
                    "inception",
                    feats[:m_real],
                    self._reference(net),
                    ("real", "inception"),
                    self.indices(m_real, labels) if idx is not None else None,
                )
                out["n_inception"] = m_real
            if m_teacher:
                tf = self._teacher_features(net, m_teacher)
                self._fid_kid(
                    out,
                    res,
                    "teacher_inception",
                    feats[:m_teacher],
                    tf,
                    ("teacher", "inception", m_teacher),
                    self.indices(m_teacher, labels) if idx is not None else None,
                )
                out["n_teacher_inception"] = m_teacher
        if self._teacher is not None:
            if self._teacher.shape != x.shape:
                raise OptstepsError(
                    f"teacher endpoints {tuple(self._teacher.shape)} do not match samples "
                    f"{tuple(x.shape)}; generate them on the same seeds and count."
                )
            d = (x - self._teacher).flatten(1).norm(dim=1)  # ‖x_i − x_teacher,i‖₂ per sample
            out["l2_to_teacher"] = d.mean().item()
            if idx is not None:
                res["l2_to_teacher"] = bs.resample_means(d.double().numpy(), idx)
            if teacher is not None and imgs is not None and self._teacher_images is not None:
                psnr = psnr_per_sample(imgs, self._teacher_images)
                out["psnr_to_teacher"] = float(psnr.mean())
                if idx is not None:
                    res["psnr_to_teacher"] = bs.resample_means(psnr, idx)
        if idx is not None:
            out["ci95"] = {k: list(bs.metric_interval(k, out[k], r)) for k, r in res.items()}
        return out, res

    def metrics(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        teacher: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        teacher_images: torch.Tensor | None = None,
    ) -> dict:
        """All metrics of samples ``x`` (requested ``labels``) against the real data (and the teacher, whose
        endpoints ``teacher`` and images ``teacher_images`` become the evaluator's teacher)."""
        if teacher is not None:
            self.set_teacher(
                teacher, teacher_images if teacher_images is not None else (teacher if teacher.dim() == 4 else None)
            )
        return self.measure(x, labels, images, reference_row=teacher is not None and x is teacher)[0]


def psnr_per_sample(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """PSNR in dB of each image against its reference, both in [−1, 1] (clamped)."""
    # PSNR_i = 10 log10(peak² / max(MSE_i, floor)), MSE_i = mean over pixels of (x_i − y_i)², peak = 2
    a = images.detach().double().cpu().clamp(-1, 1)
    b = reference.detach().double().cpu().clamp(-1, 1)
    if a.shape != b.shape:
        raise OptstepsError(f"images {tuple(a.shape)} and teacher images {tuple(b.shape)} differ in shape.")
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(PSNR_MSE_FLOOR)
    return (10.0 * torch.log10(PSNR_PEAK**2 / mse)).numpy()


def images_of(model: DiffusionModel, x: torch.Tensor) -> torch.Tensor | None:
    """Images in [−1, 1] of states ``x``: decoded by the model's VAE for latent models (``model.decode``), the
    states themselves for pixel models ([N, C, H, W]), None for states that are no images (e.g. the GMM)."""
    decode = getattr(model, "decode", None)
    if callable(decode):
        return decode(x)
    return x if x.dim() == 4 else None


def evaluation_id(
    model: DiffusionModel, teacher_cfg, n: int, seed: int, start: int, guidance: float, evaluator: Evaluator
) -> str:
    """A content hash of what makes two rows comparable sample by sample: the model's identity, the teacher,
    the seeds and count, the guidance and the evaluator's nets, references and bootstrap. Rows (and registered
    versions) with the same id were sampled on the same noises and resampled on the same indices."""
    blob = {
        "model": dict(model.identity or {"model": model.name}),
        "noise_schedule": model.noise_schedule.to_dict(),
        "teacher": asdict(teacher_cfg),
        "n": int(n),
        "seed": int(seed),
        "start": int(start),
        "guidance": float(guidance),
        "evaluator": evaluator.identity(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _evaluator(evaluator: Evaluator | None, options: EvaluateOptions) -> Evaluator:
    """``evaluator`` or, when None, the evaluator of ``options`` without a classifier (no digitsnet metrics)."""
    return evaluator if evaluator is not None else Evaluator.from_options(None, options)


def run_spec(schedule: Schedule, solver: str) -> SolverSpec:
    """The solver a schedule is evaluated with: its own spec, or ``solver`` at its default order if another."""
    return SolverSpec.from_fields(solver, schedule.extra) if solver == schedule.solver else SolverSpec(solver)


def teacher_endpoints(
    model: DiffusionModel,
    teacher_cfg,
    n: int,
    seed: int,
    start: int = 0,
    guidance: float | None = None,
    batch_size: int = 500,
    cache_dir=None,
) -> tuple[Schedule, torch.Tensor]:
    """The teacher (``TeacherConfig``: solver × steps on a baseline grid) run on the evaluation seeds; with
    ``cache_dir`` its endpoints are cached by content hash (``teacher_cache``)."""
    from optsteps.evaluate.teacher_cache import cached_teacher, teacher_key
    from optsteps.models.sampling import generate
    from optsteps.teacher.trajectories import teacher_schedule

    sched = teacher_schedule(model, teacher_cfg)
    g = teacher_cfg.guidance if guidance is None else guidance
    key = teacher_key(model, teacher_cfg, n, seed, start, g) if cache_dir is not None else None
    return sched, cached_teacher(
        cache_dir, key, lambda: generate(model, sched, teacher_cfg.solver, n, seed, start, g, batch_size)
    )


def evaluate_schedule(
    model: DiffusionModel,
    schedule: Schedule,
    options: EvaluateOptions | None = None,
    *,
    solver: str | None = None,
    evaluator: Evaluator | None = None,
    teacher: torch.Tensor | None = None,
    teacher_cfg=None,
    geneval_prompts=None,
    prompt_sampler=None,
    return_samples: bool = False,
):
    """Sample ``options.n`` seeded samples (``options``: ``EvaluateOptions``, its n, seed, start, guidance and
    batch_size) along ``schedule`` with ``solver`` (None: the schedule's) and return a dict of metrics, measured by
    ``evaluator`` (None: ``Evaluator.from_options(None, options)``, without the digits classifier).

    ``teacher``: the teacher's endpoints for the same (seed, start, n) (see ``teacher_endpoints``) to get the
    teacher metrics (``l2_to_teacher``, ``psnr_to_teacher``, ``fid_teacher_*``). With a bootstrap evaluator the
    dict holds ``ci95`` and ``resamples`` (metric → values on the resamples), and with ``teacher_cfg`` also the
    ``evaluation_id`` (comparable with a grid's rows of the same id). With ``return_samples`` the result is
    (metrics, samples).
    """
    from optsteps.models.sampling import generate

    o = EvaluateOptions() if options is None else options
    n, seed, start, guidance, batch_size = o.n, o.seed, o.start, o.guidance, o.batch_size
    solver = solver or schedule.solver
    if not solver:
        raise OptstepsError("no solver given and the schedule names none; pass solver= (ddim, dpmpp2m, unipc).")
    if n < 2:
        raise OptstepsError(f"need n ≥ 2 samples to evaluate, got {n}.")
    check_noise_schedule(schedule, model.noise_schedule, f"model {model.name!r}", "compute a schedule for this model")
    ev = _evaluator(evaluator, o)
    ev.set_teacher(teacher, images_of(model, teacher) if teacher is not None else None)
    t0 = time.perf_counter()
    x = generate(model, schedule, run_spec(schedule, solver), n, seed, start, guidance, batch_size)
    t1 = time.perf_counter()
    out, res = ev.measure(x, model.labels(n, start), images_of(model, x))
    if res:
        out["resamples"] = res
    if teacher is not None and teacher_cfg is not None:
        out["evaluation_id"] = evaluation_id(model, teacher_cfg, n, seed, start, guidance, ev)
    if geneval_prompts is not None:
        out.update(geneval_metrics(geneval_prompts, prompt_sampler, schedule, seed=seed))
    out.update(seconds_sampling=round(t1 - t0, 3), seconds_metrics=round(time.perf_counter() - t1, 3))
    return (out, x) if return_samples else out


def evaluate_grid(
    model: DiffusionModel,
    schedules: list[Schedule],
    teacher_cfg,
    options: EvaluateOptions | None = None,
    *,
    solver: str | None = None,
    evaluator: Evaluator | None = None,
    distill_samples: int | None = None,
    return_resamples: bool = False,
    on_images=None,
):
    """Evaluate every schedule on the same held-out seeds; the first row is the teacher itself (the reference,
    ``l2_to_teacher`` = 0). Each row: model, method, solver, nfe, the metrics and timings, the
    ``evaluation_id``; with a bootstrap evaluator also ``ci95`` and, for every row that is not a baseline,
    ``vs_best_baseline`` (``compare_to_baselines``). ``options`` (``EvaluateOptions``): n, seed, start, guidance,
    batch_size, progress, and the evaluator's settings when ``evaluator`` is None (then without a classifier).
    ``solver``: for schedules that name none.

    ``teacher_cfg.seed`` is the distillation seed: the evaluation seeds must not overlap it
    (``distill_samples`` bounds the distillation indices; None: the whole seed is reserved).
    ``return_resamples``: return (rows, resamples), resamples[i] = metric → resampled values of row i.
    ``on_images``: called as ``on_images(row, images)`` with each row's images in [−1, 1] (decoded for latent
    models; None for states that are no images), e.g. to save a sample grid; nothing is sampled for it.
    """
    from optsteps.models.sampling import generate

    o = EvaluateOptions() if options is None else options
    n, seed, start, g, batch_size, progress = o.n, o.seed, o.start, o.guidance, o.batch_size, o.progress
    check_heldout(seed, start, n, teacher_cfg.seed, distill_samples)
    ev = _evaluator(evaluator, o)
    labels = model.labels(n, start)
    t0 = time.perf_counter()
    tsched, teacher = teacher_endpoints(model, teacher_cfg, n, seed, start, g, batch_size, cache_dir=ev.cache_dir)
    timages = images_of(model, teacher)
    ev.set_teacher(teacher, timages)
    eid = evaluation_id(model, teacher_cfg, n, seed, start, g, ev)
    boot = {"resamples": ev.bootstrap, "seed": ev.bootstrap_seed, "level": bs.CI_LEVEL} if ev.bootstrap else None
    t1 = time.perf_counter()
    row = {
        "model": model.name,
        "method": "teacher",
        "solver": teacher_cfg.solver,
        "nfe": tsched.nfe,
        "teacher_schedule": teacher_cfg.schedule,
        "guidance": g,
        "seed": seed,
        "start": start,
        "evaluation_id": eid,
    }
    metrics, res = ev.measure(teacher, labels, timages, reference_row=True)
    row.update(metrics)
    if on_images is not None:
        on_images(row, timages)
    if boot:
        row["bootstrap"] = boot
    row.update(seconds_sampling=round(t1 - t0, 3), seconds_metrics=round(time.perf_counter() - t1, 3))
    rows, resamples = [row], [res]
    it = schedules
    if progress:
        from tqdm import tqdm

        it = tqdm(schedules, desc=f"evaluate {model.name}", mininterval=2.0)
    for s in it:
        sv = s.solver or solver
        if not sv:
            raise OptstepsError(f"schedule {s.method!r} NFE {s.nfe} names no solver; pass solver= to evaluate_grid.")
        check_noise_schedule(s, model.noise_schedule, f"model {model.name!r}", "compute it for this model")
        t0 = time.perf_counter()
        x = generate(model, s, run_spec(s, sv), n, seed, start, g, batch_size)
        t1 = time.perf_counter()
        row = {
            "model": model.name,
            "method": s.method,
            "solver": sv,
            "nfe": s.nfe,
            "guidance": g,
            "seed": seed,
            "start": start,
            "evaluation_id": eid,
        }
        images = images_of(model, x)
        metrics, res = ev.measure(x, labels, images)
        row.update(metrics)
        if on_images is not None:
            on_images(row, images)
        if boot:
            row["bootstrap"] = boot
        row.update(seconds_sampling=round(t1 - t0, 3), seconds_metrics=round(time.perf_counter() - t1, 3))
        rows.append(row)
        resamples.append(res)
    if ev.bootstrap:
        compare_to_baselines(rows, resamples)
    return (rows, resamples) if return_resamples else rows


def is_baseline(row: dict) -> bool:
    return row.get("method") in BASELINES


def compare_to_baselines(rows: list[dict], resamples: list[dict], level: float = bs.CI_LEVEL) -> None:
    """For every row that is neither the teacher nor a baseline, per metric with resamples: the paired
    difference to the best baseline of the same (solver, NFE) (lowest, or highest where higher is better),
    as ``row["vs_best_baseline"][metric] = {"baseline", "diff", "ci95", "significant"}`` (in place)."""
    for row, res in zip(rows, resamples):
        if row.get("method") == "teacher" or is_baseline(row):
            continue
        for metric, r in res.items():
            cands = [
                (b, bres)
                for b, bres in zip(rows, resamples)
                if is_baseline(b) and b["solver"] == row["solver"] and b["nfe"] == row["nfe"] and metric in bres
            ]
            if not cands:
                continue
            pick = max if bs.higher_is_better(metric) else min
            b, bres = pick(cands, key=lambda c: c[0][metric])
            diff, ci = bs.paired_difference(row[metric], r, b[metric], bres[metric], level)
            row.setdefault("vs_best_baseline", {})[metric] = {
                "baseline": b["method"],
                "diff": diff,
                "ci95": list(ci),
                "significant": bs.excludes_zero(ci),
            }


TABLE_METRICS = (
    "fid_digitsnet",
    "fid_teacher_digitsnet",
    "fid_teacher_inception",
    "fid_inception",
    "l2_to_teacher",
    "psnr_to_teacher",
    "adherence_digitsnet",
)
UNITS = {"psnr_to_teacher": " (dB)"}


def metric_columns(rows: list[dict]) -> list[str]:
    """Metric names present in rows, in a stable display order."""
    order = METRICS
    present = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [k for k in order if k in present]


def _cell(row: dict | None, metric: str, bold: bool) -> str:
    if row is None or metric not in row:
        return ""
    v = f"{row[metric]:.4g}"
    if bold:
        v = f"**{v}**"
    ci = (row.get("ci95") or {}).get(metric)
    return f"{v} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else v


def best_if_significant(cands: list[tuple[dict, dict]], metric: str, level: float = bs.CI_LEVEL) -> dict | None:
    """The best row of ``cands`` ((row, resamples) pairs of one column and NFE) by ``metric``, if its paired
    difference to the runner-up excludes 0; else None. Without resamples nothing is marked."""
    cands = [(r, res) for r, res in cands if metric in r and metric in res]
    if len(cands) < 2:
        return None
    cands.sort(key=lambda c: c[0][metric], reverse=bs.higher_is_better(metric))
    (best, bres), (second, sres) = cands[0], cands[1]
    _, ci = bs.paired_difference(best[metric], bres[metric], second[metric], sres[metric], level)
    return best if bs.excludes_zero(ci) else None


def markdown_table(rows: list[dict], metrics=TABLE_METRICS, resamples: list[dict] | None = None) -> str:
    """Rows of ``evaluate_grid`` as markdown: one table per solver, one line per (method, NFE), one column per
    metric, the teacher first. Cells: value [95 % interval] where the rows have ``ci95``. The best value of a
    column at an NFE is bold only where its paired difference to the runner-up excludes 0 (needs
    ``resamples``, aligned with ``rows``)."""
    metrics = [m for m in metrics if any(m in r for r in rows)]
    res = resamples if resamples is not None else [{} for _ in rows]
    teacher = [r for r in rows if r["method"] == "teacher"]
    rest = [(r, x) for r, x in zip(rows, res) if r["method"] != "teacher"]
    solvers = sorted({r["solver"] for r, _ in rest})
    boot = next((r["bootstrap"] for r in rows if r.get("bootstrap")), None)
    lines = []
    if boot:
        lines.append(
            f"Values: point estimate [{boot['level']:.0%} paired bootstrap interval] on {rows[0].get('n')} "
            f"held-out samples (seed {rows[0].get('seed')}), {boot['resamples']} resamples of the sample "
            f"indices (seed {boot['seed']}), the same for every row; **bold**: the best of its column at "
            "that NFE, where its paired difference to the runner-up excludes 0 (docs/algorithms.md §7)"
            + ("." if resamples is not None else "; without the resamples nothing is marked.")
        )
    else:
        lines.append("Values: point estimates (no bootstrap: evaluate.bootstrap = 0, so nothing is marked best).")
    if any(m.startswith("kid") for m in metrics):
        lines.append("KID: unbiased MMD² with the cubic kernel, unscaled (×1, not ×10³); it can be slightly negative.")
    for sv in solvers:
        cell = {(r["method"], r["nfe"]): (r, x) for r, x in rest if r["solver"] == sv}
        head = ["method", "NFE"] + [m + UNITS.get(m, "") for m in metrics]
        lines += ["", f"### {sv}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in teacher:
            lines.append(
                "| "
                + " | ".join(
                    [f"teacher ({r['solver']}-{r['nfe']})", str(r["nfe"])] + [_cell(r, m, False) for m in metrics]
                )
                + " |"
            )
        best = {
            (m, k): best_if_significant([c for (_, kk), c in cell.items() if kk == k], m)
            for m in metrics
            for k in {k for _, k in cell}
        }
        for method, nfe in sorted(cell, key=lambda mk: (mk[1], mk[0])):
            r = cell[(method, nfe)][0]
            lines.append(
                "| " + " | ".join([method, str(nfe)] + [_cell(r, m, best[(m, nfe)] is r) for m in metrics]) + " |"
            )
    return "\n".join(lines) + "\n"


__all__ = [
    "Evaluator",
    "evaluate_schedule",
    "evaluate_grid",
    "teacher_endpoints",
    "check_heldout",
    "metric_columns",
    "markdown_table",
    "compare_to_baselines",
    "best_if_significant",
    "evaluation_id",
    "images_of",
    "psnr_per_sample",
    "is_baseline",
]
