"""Gated class adherence for class-conditional models, and the GenEval hook for text-to-image models.

``adherence_digitsnet`` is the share of samples that (a) the digits classifier assigns to the requested
class, (b) with softmax confidence > 0.9, and (c) that lie inside the real-data manifold by k-NN precision
(Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models", NeurIPS 2019):
a sample φ counts as real if ‖φ − φ_r‖ ≤ ‖φ_r − NN_k(φ_r)‖ for some real φ_r, with k = 3 and NN_k the k-th
nearest other real sample, all in the classifier's 128-d features. A bare argmax is not enough: saturated
noise from a broken sampler scores about 66 % on it (docs/offline.md §5).

GenEval (Ghosh et al. 2023, github.com/djghosh13/geneval) is run only when its official evaluator is
installed; otherwise the metric is absent and one log line says why. Nothing here approximates it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from optsteps.errors import OptstepsError

log = logging.getLogger("optsteps.evaluate")

K_NEAREST = 3
CONFIDENCE = 0.9


def _pairwise(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048):
    for i in range(0, len(a), chunk):
        yield i, torch.cdist(a[i : i + chunk], b)


def knn_radii(real_features: np.ndarray, k: int = K_NEAREST) -> np.ndarray:
    """Distance from each real feature to its k-th nearest *other* real feature."""
    r = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    if len(r) <= k:
        raise OptstepsError(f"k-NN precision with k = {k} needs more than {k} real samples, got {len(r)}.")
    out = torch.empty(len(r), dtype=torch.float64)
    for i, d in _pairwise(r, r):
        # the k+1 smallest include the sample itself (distance 0) at index 0
        out[i : i + len(d)] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out.numpy()


def in_manifold(
    features: np.ndarray, real_features: np.ndarray, radii: np.ndarray | None = None, k: int = K_NEAREST
) -> np.ndarray:
    """Boolean mask: sample i lies inside the k-NN ball of at least one real sample."""
    radii = knn_radii(real_features, k) if radii is None else radii
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    r = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    rad = torch.as_tensor(radii, dtype=torch.float64)
    mask = torch.empty(len(f), dtype=torch.bool)
    for i, d in _pairwise(f, r):
        mask[i : i + len(d)] = (d <= rad[None, :]).any(dim=1)
    return mask.numpy()


def adherence_masks(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    features: np.ndarray,
    real_features: np.ndarray,
    radii: np.ndarray | None = None,
    k: int = K_NEAREST,
    confidence: float = CONFIDENCE,
) -> dict:
    """Per-sample boolean arrays: ``precision`` (in the real-data manifold) and, for conditional samples,
    ``accuracy`` (argmax = requested), ``confident_accuracy`` (and confidence > threshold) and ``adherence``
    (all three). Their means are the metrics of ``adherence_from_logits``."""
    inside = torch.from_numpy(in_manifold(features, real_features, radii, k))
    out = {"precision": inside.numpy()}
    if labels is None:
        return out  # unconditional: no requested class, adherence is undefined
    labels = torch.as_tensor(labels).long()
    if len(labels) != len(logits):
        raise OptstepsError(f"{len(labels)} labels for {len(logits)} samples; pass one requested class per sample.")
    prob = torch.softmax(torch.as_tensor(logits).double(), dim=1)
    conf, pred = prob.max(dim=1)
    hit = pred == labels
    sure = hit & (conf > confidence)
    out.update(accuracy=hit.numpy(), confident_accuracy=sure.numpy(), adherence=(sure & inside).numpy())
    return out


def adherence_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    features: np.ndarray,
    real_features: np.ndarray,
    radii: np.ndarray | None = None,
    k: int = K_NEAREST,
    confidence: float = CONFIDENCE,
) -> dict:
    """The gated adherence and its parts: ``accuracy`` (argmax = requested), ``confident_accuracy``
    (and confidence > threshold), ``precision`` (in-manifold share), ``adherence`` (all three)."""
    masks = adherence_masks(logits, labels, features, real_features, radii, k, confidence)
    return {name: float(np.asarray(m, dtype=np.float64).mean()) for name, m in masks.items()}


def class_adherence(
    net,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    real_features: np.ndarray,
    features: np.ndarray | None = None,
    radii: np.ndarray | None = None,
    k: int = K_NEAREST,
    confidence: float = CONFIDENCE,
) -> dict:
    """Gated adherence of ``images`` judged by the digitsnet ``FeatureNet`` ``net``; its features (computed
    through clean-fid unless given) give both the logits (classifier head) and the k-NN test."""
    from optsteps.evaluate.fid import clean_features

    if net.head is None:
        raise OptstepsError(f"feature net {net.name!r} has no classifier head; class adherence needs digitsnet.")
    feats = clean_features(images, net) if features is None else features
    return adherence_from_logits(net.head(feats), labels, feats, real_features, radii, k, confidence)


# ---- GenEval hook (text-to-image models) -------------------------------------------------------------

GENEVAL_DETECTOR = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
GENEVAL_MODULES = ("mmdet", "open_clip", "clip_benchmark")


def read_geneval_prompts(path) -> list[dict]:
    """GenEval's ``evaluation_metadata.jsonl``: one JSON object per line with at least ``prompt`` and ``tag``."""
    p = Path(path)
    if not p.is_file():
        raise OptstepsError(f"GenEval prompt file {p} not found; pass GenEval's prompts/evaluation_metadata.jsonl.")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise OptstepsError(f"{p}:{i} is not JSON ({e}); GenEval prompt files are JSON lines.") from None
        if not isinstance(row, dict) or "prompt" not in row or "tag" not in row:
            raise OptstepsError(f"{p}:{i} lacks 'prompt'/'tag'; use GenEval's evaluation_metadata.jsonl format.")
        rows.append(row)
    if not rows:
        raise OptstepsError(f"{p} holds no prompts.")
    return rows


def geneval_status(geneval_dir=None, detector_dir=None, python: str | None = None) -> tuple[bool, str]:
    """Whether the official GenEval evaluator can run here, and why not. Looks at ``geneval_dir`` (or
    $GENEVAL_DIR: a clone with evaluation/evaluate_images.py), the Mask2Former checkpoint in ``detector_dir``
    (or $GENEVAL_DETECTOR_DIR) and whether ``python`` (or $GENEVAL_PYTHON) imports mmdet, open_clip and
    clip_benchmark."""
    geneval_dir = geneval_dir or os.environ.get("GENEVAL_DIR")
    detector_dir = detector_dir or os.environ.get("GENEVAL_DETECTOR_DIR")
    python = python or os.environ.get("GENEVAL_PYTHON") or sys.executable
    if not geneval_dir:
        return False, "GENEVAL_DIR is not set (no clone of djghosh13/geneval)"
    script = Path(geneval_dir) / "evaluation" / "evaluate_images.py"
    if not script.is_file():
        return False, f"{script} not found"
    if not detector_dir or not (Path(detector_dir) / GENEVAL_DETECTOR).is_file():
        return False, f"the Mask2Former checkpoint {GENEVAL_DETECTOR} is not in GENEVAL_DETECTOR_DIR ({detector_dir})"
    probe = f"import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in {GENEVAL_MODULES!r}) else 3)"
    try:
        rc = subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"cannot run {python} ({e})"
    if rc != 0:
        return False, f"{python} cannot import {', '.join(GENEVAL_MODULES)}"
    return True, "ok"


def geneval_summary(results_jsonl) -> dict:
    """GenEval's scores from its results.jsonl: per-tag accuracy (mean of ``correct``) and the overall score
    (the mean over tags), named ``geneval_<tag>`` and ``geneval_overall``."""
    per_tag: dict[str, list] = {}
    for line in Path(results_jsonl).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            per_tag.setdefault(r["tag"], []).append(float(bool(r["correct"])))
    if not per_tag:
        raise OptstepsError(f"{results_jsonl} holds no GenEval results.")
    out = {f"geneval_{tag}": float(np.mean(v)) for tag, v in sorted(per_tag.items())}
    out["geneval_overall"] = float(np.mean([np.mean(v) for v in per_tag.values()]))
    return out


def write_geneval_images(
    prompts: list[dict], prompt_sampler: Callable, out_dir, images_per_prompt: int = 4, seed: int = 0, schedule=None
) -> Path:
    """GenEval's image layout: ``<out_dir>/<00000>/metadata.jsonl`` (the prompt's row) and ``samples/0000.png`` …;
    prompt i gets ``prompt_sampler(prompt, images_per_prompt, seed + i, schedule)`` (PIL images or an
    [n, C, H, W] tensor in [−1, 1]). Files are written atomically."""
    from optsteps.io.atomic import save_png_atomic, write_text_atomic

    out_dir = Path(out_dir)
    for i, meta in enumerate(prompts):
        d = out_dir / f"{i:05d}"
        imgs = prompt_sampler(meta["prompt"], images_per_prompt, seed + i, schedule)
        if isinstance(imgs, torch.Tensor):
            from PIL import Image

            from optsteps.io.images import to_uint8

            imgs = [Image.fromarray(a) for a in to_uint8(imgs)]
        if len(imgs) != images_per_prompt:
            raise OptstepsError(f"the prompt sampler returned {len(imgs)} images for {images_per_prompt} requested.")
        for j, im in enumerate(imgs):
            save_png_atomic(im, d / "samples" / f"{j:04d}.png")
        write_text_atomic(d / "metadata.jsonl", json.dumps(meta) + "\n")
    return out_dir


def run_geneval_evaluator(
    image_dir, outfile, geneval_dir=None, detector_dir=None, python: str | None = None, timeout: float | None = None
) -> dict:
    """Run the official ``evaluation/evaluate_images.py`` on a GenEval image folder and summarise its
    results.jsonl (``geneval_summary``). Call ``geneval_status`` first: this assumes GenEval is installed."""
    geneval_dir = Path(geneval_dir or os.environ["GENEVAL_DIR"])
    detector_dir = detector_dir or os.environ["GENEVAL_DETECTOR_DIR"]
    python = python or os.environ.get("GENEVAL_PYTHON") or sys.executable
    cmd = [
        python,
        str(geneval_dir / "evaluation" / "evaluate_images.py"),
        str(Path(image_dir).resolve()),
        "--outfile",
        str(Path(outfile).resolve()),
        "--model-path",
        str(detector_dir),
    ]
    proc = subprocess.run(cmd, cwd=geneval_dir, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise OptstepsError(
            f"GenEval's evaluate_images.py failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    return geneval_summary(outfile)


def geneval_metrics(
    prompt_file,
    prompt_sampler: Callable | None,
    schedule=None,
    images_per_prompt: int = 4,
    seed: int = 0,
    geneval_dir=None,
    detector_dir=None,
    python: str | None = None,
    workdir=None,
    limit: int | None = None,
) -> dict:
    """GenEval scores for a text-to-image sampler, or {} (one log line) when GenEval is not installed.

    ``prompt_sampler(prompt, n, seed, schedule)`` returns n PIL images or an [n, C, H, W] tensor in [−1, 1]
    (``optsteps.integrations.diffusers.pipeline_prompt_sampler`` makes one for a diffusers pipeline). The images are
    written in GenEval's layout (``write_geneval_images``; under ``workdir``, else a temporary folder removed
    afterwards),
    then GenEval's own ``evaluation/evaluate_images.py`` scores them. ``limit``: only the first prompts.
    Nothing is generated when GenEval is absent.
    """
    prompts = read_geneval_prompts(prompt_file)[:limit]
    ok, why = geneval_status(geneval_dir, detector_dir, python)
    if not ok:
        log.warning(
            "GenEval metric omitted: the official GenEval evaluator is not installed (%s); see the README "
            'section "Real models: diffusers pipelines" for its setup (GENEVAL_DIR, GENEVAL_DETECTOR_DIR, '
            "GENEVAL_PYTHON).",
            why,
        )
        return {}
    if prompt_sampler is None:
        raise OptstepsError(
            "GenEval scores text-to-image models; this model takes no prompts (pass a prompt "
            "sampler for a text-to-image pipeline, or drop the GenEval prompt file)."
        )
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="optsteps-geneval-") if own else workdir)
    try:
        img_dir = write_geneval_images(prompts, prompt_sampler, root / "images", images_per_prompt, seed, schedule)
        return run_geneval_evaluator(img_dir, root / "results.jsonl", geneval_dir, detector_dir, python)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
